"""Joint transforms of (image, boxes), and the torch ``Dataset`` that feeds detection samples.

Every transform moves the boxes with the pixels. Box coordinates are pixel edges (pixel column
``c`` spans ``[c, c + 1)``), and :func:`edgeda.data.transforms.resize_image` (PIL bilinear) maps
edges linearly (output ``x = input x * W_out / W_in``), so a resize scales the boxes by exactly
the size ratio, a horizontal flip maps ``x -> W - x`` and a crop subtracts its corner. After a
crop, boxes are clipped to the window, and boxes left narrower or lower than ``min_side``
pixels at the output size are dropped (degenerate), as are their labels; crowd regions follow.

Training: :func:`random_scale_crop` (a random window of random scale and aspect near the
output's, at a random place, optionally flipped, resized to the training size). Evaluation:
:func:`resize_to` (plain resize) or :func:`letterbox` (aspect kept, padded); both return a
:class:`Resized` record, and :func:`to_original` maps predicted boxes back to the stored image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from .dense_transforms import scale_crop_window
from .detection import MIN_BOX_SIDE, DetectionDomain, DetectionSample, clip_boxes, collate_items, keep_boxes
from .transforms import convert_channels, resize_image


@dataclass(frozen=True)
class Resized:
    """How an image of ``original`` (H, W) was brought to the model's input: scaled by
    ``scale`` = (sy, sx), then placed at ``pad`` = (top, left) on the input canvas."""

    original: tuple[int, int]
    scale: tuple[float, float]
    pad: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict:
        return {"original": list(self.original), "scale": list(self.scale), "pad": list(self.pad)}


def to_original(boxes: np.ndarray, info: Resized) -> np.ndarray:
    """Boxes (N, 4) on the model's input -> boxes on the stored image (clipped to it)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    (sy, sx), (top, left) = info.scale, info.pad
    b[:, 0::2] = (b[:, 0::2] - left) / sx
    b[:, 1::2] = (b[:, 1::2] - top) / sy
    return clip_boxes(b, *info.original)


def _with(s: DetectionSample, image, boxes, labels, crowd, crowd_labels) -> DetectionSample:
    return DetectionSample(image, boxes, labels, crowd, crowd_labels)


def hflip(s: DetectionSample) -> DetectionSample:
    """Mirror left-right: ``x1' = W - x2``, ``x2' = W - x1``."""
    w = s.image.shape[1]

    def flip(b):
        return np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1).astype(np.float32)

    return _with(s, np.ascontiguousarray(s.image[:, ::-1]), flip(s.boxes), s.labels, flip(s.crowd), s.crowd_labels)


def _scale_boxes(b: np.ndarray, sy: float, sx: float, top: float = 0.0, left: float = 0.0) -> np.ndarray:
    out = b.astype(np.float32).copy()
    out[:, 0::2] = out[:, 0::2] * sx + left
    out[:, 1::2] = out[:, 1::2] * sy + top
    return out


def crop(s: DetectionSample, top: int, left: int, h: int, w: int, min_side: float = 0.0) -> DetectionSample:
    """The window ``[top, top + h) x [left, left + w)``; boxes shifted, clipped to it, and dropped
    when a side is below ``min_side`` (0: when empty)."""
    img = s.image[top:top + h, left:left + w]

    def cut(b, lab):
        b = clip_boxes(_scale_boxes(b, 1.0, 1.0, -top, -left), h, w)
        keep = keep_boxes(b, min_side)
        return b[keep], lab[keep]

    boxes, labels = cut(s.boxes, s.labels)
    crowd, crowd_labels = cut(s.crowd, s.crowd_labels)
    return _with(s, np.ascontiguousarray(img), boxes, labels, crowd, crowd_labels)


def resize_to(s: DetectionSample, size: tuple[int, int], channels: int | None = None,
              min_side: float = 0.0) -> tuple[DetectionSample, Resized]:
    """Resize image and boxes to ``size`` = (H, W) (aspect not kept); boxes with a side below
    ``min_side`` at the new size are dropped (0: only empty ones)."""
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    img = s.image[:, :, None] if s.image.ndim == 2 else s.image
    H, W = img.shape[:2]
    if channels is not None:
        img = convert_channels(img, channels)
    out = resize_image(np.ascontiguousarray(img), (h, w))
    if not out.flags.writeable or np.shares_memory(out, s.image):
        out = out.copy()
    sy, sx = h / H, w / W

    def move(b, lab):
        b = clip_boxes(_scale_boxes(b, sy, sx), h, w)
        keep = keep_boxes(b, min_side)
        return b[keep], lab[keep]

    boxes, labels = move(s.boxes, s.labels)
    crowd, crowd_labels = move(s.crowd, s.crowd_labels)
    return _with(s, out, boxes, labels, crowd, crowd_labels), Resized((H, W), (sy, sx))


