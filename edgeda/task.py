"""The task spec: what a model does and what its input looks like. Stored in every bundle manifest."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

TASKS = ("classification", "segmentation", "depth")


@dataclass
class TaskSpec:
    """``task`` is first-class: the trainer, evaluation, bundle and export dispatch on it.

    Images enter models as (N, channels, H, W) float32: uint8 / 255, then (x - mean) / std,
    in ``color_order`` channel order.
    """

    num_classes: int
    classes: list[str]
    task: str = "classification"
    image_size: tuple[int, int] = (32, 32)
    channels: int = 3
    mean: tuple[float, ...] = field(default=None)  # type: ignore[assignment]
    std: tuple[float, ...] = field(default=None)  # type: ignore[assignment]
    color_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        if self.mean is None:
            self.mean = (0.5,) * self.channels
        if self.std is None:
            self.std = (0.5,) * self.channels
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean/std need one value per channel")
        if self.channels == 1:
            self.color_order = "GRAY"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        known = {k: d[k] for k in ("num_classes", "classes", "task", "image_size", "channels", "mean", "std", "color_order") if k in d}
        return cls(**known)
