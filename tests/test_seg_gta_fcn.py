"""Generate-to-adapt (4-class patch D) and FCNs in the wild on segmentation: losses on hand-made
tensors, the update targets, class-size bounds from source labels, and tiny train -> evaluate runs."""
import numpy as np
import pytest
import torch

import edgeda
from edgeda.methods.fcn_wild import domain_loss
from edgeda.methods.gta_seg import adversarial_loss, update_targets
from edgeda.models.class_size import ClassSizeBounds, class_fractions, size_constraint_loss
from edgeda.models.dense_gan import (SOURCE_FAKE, SOURCE_REAL, TARGET_FAKE, TARGET_REAL, FeatureImageGenerator,
                                     FourClassPatchDiscriminator, four_class_loss, patch_targets)


def test_patch_targets_per_image_kind():
    logits = torch.zeros(2, 4, 3, 5)
    for kind in (SOURCE_REAL, SOURCE_FAKE, TARGET_REAL, TARGET_FAKE):
        t = patch_targets(kind, logits)
        assert t.shape == (2, 3, 5) and t.dtype == torch.long and bool((t == kind).all())
    assert (SOURCE_REAL, SOURCE_FAKE, TARGET_REAL, TARGET_FAKE) == (0, 1, 2, 3)
    with pytest.raises(ValueError):
        patch_targets(4, logits)
    # uniform logits: CE = log 4 for any kind; a patch confident in its kind: ~0
    assert float(four_class_loss(logits, patch_targets(TARGET_FAKE, logits))) == pytest.approx(np.log(4))
    sure = torch.zeros(1, 4, 2, 2)
    sure[:, TARGET_FAKE] = 20.0
    assert float(four_class_loss(sure, patch_targets(TARGET_FAKE, sure))) < 1e-6


def test_update_targets_d_within_domain_g_own_real_f_cross_domain():
    lg = {k: torch.zeros(2, 4, 2, 2) for k in ("source-real", "source-fake", "target-real", "target-fake")}
    d = update_targets("d", lg)
    assert [int(d[k].unique()) for k in lg] == [SOURCE_REAL, SOURCE_FAKE, TARGET_REAL, TARGET_FAKE]
    fakes = {"source-fake": torch.zeros(3, 4, 2, 2), "target-fake": torch.zeros(1, 4, 2, 2)}
    g = update_targets("g", fakes)
    assert int(g["source-fake"].unique()) == SOURCE_REAL and int(g["target-fake"].unique()) == TARGET_REAL
    f = update_targets("f", fakes)  # F: reconstructed source must look target-real, and vice versa
    assert f["source-fake"].shape == (3, 2, 2) and bool((f["source-fake"] == TARGET_REAL).all())
    assert bool((f["target-fake"] == SOURCE_REAL).all())
    # a D that takes a source reconstruction for target-real gives F a low loss, for source-real a high one
    as_target, as_source = torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    as_target[:, TARGET_REAL], as_source[:, SOURCE_REAL] = 10.0, 10.0
    low = adversarial_loss("f", {"source-fake": as_target})
    high = adversarial_loss("f", {"source-fake": as_source})
    assert float(low) < 1e-3 < 5.0 < float(high)
    assert float(adversarial_loss("g", {"source-fake": as_source})) < 1e-3


def test_gta_parts_shapes_and_dropout_noise():
    g = FeatureImageGenerator(in_channels=16, channels=3, stride=16, width=8)
    f = torch.randn(2, 16, 2, 2)
    g.train()
    with torch.no_grad():
        a, b = g(f, size=(32, 32)), g(f, size=(32, 32))
    assert a.shape == (2, 3, 32, 32) and float(a.abs().max()) <= 1.0
    assert not torch.allclose(a, b)  # dropout is the noise in training
    g.eval()
    assert torch.equal(g(f, (32, 32)), g(f, (32, 32)))
    d = FourClassPatchDiscriminator(channels=3, num_classes=5, width=8, n_layers=2)
    kinds, labels = d(torch.randn(2, 3, 32, 32))
    assert kinds.shape == (2, 4, 8, 8) and labels.shape == (2, 5, 32, 32)


