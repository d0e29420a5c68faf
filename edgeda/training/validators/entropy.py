"""The ``entropy`` validator."""
from __future__ import annotations

from ...scores import probs_entropy
from .context import VALIDATORS, EvalContext, target_probs


@VALIDATORS.register("entropy")
def entropy(ctx: EvalContext) -> float:
    """Negative mean entropy of the target predictions: confident models score higher (Morerio et al. 2018)."""
    return -float(probs_entropy(target_probs(ctx)).mean())
