"""Detection user data: COCO JSON, YOLO folders, and any image folder (unlabeled); Pascal VOC folders
are read by :mod:`edgeda.data.detection_voc`.

**COCO** -- a ``.json`` file, or a folder holding exactly one ``*.json`` (at its top or in
``annotations/``). Keys: ``images`` (``id``, ``file_name``, optional ``width``/``height``),
``annotations`` (``image_id``, ``bbox`` = ``[x, y, w, h]`` in pixels, ``category_id``, optional
``iscrowd``) and ``categories`` (``id``, ``name``). Categories are sorted by id and numbered
``0..K-1`` in that order; their names are kept, and the domain's ``category_ids[k]`` and
``image_ids[i]`` give back the json's ids (for a results file the json's own tools can score).
``file_name`` is looked up beside the json, in ``images/`` beside it, and (for the ``annotations/``
layout) in the folder above and its ``images/``.
An image with no annotation is kept as an image without objects. ``iscrowd: 1`` annotations are
kept apart as crowd regions (``DetectionSample.crowd``): never trained on, and ignored at
evaluation as pycocotools ignores them.

**YOLO** -- ``root/images/<rel>.<png|jpg|...>``, ``root/labels/<rel>.txt`` and ``root/classes.txt``
(one class name per line). Each label line is ``class cx cy w h``, the centre and size normalised
by the image's width and height. An empty label file means an image without objects. **An image
with no label file is skipped and counted** ("no label file"): a missing file is more often a
broken export than a statement that the image is empty, so a true negative needs its empty file.
Without classes.txt the classes are named ``0..K-1``, K = 1 + the largest id seen.

**Bad data never crashes a load** (as in :mod:`edgeda.data.files`): only image headers are read at
load time; each problem is skipped and recorded with its reason in ``report.skipped`` as
``(path, reason)``, the path naming the file and, for one annotation, ``file#annotation <id>`` or
``file:<line>``. Skipped: unreadable images (and images named in a json but absent), images whose
size differs from the json's ``width``/``height`` (its boxes would not fit), boxes entirely outside
their image or of zero or negative width or height or not finite (boxes partly outside are clipped
to the image and kept), unknown class ids, malformed annotations and label lines, YOLO images
without a label file, label files without an image. A file that only fails when decoded
makes ``sample(i)`` raise ``ValueError``; the detection dataset then uses the next sample.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dense_files import _by_name, _guarded, _header, _stored_size, read_class_list
from .detection import DetectionDomain, DetectionSample, _three
from .domain import LoadReport
from .files import list_images, not_data, read_image, walk_files

MAX_JSON_BYTES = 2_000_000_000
_LABEL_SUFFIX = (".txt",)


class FileDetectionDomain(DetectionDomain):
    """Samples decoded from disk on demand. ``items``: one ``(image path, (H, W) from its header,
    boxes (N, 4), labels (N,), crowd (M, 4), crowd labels (M,))`` per image; boxes None = unlabeled."""

    def __init__(self, name: str, items, *, classes=None, has_boxes: bool, report: LoadReport | None = None):
        super().__init__(name, classes=classes, has_boxes=has_boxes, report=report or LoadReport(loaded=len(items)))
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int) -> DetectionSample:
        path, hw, boxes, labels, crowd, crowd_labels = self.items[i]
        image = _three(read_image(path, hw))
        if hw is not None and image.shape[:2] != tuple(hw):
            raise ValueError(f"decoded as {image.shape[1]}x{image.shape[0]}, its header said {hw[1]}x{hw[0]}")
        if not self.has_boxes or boxes is None:
            return DetectionSample(image)
        return DetectionSample(image, boxes.copy(), labels.copy(), crowd.copy(), crowd_labels.copy())

    def paths(self) -> list[Path]:
        return [it[0] for it in self.items]


def _check_box(box: np.ndarray, h: int, w: int) -> tuple[np.ndarray | None, str | None]:
    """A pixel box x1 y1 x2 y2 clipped to the image, or (None, reason) when it is unusable."""
    if not np.isfinite(box).all():
        return None, "box has a value that is not a finite number"
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, f"degenerate box (width {box[2] - box[0]:g}, height {box[3] - box[1]:g})"
    if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
        return None, f"box [{', '.join(f'{v:g}' for v in box)}] lies outside the {w}x{h} image"
    c = np.array([min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w), min(max(box[3], 0), h)],
                 np.float32)
    return c, None


def _image_size(path: Path, report: LoadReport) -> tuple[int, int] | None:
    """(H, W) of an image as shown (EXIF orientation applied), None (skipped, counted) when unreadable."""
    try:
        return _guarded(_header, path, "image", None)
    except ValueError as e:
        report.skip(str(path), f"unreadable image: {e}")
        return None


def declared_size(path: Path, hw: tuple[int, int], width, height, where: str, report: LoadReport):
    """The (H, W) an annotation file's boxes are in: the image's shown size ``hw``, or its stored size where
    the file declares that one (a tool that ignored the EXIF orientation; the stored pixels are then read);
    None (skipped, counted) when the file declares another size. No declared size (0 or absent): ``hw``."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in (width, height)):
        return hw
    said = (int(height), int(width))
    if said == hw or said == _guarded(_stored_size, path):
        return said
    report.skip(str(path), f"image is {hw[1]}x{hw[0]}, the {where} says {said[1]}x{said[0]}")
    return None


