"""The mean teacher: an exponential moving average of a student network that labels target images.

Self-training methods for every task compose this one piece (DACS, DAFormer, MIC and CBST-style
training on the server; CoTTA on the device; detection's mean-teacher self-training):

    theta_teacher <- a_t theta_teacher + (1 - a_t) theta_student,   a_t = min(alpha, 1 - 1 / (t + 1))

after the t-th student update (Tarvainen & Valpola 2017; the warm-up ``1 - 1/(t+1)`` is DACS's, so
the first teachers follow the student closely). Floating-point buffers (BatchNorm statistics) are
averaged the same way, integer buffers copied (:class:`~edgeda.models.averaging.WeightAverage`).
The teacher always predicts in eval mode (its averaged BatchNorm statistics) and never receives
gradients.

Pseudo-labels are the teacher's arg-max; a pixel (or image) is *confident* where its top
probability exceeds ``threshold``. DACS weights the pseudo-label loss of each target image by its
share of confident pixels (:func:`pseudo_labels` returns it).

    >>> teacher = MeanTeacher(student, alpha=0.99)
    >>> probs = teacher.probs(target_x)                 # (N, K, H, W) or (N, K)
    >>> labels, confident, weight = pseudo_labels(probs, threshold=0.968)
    >>> ...train the student...; teacher.update(student)
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EdgedaError
from .averaging import WeightAverage


class MeanTeacher(WeightAverage):
    """An EMA teacher of one student module (``.teacher``), with the mean-teacher warm-up."""

    def __init__(self, student: nn.Module, alpha: float = 0.99):
        if not 0.0 < alpha < 1.0:
            raise EdgedaError(f"the mean teacher's EMA rate alpha={alpha} must lie strictly between 0 and 1 (e.g. 0.99)")
        super().__init__({"student": student}, decay=alpha)
        self.teacher.eval()

    @property
    def teacher(self) -> nn.Module:
        return self.modules["student"]

    @property
    def alpha(self) -> float:
        return self.decay

    def rate(self) -> float:
        return min(self.decay, 1.0 - 1.0 / (self.updates + 1.0))

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:  # type: ignore[override]
        super().update({"student": student})

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on ``x`` (eval mode, no gradient)."""
        self.teacher.eval()
        return self.teacher(x).float()

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's class probabilities on ``x`` (softmax over dim 1)."""
        return self.logits(x).softmax(1)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.teacher.eval()


@torch.no_grad()
def pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arg-max labels of ``probs`` (N, K, ...), the mask of confident positions (top probability
    > ``threshold``) and each sample's share of confident positions (N,), DACS's loss weight."""
    conf, labels = probs.max(1)
    confident = conf > threshold
    weight = confident.flatten(1).float().mean(1) if confident.dim() > 1 else confident.float()
    return labels, confident, weight
