"""Unsupervised model selection: validators that score a checkpoint without target labels.

Each validator maps what the trainer can see at an evaluation (source validation accuracy, the
model's outputs and features on the unlabeled target adaptation split, its outputs on augmented
copies of a fixed target sample, other candidates' outputs) to a score, higher is better. One
validator is one module of this package, registered by name in :data:`VALIDATORS`. Every registered
validator is computed at every evaluation and logged as ``score/<name>`` in ``metrics.jsonl``, so
benchmarks can check how well each one's pick matches the (hidden) target accuracy. ``--select
NAME`` ships the checkpoint with the best score; ``last`` ships the end.

Confidence scores (``entropy``, ``info_max``, ``snd``, ``bnm``) reward confident, clustered
outputs whether or not the classes line up, so a method that aligns the wrong classes can score
best. ``dev`` and ``reverse`` check the target predictions against labeled source images through
the model's features; ``agreement`` checks them against a source-only model. Built for dense
outputs, where DEV and reverse validation have no per-image source rows: ``aug_consistency``
(stable under flips, rescaling and colour change), ``majority`` (agrees with the other candidates'
vote) and ``info_max_prior`` (information maximisation against the source label marginal, since
background rightly dominates frames). A validator that cannot score a context (no target data, no
per-image source labels for a dense task, no reference model, no other candidates) raises
``ValueError`` and is left out of that evaluation's record. For detectors, whose outputs are boxes
rather than class rows, ``agreement`` and ``majority`` compare boxes (:func:`box_agreement`:
average precision against the boxes the other detector is sure of) and ``source_val`` scores the
source; the others cannot score them.
"""
from __future__ import annotations

import re

from .context import VALIDATORS, EvalContext, box_agreement, label_agreement, label_confusion, mean_iou, target_probs

# registration order is the order of ``edgeda methods --validators`` and of every score record
from . import source_val, entropy, info_max, snd, bnm, dev, reverse, agreement  # noqa: E402,F401  (isort: skip)
from . import aug_consistency, majority, info_max_prior  # noqa: E402,F401  (isort: skip)

__all__ = ["VALIDATORS", "EvalContext", "box_agreement", "describe", "label_agreement", "label_confusion", "mean_iou", "score_all",
           "score_candidates", "selector_names", "target_probs"]


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.(?=\s+[A-Z(`]|$)")


#: ``--select`` choices that are not validators, with what they ship.
OTHER_SELECTORS = {
    "last": "The last evaluated iteration (no selection).",
    "target_val": "The task's score on the few labeled target images given with --target-val (5-20 per class): "
                  "selection with target labels, the user's own small validation set, never the test split.",
}


def describe(name: str, full: bool = False) -> str:
    """The first sentence of a selector's description on one line, or with ``full`` the whole of it
    (paragraphs of the docstring joined; what ``edgeda methods --validators`` prints)."""
    if name in OTHER_SELECTORS:
        return OTHER_SELECTORS[name]
    doc = " ".join((VALIDATORS.get(name).__doc__ or "").split())
    if full:
        return doc
    m = _SENTENCE_END.search(doc)
    return doc[: m.end()] if m else doc


def selector_names() -> list[str]:
    """``last``, every validator, and ``target_val`` (a small labeled target set, ``--target-val``)."""
    return ["last", *VALIDATORS, *(n for n in OTHER_SELECTORS if n != "last")]


def score_all(ctx: EvalContext) -> dict[str, float]:
    """Every validator's score of ``ctx``; those that cannot score it are left out."""
    out = {}
    for name, fn in VALIDATORS.items():
        try:
            out[name] = float(fn(ctx))
        except (ValueError, RuntimeError):
            continue  # a validator that cannot score this context (e.g. no target data) is left out
    return out


def score_candidates(contexts: dict[str, EvalContext]) -> dict[str, dict[str, float]]:
    """Every validator's score of each candidate, where the candidates were evaluated on the same target
    rows (same domain, same seed): each context receives the other candidates' target logits as its
    ``peer_logits`` (what ``majority`` votes with; a detector's ``peer_detections``), then
    :func:`score_all` scores it."""
    out = {}
    for name, ctx in contexts.items():
        ctx.peer_logits = {o: c.target_logits for o, c in contexts.items()
                           if o != name and c.target_logits is not None}
        ctx.peer_detections = {o: c.target_detections for o, c in contexts.items()
                               if o != name and c.target_detections is not None}
        out[name] = score_all(ctx)
    return out
