"""Detection boxes from instance-id masks in Cityscapes' encoding (gtFine ``*_instanceIds.png``; the same
files come with Foggy Cityscapes, ACDC and other datasets in its format), read with ``--task detection``::

    root/images/rel.<png|jpg|...>          Cityscapes: the leftImg8bit/ tree (copied or linked)
    root/masks/rel*_instanceIds.png        Cityscapes: the gtFine/ tree; its other files are passed over
    root/classes.txt                       ``name = id`` per object class, ids being the masks' label ids
                                           (``configs/classes/cityscapes-things.txt``: the 8 thing classes)

Images pair with masks by the name they start with (Cityscapes' ``x_leftImg8bit.png`` and Foggy
Cityscapes' ``x_leftImg8bit_foggy_beta_0.02.png`` with ``x_gtFine_instanceIds.png``; :func:`_pair`). A pixel value ``v >= 1000`` is instance
``v % 1000`` of label id ``v // 1000``; where classes.txt names that id, it is one object whose box is
tight around its visible pixels (so occlusion is handled: a box covers the visible part). A value
``v < 1000`` is label id ``v`` without an instance number; where classes.txt names it, those pixels are
a crowd of objects of that class (Cityscapes' "car group"), each connected region one crowd box:
ignored in training and evaluation, as COCO's ``iscrowd``. Label ids classes.txt does not name are no
objects (road, sky, ...). This is the box definition of the usual Cityscapes -> Foggy Cityscapes
detection benchmarks, computed from the masks rather than from a converted json.

Bad data never crashes a load: an unreadable image or mask, an image without a mask, or a mask whose
size is neither its image's shown nor stored size skips that image with its reason (``report.skipped``);
every mask is decoded once at load time (on a few threads) to find the boxes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .boxes import instance_boxes
from .dense_files import MAX_MASK_ID, _by_name, _guarded, _header, _read_mask, read_class_file
from .detection_files import FileDetectionDomain, _image_size, _stack, declared_size, load_image_folder
from .domain import LoadReport
from .files import list_images, walk_files

INSTANCE_SUFFIX = "_instanceids"  # Cityscapes' gtFine name ending, compared in lower case
INSTANCE_BASE = 1000  # Cityscapes: value = label id * 1000 + instance number


def is_instance_folder(path: Path) -> bool:
    """Whether ``path`` holds ``images/`` and ``masks/`` with at least one ``*_instanceIds.png``."""
    path = Path(path)
    if not ((path / "images").is_dir() and (path / "masks").is_dir()):
        return False
    return any(p.stem.lower().endswith(INSTANCE_SUFFIX) for p in walk_files(path / "masks", (".png",)))


def boxes_of_instances(ids: np.ndarray, label_to_class: np.ndarray):
    """One instance-id map's objects: (boxes (N, 4), classes (N,), crowd boxes (M, 4), crowd classes (M,)).
    ``label_to_class``: (MAX_MASK_ID + 1,) a label id's class, 255 where it names none (see the module doc)."""
    from scipy import ndimage

    ids = np.asarray(ids, np.int64)
    label = np.where(ids >= INSTANCE_BASE, ids // INSTANCE_BASE, ids)
    cls = np.full(ids.shape, 255, np.int64)
    ok = (label >= 0) & (label <= MAX_MASK_ID)
    cls[ok] = label_to_class[label[ok]]
    objects = np.where((ids >= INSTANCE_BASE) & (cls != 255), ids, 0)
    inst, boxes = instance_boxes(objects, min_side=1.0, min_pixels=1)
    classes = label_to_class[inst // INSTANCE_BASE].astype(np.int64)
    crowd, crowd_cls = [], []
    for c in np.unique(cls[(ids < INSTANCE_BASE) & (cls != 255)]):
        regions, _ = ndimage.label((ids < INSTANCE_BASE) & (cls == c))
        for sl in ndimage.find_objects(regions):
            crowd.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            crowd_cls.append(int(c))
    c_boxes, c_cls = _stack(crowd, crowd_cls)
    return boxes, classes, c_boxes, c_cls


def _one(img: Path, mask: Path, label_to_class: np.ndarray) -> tuple[tuple | None, LoadReport]:
    report = LoadReport()
    return _boxes_of_file(img, mask, label_to_class, report), report


def _boxes_of_file(img: Path, mask: Path, label_to_class: np.ndarray, report: LoadReport):
    hw = _image_size(img, report)
    if hw is None:
        return None
    try:
        mhw = _guarded(_header, mask, "mask", None)
        ids = _guarded(_read_mask, mask, None, None)
    except ValueError as e:
        report.skip(str(mask), f"unreadable instance mask: {e}")
        return None
    hw = declared_size(img, hw, mhw[1], mhw[0], "instance mask", report)
    if hw is None:
        return None
    return (img, hw, *boxes_of_instances(ids, label_to_class))


def _prefixes(key: str) -> list[str]:
    """``key`` and its starts that end before an underscore of its file name, longest first."""
    head, _, stem = key.rpartition("/")
    cuts = [i for i, c in enumerate(stem) if c == "_"]
    return [key] + [f"{head}/{stem[:i]}" if head else stem[:i] for i in reversed(cuts) if i > 0]


def _pair(images: dict[str, Path], masks: dict[str, Path], report: LoadReport) -> list[tuple[Path, Path]]:
    """(image, instance mask) pairs. A mask's frame is its name without ``_instanceIds`` and, where one
    follows the frame, without the annotation kind before it (Cityscapes' ``x_gtFine``: ``x``); an image
    pairs with the mask of its longest name start, cut at an underscore, that is a frame (``x_leftImg8bit``
    and Foggy Cityscapes' ``x_leftImg8bit_foggy_beta_0.02``: ``x``). Unpaired and doubly paired files are
    skipped with the reason."""
    frames: dict[str, list[str]] = {}
    for key in masks:
        base = key[:len(key) - len(INSTANCE_SUFFIX)]
        for frame in dict.fromkeys(_prefixes(base)[:2]):
            frames.setdefault(frame, []).append(key)
    pairs, used = [], set()
    for key, img in images.items():
        hit = next((frames[c] for c in _prefixes(key) if c in frames), None)
        if hit is None:
            report.skip(str(img), "no instance mask (expected masks/<name>_instanceIds.png)")
        elif len(hit) > 1:
            report.skip(str(img), f"{len(hit)} instance masks fit its name ({', '.join(sorted(hit)[:3])}); keep one")
        else:
            pairs.append((img, masks[hit[0]]))
            used.add(hit[0])
    for key in sorted(masks.keys() - used):
        report.skip(str(masks[key]), "no image of the same name")
    return pairs


def load_instance_folder(root: Path, *, labeled: bool = True) -> FileDetectionDomain:
    """An instance-mask folder (see the module doc); ``labeled=False`` uses ``images/`` only."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    if not labeled:
        return load_image_folder(root / "images")
    if not (root / "classes.txt").is_file():
        raise DataError(f"{root}: instance masks need a classes.txt naming each object class by its label id "
                        "('car = 26'; configs/classes/cityscapes-things.txt holds Cityscapes' 8 thing classes)")
    classes, _, id_map = read_class_file(root / "classes.txt")
    if id_map is None:
        raise DataError(f"{root / 'classes.txt'}: give each class its label id ('car = 26'): instance masks "
                        "hold label ids, not class indices")
    report = LoadReport()
    images = _by_name(root / "images", list_images(root / "images"), report, "image")
    masks = {k: p for k, p in _by_name(root / "masks", walk_files(root / "masks", (".png",)), report, "mask").items()
             if p.stem.lower().endswith(INSTANCE_SUFFIX)}
    pairs = _pair(images, masks, report)
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(lambda pair: _one(*pair, id_map), pairs))
    items = []
    for item, own in found:  # in the images' order, whatever the threads' order
        for path, reason in own.skipped:
            report.skip(path, reason)
        if item is not None:
            items.append(item)
    report.loaded = len(items)
    if not items:
        raise DataError(f"{root}: no image with a readable instance mask ({len(report.skipped)} skipped)")
    return FileDetectionDomain(str(root), items, classes=classes, has_boxes=True, report=report)
