"""The "easy tasks" of curriculum domain adaptation (Zhang, David & Gong, "Curriculum Domain
Adaptation for Semantic Segmentation of Urban Scenes", ICCV 2017): global label distributions of
images and labels of landmark superpixels, and the loss that asks a segmenter to follow them.

- Label distribution of an image: the fraction of its labelled pixels in each class,
  q_c = #{pixels of class c} / #{labelled pixels} (255 = ignore;
  :func:`~edgeda.models.class_size.class_fractions`). A segmenter's predicted distribution is
  p_c = mean over pixels of softmax(logits)_c (:func:`predicted_label_distribution`).
- :class:`LabelDistributionRegressor`: multinomial logistic regression from the global mean of a
  feature map to q (the paper's logistic-regression estimate of target label distributions).
- :func:`label_distribution_kl`: KL(q || p) = sum_c q_c (log q_c - log p_c), per image, averaged.
- :func:`slic_superpixels`: SLIC superpixels (scikit-image) of a batch of images in [0, 1].
- :func:`landmark_labels`: per superpixel, the majority predicted class and its mean probability;
  the most confident ``fraction`` of each class's superpixels are landmarks and all their pixels
  take the majority class, every other pixel 255.

>>> q_t = LabelDistributionRegressor(576, 19)(features_t).softmax(1)      # (N, 19)
>>> kl = label_distribution_kl(q_t, predicted_label_distribution(logits_t))
>>> segments = slic_superpixels(images_01, n_segments=100)                 # (N, H, W) long
>>> y_sp = landmark_labels(segments, logits_t.softmax(1), fraction=0.6)    # (N, H, W), 255 elsewhere
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingDependency
from ..data.dense import IGNORE_INDEX
from .class_size import class_fractions

__all__ = ["LabelDistributionRegressor", "class_fractions", "label_distribution_kl", "landmark_labels",
           "predicted_label_distribution", "slic_superpixels", "soft_cross_entropy"]


class LabelDistributionRegressor(nn.Module):
    """Feature map (N, C, h, w) -> label-distribution logits (N, K): a linear layer on the global
    mean of the map (multinomial logistic regression; softmax of the output is the estimate)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.float().mean(dim=(2, 3)))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_c q_c log softmax(logits)_c, averaged over rows: the regressor's loss against true
    distributions q (N, K) whose rows sum to 1."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def predicted_label_distribution(logits: torch.Tensor) -> torch.Tensor:
    """p_c = mean over pixels of softmax(logits)_c: (N, K, H, W) -> (N, K), rows summing to 1."""
    return logits.float().softmax(1).flatten(2).mean(2)


def label_distribution_kl(q: torch.Tensor, p: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(q || p) = sum_c q_c (log q_c - log p_c) per row of (N, K) distributions, mean over rows;
    0 log 0 = 0, and p is clamped at ``eps`` so an absent predicted class gives a finite penalty."""
    q, p = q.float(), p.float()
    terms = torch.where(q > 0, q * (torch.log(q.clamp_min(eps)) - torch.log(p.clamp_min(eps))), torch.zeros_like(q))
    return terms.sum(1).mean()


def slic_superpixels(images: torch.Tensor, n_segments: int = 100, compactness: float = 10.0) -> torch.Tensor:
    """SLIC superpixels (Achanta et al. 2012, scikit-image's ``slic``) of images (N, C, H, W) with
    values in [0, 1] (C = 3: in CIELAB; C = 1: on the grey value) -> (N, H, W) long segment ids
    starting at 0 in every image. Runs on the CPU in NumPy."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise MissingDependency("curriculum DA's landmark superpixels need scikit-image (pip install scikit-image)") from None
    arr = images.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64)
    out = np.empty((arr.shape[0],) + arr.shape[2:], np.int64)
    for i, img in enumerate(arr):
        if img.shape[0] == 3:
            out[i] = slic(img.transpose(1, 2, 0), n_segments=n_segments, compactness=compactness, start_label=0,
                          channel_axis=-1)
        else:
            out[i] = slic(img[0], n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=None)
    return torch.from_numpy(out).to(images.device)


@torch.no_grad()
def landmark_labels(segments: torch.Tensor, probs: torch.Tensor, fraction: float = 0.6) -> torch.Tensor:
    """Pixel labels from landmark superpixels: (N, H, W) segment ids and (N, K, H, W) class
    probabilities -> (N, H, W) long, 255 off the landmarks.

    For superpixel s: its class c_s is the majority of the per-pixel arg-max predictions, its
    confidence the mean over its pixels of the probability of c_s. Over the batch, the
    ceil(``fraction`` * n_c) most confident of the n_c superpixels of each class c are landmarks;
    every pixel of a landmark takes c_s (also those whose own arg-max differs)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"landmark fraction must be in (0, 1], not {fraction}")
    n, k = probs.shape[:2]
    seg = segments.long().flatten(1)                                              # (N, HW)
    offsets = torch.cumsum(torch.cat([seg.new_zeros(1), seg.max(1).values[:-1] + 1]), 0)
    ids = (seg + offsets[:, None]).reshape(-1)                                    # unique over the batch
    count = int(ids.max()) + 1
    p = probs.float().permute(0, 2, 3, 1).reshape(-1, k)                          # (N*HW, K)
    votes = torch.zeros(count, k, device=p.device).index_add_(0, ids, F.one_hot(p.argmax(1), k).float())
    prob_sum = torch.zeros(count, k, device=p.device).index_add_(0, ids, p)
    size = votes.sum(1)
    present = size > 0
    majority = votes.argmax(1)
    conf = prob_sum.gather(1, majority[:, None])[:, 0] / size.clamp_min(1)
    keep = torch.zeros(count, dtype=torch.bool, device=p.device)
    for c in range(k):
        members = torch.nonzero(present & (majority == c))[:, 0]
        if len(members):
            top = conf[members].argsort(descending=True)[: math.ceil(fraction * len(members) - 1e-9)]
            keep[members[top]] = True
    per_segment = torch.where(keep, majority, torch.full_like(majority, IGNORE_INDEX))
    return per_segment[ids].view(n, *segments.shape[1:])
