"""Class-aware sampling of labeled source images: per-image weights from per-image class counts.

A method that wants its source images drawn other than uniformly returns a weighting function
from :meth:`~edgeda.methods.base.Method.source_sampling`; the trainer counts each source image's
labelled pixels per class once (:func:`class_counts`; for classification the one-hot labels) and
hands the function the (N, K) count matrix; the stream then draws images i.i.d. with the weights
it returns, deterministically per seed and resumably (see the streams).

Rare-class sampling (Hoyer, Dai & Van Gool, "DAFormer", CVPR 2022): with f_c the share of all
labelled source pixels that belong to class c,

    P(c) = softmax_c((1 - f_c) / T),

draw a class c ~ P, then uniformly one of the images that contain c. Drawing an image directly
with weight w_i = sum_c P(c) [i contains c] / #{images containing c} is the same distribution.

    >>> counts = class_counts(source_domain, num_classes)          # (N, K)
    >>> w = rare_class_weights(counts, temperature=0.01)           # (N,), sums to 1
"""
from __future__ import annotations

import numpy as np


def rare_class_probabilities(freq: np.ndarray, temperature: float = 0.01) -> np.ndarray:
    """P(c) = softmax((1 - f_c) / T) over the classes of ``freq`` (shares of pixels, (K,))."""
    if temperature <= 0:
        raise ValueError(f"the rare-class sampling temperature must be positive, not {temperature}")
    z = (1.0 - np.asarray(freq, np.float64)) / float(temperature)
    z = np.exp(z - z.max())
    return z / z.sum()


def rare_class_weights(counts: np.ndarray, temperature: float = 0.01, min_share: float = 0.0,
                       return_classes: bool = False):
    """Per-image sampling weights (N,) summing to 1 from per-image class pixel counts (N, K).

    An image *contains* class c when more than ``min_share`` of its labelled pixels are c (DAFormer
    asks for more than 3000 pixels of a 1914x1052 GTA label map, i.e. a share of about 0.0015).
    Classes no image contains get no probability; an image containing no class is never drawn.
    ``return_classes``: also return P(c) (K,) over the classes (0 for those never contained).
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 2 or len(counts) == 0:
        raise ValueError(f"class counts must be a non-empty (N, K) array, not shape {counts.shape}")
    per_image = counts.sum(1, keepdims=True)
    contains = counts > min_share * per_image
    contains &= counts > 0
    images_with = contains.sum(0)
    usable = images_with > 0
    if not usable.any():
        raise ValueError("no source image has labelled pixels: cannot sample by class")
    freq = counts.sum(0) / max(counts.sum(), 1.0)
    probs = np.zeros(counts.shape[1])
    probs[usable] = rare_class_probabilities(freq[usable], temperature)
    weights = (contains * (probs / np.maximum(images_with, 1))).sum(1)
    weights /= weights.sum()
    return (weights, probs) if return_classes else weights


def class_counts(domain, num_classes: int) -> np.ndarray:
    """(N, K) int64 labelled pixels of each class in each image of a labeled domain: a dense domain's
    masks (ignore 255 and ids >= K not counted; an unreadable sample counts nothing), or a
    classification domain's labels as one-hot rows."""
    labels = getattr(domain, "labels", None)
    if labels is not None and getattr(domain, "kind", None) != "dense":
        out = np.zeros((len(labels), num_classes), np.int64)
        out[np.arange(len(labels)), np.asarray(labels, np.int64)] = 1
        return out
    masks = getattr(domain, "masks", None)
    out = np.zeros((len(domain), num_classes), np.int64)
    for i in range(len(domain)):
        if masks is not None:
            m = masks[i]
        else:
            try:
                m = domain.sample(i).mask
            except ValueError:
                continue
            if m is None:
                continue
        m = np.asarray(m).ravel()
        out[i] = np.bincount(m[m < num_classes], minlength=num_classes)[:num_classes]
    return out
