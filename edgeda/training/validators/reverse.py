"""The ``reverse`` validator."""
from __future__ import annotations

import torch

from ._linear import fit_linear, labeled_source, standardise
from .context import VALIDATORS, EvalContext


@VALIDATORS.register("reverse")
def reverse_validation(ctx: EvalContext, max_n: int = 2000) -> float:
    """Reverse validation (Zhong et al. 2010, as Ganin et al. 2016 used for DANN): a reverse
    classifier (logistic regression on the model's features) is trained on the target images with
    the model's pseudo-labels and scored on the labeled source-validation images (accuracy).
    Can detect: target pseudo-labels that disagree with what the same features mean on source
    (a confident class swap on aligned features). Cannot detect: errors shared by source and
    target, or features that separate the domains (the reverse classifier then transfers badly
    for every candidate, which lowers all scores alike)."""
    fs, _, ys, ft = labeled_source(ctx)
    if ctx.target_logits is None or len(ctx.target_logits) != len(ctx.target_features):
        raise ValueError("needs target predictions for every target feature row")
    fs, ys = fs[:max_n], ys[:max_n]
    ft, pseudo = ft[:max_n], ctx.target_logits[:max_n].argmax(1)
    b, a = standardise(ft, fs)
    k = int(max(ctx.target_logits.shape[1], int(ys.max()) + 1))
    lin = fit_linear(b, pseudo, k)
    with torch.no_grad():
        return float((lin(a.double()).argmax(1) == ys).double().mean())
