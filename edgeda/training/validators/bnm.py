"""The ``bnm`` validator."""
from __future__ import annotations

import torch

from .context import VALIDATORS, EvalContext, target_probs


@VALIDATORS.register("bnm")
def bnm(ctx: EvalContext, max_n: int = 2000) -> float:
    """Batch nuclear-norm maximisation (Cui et al., "Towards Discriminability and Diversity", CVPR
    2020) as a score: ||P||_* / N of the target probability matrix P (N, K). Large when predictions
    are confident and spread over many classes. Can detect: collapse to few classes, uncertain
    outputs. Cannot detect: confident, diverse but wrongly aligned classes (a class swap scores the same)."""
    p = target_probs(ctx)[:max_n]
    return float(torch.linalg.svdvals(p.double()).sum() / p.shape[0])
