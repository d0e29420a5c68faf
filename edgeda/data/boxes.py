"""Box arithmetic on numpy arrays (x1 y1 x2 y2, pixels): clipping, sides, IoU, the foreground mask
of boxes, and the boxes of the visible pixels of each instance of an instance map. A leaf module:
the renderers and the detection data both use it."""
from __future__ import annotations

import numpy as np

MIN_BOX_SIDE = 2.0  # pixels: a box narrower or lower than this (a sliver) is no object to detect
MIN_VISIBLE_PIXELS = 4  # a rendered object showing fewer pixels than this is dropped


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), np.int64)


# ---- boxes ---------------------------------------------------------------------------------
def clip_boxes(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, 4) x1 y1 x2 y2 clipped to the image ``[0, w] x [0, h]``."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
    return b


def box_sides(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]


def keep_boxes(boxes: np.ndarray, min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """(N,) bool: finite boxes whose width and height are both at least ``min_side`` pixels
    (``min_side`` 0: any box of positive area)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    bw, bh = box_sides(b)
    ok = np.isfinite(b).all(1)
    return ok & ((bw >= min_side) & (bh >= min_side) if min_side > 0 else (bw > 0) & (bh > 0))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of x1 y1 x2 y2 boxes (0 where a union is empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_mask(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) uint8 foreground mask of the boxes: 255 on every pixel whose centre lies inside one
    (the mask the foreground/background-aware translators take from box labels), 0 elsewhere."""
    out = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in clip_boxes(boxes, h, w):
        c0, c1 = int(np.ceil(x1 - 0.5)), int(np.ceil(x2 - 0.5))  # pixel c is inside when x1 <= c + 0.5 < x2
        r0, r1 = int(np.ceil(y1 - 0.5)), int(np.ceil(y2 - 0.5))
        out[r0:r1, c0:c1] = 255
    return out


def instance_boxes(instances: np.ndarray, min_side: float = MIN_BOX_SIDE,
                   min_pixels: int = MIN_VISIBLE_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the visible pixels of each instance of an (H, W) integer map (0 = no instance):
    (ids (N,) int64 ascending, boxes (N, 4) float32), each the tight box ``[c0, c1 + 1) x [r0, r1 + 1)``
    around every pixel of that id. Instances with fewer than ``min_pixels`` pixels or a side below
    ``min_side`` (slivers) are left out; an id with no pixel (a fully hidden object) has no box."""
    inst = np.asarray(instances)
    ids = np.unique(inst)
    ids = ids[ids != 0]
    if not len(ids):
        return _empty_labels(), _empty_boxes()
    rows, cols = np.nonzero(inst)
    vals = inst[rows, cols]
    order = np.searchsorted(ids, vals)
    n = len(ids)
    r0 = np.full(n, np.iinfo(np.int64).max)
    c0 = np.full(n, np.iinfo(np.int64).max)
    r1 = np.full(n, -1)
    c1 = np.full(n, -1)
    np.minimum.at(r0, order, rows)
    np.minimum.at(c0, order, cols)
    np.maximum.at(r1, order, rows)
    np.maximum.at(c1, order, cols)
    count = np.bincount(order, minlength=n)
    boxes = np.stack([c0, r0, c1 + 1, r1 + 1], 1).astype(np.float32)
    keep = (count >= min_pixels) & keep_boxes(boxes, min_side)
    return ids[keep].astype(np.int64), boxes[keep]
