"""Feature-level alignment on segmentation: dense DANN (a per-pixel domain classifier through gradient
reversal), the structural adaptation network (san: a conditional generator that moves
source features towards the target's, its discriminator's targets and which losses reach which network),
FCNs in the wild (inverted domain labels, class-size bounds from source labels) and generate-to-adapt
(the 4-class patch discriminator and its update targets). Losses on hand-made tensors, short runs whose
bundles evaluate, and smoke runs on the embedded dense pairs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgeda
from edgeda.errors import EdgedaError
from edgeda.methods import METHODS
from edgeda.methods.fcn_wild import domain_loss
from edgeda.methods.gta_seg import adversarial_loss, update_targets
from edgeda.methods.san import discriminator_loss
from edgeda.models.class_size import ClassSizeBounds, class_fractions, size_constraint_loss
from edgeda.models.dense_alignment import pixel_domain_adversarial_loss
from edgeda.models.dense_gan import (SOURCE_FAKE, SOURCE_REAL, TARGET_FAKE, TARGET_REAL, FeatureImageGenerator,
                                     FourClassPatchDiscriminator, PixelDomainClassifier, four_class_loss, patch_targets)
from edgeda.models.structural import ConditionalFeatureGenerator
from conftest import (EMBEDDED_DENSE_PAIRS, check_embedded_bundle, seg_batches, seg_spec, smoke_run_on_embedded_pair,
                      square_npz, train_on_embedded_pair, train_on_square_npz)


# ------------------------------------------------------------------------------------------ dann


def test_dense_dann_reverses_the_domain_gradient_into_the_encoder():
    torch.manual_seed(0)
    m = METHODS.get("dann")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"hidden": 16})
    assert isinstance(m.nets["domain"], PixelDomainClassifier)
    src, tgt = seg_batches()
    enc, dom = m.model.encoder, m.nets["domain"]

    def grads(coeff):
        m.nets.zero_grad(set_to_none=True)
        feats, _ = m.model.features_and_logits(torch.cat([src.x, tgt.x]))
        loss, _ = pixel_domain_adversarial_loss(dom, feats[:4], feats[4:], coeff)
        loss.backward()
        return ([p.grad.clone() for p in enc.parameters() if p.grad is not None],
                [p.grad.clone() for p in dom.parameters()])

    m.nets.eval()  # no BatchNorm statistics change between the passes
    enc_rev, dom_rev = grads(0.5)
    # the same loss without reversal: what descending the domain loss would do
    m.nets.zero_grad(set_to_none=True)
    feats, _ = m.model.features_and_logits(torch.cat([src.x, tgt.x]))
    logits = dom(feats)
    labels = torch.zeros_like(logits)
    labels[:4] = 1
    F.binary_cross_entropy_with_logits(logits, labels).backward()
    enc_plain = [p.grad.clone() for p in enc.parameters() if p.grad is not None]
    dom_plain = [p.grad.clone() for p in dom.parameters()]
    assert len(enc_rev) == len(enc_plain) > 0
    for a, b in zip(dom_rev, dom_plain):  # the classifier itself descends its loss
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(enc_rev, enc_plain):  # the encoder receives -0.5 times that gradient
        assert torch.allclose(a, -0.5 * b, atol=1e-6, rtol=1e-4)
    assert any(b.abs().max() > 0 for b in enc_plain)
    m.nets.train()
    out = m.step(src, tgt)
    assert set(out) >= {"loss/cls", "loss/domain", "acc/domain"} and np.isfinite(out["loss/domain"])
    with pytest.raises(EdgedaError, match="dropout"):
        METHODS.get("dann")(seg_spec(), backbone="lraspp", options={"dropout": 0.5})



# ------------------------------------------------------------------------------------------- san


def test_generator_shape_zero_start_and_noise():
    g = ConditionalFeatureGenerator(low_channels=8, high_channels=144, width=16, n_blocks=2, noise_channels=1)
    low = torch.randn(2, 8, 16, 24)
    r = g(low, size=(2, 3))
    assert r.shape == (2, 144, 2, 3) and float(r.detach().abs().max()) == 0.0  # zero-initialised: starts as source-only
    with torch.no_grad():
        g.out.weight.normal_()
    g.eval()
    z = torch.randn(2, 1, 2, 3)
    assert torch.equal(g(low, (2, 3), noise=z), g(low, (2, 3), noise=z))
    assert not torch.allclose(g(low, (2, 3)), g(low, (2, 3)))  # fresh noise each call


def test_discriminator_targets_real_target_one_transformed_source_zero():
    a, b = torch.full((2, 1, 2, 3), 2.0), torch.full((3, 1, 2, 3), -1.0)
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))  # BCE(2, 1), BCE(-1, 0)
    assert discriminator_loss(a, b).item() == pytest.approx(expected, rel=1e-6)
    right, wrong = discriminator_loss(torch.full((1, 1, 2, 2), 10.0), torch.full((1, 1, 2, 2), -10.0)), \
        discriminator_loss(torch.full((1, 1, 2, 2), -10.0), torch.full((1, 1, 2, 2), 10.0))
    assert right.item() < 1e-3 and wrong.item() > 5.0


def test_san_discriminator_sees_target_features_and_transformed_source():
    torch.manual_seed(0)
    m = METHODS.get("san")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 16})
    assert m.low_level == "stem" and sorted(m.deployables()) == ["model"]
    assert m.optims["generator"].param_groups[0]["betas"] == (0.5, 0.999)
    assert m.optims["discriminator"].param_groups[0]["lr"] == pytest.approx(2e-4)
    src, tgt = seg_batches()
    with torch.no_grad():  # the encoder has no dropout: the same batch gives the same maps
        ref = m.model.encoder.forward_intermediates(torch.cat([src.x, tgt.x]))["out"]
    seen = []
    m.nets["discriminator"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    out = m.step(src, tgt)
    assert {"loss/seg", "loss/seg_transformed", "loss/adv", "loss/d", "acc/domain"} <= set(out)
    assert torch.allclose(seen[0], ref[4:], atol=1e-5)   # D's "real" input: target features, unchanged
    assert torch.allclose(seen[1], ref[:4], atol=1e-5)   # transformed source = f_s + 0 at the start
    assert all(p.requires_grad for p in m.nets["discriminator"].parameters())
    with pytest.raises(EdgedaError, match="low_level"):
        METHODS.get("san")(seg_spec(), backbone="lraspp", options={"low_level": "out"})


def test_san_task_loss_reaches_the_generator_and_the_adversarial_loss_not_the_encoder():
    torch.manual_seed(0)
    m = METHODS.get("san")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 16})
    G, D, enc = m.nets["generator"], m.nets["discriminator"], m.model.encoder
    src, _ = seg_batches()
    m.nets.eval()

    def grads_of(loss_fn):
        m.nets.zero_grad(set_to_none=True)
        feats = enc.forward_intermediates(src.x)
        residual = G(feats["stem"].detach(), size=feats["out"].shape[-2:])
        loss_fn(feats, residual).backward()
        return {n: p.grad for n, p in G.named_parameters()}, [p.grad for p in enc.parameters()]

    def task(feats, residual):
        return F.cross_entropy(m.transformed_logits(feats, residual, src.x.shape[-2:])[4:], src.y)

    g_grads, _ = grads_of(task)
    assert float(g_grads["out.weight"].abs().sum()) > 0  # at the zero start the last conv already learns
    with torch.no_grad():
        G.out.weight.normal_(std=0.1)
    g_grads, enc_grads = grads_of(task)
    assert all(g is not None and float(g.abs().sum()) > 0 for n, g in g_grads.items() if n.endswith("weight"))

    def adversarial(feats, residual):
        d = D(feats["out"].detach() + residual)
        return F.binary_cross_entropy_with_logits(d, torch.ones_like(d))

    g_grads, enc_grads = grads_of(adversarial)
    assert float(g_grads["stem.0.weight"].abs().sum()) > 0 and all(g is None for g in enc_grads)



# ------------------------------------------------------------------------------------------- gta


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



# -------------------------------------------------------------------------------------- fcn_wild


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



# ------------------------------------------------------------------------------------ training runs


@pytest.mark.parametrize("method,options", [("dann", {"hidden": 16})])
def test_method_trains_and_its_bundle_evaluates(tmp_path, method, options):
    train_on_square_npz(tmp_path, method, options)


@pytest.mark.parametrize("method", ["gta_seg", "fcn_wild"])
def test_train_bundle_evaluates(tmp_path, method):
    src, tgt = square_npz(tmp_path / "src.npz", 16, 32, 32, 0), square_npz(tmp_path / "tgt.npz", 8, 32, 32, 1, 100)
    opts = {"lr_f": 1e-3, "g_width": 8, "d_width": 8} if method == "gta_seg" else {"min_stats": 4, "hidden": 16}
    res = edgeda.train(method=method, source=src, target=tgt, target_test=tgt, iters=3, eval_every=3, checkpoint_every=3,
                       batch_size=4, image_size=[32, 32], backbone="lraspp", backbone_kwargs={"width": 0.25},
                       options=opts, out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    losses = [v for h in res.history for k, v in h.items() if k.startswith("train/loss/")]
    assert losses and all(np.isfinite(v) for v in losses)
    b = edgeda.load_bundle(res.bundle)
    assert sorted(b.manifest["deployables"]) == ["model"]  # only F + C ship (no G, D or domain classifier)
    ev = edgeda.evaluate(res.bundle, tgt)
    assert 0.0 <= ev["miou"] <= 1.0 and "per_class_iou" in ev



@pytest.mark.parametrize("method,options", [("dann", {"hidden": 16}), ("fcn_wild", {}),
                                            ("gta_seg", {"g_width": 4, "d_width": 8})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_method_smoke_run_on_the_embedded_dense_pairs(tmp_path, method, options, pair):
    smoke_run_on_embedded_pair(tmp_path, method, options, pair)


@pytest.mark.parametrize("method,options", [("san", {"d_width": 16, "g_width": 16})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_method_trains_on_the_embedded_pair_and_its_bundle_evaluates(tmp_path, method, options, pair):
    res = train_on_embedded_pair(tmp_path, method, options, pair, iters=3)
    check_embedded_bundle(res, pair, tmp_path)
