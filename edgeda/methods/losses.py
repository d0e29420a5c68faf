"""Losses shared by several methods. Each is one function, written once."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import gradient_reversal


def domain_adversarial_loss(
    discriminator: nn.Module, source_features: torch.Tensor, target_features: torch.Tensor, coeff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DANN's domain loss through gradient reversal (Ganin & Lempitsky 2015).

    L_d = BCE(D(R_c(f_s)), 1) + BCE(D(R_c(f_t)), 0), where R_c is identity forward and -c * grad
    backward: D minimises L_d while the feature extractor maximises it, in one backward pass.
    Returns (loss, domain accuracy of D). Shapes: features (N, d).

    >>> d = DomainClassifier(256); loss, acc = domain_adversarial_loss(d, fs, ft, coeff=0.3)
    """
    f = torch.cat([source_features, target_features])
    logits = discriminator(gradient_reversal(f, coeff)).float()
    labels = torch.cat([torch.ones(len(source_features)), torch.zeros(len(target_features))]).to(logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    acc = ((logits > 0).float() == labels).float().mean()
    return loss, acc


def entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Per-sample Shannon entropy (nats) of softmax(logits) along ``dim``."""
    logp = F.log_softmax(logits.float(), dim=dim)
    return -(logp.exp() * logp).sum(dim)
