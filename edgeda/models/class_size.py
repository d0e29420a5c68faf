"""Class-size statistics of source label maps and the constrained multiple-instance size loss of
FCNs in the wild (Hoffman, Wang, Yu & Darrell, "FCNs in the Wild: Pixel-level Adversarial and
Constraint-based Adaptation", arXiv 2016).

For source image i and class c let s_ic be the fraction of its labelled pixels that are c. Over
the source images in which c occurs, the class-size bounds are the ``low`` and ``high`` percentiles
of s_ic: [lo_c, hi_c]. On a target image with softmax predictions p (K, H, W), the predicted
fraction of class c is f_c = mean_pixels p_c; for every class predicted present (the arg-max of at
least one pixel) the size loss is

    L_size = mean over (image, present c) of  max(0, lo_c - f_c) + max(0, f_c - hi_c),

zero inside the bounds; classes never seen in the source have no bounds and add nothing.

>>> stats = ClassSizeBounds(num_classes=11)
>>> stats.observe(source_labels)                  # (N, H, W) long, 255 = ignore
>>> lo, hi = stats.bounds()                       # (K,), (K,)
>>> loss = size_constraint_loss(target_logits, lo, hi)
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.dense import IGNORE_INDEX


def class_fractions(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per image, the fraction of its labelled pixels in each class: (N, H, W) -> (N, K); rows of
    images without a labelled pixel are zero."""
    n = labels.shape[0]
    flat = labels.reshape(n, -1)
    valid = flat != ignore_index
    onehot = torch.zeros(n, num_classes, device=labels.device)
    onehot.scatter_add_(1, torch.where(valid, flat, 0).long(), valid.float())
    return onehot / valid.sum(1, keepdim=True).clamp_min(1).float()


class ClassSizeBounds(nn.Module):
    """The per-image class fractions of the last ``capacity`` source images seen (a ring buffer kept
    in the module's state, so a resumed run keeps its statistics) and the percentile bounds from them."""

    def __init__(self, num_classes: int, capacity: int = 2000, low: float = 0.1, high: float = 0.9):
        super().__init__()
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"class-size percentiles need 0 <= low < high <= 1, not {low} .. {high}")
        self.low, self.high = float(low), float(high)
        self.register_buffer("fractions", torch.zeros(capacity, num_classes))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, labels: torch.Tensor) -> None:
        cap = self.fractions.shape[0]
        f = class_fractions(labels, self.fractions.shape[1]).to(self.fractions)[-cap:]
        idx = (self.seen + torch.arange(len(f), device=f.device)) % cap
        self.fractions[idx] = f
        self.seen += len(f)

    @property
    def count(self) -> int:
        return int(min(int(self.seen), self.fractions.shape[0]))

    @torch.no_grad()
    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) per class; a class absent from every stored image gets (0, 1): no constraint."""
        f = self.fractions[: self.count]
        k = f.shape[1]
        lo, hi = torch.zeros(k, device=f.device), torch.ones(k, device=f.device)
        for c in range(k):
            present = f[:, c][f[:, c] > 0]
            if len(present):
                lo[c] = torch.quantile(present, self.low)
                hi[c] = torch.quantile(present, self.high)
        return lo, hi


def size_constraint_loss(logits: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The constrained-MIL size loss above on target logits (N, K, H, W) with bounds (K,), (K,)."""
    p = logits.float().softmax(1)
    frac = p.flatten(2).mean(2)                                                   # (N, K)
    present = torch.zeros_like(frac, dtype=torch.bool)
    present.scatter_(1, p.argmax(1).flatten(1), True)                             # predicted present
    penalty = (lo.view(1, -1) - frac).clamp_min(0) + (frac - hi.view(1, -1)).clamp_min(0)
    return (penalty * present).sum() / present.sum().clamp_min(1)
