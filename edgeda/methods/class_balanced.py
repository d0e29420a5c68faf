"""Class-balanced confidence thresholds for self-training (Zou et al., ECCV 2018).

A self-training round keeps, for every class c, the proportion ``p`` of the positions predicted as
c that the model is most confident about: the threshold t_c is the confidence of the
round(p * n_c)-th most confident of the n_c positions predicted as c. A position is then labelled
with the class of highest *class-normalised* confidence p_c / t_c (the paper's p_c / exp(-k_c)
with k_c = -log t_c) where that ratio is at least 1, and ignored elsewhere. Rare or hard classes
thus get lower thresholds than frequent, easy ones, and each class keeps the same share of its
predictions.

The pieces work on any task: positions are pixels for segmentation, boxes for detection.

    >>> t = class_confidence_thresholds(confidence, predicted, num_classes=19, proportion=0.2)
    >>> labels, kept = class_normalised_labels(probs, t)            # 255 where not kept
    >>> sample = ConfidenceSample(19, per_image=4096, generator=g)  # a bounded pixel sample
    >>> for probs in batches: sample.add(probs)
    >>> t = sample.thresholds(0.2)
"""
from __future__ import annotations

import torch

from ..data.dense import IGNORE_INDEX
from ..errors import EdgedaError


def kept_count(n: int, proportion: float) -> int:
    """How many of ``n`` positions a class keeps at ``proportion``: round(p * n), at least 1 when n > 0."""
    if n <= 0:
        return 0
    return min(n, max(1, int(proportion * n + 0.5)))


@torch.no_grad()
def class_confidence_thresholds(confidence: torch.Tensor, predicted: torch.Tensor, num_classes: int,
                                proportion: float) -> torch.Tensor:
    """Per-class thresholds t (K,) such that, for each class c, the positions predicted as c with
    confidence >= t_c are its round(p * n_c) most confident ones (more only where confidences tie
    at t_c).

    ``confidence`` and ``predicted`` are flat (M,) tensors: the top probability of each position and
    its arg-max class. A class with no position gets t_c = 1 (only certain positions would pass).
    """
    if not 0.0 < proportion <= 1.0:
        raise EdgedaError(f"the proportion of confident positions kept per class must lie in (0, 1], not {proportion}")
    confidence, predicted = confidence.reshape(-1).float(), predicted.reshape(-1).long()
    thresholds = torch.ones(num_classes, dtype=torch.float32)
    for c in range(num_classes):
        values = confidence[predicted == c]
        n = values.numel()
        if n:  # the m-th largest value is the (n - m + 1)-th smallest
            thresholds[c] = torch.kthvalue(values.cpu(), n - kept_count(n, proportion) + 1).values
    return thresholds


@torch.no_grad()
def class_normalised_labels(probs: torch.Tensor, thresholds: torch.Tensor, ignore_index: int = IGNORE_INDEX
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (N, ...) = arg-max_c p_c / t_c where that maximum is >= 1, else ``ignore_index``; and
    the mask of labelled positions. ``probs``: (N, K, ...) class probabilities; ``thresholds``: (K,)."""
    t = thresholds.to(probs.device, probs.dtype).clamp_min(1e-12).view(1, -1, *([1] * (probs.dim() - 2)))
    ratio, labels = (probs / t).max(1)
    kept = ratio >= 1.0
    return labels.masked_fill(~kept, ignore_index), kept


class ConfidenceSample:
    """The confidence and arg-max class of at most ``per_image`` positions of each image (a seeded
    uniform sample without replacement; every position when ``per_image`` is 0 or not smaller than
    an image's count), so thresholds over a large target set need memory proportional to the number
    of images, not of pixels."""

    def __init__(self, num_classes: int, per_image: int = 0, generator: torch.Generator | None = None):
        self.num_classes, self.per_image = num_classes, int(per_image)
        self.generator = generator or torch.Generator().manual_seed(0)
        self._conf: list[torch.Tensor] = []
        self._pred: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self, probs: torch.Tensor) -> None:
        """Record a batch of probabilities (N, K, ...) (``(N, K)``: one position per image)."""
        conf, pred = probs.float().max(1)
        conf, pred = conf.reshape(len(conf), -1).cpu(), pred.reshape(len(pred), -1).cpu()
        positions = conf.shape[1]
        if 0 < self.per_image < positions:
            keys = torch.rand(conf.shape, generator=self.generator)
            idx = keys.topk(self.per_image, dim=1).indices
            conf, pred = conf.gather(1, idx), pred.gather(1, idx)
        self._conf.append(conf.reshape(-1))
        self._pred.append(pred.reshape(-1).to(torch.int16 if self.num_classes < 2 ** 15 else torch.int32))

    def __len__(self) -> int:
        return sum(c.numel() for c in self._conf)

    def counts(self) -> torch.Tensor:
        """Sampled positions predicted as each class (K,)."""
        if not self._pred:
            return torch.zeros(self.num_classes, dtype=torch.long)
        return torch.bincount(torch.cat(self._pred).long(), minlength=self.num_classes)

    def thresholds(self, proportion: float) -> torch.Tensor:
        """:func:`class_confidence_thresholds` of the recorded positions."""
        if not self._conf:
            return torch.ones(self.num_classes)
        return class_confidence_thresholds(torch.cat(self._conf), torch.cat(self._pred), self.num_classes, proportion)


def round_proportion(round_index: int, start: float = 0.2, step: float = 0.05, maximum: float = 0.5) -> float:
    """The paper's schedule of the kept proportion: ``start`` in the first round (index 0), ``step``
    more each round, at most ``maximum``."""
    return min(float(maximum), float(start) + float(step) * max(int(round_index), 0))


def round_at(progress: float, rounds: int, warmup: float = 0.0) -> int:
    """The self-training round at training ``progress`` in [0, 1): -1 before ``warmup``, then
    ``rounds`` rounds of equal length over the rest of the run (round r starts at progress
    warmup + r (1 - warmup) / rounds)."""
    if progress < warmup:
        return -1
    span = (1.0 - warmup) / max(int(rounds), 1)
    return min(int((progress - warmup) / span + 1e-9), max(int(rounds), 1) - 1)
