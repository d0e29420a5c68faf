"""Instance-level alignment of ``dann`` for detectors (Chen et al. 2018): RoIAlign under boxes, the level
each box is pooled from, the instance domain loss through gradient reversal, the image/instance
consistency term, and the method step that composes them."""
import numpy as np
import pytest
import torch

import edgeda

S = 64
MODELS = {"ssdlite": {"width": 0.25}, "fcos": {"backbone": "resnet18", "width": 8, "fpn_channels": 64, "num_convs": 1}}


def test_roi_align_averages_bilinear_samples_of_each_bin():
    from edgeda.models.detection.instance_alignment import roi_align

    h = w = 8
    xs = torch.arange(w, dtype=torch.float32).expand(h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    feature = torch.stack([xs, ys, xs * 0 + 3])[None].repeat(2, 1, 1, 1)  # a map linear in x and y: bilinear is exact
    # stride 8: input x = 16 .. 48 is map column 16/8 - 0.5 = 1.5 .. 5.5; two bins of 2 samples each at
    # 2, 3 and 4, 5 -> bin means 2.5 and 4.5; rows y = 8 .. 40 -> 0.5 .. 4.5 -> samples 1, 2 and 3, 4 -> 1.5, 3.5
    boxes = [torch.tensor([[16.0, 8.0, 48.0, 40.0]]), torch.zeros(0, 4)]
    pooled, image_of = roi_align(feature, boxes, stride=8.0, output_size=2, sampling=2)
    assert pooled.shape == (1, 3, 2, 2) and image_of.tolist() == [0]
    assert torch.allclose(pooled[0, 0], torch.tensor([[2.5, 4.5], [2.5, 4.5]]))
    assert torch.allclose(pooled[0, 1], torch.tensor([[1.5, 1.5], [3.5, 3.5]]))
    assert torch.allclose(pooled[0, 2], torch.full((2, 2), 3.0))

    second = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 24.0, 24.0]])]
    feature[1] += 100
    pooled, image_of = roi_align(feature, second, stride=8.0)
    assert image_of.tolist() == [1, 1] and bool((pooled[:, 2] == 103).all())  # rows read their own image
    # whole image: map coordinates -0.5 .. 7.5, samples at 1.5 and 5.5 (bin centres +- 1) -> 0.5, 2.5, 4.5, 6.5;
    # the first sample (-0.5 + 8 / 8 = 0.5) stays inside, so no border clamping: bin means 1.5 and 5.5
    assert torch.allclose(pooled[0, 0] - 100, torch.tensor([[1.5, 5.5], [1.5, 5.5]]))

    # strides per axis (8 down, 16 across): x = 32 .. 64 is column 1.5 .. 3.5, one bin, samples 2 and 3
    pooled, _ = roi_align(feature[:1, :, :, :4], [torch.tensor([[32.0, 8.0, 64.0, 40.0]])], stride=(8.0, 16.0),
                          output_size=1, sampling=2)
    assert torch.allclose(pooled[0, :2, 0, 0], torch.tensor([2.5, 2.5]))  # rows 0.5 .. 4.5: samples 1.5, 3.5


def test_boxes_go_to_the_coarsest_level_they_span_two_cells_of():
    from edgeda.models.detection.instance_alignment import assign_levels

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # side 10: below 2 x 8 -> the finest level
                          [0.0, 0.0, 20.0, 20.0],     # side 20: 8 <= 10 -> level 0 (stride 8)
                          [0.0, 0.0, 40.0, 40.0],     # side 40: 16 <= 20 -> level 1 (stride 16)
                          [0.0, 0.0, 64.0, 256.0],    # side 128: 64 <= 64 -> level 3 (the first of strides 64)
                          [5.0, 5.0, 5.0, 30.0]])     # zero area -> the finest
    assert assign_levels(boxes, [8.0, 16.0, 32.0, 64.0, 64.0]).tolist() == [0, 0, 1, 3, 0]


