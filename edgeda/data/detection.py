"""Detection domains: images with a list of boxes and class ids each (any count, including none).

Contract (the models, the trainer and the metrics code against it):

* :class:`DetectionSample` -- ``image`` (H, W, 3) uint8; ``boxes`` (N, 4) float32, ``x1 y1 x2 y2``
  in pixels of that image (pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, so the box of
  pixel columns ``c0..c1`` is ``x1 = c0, x2 = c1 + 1``); ``labels`` (N,) int64 in ``0..K-1``.
  N may be 0. ``crowd`` (M, 4) / ``crowd_labels`` (M,) are COCO ``iscrowd`` regions: never a
  training box, and at evaluation a detection on one is neither a hit nor a false positive (as
  pycocotools does); empty for every other source of data.
* :class:`DetectionDomain` -- ``name``, ``classes`` (K names, no background class), ``len()``,
  ``sample(i)``, ``subset(idx, name)``, ``labeled``, ``require_usable(labels=..., num_classes=...)``
  and ``report`` (a :class:`~edgeda.data.domain.LoadReport`: images loaded, and every skipped file or
  annotation as ``(path, reason)``; ``skipped`` is its list). ``sample(i)`` raises ``ValueError``
  with a short reason when an image cannot be decoded; :class:`~edgeda.data.detection_transforms.DetectionDataset`
  then uses the next sample, as the dense dataset does.
* :func:`collate_detection` -- a list of samples of one size -> (images (B, C, H, W) float32,
  normalised as every edgeda input: ``uint8 / 255``, then ``(x - mean) / std``; targets: a list of
  ``{"boxes": float32 (N, 4), "labels": int64 (N,)}``, with ``crowd`` / ``crowd_labels`` added only for
  an image that has crowd regions).

Where the data comes from: the built-in generated domains (:mod:`edgeda.data.detection_builtin`),
COCO JSON, YOLO and Pascal VOC folders, and any image folder as unlabeled target data
(:mod:`edgeda.data.detection_files`). :func:`edgeda.data.detection_spec.load_detection_domain` resolves a spec string.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError
from .domain import LoadReport, wrong_labels

from .boxes import (MIN_BOX_SIDE, MIN_VISIBLE_PIXELS, _empty_boxes, _empty_labels, box_iou, box_mask,  # noqa: F401
                    box_sides, clip_boxes, instance_boxes, keep_boxes)


@dataclass
class DetectionSample:
    """One image and its objects (see the module doc for the conventions)."""

    image: np.ndarray  # (H, W, 3) uint8 (a dataset converted to the task's channels may hold C = 1)
    boxes: np.ndarray = field(default_factory=_empty_boxes)  # (N, 4) float32 x1 y1 x2 y2, pixels
    labels: np.ndarray = field(default_factory=_empty_labels)  # (N,) int64 in 0..K-1
    crowd: np.ndarray = field(default_factory=_empty_boxes)  # (M, 4) float32 iscrowd regions
    crowd_labels: np.ndarray = field(default_factory=_empty_labels)  # (M,) int64

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        self.crowd = np.asarray(self.crowd, np.float32).reshape(-1, 4)
        self.crowd_labels = np.asarray(self.crowd_labels, np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels) or len(self.crowd) != len(self.crowd_labels):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.labels)} labels (or {len(self.crowd)} crowd "
                             f"regions but {len(self.crowd_labels)} labels)")

    def target(self) -> dict:
        """``{"boxes": float32 tensor (N, 4), "labels": int64 tensor (N,)}``, plus ``crowd`` (M, 4) and
        ``crowd_labels`` (M,) when the image has crowd regions (losses read only boxes and labels; the
        detection meter ignores detections on crowd regions)."""
        out = {"boxes": torch.from_numpy(np.ascontiguousarray(self.boxes, np.float32)),
               "labels": torch.from_numpy(np.ascontiguousarray(self.labels, np.int64))}
        if len(self.crowd):
            out["crowd"] = torch.from_numpy(np.ascontiguousarray(self.crowd, np.float32))
            out["crowd_labels"] = torch.from_numpy(np.ascontiguousarray(self.crowd_labels, np.int64))
        return out


# ---- domains -------------------------------------------------------------------------------
class DetectionDomain:
    """Base of every detection domain (see the module doc). ``has_boxes``: the images carry box
    labels (``labeled``); ``palette`` (K, 3) uint8 colours for drawing (None: a default one)."""

    kind = "detection"
    classes_from_ids = False  # True when class names were made up from the largest id seen
    category_ids: list[int] | None = None  # a COCO json's id of each class (None: the source has no such ids)

    def __init__(self, name: str, *, classes: list[str] | None = None, has_boxes: bool = False,
                 report: LoadReport | None = None, palette: np.ndarray | None = None):
        self.name = name
        self.classes = list(classes) if classes is not None else None
        self.has_boxes = bool(has_boxes)
        self.report = report or LoadReport()
        self.palette = None if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, i: int) -> DetectionSample:
        raise NotImplementedError

    def subset(self, idx, name: str | None = None) -> "DetectionDomain":
        return _Subset(self, np.asarray(idx, np.int64).reshape(-1), name or self.name)

    @property
    def labeled(self) -> bool:
        return self.has_boxes

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Every skipped file or annotation as (path, reason) -- the load report's list."""
        return self.report.skipped

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    def require_usable(self, *, labels: str | None = None, num_classes: int | None = None) -> None:
        """One clear :class:`DataError` if this domain cannot be used with the ``labels`` a task needs
        (``boxes``; ``None``: used unlabeled) within ``num_classes``."""
        if len(self) == 0:
            extra = f" ({len(self.report.skipped)} files or annotations were skipped)" if self.report.skipped else ""
            raise DataError(f"domain {self.name!r} has no usable images{extra}")
        if labels is None:
            return
        if labels != "boxes":
            raise wrong_labels(self, "holds detection data (boxes)", labels)
        if not self.has_boxes:
            raise DataError(f"domain {self.name!r} has no box annotations (give a COCO .json, a YOLO folder with "
                            "images/, labels/ and classes.txt, a Pascal VOC folder with Annotations/, a KITTI "
                            "folder with image_2/ and label_2/, or images/ with Cityscapes-style "
                            "masks/*_instanceIds.png and a classes.txt of label ids)")
        if not self.classes:
            raise DataError(f"domain {self.name!r} names no classes (COCO 'categories', or classes.txt in a "
                            "YOLO folder)")
        if num_classes is not None and self.num_classes is not None:
            fits = self.num_classes == num_classes or (self.classes_from_ids and self.num_classes < num_classes)
            if not fits:
                raise DataError(f"domain {self.name!r} names {self.num_classes} classes, the task has {num_classes}")


