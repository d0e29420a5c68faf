"""KITTI object detection data: one text file of objects per image, as the KITTI object benchmark and
tools that write its format (Virtual KITTI's exporters, many simulators) lay them out.

**Layout** -- ``root/image_2/<rel>.<png|jpg|...>`` (or ``root/images/``) with ``root/label_2/<rel>.txt``.
Each line of a label file is one object: ``type truncated occluded alpha left top right bottom h w l x
y z rotation_y`` (a 16th number, a score, is allowed); the box is ``left top right bottom`` in pixels.
``DontCare`` lines are regions without labels: kept apart like COCO's crowd regions, never trained on,
and detections in them ignored at evaluation, as the KITTI evaluation does. ``root/classes.txt`` (one
type per line), when present, fixes the classes and their order (``Car`` alone for the car-only
synthetic-to-real pairs); without it the classes are the types seen, sorted. An image with an empty
label file has no objects.

**Bad data never crashes a load**, as for COCO, YOLO and VOC: an image without a label file, a label
file without an image, an unreadable image, and lines with too few fields, a number that is not one, a
type not in ``classes.txt`` or a box that is degenerate or entirely outside the image (boxes partly
outside are clipped) are skipped and counted with the reason; one line is named ``file:line``.
``labeled=False`` reads the images only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .dense_files import _by_name, read_class_list
from .detection_files import FileDetectionDomain, _check_box, _image_size, _stack, load_image_folder
from .detection_voc import class_id, sorted_classes
from .domain import LoadReport
from .files import list_images, walk_files

IMAGE_DIRS = ("image_2", "images")
LABEL_DIR = "label_2"
IGNORED_TYPE = "DontCare"
MAX_LABEL_BYTES = 10_000_000


def is_kitti_folder(path) -> bool:
    """A folder with ``label_2/`` beside ``image_2/`` (or ``images/``)."""
    path = Path(path)
    return (path / LABEL_DIR).is_dir() and any((path / d).is_dir() for d in IMAGE_DIRS)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError("not a regular file")
    if path.stat().st_size > MAX_LABEL_BYTES:
        raise ValueError(f"larger than {MAX_LABEL_BYTES // 1_000_000} MB")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"not readable text ({type(e).__name__})") from None


def _objects(label: Path, lines: list[str], hw: tuple[int, int], index: dict[str, int], fixed: bool,
             report: LoadReport) -> tuple[list, list, list]:
    """(boxes, labels, DontCare boxes) of one file's good lines; a type not in ``index`` is skipped when
    the classes are ``fixed`` (classes.txt), else added to it."""
    H, W = hw
    boxes, labels, ignored = [], [], []
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{n}"
        if len(fields) not in (15, 16):
            report.skip(where, f"{len(fields)} fields; a KITTI line has 15 (type, truncated, occluded, alpha, "
                               "left, top, right, bottom, h, w, l, x, y, z, rotation_y) or 16 with a score", entry=True)
            continue
        try:
            box = np.array([float(v) for v in fields[4:8]], np.float64)
        except ValueError:
            report.skip(where, f"box {' '.join(fields[4:8])!r} is not four numbers", entry=True)
            continue
        box, problem = _check_box(box, H, W)
        if problem:
            report.skip(where, problem, entry=True)
            continue
        kind = fields[0]
        if kind == IGNORED_TYPE:
            ignored.append(box)
            continue
        k = class_id(index, kind, fixed, report, where, "type")
        if k is not None:
            boxes.append(box)
            labels.append(k)
    return boxes, labels, ignored


def load_kitti(root: Path, *, labeled: bool = True) -> FileDetectionDomain:
    """A KITTI object folder (see the module doc)."""
    root = Path(root)
    img_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if img_dir is None:
        raise DataError(f"{root} has no {' or '.join(IMAGE_DIRS)} folder of images")
    if not labeled:
        return load_image_folder(img_dir)
    report = LoadReport()
    fixed = (root / "classes.txt").is_file()
    index = {n: k for k, n in enumerate(read_class_list(root / "classes.txt")[0])} if fixed else {}
    images = _by_name(img_dir, list_images(img_dir), report, "image")
    labels = _by_name(root / LABEL_DIR, walk_files(root / LABEL_DIR, (".txt",)), report, "label file")
    items = []
    for key, img in images.items():
        label = labels.pop(key, None)
        if label is None:
            report.skip(str(img), f"no label file (expected {LABEL_DIR}/{key}.txt)")
            continue
        try:
            lines = _lines(label)
        except ValueError as e:
            report.skip(str(label), str(e))
            continue
        hw = _image_size(img, report)
        if hw is None:
            continue
        b, lab, ignored = _objects(label, lines, hw, index, fixed, report)
        items.append((img, hw, *_stack(b, lab), ignored))
    for label in labels.values():
        report.skip(str(label), "no image of the same name")
    if not items and not report.skipped:
        raise DataError(f"{root}/{LABEL_DIR} holds no label file with an image")
    classes = list(index)
    k = len(classes)  # a DontCare region is one for every class
    items = [(p, hw, b, lab, *_stack([r for r in ignored for _ in range(k)], list(range(k)) * len(ignored)))
             for p, hw, b, lab, ignored in items]
    if not fixed:
        items, classes = sorted_classes(items, classes)
    report.loaded = len(items)
    return FileDetectionDomain(str(root), items, classes=classes or None, has_boxes=True, report=report)
