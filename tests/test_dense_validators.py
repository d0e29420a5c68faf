"""Validators built for dense outputs (aug_consistency, majority, info_max_prior), the calibrated transfer
warning, and ``--method auto`` on a tiny segmentation pair."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeda.data.dense import ArrayDenseDomain
from edgeda.tasks.spec import TaskSpec
from edgeda.training.model_eval import augmentation_confusion, label_marginal
from edgeda.training.selection import VALIDATORS, EvalContext, label_confusion, score_all, score_candidates, selector_names
from edgeda.training.validators.info_max_prior import information_maximisation_prior
from edgeda.trust import WARNING_RULE, WARNING_RULES, transfer_warning, warning_reasons

K = 4


def onehot(labels, k=K, scale=20.0):
    return scale * torch.nn.functional.one_hot(torch.as_tensor(labels), k).float()


def truth(n=400, seed=0):
    """Pixel labels with a dominant background: 70 % class 0, the rest spread over 1..K-1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(1, K, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.7, torch.zeros_like(y), y)


def noisy(y, frac, seed):
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < frac
    return torch.where(flip, torch.randint(0, K, (len(y),), generator=g), y)


def test_new_validators_registered_selectable_and_listed():
    from click.testing import CliRunner

    from edgeda.cli import main

    assert {"aug_consistency", "majority", "info_max_prior"} <= set(VALIDATORS) & set(selector_names())
    out = CliRunner().invoke(main, ["methods", "--validators", "--json"]).output
    rows = json.loads(out)
    assert list(rows) == selector_names()  # every --select choice, target_val and last included
    for name, fn in VALIDATORS.items():  # every validator with its whole description
        assert rows[name] == " ".join((fn.__doc__ or "").split()) and len(rows[name]) > 40, name
    assert "target labels" in rows["target_val"]


def test_aug_consistency_ranks_a_stable_model_above_a_collapsed_one():
    stable = {a: label_confusion(y, noisy(y, 0.05, i), K) for i, (a, y) in enumerate(
        [("flip", truth()), ("rescale", truth(seed=1)), ("colour", truth(seed=2))])}
    collapsed = {a: label_confusion(torch.zeros(400), torch.zeros(400), K) for a in ("flip", "rescale", "colour")}
    s = score_all(EvalContext(0.5, augmented_confusion=stable, dense=True))["aug_consistency"]
    c = score_all(EvalContext(0.5, augmented_confusion=collapsed, dense=True))["aug_consistency"]
    assert c == pytest.approx(1 / K)  # perfectly stable, but one class of K
    assert s > 0.8 > c
    assert "aug_consistency" not in score_all(EvalContext(0.5))  # no augmented passes: left out