class ArrayDetectionDomain(DetectionDomain):
    """A detection domain held in memory: ``images`` (N, H, W, C) uint8 (or a list of (H, W, C)
    arrays of any sizes), ``boxes`` / ``labels`` lists of per-image arrays (None: unlabeled)."""

    def __init__(self, name: str, images, boxes=None, labels=None, *, classes: list[str] | None = None,
                 report: LoadReport | None = None, palette: np.ndarray | None = None):
        if isinstance(images, np.ndarray) and (images.ndim != 4 or images.dtype != np.uint8):
            raise ValueError(f"detection images must be (N,H,W,C) uint8, got {images.shape} {images.dtype}")
        n = len(images)
        if (boxes is None) != (labels is None) or boxes is not None and not (len(boxes) == len(labels) == n):
            raise ValueError("boxes and labels need one entry per image (or both None)")
        super().__init__(name, classes=classes, has_boxes=boxes is not None,
                         report=report or LoadReport(loaded=n), palette=palette)
        self.images = images
        self.boxes = None if boxes is None else [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
        self.labels = None if labels is None else [np.asarray(v, np.int64).reshape(-1) for v in labels]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, i: int) -> DetectionSample:
        img = _three(self.images[i])
        if self.boxes is None:
            return DetectionSample(img)
        return DetectionSample(img, self.boxes[i].copy(), self.labels[i].copy())


