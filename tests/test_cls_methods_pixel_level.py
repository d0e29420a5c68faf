"""Pixel-level methods on classification (pixelda, cyclegan, fgbg_cyclegan, suit, label2image): a short
training run each, what ships, sample grids, two-stage schedules, the loss terms against their
definitions, batch-norm statistics, and divergence."""
import json

import pytest
import torch

from conftest import assert_running_stats_follow, tiny_config
from edgeda.bundle import Bundle
from edgeda.errors import TrainingDiverged
from edgeda.methods import METHODS, Batch
from edgeda.tasks.spec import TaskSpec
from edgeda.training import Trainer

TINY = {"g_width": 4, "g_blocks": 1, "g_kernel": 3, "d_width": 4, "d_layers": 1}
TINY_L2I = {"g_width": 4, "d_width": 4, "z_dim": 8}
PIXEL = ["pixelda", "cyclegan", "fgbg_cyclegan", "suit"]


def _run(tmp_path, method, options, **kw):
    cfg = tiny_config(tmp_path, method=method, iters=4, eval_every=2, checkpoint_every=2, source_n=100,
                      options=options, **kw)
    return Trainer(cfg, progress=False, log=None).run()


@pytest.mark.parametrize("method", PIXEL + ["label2image"])
def test_short_training_run_ships_classifier_and_generator_with_sample_grids(tmp_path, method):
    res = _run(tmp_path, method, TINY_L2I if method == "label2image" else TINY)
    b = Bundle(res.bundle)
    shipped = "generator" if method == "label2image" else "refiner"
    assert set(b.names) == {"classifier", shipped}
    grids = sorted((res.run_dir / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["samples_000002.png", "samples_000004.png"]
    assert b.manifest["metrics"]["samples_png"] == str(grids[-1])  # the manifest points to the last grid
    history = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["samples_png"] for h in history] == [str(g) for g in grids]
    assert all(torch.isfinite(v.float()).all() for v in b.module(shipped).state_dict().values())
    from edgeda.bundle_eval import evaluate_bundle

    assert evaluate_bundle(b, device="cpu")["samples_png"] == str(grids[-1])


def _method(name, **options):
    task = TaskSpec(10, [str(i) for i in range(10)])
    m = METHODS.get(name)(task, backbone_kwargs={"width": 8, "out_dim": 32},
                          options={**(TINY_L2I if name == "label2image" else TINY), **options})
    m.train()
    return m


def _batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    mask = (torch.rand(n, 1, 32, 32, generator=g) > 0.6).float()
    return Batch(x, torch.arange(n) % 10, mask), Batch(torch.rand(n, 3, 32, 32, generator=g) * 2 - 1)


@pytest.mark.parametrize("name", ["cyclegan", "fgbg_cyclegan"])
def test_cyclegan_trains_the_gan_then_the_classifier_on_translated_images(name):
    m = _method(name, gan_fraction=0.5)
    s, t = _batches()
    m.progress = 0.1
    before = {k: v.clone() for k, v in m.nets["refiner"].state_dict().items()}
    losses = m.step(s, t)
    assert {"loss/cycle", "loss/g_adv", "loss/d", "loss/cls"} <= set(losses)
    assert ("loss/fg_hue" in losses) == (name == "fgbg_cyclegan")
    assert any(not torch.equal(before[k], v) for k, v in m.nets["refiner"].state_dict().items())
    m.progress = 0.6  # stage 2: the refiner is frozen, only the classifier learns
    frozen = {k: v.clone() for k, v in m.nets["refiner"].state_dict().items()}
    clf = {k: v.clone() for k, v in m.model.state_dict().items()}
    assert set(m.step(s, t)) == {"loss/cls_refined"}
    assert all(torch.equal(frozen[k], v) for k, v in m.nets["refiner"].state_dict().items())
    assert any(not torch.equal(clf[k], v) for k, v in m.model.state_dict().items())


@pytest.mark.parametrize("name", ["cyclegan", "fgbg_cyclegan"])
def test_cyclegan_identity_loss_is_the_l1_of_each_generator_on_its_own_output_domain(name):
    s, t = _batches()
    assert "loss/identity" not in _method(name, identity=0.0).step(s, t)  # 0: plain GeneSIS-RT
    m = _method(name)  # default 0.5
    m.progress = 0.1
    G, Fi = m.nets["refiner"], m.nets["inverse"]
    with torch.no_grad():  # the generators before this step's update
        want = ((G(t.x) - t.x).abs().mean() + (Fi(s.x) - s.x).abs().mean()).item()
    got = m.step(s, t)["loss/identity"]
    assert got == pytest.approx(want, rel=1e-5)
    assert got > 0.01  # untrained generators are far from the identity


@pytest.mark.parametrize("name", ["cyclegan", "fgbg_cyclegan"])
def test_cyclegan_target_semantic_loss_keeps_the_class_c_gives_the_target_image(name):
    import copy

    import torch.nn.functional as F

    s, t = _batches()
    assert "loss/semantic_target" not in _method(name).step(s, t)  # off by default
    torch.manual_seed(0)
    m = _method(name, semantic_target=1.0)
    torch.manual_seed(0)
    plain = _method(name)  # the same networks, without the term
    m.progress = plain.progress = 0.1
    C = m.model
    with torch.no_grad():  # the networks before this step's update, C on each batch's own statistics
        ref = copy.deepcopy(C)
        pseudo = ref(t.x).argmax(1)
        ref = copy.deepcopy(C)
        want = F.cross_entropy(ref(m.to_input(m.nets["inverse"](m.to_tanh(t.x)))), pseudo).item()
    got = m.step(s, t)["loss/semantic_target"]
    assert got == pytest.approx(want, rel=1e-5)
    plain.step(s, t)
    running = [k for k in C.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert running
    for k in running:  # the term's passes leave C's running statistics alone
        torch.testing.assert_close(C.state_dict()[k], plain.model.state_dict()[k])


def test_fgbg_without_masks_falls_back_to_the_plain_cycle():
    m = _method("fgbg_cyclegan")
    s, t = _batches()
    s.foreground = None
    assert "loss/fg_hue" not in m.step(s, t)


@pytest.mark.parametrize("full_cycle", [False, True])
def test_fgbg_source_cycle_term_is_the_masked_terms_plus_the_full_cycle_when_asked(full_cycle):
    from edgeda.models.gan_utils import cycle_loss, hue_loss

    m = _method("fgbg_cyclegan", full_cycle=full_cycle)
    s, _ = _batches()
    rec = s.x.flip(1) * 0.5  # hue and brightness both changed
    o = m.opts
    want = cycle_loss(rec, s.x, 1 - s.foreground) + o["hue"] / o["cycle"] * hue_loss(rec, s.x, s.foreground)
    if full_cycle:
        want = want + (rec - s.x).abs().mean()
    torch.testing.assert_close(m.source_cycle_loss(rec, s.x, s), want)
    with pytest.raises(Exception, match="full_cycle="):
        _method("fgbg_cyclegan", full_cycle="maybe")


def test_suit_separate_bn_statistics_follow_the_translated_images_only():
    import copy

    s, t = _batches(8)
    stats = {}
    for bn in ("separate", "joint"):
        torch.manual_seed(0)
        m = _method("suit", bn=bn)
        reference = copy.deepcopy(m.model)
        G = copy.deepcopy(m.nets["refiner"])
        with torch.no_grad():  # what the translated batch alone (or the mixed one) does to the statistics
            fake = m.to_input(G(m.to_tanh(s.x)))
            reference(fake if bn == "separate" else torch.cat([s.x, fake]))
        m.step(s, t)
        stats[bn] = assert_running_stats_follow(m.model, reference)
    assert not torch.equal(stats["separate"], stats["joint"])
    with pytest.raises(Exception, match="bn="):
        _method("suit", bn="both")


def test_suit_target_bn_statistics_follow_the_real_target_images_only():
    import copy

    s, t = _batches(8)
    torch.manual_seed(0)
    m = _method("suit", bn="target")
    before = {k: v.clone() for k, v in m.model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    assert before
    m.step(s, t)
    reference = copy.deepcopy(m.model)  # the updated weights, the statistics from before the step
    reference.load_state_dict({**reference.state_dict(), **before})
    with torch.no_grad():
        reference(t.x)  # the real target batch alone
    got, want = m.model.state_dict(), reference.state_dict()
    for k in before:
        torch.testing.assert_close(got[k], want[k])
    assert any(not torch.equal(got[k], before[k]) for k in before)


@pytest.mark.parametrize("objectives", ["per_player", "joint"])
def test_suit_per_player_objectives_give_each_player_only_its_own_terms(objectives):
    import torch.nn.functional as F

    from edgeda.models.norm import frozen_bn_statistics

    s, t = _batches(8)
    torch.manual_seed(0)
    m = _method("suit", objectives=objectives)
    G, C, D = m.nets["refiner"], m.model, m.nets["disc"]
    got, want = {}, {}
    real_update = m.update

    def spy(loss, *names, **kw):
        if "model" in names:  # the G + C step (D has just been updated, as in the method)
            for who, net in (("G", G), ("C", C)):
                got[who] = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True)
            with frozen_bn_statistics(C):  # the paper's split, computed independently
                fake = G(m.to_tanh(s.x))
                refined = m.to_input(fake)
                feats, logits = m._classify(s.x, refined.detach())
                task = F.cross_entropy(logits[:8], s.y) + F.cross_entropy(logits[8:], s.y)
                feats_g, logits_g = m._classify(s.x, refined)
                g_terms = (m.gan(D(fake), True, generator=True) + F.cross_entropy(logits_g[8:], s.y)
                           + F.mse_loss(feats_g[8:], feats_g[:8]))
            want["C"] = torch.autograd.grad(task, list(C.parameters()), allow_unused=True)
            want["G"] = torch.autograd.grad(g_terms, list(G.parameters()))
        real_update(loss, *names, **kw)

    m.update = spy
    m.step(s, t)
    for who in ("G", "C"):
        pairs = [(a, b) for a, b in zip(got[who], want[who]) if a is not None and b is not None]
        assert pairs
        same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in pairs)
        assert same == (objectives == "per_player"), who  # joint: C also minimises content, G also the task CE
    with pytest.raises(Exception, match="objectives="):
        _method("suit", objectives="both")


def test_label2image_phases():
    m = _method("label2image", phase1=0.3, phase2=0.6)
    s, t = _batches(8)
    m.progress = 0.0
    assert set(m.step(s, t)) == {"loss/cls_src"}
    clf = {k: v.clone() for k, v in m.model.state_dict().items()}
    m.progress = 0.4  # phase 2: only G and D, the classifier is the fixed teacher
    assert set(m.step(s, t)) == {"loss/d", "loss/g_adv", "loss/semantic"}
    assert all(torch.equal(clf[k], v) for k, v in m.model.state_dict().items())
    m.progress = 0.8
    assert {"loss/cls_gen", "loss/target_entropy", "loss/semantic"} <= set(m.step(s, t))


def test_pixelda_without_masks_uses_the_whole_image_content_loss():
    from edgeda.models.gan_utils import masked_pairwise_mse

    # the whole-image content loss is the variance of the change: +1 on half of the values costs 1/4
    x = torch.rand(2, 3, 8, 8)
    half = x.clone()
    half[:, :, :4] += 1.0
    assert masked_pairwise_mse(half, x).item() == pytest.approx(0.25, rel=1e-5)
    m = _method("pixelda")
    s, t = _batches()
    s.foreground = None
    refined, refine = [], m.refine
    m.refine = lambda xs: refined.append((xs, refine(xs))) or refined[-1][1]
    got = m.step(s, t)["loss/content"]
    xs, fake = refined[0]
    change = (fake - xs).detach().flatten(1)
    want = change.var(dim=1, unbiased=False).mean().item()  # over every pixel of each image
    assert got == pytest.approx(want, rel=1e-4) and want > 1e-4


def test_exploding_loss_stops_the_run_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from edgeda.methods.suit import SUIT

    orig, calls = SUIT.step, {"n": 0}

    def blow_up(self, s, t):  # at step 3 the content loss weight jumps: a finite but exploding loss
        calls["n"] += 1
        if calls["n"] == 3:
            self.opts = self.opts.replace(content=1e9)
        return orig(self, s, t)

    monkeypatch.setattr(SUIT, "step", blow_up)
    with pytest.raises(TrainingDiverged, match=r"exploded: .* > max_loss 1000 .* iteration 3"):
        _run(tmp_path, "suit", TINY)
    assert (tmp_path / "run" / "checkpoints" / "ckpt-0000002.json").exists()


@pytest.mark.parametrize("method", ["cyclegan", "suit"])
def test_discriminator_augmentation_trains_and_bad_policy_is_refused(tmp_path, method):
    res = _run(tmp_path / "ok", method, {**TINY, "d_augment": "color,translation,cutout"})
    assert Bundle(res.bundle).manifest["training"]["config"]["options"]["d_augment"] == "color,translation,cutout"
    from edgeda.errors import EdgedaError

    with pytest.raises(EdgedaError, match="d_augment"):
        _run(tmp_path / "bad", method, {**TINY, "d_augment": "flip"})
