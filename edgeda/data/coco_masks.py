"""COCO instance masks read as semantic segmentation: ``--task segmentation --source annotations.json``.

Synthetic-data tools write COCO JSON with a ``segmentation`` per object (polygons or RLE); this reads
such a file (the same keys, file lookup and bad-data policy as the COCO reader of
:mod:`edgeda.data.detection_files`) as a dense domain. Classes: ``background`` (id 0, every pixel no
object covers) and the categories sorted by id. Each image's mask is drawn when the sample is read
(pycocotools decodes the polygons and RLE): ``iscrowd`` regions first as 255 (ignored), then the objects
from the largest to the smallest, so a small object in front of a large one keeps its pixels.
Annotations without a usable ``segmentation``, with an unknown category or image id are skipped and
counted as entries; images that are absent, unreadable or of another size than the json says are
skipped as files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .dense import IGNORE_INDEX, DenseDomain, DenseSample
from .detection_files import _coco_categories, _read_json, coco_images
from .domain import LoadReport
from .files import read_image

BACKGROUND = "background"


class CocoMaskDomain(DenseDomain):
    """``items``: one ``(image path, (H, W), [(class id, segmentation, area, crowd), ...])`` per image."""

    def __init__(self, name: str, items, classes: list[str], *, labeled: bool, report: LoadReport):
        super().__init__(name, classes=classes if labeled else None, has_masks=labeled, report=report)
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int) -> DenseSample:
        path, hw, objects = self.items[i]
        image = read_image(path, hw)
        if image.shape[:2] != tuple(hw):
            raise ValueError(f"decoded as {image.shape[1]}x{image.shape[0]}, its header said {hw[1]}x{hw[0]}")
        if not self.has_masks:
            return DenseSample(image)
        return DenseSample(image, draw_mask(objects, hw))


def draw_mask(objects, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class ids of one image's objects (see the module doc for the order)."""
    mask = np.zeros(hw, np.uint8)
    order = sorted(objects, key=lambda o: (not o[3], -o[2]))  # crowd regions first, then large to small
    for cls, segm, _, crowd in order:
        mask[_decode(segm, hw) > 0] = IGNORE_INDEX if crowd else cls
    return mask


def _decode(segm, hw: tuple[int, int]) -> np.ndarray:
    import warnings

    from pycocotools import mask as coco_mask

    h, w = hw
    if isinstance(segm, list):  # polygons
        rle = coco_mask.merge(coco_mask.frPyObjects(segm, h, w))
    elif isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(segm, h, w)
    else:
        rle = segm
    with warnings.catch_warnings():  # pycocotools' own use of numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle)


def _segmentation_problem(segm, hw: tuple[int, int]) -> str | None:
    """Why ``segm`` cannot be drawn (None: it can)."""
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list)]
        if not polys or len(polys) != len(segm):
            return "'segmentation' must be a list of polygons [x1, y1, x2, y2, ...] or an RLE object"
        if any(len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
               for p in polys):
            return "a polygon needs at least 3 points, as numbers x1 y1 x2 y2 ..."
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != list(hw):
            return f"RLE size {segm['size']} is not the image's {list(hw)}"
        if isinstance(segm["counts"], (list, str)):
            return None
    return "'segmentation' must be a list of polygons [x1, y1, x2, y2, ...] or an RLE object"


def load_coco_masks(path: Path, *, labeled: bool = True) -> CocoMaskDomain:
    """A COCO ``.json`` with per-object ``segmentation`` as a dense domain (see the module doc)."""
    path = Path(path)
    data = _read_json(path)
    report = LoadReport()
    cat_index, names = _coco_categories(path, data.get("categories", []) or [])
    images = {iid: (v[0], v[1], []) if v is not None else (None, None, [])
              for iid, v in coco_images(path, data, report).items()}
    order = [iid for iid, v in images.items() if v[1] is not None]
    drawn = 0
    for n, a in enumerate((data.get("annotations", []) or []) if labeled else []):
        where = f"{path}#annotation {a.get('id', n) if isinstance(a, dict) else n}"
        if not isinstance(a, dict) or a.get("image_id") not in images:
            report.skip(where, f"refers to unknown image id {a.get('image_id') if isinstance(a, dict) else None!r}",
                        entry=True)
            continue
        img, hw, objects = images[a["image_id"]]
        if hw is None:
            continue  # its image was skipped (and counted) already
        cid = a.get("category_id")
        if isinstance(cid, bool) or cid not in cat_index:
            report.skip(where, f"unknown category id {cid!r}", entry=True)
            continue
        problem = _segmentation_problem(a.get("segmentation"), hw)
        if problem:
            report.skip(where, problem, entry=True)
            continue
        area = a.get("area")
        objects.append((cat_index[cid] + 1, a["segmentation"], float(area) if isinstance(area, (int, float)) else 0.0,
                        bool(a.get("iscrowd", 0))))
        drawn += 1
    if labeled and data.get("annotations") and not drawn:
        raise DataError(f"{path}: no annotation has a usable 'segmentation' (polygons or RLE): it is box data; "
                        "train a detector with --task detection")
    if BACKGROUND in names:
        raise DataError(f"{path}: a category is named {BACKGROUND!r}, the name of class 0 (every pixel no object "
                        "covers); rename it")
    items = [images[i] for i in order]
    report.loaded = len(items)
    return CocoMaskDomain(str(path), items, [BACKGROUND, *names], labeled=labeled, report=report)
