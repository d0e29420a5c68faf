"""What a validator sees (:class:`EvalContext`), the validator registry and the helpers validators share."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...registry import Registry

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


def label_agreement(conf: torch.Tensor) -> float:
    """Fraction of rows where the two labelings of a (K, K) confusion agree."""
    total = float(conf.sum())
    if total <= 0:
        raise ValueError("no rows to compare")
    return float(conf.diagonal().sum()) / total
