"""Label-free validators on crafted predictions, --select with them, and the selection benchmark's scoring."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from edgeda.bundle import load_bundle
from edgeda.training import Trainer
from edgeda.training.selection import VALIDATORS, EvalContext, score_all, selector_names


def ctx(logits):
    return EvalContext(0.5, target_logits=torch.as_tensor(logits, dtype=torch.float32))


def one_hot_logits(labels, k, scale=50.0):
    return scale * torch.nn.functional.one_hot(torch.as_tensor(labels), k).float()


def test_new_validators_registered_and_selectable():
    assert {"entropy", "info_max", "snd"} <= set(VALIDATORS)
    assert {"entropy", "info_max", "snd"} <= set(selector_names())


def test_entropy_prefers_confident_predictions():
    confident, uniform = one_hot_logits([0, 1, 2, 3], 4), torch.zeros(4, 4)
    assert VALIDATORS.get("entropy")(ctx(confident)) == pytest.approx(0.0, abs=1e-6)
    assert VALIDATORS.get("entropy")(ctx(uniform)) == pytest.approx(-math.log(4), rel=1e-6)


def test_info_max_wants_confident_and_diverse():
    im = VALIDATORS.get("info_max")
    diverse = one_hot_logits([0, 1, 2, 3] * 5, 4)  # H(mean) = log 4, mean H = 0
    collapsed = one_hot_logits([2] * 20, 4)  # confident but one class: 0
    uniform = torch.zeros(20, 4)  # log 4 - log 4 = 0
    assert im(ctx(diverse)) == pytest.approx(math.log(4), rel=1e-5)
    assert im(ctx(collapsed)) == pytest.approx(0.0, abs=1e-5)
    assert im(ctx(uniform)) == pytest.approx(0.0, abs=1e-5)


def test_snd_worked_value_for_tight_clusters():
    # 40 confident predictions, 10 per class: each row has 9 neighbours at cosine 1 and 30 at 0;
    # at temperature 0.05 the row softmax is uniform over the 9 (others weigh e^-20): entropy log 9.
    logits = one_hot_logits([i % 4 for i in range(40)], 4)
    assert VALIDATORS.get("snd")(ctx(logits)) == pytest.approx(math.log(9), abs=1e-4)
    # identical (uniform) predictions are the densest possible: log 39 -- SND's known blind spot,
    # a collapsed model scores high; scattered predictions score lower than tight clusters
    assert VALIDATORS.get("snd")(ctx(torch.zeros(40, 4))) == pytest.approx(math.log(39), abs=1e-4)
    g = torch.Generator().manual_seed(0)
    scattered = torch.randn(40, 64, generator=g) * 5
    assert VALIDATORS.get("snd")(ctx(scattered)) < math.log(9)


def test_validators_skip_without_target():
    scores = score_all(EvalContext(0.7))
    assert scores == {"source_val": 0.7}


def test_select_snd_ships_best_scored_checkpoint_and_records_it(tmp_path):
    cfg = tiny_config(tmp_path, method="source_only", select="snd", iters=6, eval_every=2)
    res = Trainer(cfg, progress=False, log=None).run()
    scores = {h["iteration"]: h["score/snd"] for h in res.history}
    best = max(scores, key=lambda i: (scores[i], i))
    manifest = load_bundle(res.bundle).manifest
    assert manifest["training"]["selection"] == {"selector": "snd", "iteration": best}
    assert res.metrics["selected_iteration"] == best and res.metrics["score/snd"] == scores[best]


def _selection_bench():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "selection.py"
    spec = importlib.util.spec_from_file_location("selection_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_selection_benchmark_scoring():
    sb = _selection_bench()
    assert sb.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sb.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert sb.ranks([3.0, 1.0, 3.0]) == [2.5, 1.0, 2.5]
    hist = [{"iteration": i, "target_test_acc": acc, "score/good": acc, "score/bad": -acc}
            for i, acc in [(1, 0.5), (2, 0.8), (3, 0.6)]]
    runs = [{"method": "m", "seed": 0, "history": hist}]
    good, bad, last = (sb.within_runs(runs, s) for s in ("good", "bad", "last"))
    assert good["picked_target_acc"] == 0.8 and good["regret_points"] == 0 and good["spearman_mean"] == pytest.approx(1)
    assert bad["picked_target_acc"] == 0.5 and bad["regret_points"] == 30.0
    assert last["picked_target_acc"] == 0.6


def test_trainer_scores_the_dense_validators_and_selects_by_aug_consistency(tmp_path):
    """Every evaluation fills the augmented passes and the source label marginal, so ``aug_consistency``
    and ``info_max_prior`` are logged and selectable; ``majority`` needs other candidates and is left out."""
    cfg = tiny_config(tmp_path, method="source_only", select="aug_consistency", iters=4, eval_every=2)
    res = Trainer(cfg, progress=False, log=None).run()
    for h in res.history:
        assert 0.0 <= h["score/aug_consistency"] <= 1.0 and "score/info_max_prior" in h and "score/majority" not in h
    scores = {h["iteration"]: h["score/aug_consistency"] for h in res.history}
    best = max(scores, key=lambda i: (scores[i], i))
    assert load_bundle(res.bundle).manifest["training"]["selection"] == {"selector": "aug_consistency", "iteration": best}
