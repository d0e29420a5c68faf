"""Collapse monitoring and rollback: a device adapting on its own has nobody watching it.

:class:`PredictionStats` summarises a model's predictions on unlabeled target images, streamed
batch by batch: for a classifier one row of class logits per image, for a segmentation model one
row per pixel (the class fractions are then over every pixel of the monitored frames). It reports
the predicted-class histogram and its entropy, the classes still predicted, mean confidence and
entropy, information maximisation, agreement with the shipped model and, for dense outputs, the
share of frames that one class covers almost entirely. :func:`prediction_stats` is the one-shot
form. :class:`CollapseMonitor` compares each check against the shipped model's statistics and
says whether the run has collapsed:

* non-finite outputs or weights (NaN / inf);
* the predicted-class histogram collapsing: the top class takes more than
  ``max(max_top_fraction, min(0.99, 1.5 x the shipped top share), shipped top share + 0.01)``
  of the predictions (pixels), or (classifiers) the histogram's normalised entropy falls below
  ``min_hist_entropy_ratio`` x the shipped model's; for pixels this ratio is not used: a frame's
  background dominates the histogram, so its entropy is small and halves when the background
  grows a few points (seen after AdaBN's re-estimation alone), and the next two criteria judge
  the classes instead;
* classes vanishing: fewer than ``min_present_ratio`` x the classes the shipped model predicts
  (on at least 0.1 % of the rows) are still predicted;
* dense outputs: one class swallowing the image, i.e. the share of frames whose top class covers
  more than 98 % of their pixels exceeds ``max(max_swallowed_frames, shipped share + 0.25)``;
* mean prediction entropy exploding: above both ``entropy_blowup`` x the shipped model's and
  ``0.75 log K`` (predictions turning uniform).

The selection score ``info_max`` is H(mean p) - mean H(p) for classifiers (confident per image,
diverse over the set; the test sets of classification are close to class-balanced). For dense
outputs it is measured against the shipped model's mean pixel-class probabilities pi instead of
the uniform marginal: ``-KL(mean p || pi) - mean H(p)`` (``result(prior=pi)``). Pixel classes are
far from balanced (background covers most of a frame), and H(mean p) rewards turning background
into foreground: on digitscenes -> handwritten-scenes SHOT's last state predicted 19 % background
(the shipped model 87 %) and scored info_max 1.54 against the shipped 0.42, while its mIoU fell
from 14.9 to 3.9 (labels used only to see this). Relative to pi the shipped state scores
-mean H(p), and an adapted state must gain more confidence than it moves the class marginal.

The runner snapshots the model after every healthy check and restores the last snapshot on
collapse, so what it writes is never a collapsed model.

Which statistics and monitor a bundle gets is its task's
:class:`~edgeda.adapt.tasks.TaskAdaptation`: these for class logits per image or per pixel; a
detector's outputs are boxes with per-anchor class scores, watched by their detections per image
and score distribution (:class:`~edgeda.adapt.detection.DetectionStats`,
:class:`~edgeda.adapt.detection.DetectionMonitor`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import BundleError
from ..scores import kl_to_prior, probs_entropy

PRESENT_FRACTION = 1e-3  # a class counts as predicted when it takes at least this share of the rows
SWALLOW_FRACTION = 0.98  # a frame is swallowed by one class when it covers more than this share


def logit_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) class logits as they are; (N, K, H, W) per-pixel logits as (N*H*W, K) rows."""
    if logits.dim() == 2:
        return logits
    k = logits.shape[1]
    return logits.movedim(1, -1).reshape(-1, k)


class PredictionStats:
    """Streaming statistics of class logits: ``update(logits, reference_pred)`` per batch
    (``logits`` (N, K) or (N, K, H, W); ``reference_pred`` the shipped model's argmax of the same
    shape without K, or None), then :meth:`result`."""

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.finite = True
        self.n = self.rows = 0
        self.hist = torch.zeros(num_classes, dtype=torch.float64)
        self.p_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.ent_sum = self.conf_sum = 0.0
        self.agree = 0
        self.has_ref = False
        self.dense = False
        self.swallowed = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, reference_pred: torch.Tensor | None = None) -> None:
        logits = logits.float()
        self.n += len(logits)
        if not self.finite or not bool(torch.isfinite(logits).all()):
            self.finite = False
            return
        if logits.dim() == 4:
            self.dense = True
            frame_pred = logits.argmax(1).flatten(1)
            top = torch.stack([torch.bincount(r, minlength=self.k).max() for r in frame_pred]).float()
            self.swallowed += int((top / frame_pred.shape[1] > SWALLOW_FRACTION).sum())
        rows = logit_rows(logits)
        p = F.softmax(rows, 1)
        pred = p.argmax(1)
        self.rows += len(rows)
        self.hist += torch.bincount(pred, minlength=self.k).double().cpu()
        self.p_sum += p.sum(0).double().cpu()
        self.ent_sum += float(probs_entropy(p, 1).double().sum())
        self.conf_sum += float(p.max(1).values.double().sum())
        if reference_pred is not None:
            self.has_ref = True
            self.agree += int((pred == reference_pred.reshape(-1).to(pred.device).long()).sum())

    def result(self, prior: torch.Tensor | None = None) -> dict:
        """The statistics; with ``prior`` (K class probabilities, e.g. the shipped model's
        ``mean_probabilities``) ``info_max`` is -KL(mean p || prior) - mean H(p)."""
        if not self.finite:
            return {"finite": False, "n": self.n}
        k, rows = self.k, max(self.rows, 1)
        hist = self.hist / rows
        nz = hist[hist > 0]
        hist_ent = max(0.0, float(-(nz * nz.log()).sum()) / math.log(k)) if k > 1 else 1.0
        mean_p = self.p_sum / rows
        mean_ent = self.ent_sum / rows
        if prior is None:
            diversity = float(probs_entropy(mean_p, 0))
        else:
            diversity = -kl_to_prior(mean_p, prior)
        out = {
            "finite": True,
            "n": int(self.n),
            "class_histogram": [round(float(h), 4) for h in hist],
            "top_class_fraction": float(hist.max()),
            "histogram_entropy": round(hist_ent, 4),  # normalised to [0, 1]
            "classes_present": int((hist >= PRESENT_FRACTION).sum()),
            "mean_entropy": mean_ent,
            "mean_confidence": self.conf_sum / rows,
            "mean_probabilities": [float(v) for v in mean_p],
            # H(mean p) - mean H(p), or -KL(mean p || prior) - mean H(p): the label-free selection of the written state
            "info_max": diversity - mean_ent,
            "diversity_reference": "uniform" if prior is None else "prior",
        }
        if self.dense:
            out["pixels"] = int(self.rows)
            out["swallowed_frames"] = round(self.swallowed / max(self.n, 1), 4)
        if self.has_ref:
            out["agreement_with_shipped"] = self.agree / rows
        return out


