import pytest
import torch

from edgeda.models import build, dann_coefficient, gradient_reversal, rebuild


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(5, 7, requires_grad=True)
    w = torch.randn(5, 7)
    (gradient_reversal(x, 0.3) * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)
    y = torch.randn(3, requires_grad=True)
    out = gradient_reversal(y, 1.0)
    torch.testing.assert_close(out, y)  # identity forward


def test_dann_coefficient_schedule():
    assert dann_coefficient(0.0) == 0.0
    assert 0.99 < dann_coefficient(1.0) <= 1.0
    vals = [dann_coefficient(p / 10) for p in range(11)]
    assert vals == sorted(vals)


@pytest.mark.parametrize("backbone", ["dtn", "resnet_small"])
@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1)])
def test_classifier_rebuilds_from_json_record(backbone, size, channels):
    m = build("classifier", backbone=backbone, num_classes=7, channels=channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    f, logits = m.features_and_logits(x)
    assert logits.shape == (2, 7) and f.shape == (2, m.feature_dim)
    m2 = rebuild(m.edgeda_arch)
    m2.load_state_dict(m.state_dict())
    m.eval(), m2.eval()
    torch.testing.assert_close(m(x), m2(x))