def letterbox(s: DetectionSample, size: tuple[int, int], channels: int | None = None, fill: int = 114,
              min_side: float = 0.0) -> tuple[DetectionSample, Resized]:
    """Scale by ``k = min(H / h, W / w)`` (aspect kept), centre on an (H, W) canvas of grey ``fill``;
    boxes follow. ``to_original(boxes, info)`` undoes it."""
    h, w = int(size[0]), int(size[1])
    H, W = s.image.shape[:2]
    k = min(h / H, w / W)
    nh, nw = max(1, min(h, int(round(H * k)))), max(1, min(w, int(round(W * k))))
    small, info = resize_to(s, (nh, nw), channels, min_side)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas = np.full((h, w, small.image.shape[2]), fill, np.uint8)
    canvas[top:top + nh, left:left + nw] = small.image
    out = _with(small, canvas, _scale_boxes(small.boxes, 1, 1, top, left), small.labels,
                _scale_boxes(small.crowd, 1, 1, top, left), small.crowd_labels)
    return out, Resized((H, W), info.scale, (top, left))


def random_scale_crop(s: DetectionSample, size: tuple[int, int], rng: np.random.Generator, *,
                      scale: tuple[float, float] = (0.5, 1.0), ratio_jitter: float = 0.1, hflip_p: float = 0.5,
                      channels: int | None = None, min_side: float = MIN_BOX_SIDE) -> DetectionSample:
    """A random window resized to ``size`` = (H, W), flipped horizontally with probability ``hflip_p``.

    The window's aspect H/W is the output's times a log-uniform factor in [1/(1+j), 1+j]
    (j = ``ratio_jitter``); its height is a fraction in ``scale`` of the largest window of that
    aspect that fits, at a uniform position (the draws of
    :func:`edgeda.data.dense_transforms.random_scale_crop`, in the same order: fraction, aspect,
    top, left, flip). Boxes are clipped to the window; those with a side below ``min_side`` pixels
    at the output size are dropped.
    """
    top, left, ch, cw = scale_crop_window(rng, s.image.shape[:2], size, scale, ratio_jitter)
    flip = bool(rng.random() < hflip_p)
    out = crop(s, top, left, ch, cw)
    if flip:
        out = hflip(out)
    return resize_to(out, size, channels, min_side)[0]


class DetectionDataset(Dataset):
    """Samples of a detection domain at the model's size, as dicts for :func:`collate_items`.

    ``dataset[k]`` uses sample ``i = k % len(domain)`` and, when ``train``, draws its augmentation
    from ``np.random.default_rng([seed, k])`` (reproducible whatever the workers and order, as
    :class:`~edgeda.data.dense_transforms.DenseDataset`). Evaluation resizes (``letterbox=False``)
    or letterboxes. Keys: ``sample`` (a :class:`DetectionSample` at the model's size and
    ``channels``; no boxes unless ``labels``), ``index`` (the sample used), ``replaced`` (1 when
    sample ``i`` could not be decoded and the next decodable one was used) and ``resize`` (the
    :class:`Resized` record of an evaluation sample, None in training).
    """

    def __init__(self, domain: DetectionDomain, size: tuple[int, int], channels: int = 3, *, train: bool,
                 seed: int = 0, labels: bool = True, scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True,
                 letterbox: bool = False, min_side: float = MIN_BOX_SIDE):
        self.domain = domain
        self.size = (int(size[0]), int(size[1]))
        self.channels, self.train, self.seed = int(channels), bool(train), int(seed)
        self.labels = bool(labels and domain.has_boxes)
        self.scale, self.hflip, self.letterbox, self.min_side = tuple(scale), bool(hflip), bool(letterbox), min_side

    def __len__(self) -> int:
        return len(self.domain)

    def _decodable(self, i: int) -> tuple[int, DetectionSample]:
        n, first = len(self.domain), None
        for step in range(n):
            j = (i + step) % n
            try:
                return j, self.domain.sample(j)
            except ValueError as e:
                first = first or f"{j}: {e}"
        raise DataError(f"none of the {n} samples of domain {self.domain.name!r} could be decoded "
                        f"(first failure: sample {first})")

    def __getitem__(self, k) -> dict:
        k, n = int(k), len(self.domain)
        if k < 0 or n == 0:
            raise IndexError(f"index {k} of a dataset of {n} samples")
        i = k % n
        used, s = self._decodable(i)
        if not self.labels:
            s = DetectionSample(s.image)
        info = None
        if self.train:
            rng = np.random.default_rng([self.seed, k])
            out = random_scale_crop(s, self.size, rng, scale=self.scale, hflip_p=0.5 if self.hflip else 0.0,
                                    channels=self.channels, min_side=self.min_side)
        elif self.letterbox:
            out, info = letterbox(s, self.size, self.channels)
        else:
            out, info = resize_to(s, self.size, self.channels)
        return {"sample": out, "index": used, "replaced": int(used != i), "resize": info}


def collate(items, mean=None, std=None) -> dict:
    """:func:`edgeda.data.detection.collate_items` (re-exported beside the dataset it batches)."""
    return collate_items(items, mean, std)

