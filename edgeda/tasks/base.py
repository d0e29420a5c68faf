"""The task interface and its registry."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..registry import Registry
from ..task import TaskSpec

TASKS: Registry = Registry("task")
_INSTANCES: dict = {}


def task_of(spec: TaskSpec | str) -> "Task":
    """The task object of a spec (or of a task name); tasks hold no state, one instance each."""
    name = spec if isinstance(spec, str) else spec.task
    if name not in _INSTANCES:
        _INSTANCES[name] = TASKS.get(name)()
    return _INSTANCES[name]


class Task:
    """What differs between tasks. Subclasses register with ``@TASKS.register(name)``.

    ``headline`` is the key of the score a person reads first (``accuracy``, ``miou``,
    ``abs_rel``); ``record_keys`` maps the names of the scores an evaluation record carries
    (``source_val_<name>``, ``target_test_<name>`` in ``metrics.jsonl``) to score keys, the
    headline first. ``deployable`` is the name of the task network in a bundle.
    """

    name: ClassVar[str] = ""
    deployable: ClassVar[str] = "model"
    headline: ClassVar[str] = ""
    record_keys: ClassVar[dict[str, str]] = {}
    higher_is_better: ClassVar[bool] = True
    dense: ClassVar[bool] = True
    default_backbone: ClassVar[str] = "lraspp"  # the edge model Jetson users deploy; light enough for a CPU
    default_size: ClassVar[tuple[int, int]] = (128, 128)
    losses: ClassVar[tuple[str, ...]] = ()
    label_key: ClassVar[str] = "mask"  # what a dense sample's labels are called ("mask" or "depth")

    # -- training ------------------------------------------------------------------------------
    def make_spec(self, domain, *, image_size, channels: int, mean=None, std=None) -> TaskSpec:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """The supervised loss of the source-only baseline (and of every method's task term)."""
        raise NotImplementedError

    def build_model(self, spec: TaskSpec, backbone: str, backbone_kwargs: dict | None = None):
        raise NotImplementedError

    # -- evaluation ----------------------------------------------------------------------------
    def meter(self, spec: TaskSpec):
        raise NotImplementedError

    def update(self, meter, output: torch.Tensor, target: torch.Tensor) -> None:
        meter.update(self.decide(output), target)

    def decide(self, output: torch.Tensor) -> torch.Tensor:
        """The prediction compared with labels: class ids (argmax over dim 1) or depth."""
        return output.argmax(1)

    def scores(self, meter, spec: TaskSpec) -> dict:
        raise NotImplementedError

    def selection_score(self, scores: dict) -> float:
        """The headline score oriented so that higher is better (for ``--select source_val``)."""
        v = float(scores[self.headline])
        return v if self.higher_is_better else -v

    def format_scores(self, scores: dict) -> str:
        raise NotImplementedError

    def validator_rows(self, output: torch.Tensor, generator: torch.Generator, per_image: int = 64) -> torch.Tensor | None:
        """Rows of class logits (M, K) that label-free validators score: one per image for
        classification, a fixed random sample of pixels per image for segmentation, none for depth."""
        return None

    def prediction_row(self, spec: TaskSpec, output: np.ndarray, image: np.ndarray, stem) -> dict:
        """What ``edgeda predict`` records for one image from the model's ``output`` for it; dense
        tasks also write their PNGs as ``<stem>.<kind>.png`` (``stem``: a path without suffix)."""
        raise NotImplementedError

    # -- export --------------------------------------------------------------------------------
    def compare(self, ref: np.ndarray, out: np.ndarray) -> dict:
        """Export parity: max abs difference, plus top-1 / pixel agreement where outputs are logits."""
        res = {"n": int(len(ref)), "max_abs_diff": float(np.abs(ref.astype(np.float64) - out).max()) if len(ref) else 0.0,
               "max_abs_ref": float(np.abs(ref).max()) if len(ref) else 0.0}
        return res

    def ort_scores(self, outputs: np.ndarray, labels: np.ndarray, spec: TaskSpec) -> dict:
        """Scores of exported-model outputs (N, ...) against labels, for the per-precision report."""
        m = self.meter(spec)
        self.update(m, torch.from_numpy(np.asarray(outputs, np.float32)), torch.from_numpy(np.asarray(labels)))
        return self.scores(m, spec)
