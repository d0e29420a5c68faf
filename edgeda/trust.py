"""Knowing whether adaptation helped: bootstrap intervals on a few target labels, and the warning
printed when a shipped model may be a negative transfer.

A user rarely has target labels. Confidence-style validators (``entropy``, ``info_max``, ``bnm``)
reward confident alignment whether or not the classes line up, so on their own they cannot tell a
good run of a method from one that swapped classes. The warning combines label-free checks of the
shipped model against the source-only model (:data:`WARNING_CHECKS`) into a rule
(:data:`WARNING_RULES`); ``benchmarks/warning.py`` measures on the stored shift-suite runs how often
each rule fires on candidates below vs above source-only, and :data:`WARNING_RULE` is its pick. When
it fires, the user is told to label a few target images (5-20 per class) and pass them as
``--target-val``.
"""
from __future__ import annotations

import numpy as np
import torch

# validators that look at more than confidence, and those that reward confidence and diversity
CHECKING_VALIDATORS = ("dev", "reverse", "agreement", "source_val")
CONFIDENCE_VALIDATORS = ("entropy", "info_max", "snd", "bnm", "info_max_prior")
# the confidence scores whose fall says "less sure and less diverse" (SND rises when outputs blur together)
FALLING_CONFIDENCE = ("entropy", "info_max", "bnm", "info_max_prior")


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


def bare_scores(d: dict) -> dict[str, float]:
    """The numeric validator scores of a record, by bare name (``score/entropy`` -> ``entropy``)."""
    return {k.removeprefix("score/"): float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (k.startswith("score/") or "/" not in k)}


# -- the checks a warning rule combines: (candidate scores, reference scores, disagreement) -> reason or None
def _check_disagreement(c, r, disagree, *, max_disagreement=0.35, margin=1e-3):
    if disagree is not None and disagree > max_disagreement:
        return f"it changes {disagree:.0%} of the source-only model's target predictions"
    return None


def _check_split(c, r, disagree, *, max_disagreement=0.35, margin=1e-3):
    votes = {n: c[n] > r[n] for n in (*CHECKING_VALIDATORS, *CONFIDENCE_VALIDATORS)
             if n in c and n in r and n != "agreement" and abs(c[n] - r[n]) > margin}
    if "agreement" in c:  # agreement of the reference with itself is 1: a low value is a vote against
        votes["agreement"] = c["agreement"] >= 1.0 - max_disagreement
    better, worse = sorted(k for k, v in votes.items() if v), sorted(k for k, v in votes.items() if not v)
    if better and worse:
        return (f"the validators disagree on whether it beats source-only ({', '.join(better)} say yes, "
                f"{', '.join(worse)} say no)")
    return None


def _check_agreement(c, r, disagree, *, max_disagreement=0.35, margin=1e-3, floor=0.5):
    if "agreement" in c and c["agreement"] < floor:
        return (f"it changes most of the target predictions the source-only model is surest of "
                f"(agreement {c['agreement']:.2f})")
    return None


def _check_confidence(c, r, disagree, *, max_disagreement=0.35, margin=1e-3):
    have = [n for n in FALLING_CONFIDENCE if n in c and n in r]
    if have and all(c[n] < r[n] - margin for n in have):
        return f"it is less confident and less diverse on the target than source-only ({', '.join(have)} all lower)"
    return None


def _check_majority(c, r, disagree, *, max_disagreement=0.35, margin=1e-3):
    if "majority" in c and "majority" in r and c["majority"] < r["majority"] - margin:
        return "the other candidates' vote agrees more with source-only than with it (majority lower)"
    return None


def _check_consistency(c, r, disagree, *, max_disagreement=0.35, margin=1e-3):
    if "aug_consistency" in c and "aug_consistency" in r and c["aug_consistency"] < r["aug_consistency"] - margin:
        return "its predictions are less stable than source-only's under flips, rescaling and colour change"
    return None


WARNING_CHECKS = {"disagreement": _check_disagreement, "split": _check_split, "agreement": _check_agreement,
                  "confidence": _check_confidence, "majority": _check_majority, "consistency": _check_consistency}
# candidate rules (any of its checks fires -> warn), compared by benchmarks/warning.py on stored shift-suite runs
WARNING_RULES = {
    "disagreement_or_split": ("disagreement", "split"),  # the first rule: fired on nearly every adapted model
    "disagreement": ("disagreement",),
    "split": ("split",),
    "agreement": ("agreement",),
    "confidence": ("confidence",),
    "agreement_or_confidence": ("agreement", "confidence"),
    "majority": ("majority",),
    "consistency": ("consistency",),
    "agreement_or_confidence_or_majority": ("agreement", "confidence", "majority"),
}
# the rule when the caller names none; each task names its own (``Task.warning_rule``), which
# benchmarks/warning.py recommends per shift suite (results in benchmarks/results/warning.json)
WARNING_RULE = "agreement_or_confidence"


def warning_reasons(candidate: dict, reference: dict, disagree: float | None, rule: str = WARNING_RULE,
                    **kw) -> list[str]:
    """The reasons ``rule``'s checks give for doubting that ``candidate`` beats ``reference`` (empty: none).
    Checks whose validators are missing from the scores stay silent."""
    c, r = bare_scores(candidate), bare_scores(reference)
    out = []
    for name in WARNING_RULES[rule]:
        why = WARNING_CHECKS[name](c, r, disagree, **kw)
        if why:
            out.append(why)
    return out


def transfer_warning(candidate: dict, reference: dict, disagree: float | None, *, max_disagreement: float = 0.35,
                     margin: float = 1e-3, rule: str = WARNING_RULE) -> str | None:
    """One plain sentence when the label-free evidence says the shipped model may be worse than
    source-only, else None.

    ``candidate`` / ``reference``: validator scores (``score/<name>`` or bare names) of the shipped
    model and of the source-only model; ``disagree``: their target disagreement (see :func:`disagreement`).
    The default rule fires when the shipped model changes most of the target predictions the
    source-only model is surest of (``agreement`` below 0.5: a class swap), or when it is less
    confident and less diverse than source-only on every confidence score available (``entropy``,
    ``info_max``, ``bnm``, ``info_max_prior``). Validators splitting on a source-free method is not
    evidence: source-validation scores fall for any model adapted away from the source. Segmentation
    passes its own rule (``Task.warning_rule``): ``consistency``, a pick whose predictions are less stable
    than source-only's under flips, rescaling and colour change (``aug_consistency`` lower)."""
    reasons = warning_reasons(candidate, reference, disagree, rule, max_disagreement=max_disagreement, margin=margin)
    if not reasons:
        return None
    return ("warning: the shipped model may be worse than source-only on the target: " + "; ".join(reasons)
            + ". Label 5-20 target images per class and pass them as --target-val to check (and select) with labels.")
