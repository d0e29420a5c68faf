"""Collapse monitoring and rollback: a device adapting on its own has nobody watching it.

:func:`prediction_stats` summarises a model's predictions on unlabeled target images (class
histogram, its entropy, mean confidence and entropy, agreement with the shipped model).
:class:`CollapseMonitor` compares each check against the shipped model's statistics and says
whether the run has collapsed:

* non-finite outputs or weights (NaN / inf);
* the predicted-class histogram collapsing: the top class takes more than
  ``max(max_top_fraction, min(0.99, 1.5 x the shipped top share), shipped top share + 0.01)``
  of the predictions, or the histogram's
  normalised entropy falls below ``min_hist_entropy_ratio`` x the shipped model's;
* mean prediction entropy exploding: above both ``entropy_blowup`` x the shipped model's and
  ``0.75 log K`` (predictions turning uniform).

The runner snapshots the model after every healthy check and restores the last snapshot on
collapse, so what it writes is never a collapsed model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..scores import information_maximisation, probs_entropy


def prediction_stats(logits: torch.Tensor, reference_pred: torch.Tensor | None = None) -> dict:
    """Unsupervised statistics of ``logits`` (N, K); ``reference_pred`` (N,) for agreement."""
    logits = logits.float()
    k = logits.shape[1]
    finite = bool(torch.isfinite(logits).all())
    if not finite:
        return {"finite": False, "n": len(logits)}
    p = F.softmax(logits, 1)
    pred = p.argmax(1)
    hist = torch.bincount(pred, minlength=k).float() / max(len(pred), 1)
    nz = hist[hist > 0]
    hist_ent = float(-(nz * nz.log()).sum()) / math.log(k) if k > 1 else 1.0
    ent = probs_entropy(p, 1)
    out = {
        "finite": True,
        "n": int(len(logits)),
        "class_histogram": [round(float(h), 4) for h in hist],
        "top_class_fraction": float(hist.max()),
        "histogram_entropy": round(hist_ent, 4),  # normalised to [0, 1]
        "mean_entropy": float(ent.mean()),
        "mean_confidence": float(p.max(1).values.mean()),
        "info_max": information_maximisation(p),  # label-free selection of the written state
    }
    if reference_pred is not None:
        out["agreement_with_shipped"] = float((pred == reference_pred.to(pred.device)).float().mean())
    return out


@dataclass
class CollapseCriteria:
    max_top_fraction: float = 0.5
    min_hist_entropy_ratio: float = 0.5
    entropy_blowup: float = 2.0


class CollapseMonitor:
    """Judges statistics against the shipped model's (``baseline``, from :func:`prediction_stats`)."""

    def __init__(self, baseline: dict, num_classes: int, criteria: CollapseCriteria | None = None):
        if not baseline.get("finite", False):
            from ..errors import BundleError

            raise BundleError("the shipped model already produces NaN/inf on the target images; nothing to adapt from")
        self.baseline = baseline
        self.k = num_classes
        self.c = criteria or CollapseCriteria()
        # relative to the shipped model: a model that was already skewed only collapses by getting worse
        base_top = baseline["top_class_fraction"]
        self.top_limit = max(self.c.max_top_fraction, min(0.99, 1.5 * base_top), base_top + 0.01)
        self.hist_floor = self.c.min_hist_entropy_ratio * baseline["histogram_entropy"]
        self.entropy_limit = max(self.c.entropy_blowup * baseline["mean_entropy"], 0.75 * math.log(num_classes))

    def check(self, stats: dict, model: torch.nn.Module | None = None) -> str | None:
        """None when healthy, else one sentence saying what collapsed."""
        if not stats.get("finite", False):
            return "the model's outputs became NaN/inf"
        if model is not None and not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
            return "the model's weights became NaN/inf"
        if stats["top_class_fraction"] > self.top_limit:
            top = max(range(self.k), key=lambda i: stats["class_histogram"][i])
            return (f"predictions collapsed onto one class ({stats['top_class_fraction']:.0%} predicted as class {top}, "
                    f"limit {self.top_limit:.0%})")
        if stats["histogram_entropy"] < self.hist_floor:
            return (f"the predicted-class histogram collapsed (normalised entropy {stats['histogram_entropy']:.2f} "
                    f"< floor {self.hist_floor:.2f})")
        if stats["mean_entropy"] > self.entropy_limit:
            return (f"prediction entropy exploded (mean {stats['mean_entropy']:.2f} nats > limit "
                    f"{self.entropy_limit:.2f})")
        return None

    def limits(self) -> dict:
        return {"max_top_class_fraction": round(self.top_limit, 4), "min_histogram_entropy": round(self.hist_floor, 4),
                "max_mean_entropy": round(self.entropy_limit, 4)}