def _stack(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1))


# ---- COCO ----------------------------------------------------------------------------------
def find_coco_json(root: Path) -> Path | None:
    """The one ``*.json`` of a COCO folder (at its top, else in ``annotations/``); None if none;
    DataError if several."""
    for where in (root, root / "annotations"):
        found = sorted(p for p in where.glob("*.json") if p.is_file() and not not_data(p.name)) if where.is_dir() else []
        if len(found) > 1:
            raise DataError(f"{where} holds {len(found)} .json files ({', '.join(p.name for p in found[:4])}); "
                            "give the path of the COCO file to use")
        if found:
            return found[0]
    return None


def _read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{path} is larger than {MAX_JSON_BYTES // 1_000_000} MB")
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        first = (str(e).splitlines() or [""])[0][:120]
        raise DataError(f"{path} is not a readable JSON file ({type(e).__name__}: {first})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} is not COCO: it needs a top-level object with an 'images' list")
    for key in ("annotations", "categories"):
        if key in data and not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list")
    return data


def _coco_categories(path: Path, cats: list) -> tuple[dict[int, int], list[str]]:
    by_id = {}
    for n, c in enumerate(cats):
        cid = c.get("id") if isinstance(c, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f"{path}: categories[{n}] has no integer 'id'")
        if cid in by_id:
            raise DataError(f"{path}: category id {cid} is given twice")
        name = c.get("name")
        by_id[cid] = str(name) if name is not None and str(name).strip() else str(cid)
    order = sorted(by_id)
    return {cid: k for k, cid in enumerate(order)}, [by_id[cid] for cid in order]


def _resolve_file(json_path: Path, name: str) -> Path:
    base = json_path.parent
    roots = [base, base / "images"]
    if base.name == "annotations":
        roots += [base.parent, base.parent / "images"]
    for r in roots:
        p = r / name
        if p.is_file():
            return p
    return base / name


def coco_images(path: Path, data: dict, report: LoadReport) -> dict:
    """``{image id: (image path, (H, W))}`` of a COCO json's ``images`` in their order, None for an image
    that is absent, unreadable or of another size than the json says (skipped and counted as a file);
    malformed and repeated entries are skipped and counted as entries, and not listed."""
    images: dict = {}
    for n, im in enumerate(data["images"]):
        iid = im.get("id") if isinstance(im, dict) else None
        fname = im.get("file_name") if isinstance(im, dict) else None
        where = f"{path}#images[{n}]"
        if isinstance(iid, bool) or not isinstance(iid, (int, str)) or not isinstance(fname, str) or not fname:
            report.skip(where, "image entry needs an 'id' and a 'file_name'", entry=True)
            continue
        if iid in images:
            report.skip(where, f"image id {iid!r} is given twice", entry=True)
            continue
        img_path = _resolve_file(path, fname)
        images[iid] = None
        if not img_path.is_file():
            report.skip(str(img_path), "image named in the json is not there")
            continue
        hw = _image_size(img_path, report)
        if hw is None:
            continue
        hw = declared_size(img_path, hw, im.get("width"), im.get("height"), "json", report)
        if hw is None:
            continue
        images[iid] = (img_path, hw)
    return images


def load_coco(path: Path, *, labeled: bool = True) -> FileDetectionDomain:
    """A COCO ``.json`` file or a folder holding one (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        found = find_coco_json(path)
        if found is None:
            raise DataError(f"{path} holds no .json annotation file")
        path = found
    data = _read_json(path)
    report = LoadReport()
    cat_index, classes = _coco_categories(path, data.get("categories", []) or []) if labeled else ({}, [])
    if labeled and not classes and data.get("annotations"):
        raise DataError(f"{path} has annotations but no 'categories'")
    found = coco_images(path, data, report)
    images = {iid: {"path": None} if v is None else {"path": v[0], "hw": v[1], "boxes": [], "labels": [], "crowd": [],
                                                      "crowd_labels": []} for iid, v in found.items()}
    order = [iid for iid, v in found.items() if v is not None]
    if labeled:
        for n, a in enumerate(data.get("annotations", []) or []):
            _coco_annotation(path, n, a, images, cat_index, report)
    items = []
    for iid in order:
        rec = images[iid]
        if labeled:
            b, lab = _stack(rec["boxes"], rec["labels"])
            c, clab = _stack(rec["crowd"], rec["crowd_labels"])
            items.append((rec["path"], rec["hw"], b, lab, c, clab))
        else:
            items.append((rec["path"], rec["hw"], None, None, None, None))
    report.loaded = len(items)
    dom = FileDetectionDomain(str(path), items, classes=classes if labeled else None, has_boxes=labeled, report=report)
    dom.image_ids = list(order)  # the json's id of each kept image, in domain order
    dom.category_ids = sorted(cat_index, key=cat_index.get)  # the json's id of class k
    return dom


def _coco_annotation(path: Path, n: int, a, images: dict, cat_index: dict, report: LoadReport) -> None:
    aid = a.get("id", n) if isinstance(a, dict) else n
    where = f"{path}#annotation {aid}"
    if not isinstance(a, dict):
        report.skip(where, "annotation is not an object", entry=True)
        return
    iid = a.get("image_id")
    if isinstance(iid, bool) or not isinstance(iid, (int, str)) or iid not in images:
        report.skip(where, f"refers to unknown image id {iid!r}", entry=True)
        return
    rec = images[iid]
    if rec["path"] is None:
        return  # its image was skipped (and counted) already
    cid = a.get("category_id")
    if isinstance(cid, bool) or not isinstance(cid, int) or cid not in cat_index:
        report.skip(where, f"unknown category id {cid!r}", entry=True)
        return
    bbox = a.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        report.skip(where, "'bbox' must be four numbers [x, y, w, h]", entry=True)
        return
    x, y, w, h = (float(v) for v in bbox)
    H, W = rec["hw"]
    box, problem = _check_box(np.array([x, y, x + w, y + h], np.float64), H, W)
    if problem:
        report.skip(where, problem, entry=True)
        return
    crowd = bool(a.get("iscrowd", 0))
    rec["crowd" if crowd else "boxes"].append(box)
    rec["crowd_labels" if crowd else "labels"].append(cat_index[cid])


# ---- YOLO ----------------------------------------------------------------------------------
def is_yolo_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir()


def _yolo_lines(label: Path, hw: tuple[int, int], k: int | None, report: LoadReport):
    """Parse one label file: (boxes, labels) of its good lines, or None when the file is unreadable."""
    try:
        if not label.is_file():  # a FIFO or device could block forever
            raise OSError("not a regular file")
        text = label.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        report.skip(str(label), f"unreadable label file ({type(e).__name__})")
        return None
    H, W = hw
    boxes, labels = [], []
    for ln, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{label}:{ln}"
        if len(parts) != 5:
            report.skip(where, f"a label line needs 5 values 'class cx cy w h', got {len(parts)}", entry=True)
            continue
        try:
            cls_f = float(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError:
            report.skip(where, "a label line needs numbers 'class cx cy w h'", entry=True)
            continue
        if not math.isfinite(cls_f) or cls_f != int(cls_f) or cls_f < 0 or (k is not None and cls_f >= k):
            report.skip(where, f"unknown class id {parts[0]}" + (f" (classes.txt names {k})" if k is not None else ""), entry=True)
            continue
        box, problem = _check_box(np.array([(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W,
                                            (cy + bh / 2) * H], np.float64), H, W)
        if problem:
            report.skip(where, problem, entry=True)
            continue
        boxes.append(box)
        labels.append(int(cls_f))
    return boxes, labels


def load_yolo(root: Path, *, labeled: bool = True) -> FileDetectionDomain:
    """A YOLO folder (see the module doc); ``labeled=False`` uses ``images/`` only."""
    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DataError(f"{root} has no images/ folder")
    report = LoadReport()
    classes = None
    if labeled and (root / "classes.txt").is_file():
        classes, _ = read_class_list(root / "classes.txt")
    images = _by_name(img_dir, list_images(img_dir), report, "image")
    labels = _by_name(lab_dir, walk_files(lab_dir, _LABEL_SUFFIX), report, "label file") if labeled else {}
    labels.pop("classes", None)
    k = len(classes) if classes is not None else None
    items, top = [], -1
    for key, img in images.items():
        lab = labels.pop(key, None)
        if labeled and lab is None:
            report.skip(str(img), f"no label file (expected labels/{key}.txt; an image without objects needs an "
                                  "empty one)")
            continue
        hw = _image_size(img, report)
        if hw is None:
            continue
        if not labeled:
            items.append((img, hw, None, None, None, None))
            continue
        parsed = _yolo_lines(lab, hw, k, report)
        if parsed is None:
            continue
        b, lab_ids = _stack(*parsed)
        top = max(top, int(lab_ids.max()) if len(lab_ids) else -1)
        items.append((img, hw, b, lab_ids, *_stack([], [])))
    for p in labels.values():
        report.skip(str(p), "label file has no image of the same name")
    from_ids = labeled and classes is None
    if from_ids:
        classes = [str(i) for i in range(top + 1)] if top >= 0 else None
    report.loaded = len(items)
    dom = FileDetectionDomain(str(root), items, classes=classes, has_boxes=labeled, report=report)
    dom.classes_from_ids = from_ids
    return dom


# ---- any image folder ----------------------------------------------------------------------
def load_image_folder(root: Path) -> FileDetectionDomain:
    """Every image under ``root`` (recursive; under ``root/images`` only where it exists, so a
    segmentation folder's masks are not taken for images), unlabeled; unreadable headers are skipped."""
    root = Path(root)
    report = LoadReport()
    items = []
    for img in list_images(root / "images" if (root / "images").is_dir() else root):
        hw = _image_size(img, report)
        if hw is not None:
            items.append((img, hw, None, None, None, None))
    report.loaded = len(items)
    return FileDetectionDomain(str(root), items, has_boxes=False, report=report)
