"""Prediction entropy and information maximisation, written once for every part that needs them.

Training losses (SHOT, TENT, entropy terms), label-free validators, the on-device collapse monitor
and the trainer's logs all call these; nothing else in the package computes an entropy of class
probabilities.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def probs_entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of class probabilities ``p`` along ``dim``."""
    return -(p * p.clamp_min(1e-12).log()).sum(dim)


def entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Per-sample Shannon entropy (nats) of softmax(logits) along ``dim``."""
    logp = F.log_softmax(logits.float(), dim=dim)
    return -(logp.exp() * logp).sum(dim)


def information_maximisation(p: torch.Tensor) -> float:
    """H(mean_i p_i) - mean_i H(p_i) of class probabilities ``p`` (N, K): the mutual information
    between input and prediction (RIM, Krause et al. 2010; SHOT), high when predictions are
    confident per sample and diverse over the set. The ``info_max`` validator and ``edgeda
    adapt``'s monitor use it."""
    return float(probs_entropy(p.mean(0)) - probs_entropy(p).mean())


def information_maximisation_terms(logits: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """SHOT's IM loss terms (Liang et al. 2020): (L_ent, L_div) with L_ent = E_x[H(p(x))] (each
    prediction confident) and L_div = H(E_x[p(x)]) (predictions diverse over the batch); minimise
    ``L_ent - L_div``. ``logits``: (N, K)."""
    p = F.softmax(logits.float(), 1)
    mean_p = p.mean(0)
    return entropy(logits).mean(), -(mean_p * torch.log(mean_p + eps)).sum()


def softmax_stats(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, confidence = max softmax probability, entropy in nats) per row, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    p = np.exp(logp)
    return p.argmax(1), p.max(1), -(p * logp).sum(1)


def kl_to_prior(mean_p: torch.Tensor, prior) -> float:
    """KL(mean_p || prior) of a predicted class marginal against a class prior (K,) (normalised here):
    the diversity term of information maximisation measured against a known class mix rather than
    uniformity (the ``info_max_prior`` validator, ``edgeda adapt``'s selection of the written state)."""
    pi = torch.as_tensor(prior, dtype=torch.float64).flatten()
    pi = (pi / pi.sum()).clamp_min(1e-12)
    m = torch.as_tensor(mean_p, dtype=torch.float64).flatten()
    return float((m * (m.clamp_min(1e-12).log() - pi.log())).sum())
