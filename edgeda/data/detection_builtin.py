"""Built-in detection domains, generated with no download: the dense built-ins with boxes.

* ``digitscenes`` -> ``handwritten-scenes`` (every split of each): classes the 10 digits ``0``-``9``;
  the images are exactly those of the segmentation domains (same cache, same seeds) and each
  digit's box is the tight box of its visible labelled ink (:func:`edgeda.data.digitscenes.digit_boxes`):
  from the renderer's glyph coverage for the synthetic digits, from the real scan's own ink where
  it was placed for the handwritten ones.
* ``synscenes`` (every split: ``train``/``val``/``test`` in the game look, ``photo``/``photo-test`` and
  the conditions ``fog``, ``night``, ``rain``, ``high-cam``, ``wide``, ``suburb`` with their ``-test``
  splits): the Cityscapes thing classes the renderer draws (:data:`SYNSCENES_CLASSES`: person, rider,
  car, truck, bus, bicycle; it draws no train or motorcycle). Boxes cover the visible pixels of each
  instance from the renderer's z-buffer (:func:`edgeda.data.synscenes.instance_boxes`): occluded parts
  are not in a box, fully hidden objects and slivers have none. The images are byte-identical to the
  segmentation domain's for the same split, seed and size.

Each loader has the dense loader's ``splits`` and ``default_size``; they register in
:data:`DETECTION_BUILTINS` under the same names, so a spec string means the same images for every task.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..registry import Registry
from ..utils import atomic_path
from . import builtin as dense
from . import synscenes as ss
from .builtin import DIGIT_CLASSES
from .detection import ArrayDetectionDomain
from .digitscenes import digit_boxes, scene_palette
from .domain import LoadReport
from .synscenes import CLASSES, PALETTE, THING_CLASSES

DETECTION_BUILTINS: Registry[Callable[..., ArrayDetectionDomain]] = Registry("built-in detection domain")
SYNSCENES_DETECTION_VERSION = 1  # bump when the boxes drawn from a synscenes render change


def _register(name: str, dense_loader):
    def add(fn):
        fn.splits = dense_loader.splits
        fn.default_size = dense_loader.default_size
        fn.dense = False
        fn.__doc__ = (fn.__doc__ or "") + f"\n\nSplits: {', '.join(dense_loader.splits)}."
        return DETECTION_BUILTINS.register(name)(fn)

    return add


def _from_digit_masks(dom, name: str) -> ArrayDetectionDomain:
    boxes, labels = zip(*(digit_boxes(m) for m in dom.masks)) if len(dom.masks) else ((), ())
    out = ArrayDetectionDomain(name, dom.images, list(boxes), list(labels), classes=DIGIT_CLASSES,
                               report=LoadReport(loaded=len(dom.images)), palette=scene_palette()[1:])
    if hasattr(dom, "scan_ids"):
        out.scan_ids = dom.scan_ids
    return out


@_register("digitscenes", dense.digitscenes)
def digitscenes(split: str = "train", *, size=(64, 64), channels=3, n: int | None = None, seed: int = 0):
    """Rendered digits on procedural backgrounds, one box per digit (see the module doc)."""
    dom = dense.digitscenes(split, size=size, channels=3, n=n, seed=seed)
    return _from_digit_masks(dom, f"digitscenes:{split}")


@_register("handwritten-scenes", dense.handwritten_scenes)
def handwritten_scenes(split: str = "adapt", *, size=(64, 64), channels=3, n: int | None = None, seed: int = 0):
    """Real handwritten scans on real photographs (or paper, a board, low light), one box per digit."""
    dom = dense.handwritten_scenes(split, size=size, channels=3, n=n, seed=seed)
    return _from_digit_masks(dom, f"handwritten-scenes:{split}")


def _synscenes_classes():
    return [CLASSES[c] for c in THING_CLASSES], PALETTE[list(THING_CLASSES)]


SYNSCENES_CLASSES = _synscenes_classes()[0]


def render_synscenes_boxes(n: int, seed: int, size, look: str) -> dict:
    """``x`` (n, H, W, 3) uint8, ``b`` (M, 4) float32 boxes, ``l`` (M,) int64 labels (indices into
    :data:`SYNSCENES_CLASSES`) and ``c`` (n,) int64 boxes per image, images in order."""
    images, masks, _, inst = ss.render(n, seed, tuple(size), look, 3, instances=True)
    to_label = np.full(len(ss.CLASSES), -1, np.int64)
    to_label[list(ss.THING_CLASSES)] = np.arange(len(ss.THING_CLASSES))
    boxes, labels, counts = [], [], []
    for m, i in zip(masks, inst):
        b, c = ss.instance_boxes(m, i)
        boxes.append(b)
        labels.append(to_label[c])
        counts.append(len(b))
    return {"x": images, "b": np.concatenate(boxes + [np.zeros((0, 4), np.float32)]).astype(np.float32),
            "l": np.concatenate(labels + [np.zeros(0, np.int64)]).astype(np.int64), "c": np.asarray(counts, np.int64)}


def _cached_boxes(key: str, n: int, hw: tuple[int, int], render: Callable[[], dict]) -> dict:
    import zipfile

    path = dense.cache_dir() / key
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in "xblc"}
            c = arrays["c"]
            if arrays["x"].shape == (n, *hw, 3) and c.shape == (n,) and len(arrays["b"]) == len(arrays["l"]) == c.sum():
                return arrays
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry is rendered again
    arrays = render()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    except OSError:
        pass  # caching is an optimisation only
    return arrays


@_register("synscenes", dense.synscenes)
def synscenes(split: str = "train", *, size=(128, 256), channels=3, n: int | None = None, seed: int = 0):
    """Procedural street scenes, boxes of the visible part of each person, rider, car, truck, bus
    and bicycle (see the module doc)."""
    dense._check_split("synscenes", split, dense.synscenes.splits)
    h, w = dense._dense_size(size)
    look, base_seed, default_n = dense._SYNSCENES_SPLITS[split]
    n = n or default_n
    render_seed = base_seed + seed
    key = (f"synscenes-boxes-v{ss.SYNSCENES_VERSION}.{SYNSCENES_DETECTION_VERSION}-{split}-s{render_seed}-n{n}-"
           f"{h}x{w}.npz")
    a = _cached_boxes(key, n, (h, w), lambda: render_synscenes_boxes(n, render_seed, (h, w), look))
    ends = np.cumsum(a["c"])
    starts = ends - a["c"]
    boxes = [a["b"][s:e] for s, e in zip(starts, ends)]
    labels = [a["l"][s:e] for s, e in zip(starts, ends)]
    classes, palette = _synscenes_classes()
    return ArrayDetectionDomain(f"synscenes:{split}", a["x"], boxes, labels, classes=classes, palette=palette,
                                report=LoadReport(loaded=n))
