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
from ..scores import information_maximisation, probs_entropy


@dataclass
class EvalContext:
    source_val: float  # the task's source-validation score, oriented so that higher is better
    target_logits: torch.Tensor | None = None  # (N, K) on the target adaptation split (dense: sampled pixels)
    target_features: torch.Tensor | None = None  # (N, d)


VALIDATORS: Registry = Registry("validator")


@VALIDATORS.register("source_val")
def source_val(ctx: EvalContext) -> float:
    """The task's score on held-out labeled source images (accuracy, mIoU, or minus abs rel for
    depth): the classic choice, blind to the shift."""
    return ctx.source_val


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


def _target_probs(ctx: EvalContext) -> torch.Tensor:
    if ctx.target_logits is None or len(ctx.target_logits) == 0 or ctx.target_logits.shape[1] < 2:
        raise ValueError("no target predictions to score")
    return ctx.target_logits.float().softmax(1)


@VALIDATORS.register("entropy")
def entropy(ctx: EvalContext) -> float:
    """Negative mean entropy of the target predictions: confident models score higher (Morerio et al. 2018)."""
    return -float(probs_entropy(_target_probs(ctx)).mean())


@VALIDATORS.register("info_max")
def info_max(ctx: EvalContext) -> float:
    """Information maximisation: H(mean_i p_i) - mean_i H(p_i) (mutual information between input
    and prediction, as in RIM/SHOT): confident per image and diverse over the target set."""
    return information_maximisation(_target_probs(ctx))


@VALIDATORS.register("snd")
def snd(ctx: EvalContext, temperature: float = 0.05, max_n: int = 2000) -> float:
    """Soft neighbourhood density (Saito et al., "Tune it the Right Way", ICCV 2021).

    Target softmax outputs are L2-normalised, their cosine similarity matrix (self-similarity
    removed) is softmax-normalised per row at temperature 0.05, and the score is the mean row
    entropy: high when predictions form dense neighbourhoods (clusters) rather than being
    isolated. Higher is better. At most ``max_n`` images are scored (the first ones: a fixed set).
    """
    p = torch.nn.functional.normalize(_target_probs(ctx)[:max_n], dim=1)
    n = p.shape[0]
    if n < 2:
        raise ValueError("SND needs at least two target images")
    sim = p @ p.T
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), float("-inf"))
    q = (sim / temperature).softmax(1)
    return float(probs_entropy(q).mean())
