"""Losses of the source-free methods, each written once.

``virtual_adversarial_loss`` (the VAT term of 3C-GAN's
clustering regulariser) only needs target images and the model being adapted; SHOT's
information-maximisation terms are :func:`edgeda.scores.information_maximisation_terms`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn



def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(softmax(p) || softmax(q)) over the batch."""
    logp = F.log_softmax(p_logits.float(), 1)
    logq = F.log_softmax(q_logits.float(), 1)
    return (logp.exp() * (logp - logq)).sum(1).mean()


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / (d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1))) + 1e-12)


def virtual_adversarial_loss(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, *, radius: float = 1.0,
                             xi: float = 1e-6, power_iterations: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """KL(C(x) || C(x + r_adv)) with r_adv = radius * unit(g), g found by power iteration (Miyato et al. 2018).

    ``logits`` = C(x) (treated as the fixed target distribution); ``radius`` is in the model's
    normalised input units. The returned loss is differentiable w.r.t. the model parameters.

    >>> loss = virtual_adversarial_loss(clf, x_t, clf(x_t), radius=1.0)
    """
    target = logits.detach()
    d = torch.randn(x.shape, generator=generator).to(x.device)
    for _ in range(power_iterations):
        d = (xi * _unit(d)).requires_grad_(True)
        dist = kl_divergence(target, model(x.detach() + d))
        d = torch.autograd.grad(dist, d)[0].detach()
    r_adv = radius * _unit(d)
    return kl_divergence(target, model(x.detach() + r_adv))
