"""The ``dev`` validator."""
from __future__ import annotations

import torch

from ._linear import fit_linear, labeled_source, standardise
from .context import VALIDATORS, EvalContext


@VALIDATORS.register("dev")
def dev(ctx: EvalContext, max_n: int = 2000) -> float:
    """Deep embedded validation (You et al., "Towards Accurate Model Selection in Deep Unsupervised
    Domain Adaptation", ICML 2019), as minus the DEV risk (higher is better).

    A logistic domain classifier on the model's features (source validation vs target) gives the
    density ratio w(x) = (n_s / n_t) p(t|x) / p(s|x) on the source-validation images; the weighted
    losses L_i = w_i * CE_i estimate the target risk, and the control variate
    eta = -Cov(L, w) / Var(w) reduces its variance: R = mean(L) + eta * mean(w) - eta.
    Can detect: a model wrong on the source images that look like the target (a class swap the
    features carry over to source). Cannot detect: errors on target regions with no source
    support, or a swap that lives only on target features; high variance when domains separate.
    """
    fs, ls, ys, ft = labeled_source(ctx)
    fs, ls, ys, ft = fs[:max_n], ls[:max_n], ys[:max_n], ft[:max_n]
    a, b = standardise(fs, ft)
    d = fit_linear(torch.cat([a, b]), torch.cat([torch.zeros(len(a)), torch.ones(len(b))]), 2, weight_decay=1e-2)
    with torch.no_grad():
        lp = d(a.double()).log_softmax(1)
        w = (lp[:, 1] - lp[:, 0]).exp() * (len(a) / len(b))
        loss = torch.nn.functional.cross_entropy(ls.double(), ys, reduction="none")
        wl = w * loss
        var = w.var()
        eta = -(torch.mean((wl - wl.mean()) * (w - w.mean())) / var) if var > 1e-12 else torch.tensor(0.0, dtype=w.dtype)
        risk = wl.mean() + eta * w.mean() - eta
    return -float(risk)
