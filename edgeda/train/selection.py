"""Unsupervised model selection: validators that score a checkpoint without target labels.

Each validator maps what the trainer can see at an evaluation (source validation accuracy, the
model's outputs and features on the unlabeled target adaptation split) to a score, higher is
better. Every registered validator is computed at every evaluation and logged as ``score/<name>``
in ``metrics.jsonl``, so benchmarks can check how well each one's pick matches the (hidden)
target accuracy. ``--select NAME`` ships the checkpoint with the best score; ``last`` ships the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import Registry


@dataclass
class EvalContext:
    source_val_acc: float
    target_logits: torch.Tensor | None = None  # (N, K) on the target adaptation split
    target_features: torch.Tensor | None = None  # (N, d)


VALIDATORS: Registry = Registry("validator")


@VALIDATORS.register("source_val")
def source_val(ctx: EvalContext) -> float:
    """Accuracy on held-out labeled source images (the classic choice; blind to the shift)."""
    return ctx.source_val_acc


def selector_names() -> list[str]:
    return ["last", *VALIDATORS]


def score_all(ctx: EvalContext) -> dict[str, float]:
    out = {}
    for name, fn in VALIDATORS.items():
        try:
            out[name] = float(fn(ctx))
        except (ValueError, RuntimeError):
            continue  # a validator that cannot score this context (e.g. no target data) is left out
    return out
