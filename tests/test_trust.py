"""Bootstrap intervals, --target-val, the negative-transfer warning and --method auto."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_config
from edgeda.cli import main
from edgeda.training import Trainer
from edgeda.trust import accuracy_interval, bootstrap_interval, disagreement, transfer_warning


def test_bootstrap_interval_covers_the_true_mean():
    rng = np.random.default_rng(0)
    p, n, trials = 0.7, 60, 200
    hits = 0
    for t in range(trials):
        lo, hi = bootstrap_interval(rng.random(n) < p, n_boot=400, seed=t)
        hits += lo <= p <= hi
    assert 0.88 <= hits / trials <= 0.99  # nominal 95% (percentile bootstrap runs a little narrow)
    lo, hi = accuracy_interval(45, 60)
    assert lo < 0.75 < hi and hi - lo > 0.1  # 60 images: a wide interval, as it should be
    with pytest.raises(ValueError):
        bootstrap_interval([])


def test_target_val_selects_and_reports_interval(tmp_path):
    cfg = tiny_config(tmp_path, select="target_val", target_val="handwritten:test")
    res = Trainer(cfg, progress=False, log=None).run()
    assert all("score/target_val" in h for h in res.history)
    best = max(res.history, key=lambda h: (h["score/target_val"], h["iteration"]))["iteration"]
    assert res.metrics["selected_iteration"] == best
    iv = res.metrics["target_val_interval"]
    assert iv["low"] <= iv["accuracy"] <= iv["high"] and iv["n"] > 0
    out = CliRunner().invoke(main, ["eval", str(res.bundle), "--data", "handwritten:test"])
    assert out.exit_code == 0 and "95% bootstrap interval" in out.output


def test_select_target_val_without_the_set_is_an_error(tmp_path):
    res = CliRunner().invoke(main, ["train", "--method", "source_only", "--iters", "2", "--select", "target_val",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "--target-val" in res.output


def test_warning_fires_on_a_planted_class_swap():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (200,), generator=g)
    ref = 10 * torch.nn.functional.one_hot(labels, 10).float()
    swapped_labels = labels.clone()
    for a, b in ((0, 1), (2, 3), (4, 5), (6, 7)):  # a confident swap of four class pairs
        swapped_labels[labels == a], swapped_labels[labels == b] = b, a
    swapped = 10 * torch.nn.functional.one_hot(swapped_labels, 10).float()
    d = disagreement(swapped, ref)
    assert d > 0.5
    # the swap keeps every confidence score but moves the reference's surest predictions: agreement sees it
    from edgeda.training.selection import EvalContext, score_all

    agree = score_all(EvalContext(0.5, target_logits=swapped, reference_logits=ref))["agreement"]
    msg = transfer_warning({"score/info_max": 2.0, "score/agreement": agree}, {"score/info_max": 2.0, "score/agreement": 1.0}, d)
    assert msg is not None and "--target-val" in msg and "surest" in msg
    # less confident and less diverse than source-only on every confidence score: a warning
    msg = transfer_warning({"score/info_max": 1.0, "score/entropy": -2.0}, {"score/info_max": 1.9, "score/entropy": -1.0}, 0.05)
    assert msg is not None and "info_max" in msg
    # validators that split on a source-free adaptation (confidence up, source-val and dev down) are no
    # evidence: no warning, where the first rule warned
    up = ({"score/info_max": 2.0, "score/dev": -2.0, "score/source_val": 0.4, "score/agreement": 0.9},
          {"score/info_max": 1.9, "score/dev": -1.0, "score/source_val": 0.7, "score/agreement": 1.0}, 0.3)
    assert transfer_warning(*up) is None
    assert "dev" in transfer_warning(*up, rule="disagreement_or_split")


def test_method_auto_smoke(tmp_path):
    from edgeda.bundle import load_bundle
    from edgeda.auto import train_auto

    cfg = tiny_config(tmp_path, method="source_only")
    res = train_auto(cfg, methods=("dann",), adapt_methods=("tent",), adapt_iters=2, log=None)
    assert set(res["candidates"]) == {"source_only", "dann", "source_only+tent"}
    chosen = res["candidates"][res["chosen"]]["scores"][res["selector"]]
    assert all(c["scores"].get(res["selector"], -1e9) <= chosen for c in res["candidates"].values())
    assert res["candidates"]["source_only"]["scores"]["agreement"] == 1.0
    manifest = load_bundle(res["bundle"]).manifest
    assert manifest["metrics"]["auto"]["chosen"] == res["chosen"]
    assert json.loads((tmp_path / "run" / "auto.json").read_text())["selector"] == res["selector"]


def test_trainer_warns_when_the_shipped_model_swaps_classes_of_the_reference(tmp_path):
    """A planted swap: the reference is the trained model with two output rows exchanged, so the
    shipped model disagrees with it on every target image of those classes."""
    from edgeda.bundle import load_bundle

    res = Trainer(tiny_config(tmp_path / "a", method="source_only", iters=30, eval_every=30), progress=False, log=None).run()
    b = load_bundle(res.bundle)
    ref = b.module(b.primary)
    head = [m for m in ref.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        perm = torch.arange(head.out_features)
        perm[:6] = torch.tensor([1, 0, 3, 2, 5, 4])
        head.weight.copy_(head.weight[perm]), head.bias.copy_(head.bias[perm])
    logs = []
    cfg = tiny_config(tmp_path / "b", method="source_only", iters=30, eval_every=30)
    out = Trainer(cfg, progress=False, log=logs.append, reference=ref).run()
    assert out.metrics["transfer_warning"] and "--target-val" in out.metrics["transfer_warning"]
    assert sum("warning:" in line for line in logs) == 1
    # the unswapped model as its own reference: no warning
    same = Trainer(tiny_config(tmp_path / "c", method="source_only", iters=30, eval_every=30), progress=False,
                   log=None, reference=load_bundle(res.bundle).module(b.primary)).run()
    assert same.metrics["transfer_warning"] is None