def test_instance_loss_reverses_its_gradient_into_the_features():
    from edgeda.models.detection.instance_alignment import InstanceDomainClassifier, instance_domain_loss

    torch.manual_seed(0)
    disc = InstanceDomainClassifier(3 * 4, hidden=16)
    domain = torch.tensor([1.0, 1.0, 0.0])

    def grad(coeff):
        pooled = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
        loss, acc, logits = instance_domain_loss(disc, pooled, domain, coeff)
        disc.zero_grad()
        loss.backward()
        assert logits.shape == (3,) and 0.0 <= float(acc) <= 1.0
        return pooled.grad.clone(), [p.grad.clone() for p in disc.parameters()]

    reversed_, d_rev = grad(0.5)
    plain, d_plain = grad(-1.0)  # -(-1) x gradient: the plain gradient of the loss
    assert plain.abs().sum() > 0
    assert torch.allclose(reversed_, -0.5 * plain, atol=1e-7)  # the features maximise what the classifier minimises
    assert all(torch.allclose(a, b) for a, b in zip(d_rev, d_plain))  # the classifier itself descends either way


def test_consistency_is_zero_only_when_image_and_instance_levels_agree():
    from edgeda.models.detection.instance_alignment import consistency_loss

    p = torch.tensor([0.2, 0.7, 0.7])
    assert float(consistency_loss(p, p.clone())) == 0.0
    assert float(consistency_loss(p, torch.tensor([0.2, 0.7, 0.1]))) == pytest.approx(0.6 / 3)
    assert float(consistency_loss(torch.zeros(0), torch.zeros(0))) == 0.0


def _method(arch="ssdlite", **options):
    from edgeda.methods import METHODS
    from edgeda.tasks.spec import TaskSpec

    spec = TaskSpec(2, ["a", "b"], task="detection", image_size=(S, S))
    return METHODS.get("dann")(spec, backbone=arch, backbone_kwargs=MODELS[arch], options=options)


def _batch(seed, labeled=True):
    from edgeda.methods.base import Batch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, S, S, generator=g)
    y = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 28.0], [30.0, 30.0, 62.0, 60.0]]), "labels": torch.tensor([1, 0])},
         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return Batch(x, y if labeled else None)


@pytest.mark.parametrize("arch", list(MODELS))
def test_dann_instance_option_trains_instance_classifiers_on_source_truth_and_target_detections(arch):
    torch.manual_seed(0)
    m = _method(arch, instance=1.0)
    levels = len(m.nets["domain"])
    assert len(m.nets["instance_domain"]) == levels
    m.train()
    m.progress = 0.5
    before = [p.clone() for p in m.nets["instance_domain"].parameters()]
    out = m.step(_batch(0), _batch(1, labeled=False))
    for k in ("loss/cls", "loss/domain", "loss/instance", "loss/consistency"):
        assert np.isfinite(out[k]), k
    assert out["instances/source"] == 1.0  # two truth boxes over two source images
    assert 0 < out["instances/target"] <= 16  # the untrained detector's best detections stand in as proposals
    assert 0.0 <= out["acc/instance"] <= 1.0 and out["loss/consistency"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets["instance_domain"].parameters()))


def test_dann_without_the_option_is_image_level_only():
    torch.manual_seed(0)
    m = _method("ssdlite")
    assert "instance_domain" not in m.nets
    m.train()
    m.progress = 0.5
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert not any(k.startswith(("loss/instance", "loss/consistency", "instances/")) for k in out)


def test_dann_instance_option_is_refused_outside_detection():
    from edgeda.methods import METHODS
    from edgeda.tasks.spec import TaskSpec

    with pytest.raises(edgeda.errors.EdgedaError, match="instance"):
        METHODS.get("dann")(TaskSpec(10, [str(i) for i in range(10)]), options={"instance": 1.0})


def test_instance_weights_change_the_update_of_the_detector():
    """The instance and consistency terms reach the detector's parameters (through the reversal layers):
    the same step with instance=1 and with instance=0 leaves the trunk in different states."""
    def trunk_after(**opts):
        torch.manual_seed(0)
        m = _method("ssdlite", **opts)
        m.train()
        m.progress = 0.5
        m.step(_batch(0), _batch(1, labeled=False))
        return torch.cat([p.detach().flatten() for p in m.model.trunk.parameters()])

    torch.manual_seed(0)
    a = trunk_after(instance=1.0)
    b = trunk_after(instance=0.0)
    assert not torch.allclose(a, b)
