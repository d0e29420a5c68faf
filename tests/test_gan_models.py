"""Shared GAN parts: generator/discriminator shapes, losses, pool, grid, refiner bundle + ONNX, and the SPADE
label-map generator (shapes, layout sensitivity, ignore pixels, gradients, ONNX-traceable forward)."""
import numpy as np
import pytest
import torch

from edgeda.bundle import Bundle, write_bundle
from edgeda.models import build
from edgeda.models.gan_utils import (ImagePool, cycle_loss, diff_augment, hue, hue_loss, masked_pairwise_mse, parse_policy,
                                     write_sample_grid)
from edgeda.models.patchgan import PatchDiscriminator
from edgeda.models.spade import SPADE, LabelMapGenerator, one_hot_map
from edgeda.tasks.spec import TaskSpec


@pytest.mark.parametrize("size", [28, 30, 32, 64])
@pytest.mark.parametrize("noise_dim", [0, 5])
def test_generator_keeps_shape_and_range(size, noise_dim):
    g = build("resnet_generator", channels=3, width=4, n_blocks=1, kernel=3, noise_dim=noise_dim, image_size=size)
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = g(x, torch.rand(2, noise_dim) if noise_dim else None)
    assert y.shape == x.shape
    assert y.abs().max() <= 1
    if noise_dim:  # z reaches the output, and z=None means z=0
        assert not torch.allclose(g(x, torch.ones(2, noise_dim)), g(x, -torch.ones(2, noise_dim)))
        torch.testing.assert_close(g(x), g(x, torch.zeros(2, noise_dim)))


def test_generator_grayscale_and_channel_change():
    g = build("resnet_generator", channels=1, out_channels=3, width=4, n_blocks=1)
    assert g(torch.zeros(3, 1, 32, 32)).shape == (3, 3, 32, 32)


@pytest.mark.parametrize("size,side", [(28, 7), (32, 8), (64, 16)])
def test_patchgan_returns_one_logit_per_patch(size, side):
    d = PatchDiscriminator(channels=3, width=8, n_layers=2)
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, side, side)
    d3 = PatchDiscriminator(channels=1, width=8, n_layers=3)
    assert d3(torch.randn(2, 1, size, size)).shape == (2, 1, side // 2, side // 2)


def test_diff_augment_translation_shifts_content_and_fills_with_zero():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 16, 16)
    x[:, 0, 8, 8] = 1.0
    y = diff_augment(x, "translation")  # shifts of up to 0.125 * 16 = 2 pixels per axis
    assert torch.equal(y.sum((1, 2, 3)), torch.ones(64))  # the bright pixel moved, nothing was invented
    pos = torch.nonzero(y[:, 0])[:, 1:] - 8
    assert pos.abs().max() <= 2 and pos.abs().max() > 0
    full = torch.ones(64, 1, 16, 16)
    torch.manual_seed(0)  # the same shifts again
    shifted = diff_augment(full, "translation")
    moved = pos.abs().sum(1) > 0
    assert (shifted[moved] == 0).any() and (shifted[~moved] == 1).all()  # uncovered borders are 0, unmoved rows untouched


