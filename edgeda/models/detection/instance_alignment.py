"""Instance-level domain alignment for detectors (Chen et al., "Domain Adaptive Faster R-CNN for Object
Detection in the Wild", CVPR 2018): features pooled under boxes, a domain classifier on each pooled
instance through gradient reversal, and the consistency between image- and instance-level domain
predictions. ``dann``'s detection path composes these pieces (option ``instance``).

* :func:`roi_align` -- RoIAlign (He et al., "Mask R-CNN", ICCV 2017, the ``aligned`` form: a pixel's
  centre sits at +0.5) by bilinear sampling with :func:`torch.nn.functional.grid_sample`: each box is
  cut into ``P x P`` bins and each bin averages ``r x r`` evenly placed samples.
* :func:`assign_levels` -- which feature level a box is pooled from: the coarsest whose stride is at
  most half the box's side ``sqrt(w h)`` (so the box spans at least two cells), else the finest (the
  role of FPN's level rule, Lin et al. 2017, for a pyramid without a canonical 224-pixel level).
* :class:`InstanceDomainClassifier` -- pooled ``(C, P, P)`` features -> one domain logit (an MLP, as
  the paper's instance classifier on the RoI head's features).
* :func:`instance_domain_loss` -- L_ins = mean_j BCE(D_ins(R(r_j)), d_j), d = 1 source, 0 target.
* :func:`consistency_loss` -- L_cst = mean_j | mean_{u,v} p_i^(u,v) - p_{i,j} |, the image-level domain
  probability of instance j's image (averaged over the locations of the level it was pooled from)
  against its instance-level probability.

>>> pooled, image_of = roi_align(feature, [boxes_a, boxes_b], stride=16.0)   # (M, C, 2, 2), (M,)
>>> loss, acc, logits = instance_domain_loss(InstanceDomainClassifier(C * 4), pooled, domain, coeff=0.5)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import gradient_reversal


def roi_align(feature: torch.Tensor, boxes: list[torch.Tensor], stride, output_size: int = 2,
              sampling: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool ``feature`` (N, C, h, w) under each image's ``boxes[i]`` ((n_i, 4) ``x1 y1 x2 y2`` input pixels;
    the map is the input at 1/``stride``, a number or ``(stride_y, stride_x)``) to (sum n_i, C, P, P), with
    the image index of each row.

    A sample at input pixel coordinate x reads the map at x / stride - 0.5 in index units (pixel
    centres at integers), bilinearly; samples beyond the map read its border."""
    n, c, h, w = feature.shape
    sy, sx = (float(stride), float(stride)) if isinstance(stride, (int, float)) else (float(stride[0]), float(stride[1]))
    rows, image_of = [], []
    p, r = int(output_size), int(sampling)
    # sample offsets within a box, as fractions of its size: bin k, sample s at (k + (s + 0.5) / r) / P
    frac = ((torch.arange(p, device=feature.device, dtype=torch.float32)[:, None]
             + (torch.arange(r, device=feature.device, dtype=torch.float32)[None, :] + 0.5) / r) / p).reshape(-1)
    for i, b in enumerate(boxes):
        b = b.to(feature.device, torch.float32).reshape(-1, 4)
        if not len(b):
            continue
        xs = b[:, 0:1] + frac[None] * (b[:, 2:3] - b[:, 0:1])  # (n, P r) input pixels
        ys = b[:, 1:2] + frac[None] * (b[:, 3:4] - b[:, 1:2])
        # grid_sample (align_corners=False) puts -1 at the left edge of pixel 0: u = x / stride - 0.5 maps to
        # (2 u + 1) / w - 1 = 2 x / (stride w) - 1
        gx = 2 * xs / (sx * w) - 1
        gy = 2 * ys / (sy * h) - 1
        grid = torch.stack([gx[:, None, :].expand(-1, gy.shape[1], -1), gy[:, :, None].expand(-1, -1, gx.shape[1])], -1)
        src = feature[i:i + 1].expand(len(b), -1, -1, -1)
        s = F.grid_sample(src, grid.to(feature.dtype), mode="bilinear", padding_mode="border", align_corners=False)
        rows.append(s.reshape(len(b), c, p, r, p, r).mean((3, 5)))  # (n, C, P, P): average each bin's samples
        image_of.append(torch.full((len(b),), i, dtype=torch.long, device=feature.device))
    if not rows:
        return feature.new_zeros(0, c, p, p), torch.zeros(0, dtype=torch.long, device=feature.device)
    return torch.cat(rows), torch.cat(image_of)


def assign_levels(boxes: torch.Tensor, strides: list[float]) -> torch.Tensor:
    """Level index per box (n,): the coarsest level whose stride is at most half of ``sqrt(w h)``, the
    first of equal strides; boxes smaller than two cells of the finest level go to the finest."""
    side = ((boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)).sqrt()
    level = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    best = torch.full((len(boxes),), -math.inf, device=boxes.device)
    for i, s in enumerate(strides):
        ok = (s <= side / 2) & (s > best)
        level[ok], best[ok] = i, float(s)
    return level


class InstanceDomainClassifier(nn.Module):
    """Pooled instance features (M, C, P, P) -> one domain logit each (M,): flatten, then
    Linear(hidden), ReLU, Linear(hidden), ReLU, Linear(1) (the paper's instance classifier has two
    1024-unit layers on the RoI head's features)."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(True),
                                 nn.Linear(hidden, hidden), nn.ReLU(True), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled).squeeze(1)


def instance_domain_loss(classifier: nn.Module, pooled: torch.Tensor, domain: torch.Tensor, coeff: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_ins = mean_j BCE(D(R_c(r_j)), d_j) with R_c the gradient reversal (identity forward, -c x gradient
    backward). ``pooled`` (M, C, P, P), ``domain`` (M,) 1 source / 0 target. Returns (loss, accuracy, logits)."""
    logits = classifier(gradient_reversal(pooled, coeff)).float()
    loss = F.binary_cross_entropy_with_logits(logits, domain.float())
    acc = ((logits > 0).float() == domain.float()).float().mean()
    return loss, acc, logits


def consistency_loss(image_prob: torch.Tensor, instance_prob: torch.Tensor) -> torch.Tensor:
    """L_cst = mean_j |p_img(j) - p_ins(j)|: ``image_prob`` (M,) the image-level domain probability of each
    instance's image (its level's locations averaged), ``instance_prob`` (M,) the instance's own."""
    if not len(instance_prob):
        return instance_prob.new_zeros(())
    return (image_prob - instance_prob).abs().mean()
