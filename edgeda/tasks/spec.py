"""The task spec: what a model does and what its input looks like. Stored in every bundle manifest.

The behaviour that differs between tasks (losses, metrics, validators, drawing, prediction files)
lives in the task objects of :mod:`edgeda.tasks`; this record is the JSON part a bundle carries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field



def known_tasks() -> tuple[str, ...]:
    """The names in the task registry (:mod:`edgeda.tasks`): what ``task`` may be."""
    from . import TASKS

    return tuple(TASKS)


def _task(name: str):
    from . import task_of

    return task_of(name)


@dataclass
class TaskSpec:
    """``task`` is first-class: the trainer, evaluation, bundle and export dispatch on it.

    Images enter models as (N, channels, H, W) float32: uint8 / 255, then (x - mean) / std,
    in ``color_order`` channel order, at ``image_size`` = (H, W). Depth has no classes
    (``num_classes`` 0); ``palette`` colours segmentation classes; ``depth_range`` is the
    (min, max) metric depth in metres a depth model outputs; ``category_ids`` (detection from a
    COCO json) the json's category id of each class, in class order (None: the source had none).
    """

    num_classes: int = 0
    classes: list[str] = field(default_factory=list)
    task: str = "classification"
    image_size: tuple[int, int] = (32, 32)
    channels: int = 3
    mean: tuple[float, ...] = field(default=None)  # type: ignore[assignment]
    std: tuple[float, ...] = field(default=None)  # type: ignore[assignment]
    color_order: str = "RGB"
    palette: list[list[int]] | None = None
    depth_range: tuple[float, float] | None = None
    category_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.task not in known_tasks():
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(known_tasks())}")
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        self.image_size = tuple(int(s) for s in size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive sides, got {self.image_size}")
        self.classes = list(self.classes or [])
        if _task(self.task).has_classes and self.num_classes < 1:
            raise ValueError(f"a {self.task} task needs at least one class")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")
        if self.mean is None:
            self.mean = (0.5,) * self.channels
        if self.std is None:
            self.std = (0.5,) * self.channels
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean/std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.channels == 1:
            self.color_order = "GRAY"
        if self.palette is not None:
            self.palette = [[int(c) for c in rgb] for rgb in self.palette]
        if self.depth_range is not None:
            self.depth_range = (float(self.depth_range[0]), float(self.depth_range[1]))
        if self.category_ids is not None:
            ids = list(self.category_ids)
            if len(ids) != self.num_classes or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"category_ids must be one integer id per class ({self.num_classes}), got {ids!r}")
            self.category_ids = ids

    @property
    def output(self) -> str:
        """What the task network outputs (the task's ``output``): ``"logits"`` (classification,
        segmentation), ``"depth"`` (metric depth, metres)."""
        return _task(self.task).output

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["output"] = self.output
        if self.depth_range is not None:
            d["depth_range"] = list(self.depth_range)
        if self.category_ids is None:
            del d["category_ids"]  # only detection sources from a COCO json have them
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        keys = ("num_classes", "classes", "task", "image_size", "channels", "mean", "std", "color_order", "palette",
                "depth_range", "category_ids")
        return cls(**{k: d[k] for k in keys if k in d})