def _three(img: np.ndarray) -> np.ndarray:
    from .transforms import convert_channels

    return convert_channels(np.asarray(img, np.uint8), 3)


class _Subset(DetectionDomain):
    def __init__(self, base: DetectionDomain, idx: np.ndarray, name: str):
        super().__init__(name, classes=base.classes, has_boxes=base.has_boxes, report=base.report, palette=base.palette)
        self.classes_from_ids = base.classes_from_ids
        self.category_ids = base.category_ids
        self.base, self.idx = base, idx

    def __len__(self) -> int:
        return len(self.idx)

    def sample(self, i: int) -> DetectionSample:
        return self.base.sample(int(self.idx[i]))


def as_detection_images(dom) -> DetectionDomain:
    """The images of any domain (a plain :class:`~edgeda.data.domain.Domain`, a dense domain) as an
    unlabeled detection domain: any image set is valid unlabeled target data for detection."""
    if isinstance(dom, DetectionDomain):
        return dom if not dom.has_boxes else _Unlabeled(dom)
    if hasattr(dom, "images") and isinstance(dom.images, np.ndarray):
        return ArrayDetectionDomain(dom.name, dom.images, report=dom.report)
    return _Unlabeled(dom)


class _Unlabeled(DetectionDomain):
    def __init__(self, base):
        super().__init__(base.name, classes=getattr(base, "classes", None), report=base.report)
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def sample(self, i: int) -> DetectionSample:
        return DetectionSample(_three(self.base.sample(i).image))


# ---- batches -------------------------------------------------------------------------------
def collate_detection(samples, mean=None, std=None) -> tuple[torch.Tensor, list[dict]]:
    """Samples of one size -> (images (B, C, H, W) float32, targets). Images are normalised as
    every edgeda input (``uint8 / 255``, then ``(x - mean) / std`` per channel; the defaults are the
    :class:`~edgeda.tasks.spec.TaskSpec` defaults, 0.5 and 0.5); ``targets[i]`` is
    ``{"boxes": float32 (N_i, 4), "labels": int64 (N_i,)}``. Items may be :class:`DetectionSample`
    or the dicts :class:`~edgeda.data.detection_transforms.DetectionDataset` yields."""
    from .transforms import to_float_nchw

    samples = [s["sample"] if isinstance(s, dict) else s for s in samples]
    if not samples:
        raise ValueError("collate_detection needs at least one sample")
    shapes = {s.image.shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"images of one batch must share a size, got {sorted(shapes)}")
    c = samples[0].image.shape[2] if samples[0].image.ndim == 3 else 1
    images = torch.from_numpy(np.stack([np.asarray(s.image, np.uint8).reshape(*s.image.shape[:2], c) for s in samples]))
    x = to_float_nchw(images, tuple(mean or (0.5,) * c), tuple(std or (0.5,) * c))
    return x, [s.target() for s in samples]


def collate_items(items, mean=None, std=None) -> dict:
    """What a detection stream's ``DataLoader`` yields: ``collate_detection`` of the dataset's dicts
    plus their ``index``, ``replaced`` (int64 tensors) and ``resize`` records (a list)."""
    x, targets = collate_detection(items, mean, std)
    return {"x": x, "targets": targets,
            "index": torch.tensor([int(it.get("index", -1)) for it in items], dtype=torch.int64),
            "replaced": torch.tensor([int(it.get("replaced", 0)) for it in items], dtype=torch.int64),
            "resize": [it.get("resize") for it in items]}