def prediction_stats(logits: torch.Tensor, reference_pred: torch.Tensor | None = None,
                     prior: torch.Tensor | None = None) -> dict:
    """Unsupervised statistics of ``logits`` ((N, K), or (N, K, H, W) per pixel); ``reference_pred``
    (the shipped model's argmax, same shape without K) for agreement; ``prior`` see
    :meth:`PredictionStats.result`."""
    s = PredictionStats(logits.shape[1])
    s.update(logits, reference_pred)
    return s.result(prior)


@dataclass
class CollapseCriteria:
    max_top_fraction: float = 0.5
    min_hist_entropy_ratio: float = 0.5
    min_present_ratio: float = 0.5
    max_swallowed_frames: float = 0.5
    entropy_blowup: float = 2.0


class CollapseMonitor:
    """Judges statistics against the shipped model's (``baseline``, from :func:`prediction_stats`)."""

    def __init__(self, baseline: dict, num_classes: int, criteria: CollapseCriteria | None = None):
        if not baseline.get("finite", False):
            raise BundleError("the shipped model already produces NaN/inf on the target images; nothing to adapt from")
        self.baseline = baseline
        self.k = num_classes
        self.c = criteria or CollapseCriteria()
        # relative to the shipped model: a model that was already skewed only collapses by getting worse
        base_top = baseline["top_class_fraction"]
        self.top_limit = max(self.c.max_top_fraction, min(0.99, 1.5 * base_top), base_top + 0.01)
        self.hist_floor = 0.0 if "pixels" in baseline else self.c.min_hist_entropy_ratio * baseline["histogram_entropy"]
        self.present_floor = math.ceil(self.c.min_present_ratio * baseline.get("classes_present", 1))
        self.swallow_limit = (max(self.c.max_swallowed_frames, baseline["swallowed_frames"] + 0.25)
                              if "swallowed_frames" in baseline else None)
        self.entropy_limit = max(self.c.entropy_blowup * baseline["mean_entropy"], 0.75 * math.log(num_classes))

    def check(self, stats: dict, model: torch.nn.Module | None = None) -> str | None:
        """None when healthy, else one sentence saying what collapsed."""
        if not stats.get("finite", False):
            return "the model's outputs became NaN/inf"
        if model is not None and not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
            return "the model's weights became NaN/inf"
        what = "pixels" if "pixels" in stats else "predictions"
        if stats["top_class_fraction"] > self.top_limit:
            top = max(range(self.k), key=lambda i: stats["class_histogram"][i])
            return (f"predictions collapsed onto one class ({stats['top_class_fraction']:.0%} of the {what} predicted "
                    f"as class {top}, limit {self.top_limit:.0%})")
        if self.hist_floor > 0 and stats["histogram_entropy"] < self.hist_floor:
            return (f"the predicted-class histogram collapsed (normalised entropy {stats['histogram_entropy']:.2f} "
                    f"< floor {self.hist_floor:.2f})")
        if stats.get("classes_present", self.present_floor) < self.present_floor:
            return (f"classes vanished from the predictions ({stats['classes_present']} still predicted, the shipped "
                    f"model predicts {self.baseline['classes_present']}; floor {self.present_floor})")
        if self.swallow_limit is not None and stats.get("swallowed_frames", 0.0) > self.swallow_limit:
            return (f"one class swallowed the image in {stats['swallowed_frames']:.0%} of the monitored frames "
                    f"(limit {self.swallow_limit:.0%})")
        if stats["mean_entropy"] > self.entropy_limit:
            return (f"prediction entropy exploded (mean {stats['mean_entropy']:.2f} nats > limit "
                    f"{self.entropy_limit:.2f})")
        return None

    def limits(self) -> dict:
        out = {"max_top_class_fraction": round(self.top_limit, 4), "min_histogram_entropy": round(self.hist_floor, 4),
               "min_classes_present": self.present_floor, "max_mean_entropy": round(self.entropy_limit, 4)}
        if self.swallow_limit is not None:
            out["max_swallowed_frames"] = round(self.swallow_limit, 4)
        return out
