"""Small reusable layers: gradient reversal and its coefficient schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


class _GradientReversalFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def gradient_reversal(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-coeff`` backward (Ganin & Lempitsky, ICML 2015).

    >>> f = torch.randn(4, 8, requires_grad=True)
    >>> gradient_reversal(f, 0.5).sum().backward()
    >>> bool((f.grad == -0.5).all())
    True
    """
    return _GradientReversalFn.apply(x, coeff)


class GradientReversal(nn.Module):
    """Module form of :func:`gradient_reversal`; the coefficient is passed per call (no hidden state)."""

    def forward(self, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        return gradient_reversal(x, coeff)


def dann_coefficient(progress: float, gamma: float = 10.0, max_value: float = 1.0, warmup: float = 0.0) -> float:
    """Ganin et al. (JMLR 2016) schedule: lambda_p = max * (2 / (1 + exp(-gamma p)) - 1), p in [0, 1].

    Starts at 0 so the task is learned before the features are pushed to be domain-invariant.
    With ``warmup`` w > 0 the coefficient stays 0 until progress w and the ramp runs over the rest:
    p' = (p - w) / (1 - w).
    """
    p = min(max((progress - warmup) / max(1.0 - warmup, 1e-8), 0.0), 1.0)
    return max_value * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
