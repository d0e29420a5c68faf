"""Streaming metrics: ``update`` per batch, ``compute`` at the end, ``merge``/``all_reduce`` across ranks.

Evaluation memory never grows with the number of images: a metric keeps a few running sums (a
confusion matrix, or per-image depth error sums), never the predictions.

* :class:`ConfusionMeter` -- one confusion matrix serves classification accuracy and the
  segmentation scores (IoU per class, mIoU, pixel accuracy); targets equal to ``ignore_index``
  (255) are left out.
* :class:`DepthMeter` -- the standard monocular-depth set of Eigen, Puhrsch and Fergus (NIPS 2014):
  abs rel, sq rel, RMSE, RMSE log and the threshold accuracies delta < 1.25, 1.25^2, 1.25^3, on
  valid pixels only (truth > 0, so sparse LiDAR-style maps work). Each image's errors are averaged
  over its valid pixels and the images are averaged, as in the usual KITTI evaluation; an image
  with no valid pixel does not count.

    >>> m = ConfusionMeter(19); m.update(logits.argmax(1), masks); scores = segmentation_scores(m.matrix, classes)
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.dense import IGNORE_INDEX


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        buf = t.to(dev)
        dist.all_reduce(buf)
        t.copy_(buf.to(t.device))
    return t


class ConfusionMeter:
    """``matrix[i, j]``: number of samples (pixels) of true class i predicted as j."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` and ``target``: integer tensors of the same shape (N,) or (N, H, W)."""
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        k = self.num_classes
        idx = target[keep] * k + pred[keep].clamp(0, k - 1)
        self.matrix += torch.bincount(idx, minlength=k * k).view(k, k)

    def merge(self, other: "ConfusionMeter") -> "ConfusionMeter":
        self.matrix += other.matrix
        return self

    def all_reduce(self) -> "ConfusionMeter":
        _all_reduce_(self.matrix)
        return self


def _names(classes, k):
    return list(classes) if classes else [str(i) for i in range(k)]


def classification_scores(matrix, classes=None) -> dict:
    conf = np.asarray(matrix, np.int64)
    k = conf.shape[0]
    support = conf.sum(1)
    per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1), np.nan)
    n = int(conf.sum())
    names = _names(classes, k)
    return {
        "accuracy": float(np.trace(conf) / n) if n else float("nan"),
        "n": n,
        "per_class": {names[i]: (None if np.isnan(a) else float(a)) for i, a in enumerate(per_class)},
        "confusion": conf.tolist(),
    }


def segmentation_scores(matrix, classes=None) -> dict:
    """IoU_c = TP / (TP + FP + FN) per class; mIoU averages the classes labelled in the data scored
    (those with truth pixels in the whole split). A class with no truth pixels has no IoU (None), even
    where the model predicts it: a class the data never labels cannot be scored, and counting it as 0
    would make the mean depend on which unlabelled classes a model happens to predict.
    ``n_classes_labelled`` is the number of classes in the mean."""
    conf = np.asarray(matrix, np.int64)
    k = conf.shape[0]
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    support = conf.sum(1)
    labelled = support > 0
    iou = np.where(labelled, tp / np.maximum(union, 1), np.nan)
    n = int(conf.sum())
    names = _names(classes, k)
    return {
        "miou": float(np.nanmean(iou)) if labelled.any() else float("nan"),
        "n_classes_labelled": int(labelled.sum()),
        "pixel_accuracy": float(tp.sum() / n) if n else float("nan"),
        "mean_class_accuracy": float(np.nanmean(np.where(labelled, tp / np.maximum(support, 1), np.nan)))
        if labelled.any() else float("nan"),
        "n_pixels": n,
        "per_class_iou": {names[i]: (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)},
        "per_class_truth_pixels": {names[i]: int(support[i]) for i in range(k)},
        "confusion": conf.tolist(),
    }


DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


class DepthMeter:
    """Per-image depth errors on valid pixels (truth > 0), summed over images."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None):
        self.min_depth, self.max_depth = min_depth, max_depth
        self.sums = torch.zeros(len(DEPTH_KEYS), dtype=torch.float64)
        self.images = torch.zeros((), dtype=torch.float64)
        self.pixels = torch.zeros((), dtype=torch.float64)

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        """``pred``, ``truth``: (N, H, W) or (N, 1, H, W) metres; truth 0 = invalid."""
        pred = pred.detach().reshape(truth.shape[0], -1).double().cpu()
        truth = truth.detach().reshape(truth.shape[0], -1).double().cpu()
        valid = truth > 0
        if self.max_depth is not None:
            valid &= truth <= self.max_depth
        for p, g, v in zip(pred, truth, valid):
            if not bool(v.any()):
                continue
            p, g = p[v].clamp_min(self.min_depth), g[v]
            ratio = torch.maximum(p / g, g / p)
            err = p - g
            log_err = p.log() - g.log()
            vals = torch.stack([(err.abs() / g).mean(), (err.pow(2) / g).mean(), err.pow(2).mean().sqrt(),
                                log_err.pow(2).mean().sqrt(), (ratio < 1.25).double().mean(),
                                (ratio < 1.25 ** 2).double().mean(), (ratio < 1.25 ** 3).double().mean()])
            self.sums += vals
            self.images += 1
            self.pixels += float(v.sum())

    def merge(self, other: "DepthMeter") -> "DepthMeter":
        self.sums += other.sums
        self.images += other.images
        self.pixels += other.pixels
        return self

    def all_reduce(self) -> "DepthMeter":
        for t in (self.sums, self.images, self.pixels):
            _all_reduce_(t)
        return self

    def compute(self) -> dict:
        n = float(self.images)
        out = {k: (float(v) / n if n else float("nan")) for k, v in zip(DEPTH_KEYS, self.sums)}
        out["n_images"] = int(n)
        out["n_pixels"] = int(self.pixels)
        return out
