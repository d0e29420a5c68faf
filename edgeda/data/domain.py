"""The in-memory domain every loader produces, and the load report for skipped files."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

# the kinds of labels a domain can hold, as messages name them; a task asks for one (``Task.label_kind``)
LABEL_KINDS = {"classes": "class labels (one per image)", "masks": "segmentation masks", "depth": "depth maps",
               "boxes": "box annotations"}


def wrong_labels(domain, holds: str, labels: str) -> DataError:
    """The error for a domain of one kind asked for another kind's labels."""
    if labels not in LABEL_KINDS:
        raise ValueError(f"unknown kind of labels {labels!r}; known: {', '.join(LABEL_KINDS)}")
    return DataError(f"domain {domain.name!r} {holds}, not {LABEL_KINDS[labels]}")


@dataclass
class LoadReport:
    """What a loader saw: how many images it used and which files -- or entries inside annotation files
    (a COCO json's image entries and annotations, a YOLO label line) -- it skipped, with the reason."""

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what loaded but may not be what the user meant
    skipped_entries: int = 0  # how many of ``skipped`` are entries inside a file, not whole files

    def skip(self, path: str, reason: str, *, entry: bool = False) -> None:
        self.skipped.append((path, reason))
        self.skipped_entries += int(entry)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def summary(self) -> str:
        files = len(self.skipped) - self.skipped_entries
        parts = [f"{self.loaded} images"]
        if files:
            parts.append(f"{files} file{'s' if files != 1 else ''} skipped")
        if self.skipped_entries:
            n = self.skipped_entries
            parts.append(f"{n} annotation{'s' if n != 1 else ''} skipped")
        return ", ".join(parts)

    def to_dict(self, max_listed: int = 50) -> dict:
        return {
            "loaded": self.loaded,
            "skipped": len(self.skipped),
            **({"skipped_annotations": self.skipped_entries} if self.skipped_entries else {}),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped[:max_listed]],
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }


@dataclass
class Domain:
    """Images of one domain, already at the task's size and channel count.

    ``images``: (N, H, W, C) uint8. ``labels``: (N,) int64 or None (unlabeled).
    ``foreground``: optional (N, H, W) uint8 foreground masks (255 = object), for pixel-level methods.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    foreground: np.ndarray | None = None
    report: LoadReport = field(default_factory=LoadReport)
    classes_from_ids: bool = False  # True when ``classes`` are "0".."K-1" made up from the largest label

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"Domain images must be (N,H,W,C) uint8, got {self.images.shape} {self.images.dtype}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError("labels and images differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Domain":
        return Domain(
            name=name or self.name,
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            classes=self.classes,
            foreground=None if self.foreground is None else self.foreground[idx],
            report=self.report,
            classes_from_ids=self.classes_from_ids,
        )

    def require_usable(self, *, labels: str | None = None, num_classes: int | None = None) -> None:
        """One clear :class:`DataError` if this domain cannot be used with the ``labels`` a task needs
        (a kind of :data:`LABEL_KINDS`; ``None``: used unlabeled) within ``num_classes``; the same
        signature as the dense and detection domains'."""
        if len(self) == 0:
            extra = f" ({len(self.report.skipped)} files were unreadable)" if self.report.skipped else ""
            raise DataError(f"domain {self.name!r} has no usable images{extra}")
        if labels is None:
            return
        if labels != "classes":
            raise wrong_labels(self, "has one label per image", labels)
        if self.labels is None:
            raise DataError(
                f"domain {self.name!r} has no labels, but labels are needed here "
                "(use an ImageFolder layout with one subfolder per class, or an .npz with 'y')"
            )
        if num_classes is not None:
            hi = int(self.labels.max())
            lo = int(self.labels.min())
            if lo < 0 or hi >= num_classes:
                raise DataError(
                    f"domain {self.name!r} has labels in [{lo}, {hi}] but the task has {num_classes} classes"
                )