class _PixelModel(torch.nn.Module):
    """Per-pixel classes from colour alone: equivariant to flips by construction."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, K, 1)
        with torch.no_grad():
            self.conv.weight.copy_(3.0 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


class _LeftRightModel(torch.nn.Module):
    """Class 0 on the left half of every frame, class 1 on the right: no image content at all."""

    def forward(self, x):
        n, _, h, w = x.shape
        out = torch.zeros(n, K, h, w)
        out[:, 0, :, : w // 2] = 5.0
        out[:, 1, :, w // 2:] = 5.0
        return out + 0 * x.mean()


def test_aug_consistency_maps_a_flip_back_exactly():
    rng = np.random.default_rng(0)
    dom = ArrayDenseDomain("t", rng.integers(0, 255, (6, 8, 12, 3), dtype=np.uint8), classes=list("abcd"))
    spec = TaskSpec(num_classes=K, classes=list("abcd"), task="segmentation", image_size=(8, 12))
    conf = augmentation_confusion(_PixelModel(), dom, spec, seed=0)
    flip = conf["flip"]
    assert float(flip.sum()) == 6 * 8 * 12 and float(flip.sum() - flip.trace()) == 0  # every pixel back in place
    assert float(conf["rescale"].sum()) < 6 * 8 * 12  # only the crop's region is compared
    lr = augmentation_confusion(_LeftRightModel(), dom, spec, seed=0)["flip"]
    assert float(lr.trace()) == 0  # flipped back, left and right swap: no pixel agrees
    again = augmentation_confusion(_PixelModel(), dom, spec, seed=0)
    assert all(torch.equal(conf[a], again[a]) for a in conf)  # same seed, same copies


def test_flips_are_checked_only_where_training_treats_them_as_label_preserving():
    from edgeda.training.model_eval import consistency_augmentations

    assert consistency_augmentations(mirror_invariant=True) == ("flip", "rescale", "colour")
    assert "flip" not in consistency_augmentations(mirror_invariant=True, hflip=False)  # digits, text
    assert "flip" not in consistency_augmentations(mirror_invariant=False)  # a mirrored digit or sign is another class


def test_majority_ranks_the_consensus_above_a_collapsed_candidate():
    y = truth()
    cands = {"perfect": onehot(y), "a": onehot(noisy(y, 0.2, 1)), "b": onehot(noisy(y, 0.2, 2)),
             "collapsed": onehot(torch.zeros_like(y))}
    scores = score_candidates({n: EvalContext(0.5, target_logits=z, dense=True) for n, z in cands.items()})
    assert scores["perfect"]["majority"] > scores["a"]["majority"] > scores["collapsed"]["majority"]
    # classification: accuracy against the vote
    cls = score_candidates({n: EvalContext(0.5, target_logits=z) for n, z in cands.items()})
    assert cls["perfect"]["majority"] == pytest.approx(1.0, abs=0.1) and cls["collapsed"]["majority"] < 0.8
    # outside a comparison of several candidates it cannot score
    with pytest.raises(ValueError):
        VALIDATORS.get("majority")(EvalContext(0.5, target_logits=onehot(y), peer_logits={"a": onehot(y)}))
    assert "majority" not in score_all(EvalContext(0.5, target_logits=onehot(y)))


def test_majority_vote_counts_votes_and_breaks_ties_by_summed_probability():
    from edgeda.training.validators.majority import majority_vote

    z = lambda rows: torch.tensor(rows, dtype=torch.float32).log()  # noqa: E731
    a = z([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    b = z([[0.5, 0.4, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    c = z([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]])
    # row 0: 2 votes for class 0; row 1: one vote each, class 1 has the most probability (1.2); row 2: 2 for class 1
    assert majority_vote([a, b, c]).tolist() == [0, 1, 1]
    # more summed probability never beats a vote more: class 2 (1.1998) loses to class 0's two votes (1.1001)
    e = z([[1e-4, 1e-4, 0.9998], [0.3, 0.3, 0.4], [0.3, 0.3, 0.4]])
    assert majority_vote([a, b, e])[0].item() == 0
    # the same as counting on every row, with ties everywhere (two peers, random classes)
    g = torch.Generator().manual_seed(0)
    peers = [torch.randn(4000, 5, generator=g) for _ in range(2)]
    votes = sum(torch.nn.functional.one_hot(p.argmax(1), 5).double() for p in peers)
    soft = sum(p.softmax(1).double() for p in peers) / 3
    assert torch.equal(majority_vote(peers), (votes + soft).argmax(1))


def test_info_max_prior_equals_the_formula_and_prefers_the_source_mix():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    pi = torch.tensor([0.5, 0.3, 0.2])
    m = [0.4, 0.5, 0.1]
    kl = sum(a * math.log(a / b) for a, b in zip(m, [0.5, 0.3, 0.2]))
    h = [-sum(v * math.log(v) for v in row) for row in p.tolist()]
    expected = -kl - sum(h) / 2
    ctx = EvalContext(0.5, target_logits=p.log(), source_prior=pi)
    assert VALIDATORS.get("info_max_prior")(ctx) == pytest.approx(expected, abs=1e-6)
    # a uniform prior: info_max minus log K
    u = information_maximisation_prior(p, torch.ones(3))
    assert u == pytest.approx(score_all(EvalContext(0.5, target_logits=p.log()))["info_max"] - math.log(3), abs=1e-5)
    # perfect (background-dominated, like the source) > uniform class use > collapsed onto background
    y = truth()
    prior = torch.bincount(y, minlength=K).double() / len(y)
    perfect = VALIDATORS.get("info_max_prior")(EvalContext(0.5, target_logits=onehot(y), source_prior=prior))
    spread = VALIDATORS.get("info_max_prior")(EvalContext(0.5, target_logits=onehot(torch.arange(400) % K), source_prior=prior))
    collapsed = VALIDATORS.get("info_max_prior")(EvalContext(0.5, target_logits=onehot(torch.zeros_like(y)), source_prior=prior))
    assert perfect > spread and perfect > collapsed
    assert "info_max_prior" not in score_all(EvalContext(0.5, target_logits=onehot(y)))  # no prior: left out


def test_label_marginal_from_the_source_confusion():
    pi = label_marginal({"confusion": [[6, 2], [1, 1]]})
    assert pi.tolist() == pytest.approx([0.8, 0.2])
    assert label_marginal({}) is None


REF = {"entropy": -0.8, "info_max": 1.4, "bnm": 0.07, "agreement": 1.0, "source_val": 0.78, "reverse": 0.66, "dev": -0.24}


def test_warning_fires_on_a_below_source_pick_and_not_on_a_clearly_better_one():
    worse = {"entropy": -2.1, "info_max": 0.6, "bnm": 0.02, "agreement": 0.2, "source_val": 0.2, "reverse": 0.1, "dev": -2.0}
    # a source-free adaptation that gained: confidence up, source-validation and reverse down (they always
    # fall for a model adapted away from the source), most confident predictions kept
    better = {"entropy": -0.4, "info_max": 1.9, "bnm": 0.09, "agreement": 0.93, "source_val": 0.46, "reverse": 0.39, "dev": -0.45}
    assert transfer_warning(worse, REF, 0.85).startswith("warning: the shipped model may be worse than source-only")
    assert transfer_warning(better, REF, 0.28) is None
    assert transfer_warning({f"score/{k}": v for k, v in better.items()}, {f"score/{k}": v for k, v in REF.items()}, 0.3) is None
    # the first rule fired on this clearly better pick: the validators "split"
    assert warning_reasons(better, REF, 0.28, "disagreement_or_split")
    # a confident class swap (same confidence, agreement low): only agreement sees it
    swap = {**REF, "agreement": 0.1}
    msg = transfer_warning(swap, REF, 0.9)
    assert msg and "surest" in msg and "--target-val" in msg
    assert WARNING_RULE in WARNING_RULES


def _warning_script():
    spec = importlib.util.spec_from_file_location("warning_bench", Path(__file__).parent.parent / "benchmarks" / "warning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_warning_calibration_reads_dense_records(tmp_path):
    mod = _warning_script()
    worse = {"entropy": -2.1, "info_max": 0.6, "bnm": 0.02, "agreement": 0.2}
    better = {"entropy": -0.4, "info_max": 1.9, "bnm": 0.09, "agreement": 0.93}
    recs = [{"target": f"t{i}", "seed": 0, "candidates": {
        "source_only@init": {"scores": REF, "target": 0.5},
        "dacs@init": {"scores": better, "target": 0.6}, "dann@init": {"scores": worse, "target": 0.3}}} for i in range(3)]
    (tmp_path / "dense.json").write_text(json.dumps(recs))
    records = mod.load_records([tmp_path / "dense.json"])
    res = mod.calibrate(records)
    r = res["rules"][WARNING_RULE]
    assert r["below"] == {"n": 3, "fired": 3, "rate": 1.0} and r["above"]["fired"] == 0
    assert res["rules"]["confidence"]["precision_below"] == 1.0
    assert res["by_selector"]["info_max"]["picks"] == 3
    assert res["per_suite"]["dense"]["pairs"] == 6 and res["per_suite"]["dense"]["task"] is None


def test_segmentation_warns_on_a_pick_less_stable_than_source_only():
    from edgeda.tasks import task_of

    rule = task_of("segmentation").warning_rule
    assert rule in WARNING_RULES and task_of("classification").warning_rule == WARNING_RULE
    ref = {**REF, "aug_consistency": 0.80}
    shaky = {**REF, "entropy": -0.4, "info_max": 1.9, "aug_consistency": 0.62}  # more confident, less stable
    steady = {**REF, "aug_consistency": 0.85}
    msg = transfer_warning(shaky, ref, 0.2, rule=rule)
    assert msg and "less stable" in msg
    assert transfer_warning(steady, ref, 0.2, rule=rule) is None
    assert transfer_warning(shaky, ref, 0.2) is None  # the classification rule sees a more confident pick


def _tiny_scenes(tmp_path):
    """A few frames of digitscenes (labeled source) and handwritten-scenes (unlabeled target, labeled test),
    rendered small and stored as .npz: the embedded pair at smoke-test size."""
    from edgeda.data.builtin import BUILTIN_DOMAINS

    out = {}
    for key, name, split, n, labeled in (("source", "digitscenes", "train", 16, True),
                                         ("target", "handwritten-scenes", "adapt", 8, False),
                                         ("test", "handwritten-scenes", "test", 8, True)):
        dom = BUILTIN_DOMAINS.get(name)(split, size=(32, 64), n=n)
        arrays = {"x": dom.images}
        if labeled:
            arrays["y"], arrays["classes"] = dom.masks, np.array(dom.classes)
        np.savez(tmp_path / f"{key}.npz", **arrays)
        out[key] = str(tmp_path / f"{key}.npz")
    return out


def test_method_auto_segmentation_smoke(tmp_path, one_torch_thread):
    from edgeda.bundle import load_bundle
    from edgeda.config import make_config
    from edgeda.auto import DEFAULT_DENSE_SELECTOR, DENSE_REFERENCE, train_auto

    d = _tiny_scenes(tmp_path)
    cfg = make_config(None, dict(method="source_only", source=d["source"], target=d["target"], target_test=d["test"],
                                 task="segmentation", iters=2, eval_every=2, checkpoint_every=2, batch_size=2,
                                 image_size=[32, 64], backbone="lraspp", backbone_kwargs={"width": 0.25},
                                 out=str(tmp_path / "run"), device="cpu", seed=0))
    logs = []
    res = train_auto(cfg, methods=("dann", "no_such_method"), adapt_iters=2, log=logs.append)
    assert any("skipping no_such_method" in line for line in logs)
    assert set(res["candidates"]) == {DENSE_REFERENCE, "dann@init", "source_only+tent"}
    assert res["selector"] == DEFAULT_DENSE_SELECTOR
    tent = load_bundle(res["candidates"]["source_only+tent"]["bundle"]).manifest["adaptation"]
    assert tent["method"] == "tent" and tent["parent"]["manifest_sha256"]  # the source-only bundle, adapted on the device
    for c in res["candidates"].values():
        assert {"aug_consistency", "info_max_prior", "agreement", "source_val"} <= set(c["scores"])
        assert 0.0 <= c["target_test"] <= 1.0  # the test mIoU, reported only
    manifest = load_bundle(res["bundle"]).manifest
    auto = manifest["metrics"]["auto"]
    assert auto["chosen"] == res["chosen"] and set(auto["candidates"]) == set(res["candidates"])
    assert all(auto["candidates"][n]["scores"] == res["candidates"][n]["scores"] for n in res["candidates"])
    if res["chosen"] == DENSE_REFERENCE:  # nothing beat continued source-only training: said so
        assert "no candidate beats" in res["transfer_warning"]


def test_method_auto_default_validator_gives_way_when_it_cannot_rank(tmp_path, one_torch_thread, monkeypatch):
    """A default that needs more candidates than the run has falls back to the next; a named one is refused."""
    from edgeda import auto
    from edgeda.config import make_config
    from edgeda.errors import EdgedaError

    d = _tiny_scenes(tmp_path)
    kw = dict(method="source_only", source=d["source"], target=d["target"], task="segmentation", iters=1, eval_every=1,
              checkpoint_every=1, batch_size=2, image_size=[32, 64], backbone="lraspp", backbone_kwargs={"width": 0.25},
              device="cpu", seed=0)
    monkeypatch.setattr(auto, "DEFAULT_DENSE_SELECTOR", "majority")
    logs = []
    res = auto.train_auto(make_config(None, dict(kw, out=str(tmp_path / "a"))), methods=(), adapt_methods=(), log=logs.append)
    assert set(res["candidates"]) == {auto.DENSE_REFERENCE} and res["selector"] == auto.SELECTOR_FALLBACK["majority"]
    assert any("majority cannot rank 1 candidates" in line for line in logs)
    with pytest.raises(EdgedaError, match="'majority' cannot score"):
        auto.train_auto(make_config(None, dict(kw, out=str(tmp_path / "b"), select="majority")), methods=(),
                        adapt_methods=(), log=None)


def test_the_shipped_defaults_are_what_the_stored_suites_chose():
    """edgeda's default validators are set by hand from the stored suite results: they must agree."""
    import json
    from pathlib import Path

    from edgeda import auto

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    shipped = json.loads((results / "dense_shifts.json").read_text())["summary"]["as_shipped"]
    # the dense suite's rule on the candidates --method auto ranks (its own list), and what that stored run used
    assert shipped["recommended_validator"] == shipped["validator"] == auto.DEFAULT_DENSE_SELECTOR
    assert set(shipped["candidates"]) == {auto.DENSE_REFERENCE, *(f"{m}@init" for m in auto.DENSE_AUTO_METHODS),
                                          *(f"source_only+{m}" for m in auto.DENSE_AUTO_ADAPT)}
    assert json.loads((results / "shifts.json").read_text())["summary"]["recommended_validator"] == auto.DEFAULT_SELECTOR


