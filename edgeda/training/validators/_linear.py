"""What DEV and reverse validation share: labeled source rows, joint standardisation, a logistic regression."""
from __future__ import annotations

import torch

from .context import EvalContext


def labeled_source(ctx: EvalContext):
    if ctx.source_features is None or ctx.source_labels is None or ctx.source_logits is None or len(ctx.source_labels) < 2:
        raise ValueError("needs per-image labeled source-validation features (classification only)")
    if ctx.target_features is None or len(ctx.target_features) < 2:
        raise ValueError("needs target features")
    return ctx.source_features.float(), ctx.source_logits.float(), ctx.source_labels.long(), ctx.target_features.float()


def standardise(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    both = torch.cat([a, b])
    mu, sd = both.mean(0), both.std(0).clamp_min(1e-6)
    return (a - mu) / sd, (b - mu) / sd


def fit_linear(x: torch.Tensor, y: torch.Tensor, k: int, weight_decay: float = 1e-3, steps: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS (deterministic: zero init, full batch)."""
    lin = torch.nn.Linear(x.shape[1], k).double()
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    x, y = x.double(), y.long()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin
