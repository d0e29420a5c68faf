"""Knowing whether adaptation helped: bootstrap intervals on a few target labels, and the warning
printed when a shipped model may be a negative transfer.

A user rarely has target labels. Confidence-style validators (``entropy``, ``info_max``, ``bnm``)
reward confident alignment whether or not the classes line up, so on their own they cannot tell a
good run of a method from one that swapped classes. Two checks need no labels: how strongly the
shipped model disagrees with the source-only model on the target images, and whether the
validators agree that it beats source-only. When either fails, the user is told to label a few
target images (5-20 per class) and pass them as ``--target-val``.
"""
from __future__ import annotations

import numpy as np
import torch

# validators that look at more than confidence: their sign vs source-only is what the warning reads
CHECKING_VALIDATORS = ("dev", "reverse", "agreement", "source_val")
CONFIDENCE_VALIDATORS = ("entropy", "info_max", "snd", "bnm")


def bootstrap_interval(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item ``values`` (e.g. 0/1 correctness per
    image): resample the items with replacement ``n_boot`` times (Efron & Tibshirani 1993)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    a = (1.0 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def accuracy_interval(n_correct: int, n: int, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of an accuracy measured on ``n`` images of which ``n_correct`` are right."""
    return bootstrap_interval(np.r_[np.ones(int(n_correct)), np.zeros(int(n) - int(n_correct))], level, n_boot, seed)


def confusion_interval(confusion, level: float = 0.95) -> dict:
    """``{"accuracy": a, "low": lo, "high": hi, "level": level, "n": n}`` from a confusion matrix."""
    c = np.asarray(confusion)
    n, k = int(c.sum()), int(np.trace(c))
    lo, hi = accuracy_interval(k, n, level)
    return {"accuracy": k / max(n, 1), "low": lo, "high": hi, "level": level, "n": n}


def disagreement(candidate_logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Fraction of target rows where the candidate's class differs from the source-only model's."""
    return float((candidate_logits.argmax(1) != reference_logits.argmax(1)).float().mean())


def transfer_warning(candidate: dict, reference: dict, disagree: float | None, *, max_disagreement: float = 0.35,
                     margin: float = 1e-3) -> str | None:
    """One plain sentence when the shipped model may be worse than source-only, else None.

    ``candidate`` / ``reference``: validator scores (``score/<name>`` or bare names) of the shipped
    model and of the source-only model; ``disagree``: their target disagreement (see :func:`disagreement`).
    Fires when the shipped model changes more than ``max_disagreement`` of the target predictions,
    or when the validators split on whether it beats source-only."""
    def scores(d):
        return {k.removeprefix("score/"): float(v) for k, v in d.items()
                if isinstance(v, (int, float)) and (k.startswith("score/") or "/" not in k)}

    c, r = scores(candidate), scores(reference)
    votes = {}
    for name in (*CHECKING_VALIDATORS, *CONFIDENCE_VALIDATORS):
        if name in c and name in r and name != "agreement":
            if abs(c[name] - r[name]) > margin:
                votes[name] = c[name] > r[name]
    if "agreement" in c:  # agreement of the reference with itself is 1: a low value is a vote against
        votes["agreement"] = c["agreement"] >= 1.0 - max_disagreement
    better = sorted(k for k, v in votes.items() if v)
    worse = sorted(k for k, v in votes.items() if not v)
    reasons = []
    if disagree is not None and disagree > max_disagreement:
        reasons.append(f"it changes {disagree:.0%} of the source-only model's target predictions")
    if better and worse:
        reasons.append(f"the validators disagree on whether it beats source-only ({', '.join(better)} say yes, "
                       f"{', '.join(worse)} say no)")
    if not reasons:
        return None
    return ("warning: the shipped model may be worse than source-only on the target: " + "; ".join(reasons)
            + ". Label 5-20 target images per class and pass them as --target-val to check (and select) with labels.")


def score_model(net, domains, spec, device="cpu", seed: int = 0, reference_rows=None):
    """(validator scores, target rows) of a trained network on ``domains`` — what the trainer records
    at an evaluation, computed the same way for every ``--method auto`` candidate."""
    from .tasks import task_of
    from .training.evaluate import evaluate_model
    from .training.selection import EvalContext, score_all

    t = task_of(spec)
    per_image = domains.target is not None and not t.dense
    sv = evaluate_model(net, domains.source_val, spec, device, rows=per_image, features=per_image)
    ctx = EvalContext(t.selection_score(sv.scores))
    if per_image:
        ctx.source_logits, ctx.source_features = sv.rows, sv.features
        ctx.source_labels = torch.as_tensor(np.asarray(domains.source_val.labels), dtype=torch.long)
    rows = None
    if domains.target is not None:
        out = evaluate_model(net, domains.target, spec, device, labels=False, rows=True, features=per_image, seed=seed)
        ctx.target_logits, ctx.target_features, rows = out.rows, out.features, out.rows
        ctx.reference_logits = reference_rows
    return score_all(ctx), rows
