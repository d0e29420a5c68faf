"""Attention pooling of a feature map (A-pool, Chen et al., "Contrastive Syn-to-Real
Generalization", ICLR 2021)."""
from __future__ import annotations

import torch


def attention_pool(fmap: torch.Tensor, attention_from: torch.Tensor | None = None) -> torch.Tensor:
    """A-pool: weight each location by its similarity to the global average feature.

    For a map ``v`` (N, C, H, W) with locations ``v_i`` and global average ``v_bar = mean_i v_i``:
    ``a_i = softmax_i(<v_i, v_bar> / sqrt(C))`` and the pooled feature is ``sum_i a_i v_i`` (N, C).
    Locations that agree with the image's dominant content (the object) outweigh background,
    where plain average pooling would mix them in equally.

    ``attention_from`` (same shape as ``fmap``): compute the weights ``a_i`` from this map instead and
    pool ``fmap`` with them. CSG pools the frozen encoder's map of an image with the attention of the
    trained encoder's map of the same image (the attention is computed on the student only and copied
    to the frozen side).

    >>> pooled = attention_pool(torch.randn(8, 64, 4, 4))  # (8, 64)
    """
    v = fmap.float().flatten(2)  # (N, C, L)
    if attention_from is not None and attention_from.shape != fmap.shape:
        raise ValueError(f"attention_from has shape {tuple(attention_from.shape)}, the map {tuple(fmap.shape)}")
    u = v if attention_from is None else attention_from.float().flatten(2)
    u_bar = u.mean(2, keepdim=True)  # (N, C, 1)
    attn = ((u * u_bar).sum(1) / u.shape[1] ** 0.5).softmax(1)  # (N, L); sqrt(C) keeps the softmax from saturating
    return (v * attn.unsqueeze(1)).sum(2)
