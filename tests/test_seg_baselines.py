"""Segmentation baselines AdvEnt/MinEnt, AdaptSegNet, FDA and dense DANN: their shared parts on hand-made tensors,
a smoke training run per method whose bundle evaluates, and DANN's gradient reversal per pixel."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgeda
from edgeda.errors import EdgedaError
from edgeda.methods import METHODS, Batch
from edgeda.models.dense_alignment import (FullyConvDiscriminator, charbonnier_penalty, entropy_map,
                                           pixel_domain_adversarial_loss, self_information_map)
from edgeda.models.dense_gan import PixelDomainClassifier
from edgeda.models.fourier import fourier_amplitude_swap, low_frequency_mask
from edgeda.task import TaskSpec
from conftest import EMBEDDED_DENSE_PAIRS, export_and_predict, square_scenes, train_on_embedded_pair


def test_entropy_map_zero_for_one_hot_and_one_for_uniform():
    one_hot = F.one_hot(torch.randint(0, 5, (2, 6, 7)), 5).permute(0, 3, 1, 2).float() * 100.0
    assert entropy_map(one_hot).abs().max() < 1e-6
    assert self_information_map(one_hot).abs().max() < 1e-6
    uniform = torch.zeros(2, 5, 6, 7)
    assert torch.allclose(entropy_map(uniform), torch.ones(2, 6, 7), atol=1e-6)
    # each class contributes -(1/5) log(1/5) / log 5 = 1/5
    assert torch.allclose(self_information_map(uniform), torch.full((2, 5, 6, 7), 0.2), atol=1e-6)
    # a mixed pixel, by hand: p = (0.5, 0.25, 0.25)
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1)
    expected = (0.5 * math.log(2) + 0.5 * math.log(4)) / math.log(3)
    assert entropy_map(logits).item() == pytest.approx(expected, rel=1e-5)
    assert self_information_map(logits).sum().item() == pytest.approx(expected, rel=1e-5)
    assert charbonnier_penalty(torch.tensor([0.0, 0.5]), 2.0).tolist() == pytest.approx([1e-12, (0.25 + 1e-6) ** 2])


def test_fda_beta_zero_is_identity_and_phase_is_kept():
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.rand(2, 3, 32, 64, generator=g), torch.rand(2, 3, 32, 64, generator=g) * 3
    assert torch.equal(fourier_amplitude_swap(xs, xt, 0.0), xs)
    out = fourier_amplitude_swap(xs, xt, 0.1)
    fo, fs, ft = torch.fft.fft2(out.double()), torch.fft.fft2(xs.double()), torch.fft.fft2(xt.double())
    band = low_frequency_mask(32, 64, 0.1).bool()  # b = floor(32 * 0.1) = 3: |ky|, |kx| <= 3
    assert int(band.sum()) == 7 * 7 and bool(band[0, 0]) and bool(band[3, -3]) and not bool(band[4, 0])
    # low band: the target's amplitude; elsewhere: the source's own amplitude
    assert torch.allclose(fo.abs()[..., band], ft.abs()[..., band], rtol=1e-4, atol=1e-3)
    assert torch.allclose(fo.abs()[..., ~band], fs.abs()[..., ~band], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(fs.abs()[..., band], ft.abs()[..., band], rtol=1e-2)
    # phase kept wherever the amplitude is not tiny
    keep = fs.abs() > 1e-3
    dphase = torch.angle(fo * fs.conj())[keep]
    assert dphase.abs().max() < 1e-3
    # a mean-only swap (b = 0): each channel's mean becomes the target's, the rest stays
    dc = fourier_amplitude_swap(xs, xt, 0.01)
    assert torch.allclose(dc.mean((2, 3)), xt.mean((2, 3)), atol=1e-5)
    assert torch.allclose(dc - dc.mean((2, 3), keepdim=True), xs - xs.mean((2, 3), keepdim=True), atol=1e-5)


def test_discriminator_shape_and_pixel_domain_loss_by_hand():
    d = FullyConvDiscriminator(19, width=8, n_layers=4)
    assert d(torch.rand(2, 19, 64, 128)).shape == (2, 1, 2, 4)
    # a "classifier" that outputs the first channel: source maps 2.0, target maps -1.0 -> BCE by hand
    first = lambda f: f[:, :1]  # noqa: E731
    fs, ft = torch.full((2, 3, 2, 2), 2.0), torch.full((1, 3, 2, 2), -1.0)
    loss, acc = pixel_domain_adversarial_loss(first, fs, ft, coeff=1.0)
    expected = (2 * math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6) and acc.item() == 1.0


def _spec():
    return TaskSpec(2, ["bg", "fg"], task="segmentation", image_size=(32, 48))


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(n, 3, 32, 48, generator=g), torch.randn(n, 3, 32, 48, generator=g) + 1.0
    return Batch(xs, torch.randint(0, 2, (n, 32, 48), generator=g)), Batch(xt)


def test_dense_dann_reverses_the_domain_gradient_into_the_encoder():
    torch.manual_seed(0)
    m = METHODS.get("dann")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"hidden": 16})
    assert isinstance(m.nets["domain"], PixelDomainClassifier)
    src, tgt = _batches()
    enc, dom = m.classifier.encoder, m.nets["domain"]

    def grads(coeff):
        m.nets.zero_grad(set_to_none=True)
        feats, _ = m.classifier.features_and_logits(torch.cat([src.x, tgt.x]))
        loss, _ = pixel_domain_adversarial_loss(dom, feats[:4], feats[4:], coeff)
        loss.backward()
        return ([p.grad.clone() for p in enc.parameters() if p.grad is not None],
                [p.grad.clone() for p in dom.parameters()])

    m.nets.eval()  # no BatchNorm statistics change between the passes
    enc_rev, dom_rev = grads(0.5)
    # the same loss without reversal: what descending the domain loss would do
    m.nets.zero_grad(set_to_none=True)
    feats, _ = m.classifier.features_and_logits(torch.cat([src.x, tgt.x]))
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
        METHODS.get("dann")(_spec(), backbone="lraspp", options={"dropout": 0.5})


def test_classification_dann_is_unchanged():
    """One step equals the classification DANN written out: CE + domain BCE through the GRL on pooled features."""
    from edgeda.models import DomainClassifier, dann_coefficient
    from edgeda.methods.losses import domain_adversarial_loss

    spec = TaskSpec(3, ["a", "b", "c"], task="classification", image_size=(16, 16))
    torch.manual_seed(0)
    m = METHODS.get("dann")(spec, backbone="dtn", backbone_kwargs={"width": 2, "out_dim": 16}, options={"hidden": 8})
    assert type(m.nets["domain"]) is DomainClassifier
    ref = copy.deepcopy(m.nets)
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    g = torch.Generator().manual_seed(1)
    xs, xt, ys = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 1])
    m.progress = 0.4
    out = m.step(Batch(xs, ys), Batch(xt))
    coeff = dann_coefficient(0.4)
    feats, logits = ref["classifier"].features_and_logits(torch.cat([xs, xt]))
    cls = F.cross_entropy(logits[:4], ys)
    dom, _ = domain_adversarial_loss(ref["domain"], feats[:4], feats[4:], coeff)
    opt.zero_grad()
    (cls + dom).backward()
    opt.step()
    assert out["loss/cls"] == pytest.approx(cls.item(), rel=1e-5) and out["loss/domain"] == pytest.approx(dom.item(), rel=1e-5)
    for a, b in zip(m.nets.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_advent_discriminator_step_and_frozen_discriminator_in_the_segmenter_step():
    torch.manual_seed(0)
    m = METHODS.get("advent")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 8})
    d_opt = m.optims["discriminator"]
    assert d_opt.param_groups[0]["betas"] == (0.9, 0.99) and d_opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    before = [p.detach().clone() for p in m.nets["discriminator"].parameters()]
    src, tgt = _batches()
    out = m.step(src, tgt)
    assert {"loss/seg", "loss/adv", "loss/d", "acc/domain"} <= set(out)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets["discriminator"].parameters()))
    assert all(p.requires_grad for p in m.nets["discriminator"].parameters())
    mini = METHODS.get("advent")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"mode": "minent"})
    assert "discriminator" not in mini.nets and set(mini.step(src, tgt)) == {"loss/seg", "loss/ent"}
    with pytest.raises(EdgedaError, match="mode"):
        METHODS.get("advent")(_spec(), backbone="lraspp", options={"mode": "both"})


def test_adaptseg_discriminator_sees_softmax_outputs():
    torch.manual_seed(0)
    m = METHODS.get("adaptseg")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 8})
    assert "mode" not in m.opts and "lambda_ent" not in m.opts and m.opts["lambda_adv"] == pytest.approx(1e-3)
    seen = []
    m.nets["discriminator"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    src, tgt = _batches()
    out = m.step(src, tgt)
    assert {"loss/seg", "loss/adv", "loss/d", "acc/domain"} <= set(out)
    maps = seen[-1]  # the D step's input: source and target outputs
    assert maps.shape[1] == m.task.num_classes
    assert torch.allclose(maps.sum(1), torch.ones_like(maps[:, 0]), atol=1e-5)  # a distribution per pixel
    with pytest.raises(EdgedaError, match="mode"):
        METHODS.get("adaptseg")(_spec(), backbone="lraspp", options={"mode": "minent"})


def test_fda_trains_on_translated_source_and_switches_entropy_on():
    torch.manual_seed(0)
    m = METHODS.get("fda")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"beta": 0.1})
    src, tgt = _batches()
    x = m.translate(src.x, tgt.x)
    assert x.shape == src.x.shape and not torch.allclose(x, src.x)
    m.progress = 0.0
    assert m.step(src, tgt)["ent/on"] == 0.0
    m.progress = 0.5
    assert m.step(src, tgt)["ent/on"] == 1.0
    with pytest.raises(EdgedaError, match="beta"):
        METHODS.get("fda")(_spec(), backbone="lraspp", options={"beta": 0.7})


def _npz(path, n, h, w, seed, bright=150):
    x, y = square_scenes(n, h, w, seed, bright)
    np.savez(path, x=x, y=y, classes=np.array(("bg", "fg")))
    return str(path)


@pytest.mark.parametrize("method,options", [("advent", {"d_width": 8}), ("adaptseg", {"d_width": 8}), ("fda", {"beta": 0.05}),
                                            ("dann", {"hidden": 16})])
def test_method_trains_and_its_bundle_evaluates(tmp_path, method, options):
    src = _npz(tmp_path / "src.npz", 12, 32, 48, 0)
    tgt = _npz(tmp_path / "tgt.npz", 8, 32, 48, 1, bright=90)
    res = edgeda.train(method=method, options=options, source=src, target=tgt, target_test=tgt, iters=3, eval_every=3,
                       checkpoint_every=3, batch_size=4, image_size=[32, 48], backbone="lraspp",
                       backbone_kwargs={"width": 0.25}, out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    assert res.task == "segmentation" and "target_test_miou" in res.metrics
    ev = edgeda.evaluate(res.bundle, tgt)
    assert 0.0 <= ev["miou"] <= 1.0 and "per_class_iou" in ev


def test_dense_dann_trains_on_depth(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (10, 32, 48, 3)).astype(np.uint8)
    depth = (rng.random((10, 32, 48)) * 20 + 1).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, depth=depth)
    res = edgeda.train(method="dann", options={"hidden": 16}, source=str(tmp_path / "d.npz"), target=str(tmp_path / "d.npz"),
                       target_test=str(tmp_path / "d.npz"), task="depth", iters=2, eval_every=2, checkpoint_every=2,
                       batch_size=4, image_size=[32, 48], backbone="lraspp", backbone_kwargs={"width": 0.25},
                       out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    assert res.task == "depth" and "abs_rel" in edgeda.evaluate(res.bundle, str(tmp_path / "d.npz"))


@pytest.mark.parametrize("method,options", [("advent", {"d_width": 8}), ("adaptseg", {"d_width": 8}), ("fda", {"beta": 0.05}),
                                            ("dann", {"hidden": 16}), ("fcn_wild", {}),
                                            ("gta_seg", {"g_width": 4, "d_width": 8}),
                                            ("cyclegan", {"g_width": 4, "d_width": 8, "g_blocks": 1})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_method_smoke_run_on_the_embedded_dense_pairs(tmp_path, method, options, pair):
    res = train_on_embedded_pair(tmp_path, method, options, pair)
    assert 0.0 <= res.metrics["target_test_miou"] <= 1.0 and res.metrics["target_test_per_class"]
    if pair[0] == "synscenes":  # its bundle exports (fp32 parity checked) and predicts like any other
        assert "model" in export_and_predict(res.bundle, tmp_path)["deployables"]