def test_diff_augment_cutout_zeroes_one_square_and_colour_keeps_gradients():
    torch.manual_seed(1)
    x = torch.ones(32, 3, 16, 16)
    y = diff_augment(x, "cutout")  # an 8 x 8 square, clipped at the borders
    holes = (y[:, 0] == 0).sum((1, 2))
    assert (holes > 0).all() and (holes <= 64).all() and (holes == 64).any()
    assert torch.equal(y[:, 0], y[:, 1])  # the same hole in every channel
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    out = diff_augment(x, "color,translation,cutout")
    assert not torch.equal(out, x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G is trained through D's augmentation


def test_patchgan_augments_its_inputs_in_training_mode_only():
    assert parse_policy("") == () and parse_policy(" color, cutout ") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_policy("color,flip")
    torch.manual_seed(2)
    d = PatchDiscriminator(channels=3, width=8, n_layers=2, augment="color,translation,cutout")
    plain = PatchDiscriminator(channels=3, width=8, n_layers=2)
    plain.load_state_dict(d.state_dict())  # augmentation adds no weights: the same checkpoint layout
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    d.eval(), plain.eval()
    assert torch.equal(d(x), plain(x))
    d.train(), plain.train()
    assert not torch.allclose(d(x), plain(x))


def test_cycle_loss_is_zero_for_identity_mappings_only():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    G = F = torch.nn.Identity()
    assert cycle_loss(F(G(x)), x) == 0
    y = x.clone()
    y[:, :, :8] += 0.5  # change the top half
    assert cycle_loss(y, x) == pytest.approx(0.25)
    top = torch.zeros(4, 1, 16, 16)
    top[:, :, :8] = 1
    assert cycle_loss(y, x, 1 - top) == 0          # masked to the unchanged half
    assert cycle_loss(y, x, top) == pytest.approx(0.5)


def test_hue_only_foreground_loss_ignores_brightness_but_not_colour():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 0.8 + 0.1  # [0, 1] RGB, coloured
    darker = x * 0.4                                         # scale V, keep H (and S)
    torch.testing.assert_close(hue(darker), hue(x), atol=1e-4, rtol=0)
    assert hue_loss(darker, x) < 1e-5
    assert hue_loss(darker * 2 - 1, x * 2 - 1) < 1e-5         # the [-1, 1] form gives the same
    rotated = x[:, [1, 2, 0]]                                 # R->B, G->R, B->G: hue + 1/3 turn
    assert hue_loss(rotated, x) > 0.5
    # a brightness change is still seen by the plain cycle loss
    assert cycle_loss(darker, x) > 0.1
    mask = torch.zeros(4, 1, 16, 16)
    mask[..., :4, :4] = 1
    changed = x.clone()
    changed[..., 8:, 8:] = changed[..., 8:, 8:][:, [1, 2, 0]]  # outside the mask only
    assert hue_loss(changed, x, mask) < 1e-6


def test_hue_matches_hsv_definition():
    import colorsys

    rgb = torch.tensor([[0.9, 0.2, 0.1], [0.2, 0.7, 0.3], [0.1, 0.3, 0.9], [0.8, 0.8, 0.1]])
    h = hue(rgb.view(4, 3, 1, 1)).view(4)
    for i, (r, gg, b) in enumerate(rgb.tolist()):
        ref = colorsys.rgb_to_hsv(r, gg, b)[0]
        d = abs(h[i].item() - ref)
        assert min(d, 1 - d) < 0.03  # the smooth hexagonal hue is within ~2% of the piecewise one


def test_masked_pairwise_mse_allows_consistent_changes_inside_the_mask():
    x = torch.rand(2, 3, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    assert masked_pairwise_mse(x, x, m) == 0
    assert masked_pairwise_mse(x + 0.3, x, m).abs() < 1e-6       # same shift everywhere: no cost
    noisy = x + 0.3 * torch.randn_like(x)
    assert masked_pairwise_mse(noisy, x, m) > 0.01
    outside = x.clone()
    outside[..., 0, :] += torch.randn(8)
    assert masked_pairwise_mse(outside, x, m).abs() < 1e-6       # outside the mask: ignored
    assert masked_pairwise_mse(outside, x, None) > 0             # whole-image version sees it


def test_image_pool_mixes_history_after_filling():
    pool = ImagePool(4, seed=0)
    first = torch.zeros(4, 1, 2, 2)
    assert torch.equal(pool.query(first), first)  # filling: returns the batch as is
    out = torch.cat([pool.query(torch.ones(4, 1, 2, 2)) for _ in range(10)])
    assert (out == 0).any() and (out == 1).any()  # history images come back
    assert torch.equal(ImagePool(0).query(first + 3), first + 3)


def test_sample_grid_has_one_row_per_class(tmp_path):
    from PIL import Image

    x = torch.rand(12, 3, 8, 8) * 2 - 1
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    p = write_sample_grid(tmp_path / "s" / "grid.png", [x, -x], y, per_class=4)
    w, h = Image.open(p).size
    assert h == 3 * (8 + 2) + 2 and w == (4 * 2 + 1) * (8 + 2) + 2


def _refiner_bundle(tmp_path, **kw):
    g = build("resnet_generator", channels=3, image_size=32, **kw)
    with torch.no_grad():  # non-trivial instance-norm affine parameters
        for m in g.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    clf = build("classifier", backbone="dtn", num_classes=10, backbone_kwargs={"width": 8, "out_dim": 32})
    path = write_bundle(tmp_path / "m.edgeda", {"classifier": clf, "refiner": g}, TaskSpec(10, [str(i) for i in range(10)]))
    return g.eval(), Bundle(path).module("refiner").eval()


@pytest.mark.parametrize("kw", [{"width": 8, "n_blocks": 2, "kernel": 3}, {"width": 4, "n_blocks": 1, "noise_dim": 10}])
def test_refiner_bundle_round_trip_gives_identical_outputs(tmp_path, kw):
    g, rebuilt = _refiner_bundle(tmp_path, **kw)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), g(x), rtol=0, atol=0)


@pytest.mark.parametrize("kw", [
    {"width": 8, "n_blocks": 2, "kernel": 3},          # cyclegan / suit refiners at the cpu benchmark size
    {"width": 16, "n_blocks": 2, "kernel": 7},         # the method defaults
])
def test_refiner_exports_to_onnx_and_matches_pytorch(tmp_path, kw):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    _, refiner = _refiner_bundle(tmp_path, **kw)
    path = tmp_path / "refiner.onnx"
    torch.onnx.export(refiner, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["refined"],
                      dynamic_axes={"image": {0: "batch"}, "refined": {0: "batch"}})
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert "InstanceNormalization" in ops and "Pad" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = (torch.rand(5, 3, 32, 32) * 2 - 1)  # batch 5 != the export batch: dynamic axis works
    with torch.no_grad():
        ref = refiner(x).numpy()
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4


# -- the SPADE label-map generator ----------------------------------------------------------------


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
def test_label_map_generator_shape_range_and_gradients(size):
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


def test_label_map_generator_follows_layout_and_noise():
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

