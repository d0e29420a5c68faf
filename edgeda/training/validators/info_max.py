"""The ``info_max`` validator."""
from __future__ import annotations

from ...scores import information_maximisation
from .context import VALIDATORS, EvalContext, target_probs


@VALIDATORS.register("info_max")
def info_max(ctx: EvalContext) -> float:
    """Information maximisation: H(mean_i p_i) - mean_i H(p_i) (mutual information between input
    and prediction, as in RIM/SHOT): confident per image and diverse over the target set."""
    return information_maximisation(target_probs(ctx))
