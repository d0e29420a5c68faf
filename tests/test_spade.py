"""SPADE label-map generator: shapes, layout sensitivity, ignore pixels, gradients, ONNX-traceable forward."""
import pytest
import torch

from edgeda.models import build
from edgeda.models.spade import SPADE, LabelMapGenerator, one_hot_map


def test_one_hot_map_zeroes_ignored_pixels():
    m = torch.tensor([[[0, 2], [255, 1]]])
    oh = one_hot_map(m, 3)
    assert oh.shape == (1, 3, 2, 2)
    assert oh[0, :, 1, 0].sum() == 0                      # ignore pixel: no class
    assert oh[0, 2, 0, 1] == 1 and oh[0, 1, 1, 1] == 1
    assert oh.sum() == 3
    soft = torch.rand(1, 3, 2, 2)
    assert torch.equal(one_hot_map(soft, 3), soft)
    with pytest.raises(ValueError, match="label maps"):
        one_hot_map(torch.zeros(2, 2, dtype=torch.long), 3)


def test_spade_modulates_per_pixel():
    torch.manual_seed(0)
    s = SPADE(4, 2, hidden=8).eval()
    h = torch.randn(1, 4, 6, 6)
    a = one_hot_map(torch.zeros(1, 6, 6, dtype=torch.long), 2)
    b = a.clone()
    b[:, :, :, 3:] = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)   # right half: the other class
    ya, yb = s(h, a), s(h, b)
    assert torch.allclose(ya[..., :1], yb[..., :1], atol=1e-6)   # beyond the two 3x3 convs' reach: same
    assert not torch.allclose(ya[..., 4:], yb[..., 4:])          # where the layout changed: different


@pytest.mark.parametrize("size", [(64, 128), (30, 45)])
def test_generator_shape_range_and_gradients(size):
    torch.manual_seed(0)
    g = build("label_map_generator", num_classes=5, channels=3, width=8, n_up=2, z_dim=4, hidden=8)
    assert isinstance(g, LabelMapGenerator)
    masks = torch.randint(0, 5, (2, *size))
    masks[0, :3] = 255
    x = g(masks, torch.randn(2, 4))
    assert x.shape == (2, 3, *size)
    assert x.abs().max() <= 1
    x.mean().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_generator_follows_layout_and_noise():
    torch.manual_seed(0)
    g = LabelMapGenerator(num_classes=3, channels=1, width=8, n_up=2, z_dim=4, hidden=8).eval()
    m0 = torch.zeros(1, 16, 16, dtype=torch.long)
    m1 = m0.clone()
    m1[:, 8:] = 2
    z = torch.randn(1, 4)
    with torch.no_grad():
        a, b, c = g(m0, z), g(m1, z), g(m0, torch.randn(1, 4))
    assert (a - b).abs()[..., 10:, :].mean() > (a - b).abs()[..., :4, :].mean()
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError):
        LabelMapGenerator(num_classes=3, n_up=-1)
