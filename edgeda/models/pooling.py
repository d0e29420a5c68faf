"""Attention pooling of a feature map (A-pool, Chen et al., "Contrastive Syn-to-Real
Generalization", ICLR 2021)."""
from __future__ import annotations

import torch


def attention_pool(fmap: torch.Tensor) -> torch.Tensor:
    """A-pool: weight each location by its similarity to the global average feature.

    For a map ``v`` (N, C, H, W) with locations ``v_i`` and global average ``v_bar = mean_i v_i``:
    ``a_i = softmax_i(<v_i, v_bar> / sqrt(C))`` and the pooled feature is ``sum_i a_i v_i`` (N, C).
    Locations that agree with the image's dominant content (the object) outweigh background,
    where plain average pooling would mix them in equally.

    >>> pooled = attention_pool(torch.randn(8, 64, 4, 4))  # (8, 64)
    """
    v = fmap.float().flatten(2)  # (N, C, L)
    v_bar = v.mean(2, keepdim=True)  # (N, C, 1)
    attn = ((v * v_bar).sum(1) / v.shape[1] ** 0.5).softmax(1)  # (N, L); sqrt(C) keeps the softmax from saturating
    return (v * attn.unsqueeze(1)).sum(2)
