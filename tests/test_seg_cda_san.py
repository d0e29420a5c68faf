"""Curriculum DA (cda) and the structural adaptation network (san) on segmentation: label
distributions and their KL by hand, landmark-superpixel labels on hand-made maps, the conditional
generator's shape, zero start and gradients, the discriminator's targets, and tiny training runs
on both embedded dense pairs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgeda
from edgeda.errors import EdgedaError
from edgeda.methods import METHODS, Batch
from edgeda.methods.san import discriminator_loss
from edgeda.models.structural import ConditionalFeatureGenerator
from edgeda.models.superpixels import (LabelDistributionRegressor, class_fractions, label_distribution_kl, landmark_labels,
                                       predicted_label_distribution, slic_superpixels, soft_cross_entropy)
from edgeda.task import TaskSpec
from conftest import EMBEDDED_DENSE_PAIRS, export_and_predict, train_on_embedded_pair


def _spec(k=2):
    return TaskSpec(k, ["bg", "fg", "x"][:k], task="segmentation", image_size=(32, 48))


def _batches(n=4, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(n, 3, 32, 48, generator=g), torch.randn(n, 3, 32, 48, generator=g) + 1.0
    return Batch(xs, torch.randint(0, k, (n, 32, 48), generator=g)), Batch(xt)


# ------------------------------------------------------------------------------------------- cda


def test_label_distribution_kl_by_hand():
    q = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    p = torch.tensor([[0.25, 0.25, 0.5], [0.4, 0.4, 0.2]])
    # row 1: 0.5 ln 2 + 0.5 ln 2 = ln 2; row 2: 0.2 ln(1/2) + 0.8 ln 2 = 0.6 ln 2; classes with q = 0 add nothing
    assert label_distribution_kl(q, p).item() == pytest.approx(0.8 * math.log(2), rel=1e-6)
    assert label_distribution_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)
    # a predicted distribution that misses a class present in q: p clamped at eps = 1e-8, so
    # 0.5 ln(0.5 / 1) + 0.5 ln(0.5 / 1e-8), large but finite
    worked = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-8)
    assert label_distribution_kl(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(worked, rel=1e-5)
    # the predicted distribution is the mean softmax over pixels: pixel 1 (0.5, 0.5), pixel 2 (0.9, 0.1)
    logits = torch.log(torch.tensor([[0.5, 0.9], [0.5, 0.1]])).view(1, 2, 1, 2)
    assert predicted_label_distribution(logits).tolist()[0] == pytest.approx([0.7, 0.3], rel=1e-6)


def test_label_distribution_of_a_mask_excludes_ignored_pixels_and_regressor_loss():
    mask = torch.tensor([[[0, 0, 1, 255], [2, 2, 2, 255]]])  # 6 labelled pixels: 2 of class 0, 1 of 1, 3 of 2
    assert class_fractions(mask, 4).tolist()[0] == pytest.approx([2 / 6, 1 / 6, 3 / 6, 0.0])
    # the regressor pools globally: a map that is constant per channel gives the linear layer of those constants
    r = LabelDistributionRegressor(2, 3)
    feats = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 4, 5)
    assert torch.allclose(r(feats), r.linear(torch.tensor([[1.0, -2.0]])))
    # soft cross-entropy of uniform logits against any distribution is log K
    assert soft_cross_entropy(torch.zeros(2, 4), class_fractions(torch.cat([mask, mask]), 4)).item() == pytest.approx(math.log(4))


def _probs_two_classes(p1: torch.Tensor) -> torch.Tensor:
    """(N, H, W) probability of class 1 -> (N, 2, H, W)."""
    return torch.stack([1 - p1, p1], dim=1)


def test_landmark_labels_keep_the_confident_superpixels_of_each_class_with_their_majority():
    # image 0: four 2x2 superpixels (ids 0..3); image 1: one superpixel (id 0 again: ids are per image)
    seg0 = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    p1 = torch.zeros(2, 4, 4)
    p1[0, :2, :2] = 0.9                        # s0: class 1, confidence 0.9
    p1[0, :2, 2:] = 0.6                        # s1: three pixels class 1 at 0.6 ...
    p1[0, 1, 3] = 0.3                          # ... one pixel class 0: majority 1, confidence (3 * 0.6 + 0.3) / 4
    p1[0, 2:, :2] = 0.05                       # s2: class 0, confidence 0.95
    p1[0, 2:, 2:] = 0.45                       # s3: class 0, confidence 0.55
    p1[1] = 0.7                                # image 1, s0: class 1, confidence 0.7
    segments = torch.stack([seg0, torch.zeros(4, 4, dtype=torch.long)])
    probs = _probs_two_classes(p1)
    # class 1 has 3 superpixels (0.9, 0.525, 0.7): ceil(1.5) = 2 kept; class 0 has 2 (0.95, 0.55): 1 kept
    y = landmark_labels(segments, probs, fraction=0.5)
    expect = torch.full((2, 4, 4), 255)
    expect[0, :2, :2] = 1
    expect[0, 2:, :2] = 0
    expect[1] = 1
    assert torch.equal(y, expect)
    # all kept: every pixel of a superpixel takes its majority class, also the one predicted 0
    y_all = landmark_labels(segments, probs, fraction=1.0)
    assert bool((y_all[0, :2, 2:] == 1).all()) and bool((y_all[0, 2:, 2:] == 0).all())
    with pytest.raises(ValueError):
        landmark_labels(segments, probs, fraction=0.0)


def test_slic_superpixels_follow_a_strong_edge_and_landmarks_fill_them():
    img = torch.zeros(1, 3, 24, 48)
    img[:, :, :, :24] = torch.tensor([0.1, 0.1, 0.1]).view(1, 3, 1, 1)
    img[:, :, :, 24:] = torch.tensor([0.9, 0.2, 0.2]).view(1, 3, 1, 1)
    seg = slic_superpixels(img, n_segments=8, compactness=10.0)
    assert seg.shape == (1, 24, 48) and seg.dtype == torch.long and int(seg.min()) == 0
    left, right = set(seg[0, :, :24].unique().tolist()), set(seg[0, :, 24:].unique().tolist())
    assert len(left) >= 1 and len(right) >= 1 and not (left & right)  # no superpixel crosses the edge
    # predictions: class 0 left, class 1 right, with every 5th pixel of each half predicted wrongly
    p1 = torch.zeros(1, 24, 48)
    p1[:, :, 24:] = 0.8
    wrong = (torch.arange(24 * 48).view(1, 24, 48) % 5) == 0
    p1[wrong] = 1 - p1[wrong]
    y = landmark_labels(seg, _probs_two_classes(p1), fraction=1.0)
    assert bool((y[0, :, :24] == 0).all()) and bool((y[0, :, 24:] == 1).all())
    grey = slic_superpixels(img[:, :1], n_segments=8)
    assert grey.shape == (1, 24, 48)


def test_cda_is_source_only_in_warmup_then_adds_the_target_terms():
    torch.manual_seed(0)
    m = METHODS.get("cda")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25})
    assert m.opts["lambda_kl"] == pytest.approx(0.1) and m.opts["landmark_fraction"] == pytest.approx(0.6)
    assert sorted(m.deployables()) == ["model"]
    src, tgt = _batches()
    before = [p.detach().clone() for p in m.nets["label_distribution"].parameters()]
    m.progress = 0.0
    out = m.step(src, tgt)
    assert out["cda/on"] == 0.0 and "loss/kl" not in out
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets["label_distribution"].parameters()))
    m.progress = 0.5
    out = m.step(src, tgt)
    assert out["cda/on"] == 1.0 and np.isfinite(out["loss/kl"]) and np.isfinite(out["loss/sp"])
    assert 0.0 < out["sp/landmark_pixels"] <= 1.0
    with pytest.raises(EdgedaError, match="landmark_fraction"):
        METHODS.get("cda")(_spec(), backbone="lraspp", options={"landmark_fraction": 1.5})


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
    m = METHODS.get("san")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 16})
    assert m.low_level == "stem" and sorted(m.deployables()) == ["model"]
    assert m.optims["generator"].param_groups[0]["betas"] == (0.5, 0.999)
    assert m.optims["discriminator"].param_groups[0]["lr"] == pytest.approx(2e-4)
    src, tgt = _batches()
    with torch.no_grad():  # the encoder has no dropout: the same batch gives the same maps
        ref = m.classifier.encoder.forward_intermediates(torch.cat([src.x, tgt.x]))["out"]
    seen = []
    m.nets["discriminator"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    out = m.step(src, tgt)
    assert {"loss/seg", "loss/seg_transformed", "loss/adv", "loss/d", "acc/domain"} <= set(out)
    assert torch.allclose(seen[0], ref[4:], atol=1e-5)   # D's "real" input: target features, unchanged
    assert torch.allclose(seen[1], ref[:4], atol=1e-5)   # transformed source = f_s + 0 at the start
    assert all(p.requires_grad for p in m.nets["discriminator"].parameters())
    with pytest.raises(EdgedaError, match="low_level"):
        METHODS.get("san")(_spec(), backbone="lraspp", options={"low_level": "out"})


def test_san_task_loss_reaches_the_generator_and_the_adversarial_loss_not_the_encoder():
    torch.manual_seed(0)
    m = METHODS.get("san")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 16})
    G, D, enc = m.nets["generator"], m.nets["discriminator"], m.classifier.encoder
    src, _ = _batches()
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


# ------------------------------------------------------------------------------ training runs

@pytest.mark.parametrize("method,options", [("cda", {"warmup": 0.3}), ("san", {"d_width": 16, "g_width": 16})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_method_trains_on_the_embedded_pair_and_its_bundle_evaluates(tmp_path, method, options, pair):
    res = train_on_embedded_pair(tmp_path, method, options, pair, iters=3)
    if method == "cda":
        assert res.history[-1]["train/cda/on"] > 0  # the target terms ran (iterations 2 and 3 of 3)
    b = edgeda.load_bundle(res.bundle)
    assert sorted(b.manifest["deployables"]) == ["model"]
    ev = edgeda.evaluate(res.bundle, pair[2])
    assert 0.0 <= ev["miou"] <= 1.0 and "per_class_iou" in ev
    if pair[0] == "synscenes":  # it exports (fp32 parity checked) and predicts like any other bundle
        export_and_predict(res.bundle, tmp_path)
