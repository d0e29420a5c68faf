"""Dense domains: images with per-pixel labels (segmentation masks and/or metric depth).

A dense domain is indexed, not held as one array: :class:`ArrayDenseDomain` keeps small sets
(the built-in generated ones) in memory, :class:`edgeda.data.dense_files.FileDenseDomain` reads
each sample from disk when asked, so real-size street sets stream through a ``DataLoader``.
Samples come at their stored resolution; :mod:`edgeda.data.dense_transforms` brings image, mask
and depth to the model's size together.

Conventions: masks are class ids (uint8), ``255`` = ignore; depth is float32 metres, ``0`` =
invalid (sky, missing LiDAR returns).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .domain import LoadReport, wrong_labels

IGNORE_INDEX = 255


@dataclass
class DenseSample:
    """One image with its optional dense labels, at the stored resolution."""

    image: np.ndarray  # (H, W, C) uint8, C in {1, 3}
    mask: np.ndarray | None = None  # (H, W) uint8 class ids, 255 = ignore
    depth: np.ndarray | None = None  # (H, W) float32 metres, 0 = invalid


class DenseDomain:
    """Base of every dense domain: ``len(domain)``, ``domain.sample(i)``, ``domain.subset(idx)``.

    ``classes`` names the segmentation classes (None for depth-only or unlabeled data),
    ``palette`` is a (K, 3) uint8 colour per class (None: a default palette is used for drawing).
    ``sample(i)`` raises ``ValueError`` with a short reason when a file cannot be decoded.
    """

    kind = "dense"
    # True when the class names were made up from the largest mask id (no classes.txt / 'classes'): then
    # the set may simply not show the last classes (a few labelled frames), and a task with more fits it
    classes_from_ids = False

    def __init__(self, name: str, *, classes: list[str] | None = None, palette: np.ndarray | None = None,
                 has_masks: bool = False, has_depth: bool = False, report: LoadReport | None = None):
        self.name = name
        self.classes = list(classes) if classes is not None else None
        self.palette = None if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
        self.has_masks = has_masks
        self.has_depth = has_depth
        self.report = report or LoadReport()

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, i: int) -> DenseSample:
        raise NotImplementedError

    def subset(self, idx, name: str | None = None) -> "DenseDomain":
        return _Subset(self, np.asarray(idx, np.int64), name or self.name)

    @property
    def labeled(self) -> bool:
        return self.has_masks or self.has_depth

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    def require_usable(self, *, labels: str | None = None, num_classes: int | None = None) -> None:
        """One clear :class:`DataError` if this domain cannot be used with the ``labels`` a task needs
        (``masks`` or ``depth``; ``None``: used unlabeled) within ``num_classes``."""
        if len(self) == 0:
            extra = f" ({len(self.report.skipped)} files were skipped)" if self.report.skipped else ""
            raise DataError(f"domain {self.name!r} has no usable images{extra}")
        if labels is None:
            return
        if labels not in ("masks", "depth"):
            raise wrong_labels(self, "holds per-pixel data", labels)
        if labels == "masks" and not self.has_masks:
            raise DataError(f"domain {self.name!r} has no segmentation masks (a folder needs masks/ beside images/, "
                            "an .npz needs 'y' of shape (N, H, W))")
        if labels == "depth" and not self.has_depth:
            raise DataError(f"domain {self.name!r} has no depth maps (a folder needs depth/ beside images/, "
                            "an .npz needs 'depth' of shape (N, H, W))")
        if labels != "masks" or num_classes is None or self.num_classes is None:
            return
        fits = self.num_classes == num_classes or (self.classes_from_ids and self.num_classes < num_classes)
        if not fits:
            raise DataError(f"domain {self.name!r} names {self.num_classes} classes, the task has {num_classes}")


class ArrayDenseDomain(DenseDomain):
    """A dense domain held in memory: ``images`` (N, H, W, C) uint8, ``masks`` (N, H, W) uint8,
    ``depth`` (N, H, W) float32."""

    def __init__(self, name: str, images: np.ndarray, masks: np.ndarray | None = None, depth: np.ndarray | None = None,
                 *, classes: list[str] | None = None, palette: np.ndarray | None = None, report: LoadReport | None = None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"dense images must be (N,H,W,C) uint8, got {images.shape} {images.dtype}")
        for arr, what in ((masks, "masks"), (depth, "depth")):
            if arr is not None and arr.shape != images.shape[:3]:
                raise ValueError(f"{what} must have shape {images.shape[:3]}, got {arr.shape}")
        super().__init__(name, classes=classes, palette=palette, has_masks=masks is not None,
                         has_depth=depth is not None, report=report or LoadReport(loaded=len(images)))
        self.images = images
        self.masks = None if masks is None else masks.astype(np.uint8, copy=False)
        self.depth = None if depth is None else depth.astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, i: int) -> DenseSample:
        return DenseSample(self.images[i], None if self.masks is None else self.masks[i],
                           None if self.depth is None else self.depth[i])


def images_as_dense(dom) -> ArrayDenseDomain:
    """The images of a plain (classification-style) domain as an unlabeled dense domain: a plain
    image folder or an ``.npz`` holding only ``x`` is valid unlabeled data for a dense task."""
    return ArrayDenseDomain(dom.name, dom.images, report=dom.report)


class _Subset(DenseDomain):
    def __init__(self, base: DenseDomain, idx: np.ndarray, name: str):
        super().__init__(name, classes=base.classes, palette=base.palette, has_masks=base.has_masks,
                         has_depth=base.has_depth, report=base.report)
        self.base, self.idx = base, idx

    def __len__(self) -> int:
        return len(self.idx)

    def sample(self, i: int) -> DenseSample:
        return self.base.sample(int(self.idx[i]))


def default_palette(k: int) -> np.ndarray:
    """(k, 3) uint8 distinct colours: the Cityscapes colours for the first 19 classes of a
    Cityscapes-named set are given by the caller; this one is for any class list."""
    import colorsys

    out = np.zeros((max(k, 0), 3), np.uint8)
    for i in range(k):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.55 + 0.45 * ((i // 2) % 2))
        out[i] = (int(r * 255), int(g * 255), int(b * 255))
    return out
