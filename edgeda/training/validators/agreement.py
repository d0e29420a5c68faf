"""The ``agreement`` validator."""
from __future__ import annotations

import torch

from .context import VALIDATORS, EvalContext, box_agreement, target_probs


@VALIDATORS.register("agreement")
def agreement(ctx: EvalContext, top_fraction: float = 0.3) -> float:
    """Agreement with the source-only model on the target images it is most confident about: the
    fraction of the ``top_fraction`` most confident rows of the reference (per reference class, so
    every class counts) where the candidate predicts the same class. Can detect: a method that moves
    predictions the source-only model was sure of (a class swap introduced by alignment). Cannot
    detect: the reference's own confident errors, which it rewards keeping; it caps the credit for
    fixing them. Needs the reference logits (``edgeda train --method auto`` and the shift suite
    provide them); dense rows work the same way. Detectors: the candidate's average precision at IoU 0.5
    against the boxes the source-only detector is sure of (:func:`box_agreement`)."""
    if ctx.target_detections is not None:
        if ctx.reference_detections is None:
            raise ValueError("needs the source-only detector's target detections")
        return box_agreement(ctx.target_detections, ctx.reference_detections, ctx.classes or [])
    if ctx.reference_logits is None:
        raise ValueError("needs the source-only model's target predictions")
    p = target_probs(ctx)
    ref = ctx.reference_logits.float().softmax(1)
    if ref.shape != p.shape:
        raise ValueError("reference and candidate target rows differ in shape")
    conf, rc = ref.max(1)
    keep = []
    for c in rc.unique():
        idx = torch.nonzero(rc == c).flatten()
        n = max(1, int(round(top_fraction * len(idx))))
        keep.append(idx[conf[idx].argsort(descending=True)[:n]])
    keep = torch.cat(keep)
    return float((p[keep].argmax(1) == rc[keep]).float().mean())