def test_method_auto_depth_skips_what_cannot_adapt_depth_and_ranks_by_source_validation(tmp_path, one_torch_thread):
    """Depth has no class rows for the validators and no on-device method: auto leaves out the candidates that
    cannot adapt depth, says so, and ranks by source validation (the end of the fallback chain)."""
    from edgeda.auto import DENSE_REFERENCE, train_auto
    from edgeda.config import make_config
    from edgeda.data.builtin import BUILTIN_DOMAINS

    paths = {}
    for key, split, n, labeled in (("source", "train", 12, True), ("target", "photo", 6, False), ("test", "photo-test", 6, True)):
        dom = BUILTIN_DOMAINS.get("synscenes")(split, size=(32, 64), n=n)
        arrays = {"x": dom.images, **({"depth": dom.depth.astype(np.float32)} if labeled else {})}
        np.savez(tmp_path / f"{key}.npz", **arrays)
        paths[key] = str(tmp_path / f"{key}.npz")
    cfg = make_config(None, dict(method="source_only", source=paths["source"], target=paths["target"], target_test=paths["test"],
                                 task="depth", iters=2, eval_every=2, checkpoint_every=2, batch_size=2, image_size=[32, 64],
                                 backbone="lraspp", backbone_kwargs={"width": 0.25}, out=str(tmp_path / "run"), device="cpu"))
    logs = []
    res = train_auto(cfg, log=logs.append)
    assert any("skipping tent (it does not adapt depth models)" in line for line in logs)
    assert set(res["candidates"]) == {DENSE_REFERENCE, "dann@init"}
    assert res["selector"] == "source_val" and any("ranking by source_val" in line for line in logs)
    assert res["chosen"] == max(res["candidates"], key=lambda n: (res["candidates"][n]["scores"]["source_val"], n == DENSE_REFERENCE))
    assert res["candidates"]["dann@init"]["target_test"] > 0  # abs rel, reported only