def test_class_size_bounds_come_from_source_label_statistics():
    # class 1 covers 10%, 20%, ..., 100% of images 1..10; class 2 never occurs; 255 is ignored
    labels = torch.zeros(10, 10, 10, dtype=torch.long)
    for i in range(10):
        labels[i].view(-1)[: 10 * (i + 1)] = 1
    labels[0, 9, :] = 255  # image 0: 10 of 90 labelled pixels are class 1
    frac = class_fractions(labels, 3)
    assert frac[0, 1] == pytest.approx(10 / 90) and frac[0].sum() == pytest.approx(1.0)
    stats = ClassSizeBounds(3, capacity=8, low=0.1, high=0.9)
    stats.observe(labels[:4])
    stats.observe(labels[4:])  # ring buffer: the last 8 images (30% .. 100%) remain
    assert stats.count == 8
    lo, hi = stats.bounds()
    expect = torch.quantile(torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]), torch.tensor([0.1, 0.9]))
    assert float(lo[1]) == pytest.approx(float(expect[0])) and float(hi[1]) == pytest.approx(float(expect[1]))
    assert float(lo[2]) == 0.0 and float(hi[2]) == 1.0  # unseen class: no constraint
    bg = 1 - frac[2:, 1]
    assert float(lo[0]) == pytest.approx(float(torch.quantile(bg[bg > 0], 0.1)))


def _logits_with_fraction(fraction: float, size: int = 10) -> torch.Tensor:
    """(1, 2, size, size) logits: class 1 certain on the first ``fraction`` of pixels, class 0 elsewhere."""
    z = torch.zeros(1, 2, size * size)
    k = int(round(fraction * size * size))
    z[0, 1, :k], z[0, 0, k:] = 30.0, 30.0
    return z.view(1, 2, size, size)


def test_size_loss_zero_inside_bounds_positive_outside():
    lo, hi = torch.tensor([0.0, 0.2]), torch.tensor([1.0, 0.5])
    assert float(size_constraint_loss(_logits_with_fraction(0.3), lo, hi)) == pytest.approx(0.0, abs=1e-6)
    small = size_constraint_loss(_logits_with_fraction(0.1), lo, hi)  # class 1 present, 0.1 < 0.2
    big = size_constraint_loss(_logits_with_fraction(0.8), lo, hi)    # 0.8 > 0.5
    # mean over the two present classes (class 0's bounds are [0, 1])
    assert float(small) == pytest.approx(0.1 / 2, abs=1e-4) and float(big) == pytest.approx(0.3 / 2, abs=1e-4)
    # a class not predicted anywhere is not constrained (no lower-bound penalty for class 1 at 0%)
    assert float(size_constraint_loss(_logits_with_fraction(0.0), lo, hi)) == pytest.approx(0.0, abs=1e-6)
    z = _logits_with_fraction(0.8).requires_grad_()
    size_constraint_loss(z, lo, hi).backward()
    assert float(z.grad[0, 1].abs().sum()) > 0


def test_domain_loss_inverted_labels():
    confident = torch.full((2, 1, 3, 3), 10.0), torch.full((2, 1, 3, 3), -10.0)  # D right on both domains
    assert float(domain_loss(*confident)) < 1e-3
    assert float(domain_loss(*confident, inverted=True)) > 5.0


def _npz(path, n, seed, bright):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    y = np.zeros((n, 32, 32), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, 16, 2)
        y[i, r:r + 16, c:c + 16] = 1
    x[y == 1] += bright
    np.savez(path, x=x, y=y, classes=np.array(["bg", "fg"]))
    return str(path)


@pytest.mark.parametrize("method", ["gta_seg", "fcn_wild"])
def test_train_bundle_evaluates(tmp_path, method):
    src, tgt = _npz(tmp_path / "src.npz", 16, 0, 150), _npz(tmp_path / "tgt.npz", 8, 1, 100)
    opts = {"lr_f": 1e-3, "g_width": 8, "d_width": 8} if method == "gta_seg" else {"min_stats": 4, "hidden": 16}
    res = edgeda.train(method=method, source=src, target=tgt, target_test=tgt, iters=3, eval_every=3, checkpoint_every=3,
                       batch_size=4, image_size=[32, 32], backbone="lraspp", backbone_kwargs={"width": 0.25},
                       options=opts, out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    assert all(np.isfinite(v) for h in res.history for k, v in h.items() if k.startswith("loss/"))
    b = edgeda.load_bundle(res.bundle)
    assert sorted(b.manifest["deployables"]) == ["model"]  # only F + C ship (no G, D or domain classifier)
    ev = edgeda.evaluate(res.bundle, tgt)
    assert 0.0 <= ev["miou"] <= 1.0 and "per_class_iou" in ev
