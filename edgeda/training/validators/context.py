"""What a validator sees (:class:`EvalContext`), the validator registry and the helpers validators share."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...registry import Registry
from ...tasks.detection_metrics import as_detections, coco_scores

VALIDATORS: Registry = Registry("validator")


@dataclass
class EvalContext:
    """Everything label-free the evaluation measured on one model; a validator reads what it needs and
    raises ``ValueError`` when a field it needs is missing."""

    source_val: float  # the task's source-validation score, oriented so that higher is better
    target_logits: torch.Tensor | None = None  # (N, K) on the target adaptation split (dense: sampled pixels)
    target_features: torch.Tensor | None = None  # (N, d)
    # labeled source-validation rows (classification): DEV and reverse validation need them
    source_logits: torch.Tensor | None = None  # (M, K)
    source_features: torch.Tensor | None = None  # (M, d)
    source_labels: torch.Tensor | None = None  # (M,)
    # the source-only model's logits on the same target rows (the ``agreement`` validator's reference)
    reference_logits: torch.Tensor | None = None  # (N, K)
    dense: bool = False  # rows are sampled pixels of dense predictions (agreements are then measured as mIoU)
    # the source label marginal pi (K,): class frequencies of the labeled source-validation set
    source_prior: torch.Tensor | None = None
    # per augmentation, the (K, K) confusion between the model's class on a fixed sample of target
    # images (rows) and its class on an augmented copy mapped back to the original frame (columns)
    augmented_confusion: dict[str, torch.Tensor] | None = None
    # the other candidates' logits on the same target rows, by candidate name (``majority``)
    peer_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    # detectors: per target image, the decoded detections (``boxes`` (n, 4), ``scores``, ``labels``) of the
    # candidate, of the source-only reference and of the other candidates, on the same images
    target_detections: list[dict] | None = None
    reference_detections: list[dict] | None = None
    peer_detections: dict[str, list[dict]] = field(default_factory=dict)
    classes: list[str] | None = None  # the detector's class names (scores per class)


def target_probs(ctx: EvalContext) -> torch.Tensor:
    if ctx.target_logits is None or len(ctx.target_logits) == 0 or ctx.target_logits.shape[1] < 2:
        raise ValueError("no target predictions to score")
    return ctx.target_logits.float().softmax(1)


def label_confusion(rows: torch.Tensor, cols: torch.Tensor, k: int) -> torch.Tensor:
    """(K, K) counts of (``rows[i]``, ``cols[i]``) class-id pairs."""
    idx = rows.long().flatten() * k + cols.long().flatten()
    return torch.bincount(idx, minlength=k * k).reshape(k, k).double()


def mean_iou(conf: torch.Tensor, over_all_classes: bool = False) -> float:
    """Mean over classes of C_kk / (row_k + col_k - C_kk) of a (K, K) confusion between two labelings.
    Classes that neither labeling uses are left out, or count 0 with ``over_all_classes``."""
    conf = conf.double()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    if over_all_classes:
        return float((inter / union.clamp_min(1e-12)).mean())
    used = union > 0
    if not bool(used.any()):
        raise ValueError("no labelled rows to compare")
    return float((inter[used] / union[used]).mean())


#: a detection at least this confident counts as a box another detector must find (the deployment threshold
#: of the papers' detectors; what the mean teacher's pseudo-boxes start from)
BOX_TRUTH_SCORE = 0.5


def box_agreement(dets: list[dict], other: list[dict], classes: list[str], min_score: float = BOX_TRUTH_SCORE) -> float:
    """How well ``dets`` find the boxes ``other`` is sure of, image by image: COCO AP at IoU 0.5
    (pycocotools, per class then averaged over the classes ``other`` finds) of ``dets`` ranked by score,
    with ``other``'s detections scoring at least ``min_score`` as the truth. Raises ``ValueError`` when
    ``other`` is sure of no box on any image (nothing to agree with)."""
    if len(dets) != len(other):
        raise ValueError(f"detections of {len(dets)} and {len(other)} images")
    truths = []
    for d in other:
        d = as_detections(d)
        keep = d["scores"] >= min_score
        truths.append({"boxes": d["boxes"][keep], "labels": d["labels"][keep], "crowd": np.zeros((0, 4)),
                       "crowd_labels": np.zeros(0, np.int64)})
    if not any(len(t["boxes"]) for t in truths):
        raise ValueError(f"the other detector finds no box scoring at least {min_score}")
    ap = coco_scores([as_detections(d) for d in dets], truths, classes)["map50"]
    if ap != ap:
        raise ValueError("no average precision (no comparable boxes)")
    return float(ap)


def label_agreement(conf: torch.Tensor) -> float:
    """Fraction of rows where the two labelings of a (K, K) confusion agree."""
    total = float(conf.sum())
    if total <= 0:
        raise ValueError("no rows to compare")
    return float(conf.diagonal().sum()) / total