def test_method_auto_run_again_reuses_finished_candidates_and_continues_an_interrupted_one(tmp_path, one_torch_thread):
    from edgeda.auto import DENSE_REFERENCE, train_auto
    from edgeda.config import make_config

    d = _tiny_scenes(tmp_path)
    base = dict(method="source_only", source=d["source"], target=d["target"], target_test=d["test"], task="segmentation",
                iters=4, eval_every=2, checkpoint_every=2, batch_size=2, image_size=[32, 64], backbone="lraspp",
                backbone_kwargs={"width": 0.25}, out=str(tmp_path / "run"), device="cpu", seed=0)
    first = train_auto(make_config(None, base), methods=("dann",), adapt_iters=2, log=None)
    cands = tmp_path / "run" / "candidates"
    # the dann candidate was interrupted after its first checkpoint: its bundle and its record of it are gone
    import shutil

    shutil.rmtree(cands / "dann@init" / "model.edgeda")
    marker = json.loads((cands / "dann@init.auto.json").read_text())
    (cands / "dann@init.auto.json").write_text(json.dumps({**marker, "bundle": None}))
    for c in (cands / "dann@init" / "checkpoints").glob("ckpt-0000004.*"):
        c.unlink()
    logs = []
    again = train_auto(make_config(None, base), methods=("dann",), adapt_iters=2, log=logs.append)
    assert any(f"{DENSE_REFERENCE} was made with these settings" in line for line in logs)
    assert any("source_only+tent was made with these settings" in line for line in logs)
    assert any("continuing dann@init from where an earlier run stopped" in line for line in logs)
    assert not any(line.startswith("auto: training") for line in logs)
    for name in (DENSE_REFERENCE, "source_only+tent"):  # reused: the same bundle, the same scores
        assert again["candidates"][name]["scores"] == first["candidates"][name]["scores"]
    assert (cands / "dann@init" / "model.edgeda" / "manifest.json").is_file()
    # other settings: every candidate is made again
    logs = []
    train_auto(make_config(None, {**base, "iters": 2, "eval_every": 2}), methods=("dann",), adapt_iters=2, log=logs.append)
    assert not any("made with these settings" in line or "continuing" in line for line in logs)
    assert sum(line.startswith("auto: training") for line in logs) == 3
    # the same settings, but images removed from the target folder (file): made again too
    with np.load(d["target"]) as z:
        np.savez(d["target"], x=z["x"][:6])
    logs = []
    train_auto(make_config(None, {**base, "iters": 2, "eval_every": 2}), methods=("dann",), adapt_iters=2, log=logs.append)
    assert sum(line.startswith("auto: training") for line in logs) == 3
    assert any("auto: adapting source-only with tent" in line for line in logs)
