"""Joint transforms for dense samples, and the torch ``Dataset`` that feeds them to a ``DataLoader``.

Image, mask and depth always share one geometry (one crop window, one flip, one output grid).
The image is resampled bilinearly (antialiased when shrinking, as
:func:`edgeda.data.transforms.resize_image`); masks and depth maps are resampled by nearest
neighbour on the same pixel-centre grid, so a mask never gains a class id it did not have and a
depth value is never averaged with the invalid zeros around it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .dense import DenseDomain, DenseSample
from .transforms import convert_channels, resize_image


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel centre: the grid bilinear resampling also uses."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def resize_sample(s: DenseSample, size: tuple[int, int], channels: int | None = None) -> DenseSample:
    """Bring image, mask and depth to ``size`` = (H, W); the image also to ``channels`` when given.
    Always returns fresh arrays (never views of the input)."""
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    img = s.image[:, :, None] if s.image.ndim == 2 else s.image
    hw = img.shape[:2]
    for a, what in ((s.mask, "mask"), (s.depth, "depth")):
        if a is not None and a.shape != hw:
            raise ValueError(f"{what} shape {a.shape} differs from the image's {hw}")
    if channels is not None:
        img = convert_channels(img, channels)
    out = resize_image(np.ascontiguousarray(img), (h, w))
    if not out.flags.writeable or np.shares_memory(out, s.image):  # PIL hands back read-only arrays
        out = out.copy()
    rows, cols = _nearest_index(hw[0], h)[:, None], _nearest_index(hw[1], w)[None, :]
    mask = None if s.mask is None else s.mask[rows, cols]
    depth = None if s.depth is None else s.depth[rows, cols]
    return DenseSample(out, mask, depth)


def scale_crop_window(rng: np.random.Generator, hw, size, scale, ratio_jitter) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop window of a stored (H, W) image for output ``size``:
    aspect H/W close to the output's (times a log-uniform factor in [1/(1+j), 1+j], j =
    ``ratio_jitter``), a fraction in ``scale`` of the largest window of that aspect that fits, at a
    uniform position. Draws, in order: fraction, aspect, top, left."""
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale must satisfy 0 < low <= high, got {scale}")
    H, W = hw
    frac = rng.uniform(lo, hi)
    j = np.log1p(max(float(ratio_jitter), 0.0))
    aspect = size[0] / size[1] * float(np.exp(rng.uniform(-j, j)))
    base_h = min(H, W * aspect)
    ch = int(np.clip(round(frac * base_h), 1, H))
    cw = int(np.clip(round(frac * base_h / aspect), 1, W))
    top = int(rng.integers(0, H - ch + 1))
    left = int(rng.integers(0, W - cw + 1))
    return top, left, ch, cw


def random_scale_crop(s: DenseSample, size: tuple[int, int], rng: np.random.Generator, *,
                      scale: tuple[float, float] = (0.5, 1.0), ratio_jitter: float = 0.1, hflip: bool = True,
                      channels: int | None = None) -> DenseSample:
    """Crop a random window and resize it to ``size`` = (H, W), flipping horizontally with
    probability 0.5 when ``hflip``.

    The window has aspect H/W close to the output's (times a factor in [1/(1+j), 1+j], j =
    ``ratio_jitter``, log-uniform) and is a fraction in ``scale`` of the largest window of that
    aspect that fits the stored image, at a uniformly random position. Random draws, in order:
    fraction, aspect, top, left, flip.
    """
    top, left, ch, cw = scale_crop_window(rng, s.image.shape[:2], size, scale, ratio_jitter)
    flip = bool(rng.random() < 0.5) and hflip

    def cut(a):
        if a is None:
            return None
        a = a[top:top + ch, left:left + cw]
        return a[:, ::-1] if flip else a

    return resize_sample(DenseSample(cut(s.image), cut(s.mask), cut(s.depth)), size, channels)


class DenseDataset(Dataset):
    """Samples of a dense domain at the model's size, as dicts of tensors.

    ``dataset[k]`` uses sample ``i = k % len(domain)`` and draws its augmentation from
    ``np.random.default_rng([seed, k])``: the result depends only on ``(seed, k)``, not on the
    worker or the order, and a sampler passing ``k = epoch * N + position`` gets a fresh crop each
    epoch. Keys: ``image`` (H, W, C) uint8; ``mask`` (H, W) int64 and ``depth`` (H, W) float32
    when ``labels`` and the domain has them; ``index`` (the sample used) and ``replaced`` (1 when
    sample ``i`` could not be decoded and the next decodable one was used), int64 scalars.
    Torch's default collate batches these dicts.
    """

    def __init__(self, domain: DenseDomain, size: tuple[int, int], channels: int, *, train: bool, seed: int = 0,
                 labels: bool = True, scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True,
                 native: bool = False):
        self.domain = domain
        self.native = bool(native) and not train  # also the labels at their stored size, ``native_<key>``
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.train, self.seed, self.hflip = bool(train), int(seed), bool(hflip)
        self.scale = (float(scale[0]), float(scale[1]))
        self.want_mask = bool(labels and domain.has_masks)
        self.want_depth = bool(labels and domain.has_depth)

    def __len__(self) -> int:
        return len(self.domain)

    def _decodable(self, i: int) -> tuple[int, DenseSample]:
        n, first = len(self.domain), None
        for step in range(n):
            j = (i + step) % n
            try:
                s = self.domain.sample(j)
                if self.want_mask and s.mask is None or self.want_depth and s.depth is None:
                    raise ValueError("labels missing")
                return j, s
            except ValueError as e:
                first = first or f"{j}: {e}"
        raise DataError(f"none of the {n} samples of domain {self.domain.name!r} could be decoded "
                        f"(first failure: sample {first})")

    def __getitem__(self, k) -> dict[str, torch.Tensor]:
        k, n = int(k), len(self.domain)
        if k < 0 or n == 0:
            raise IndexError(f"index {k} of a dataset of {n} samples")
        i = k % n
        used, s = self._decodable(i)
        s = DenseSample(s.image, s.mask if self.want_mask else None, s.depth if self.want_depth else None)
        if self.train:
            rng = np.random.default_rng([self.seed, k])
            out = random_scale_crop(s, self.size, rng, scale=self.scale, hflip=self.hflip, channels=self.channels)
        else:
            out = resize_sample(s, self.size, self.channels)
        item = {"image": torch.from_numpy(np.ascontiguousarray(out.image))}
        if self.want_mask:
            item["mask"] = torch.from_numpy(out.mask.astype(np.int64))
        if self.want_depth:
            item["depth"] = torch.from_numpy(np.ascontiguousarray(out.depth, dtype=np.float32))
        if self.native and self.want_mask:
            item["native_mask"] = torch.from_numpy(s.mask.astype(np.int64))
        if self.native and self.want_depth:
            item["native_depth"] = torch.from_numpy(np.ascontiguousarray(s.depth, dtype=np.float32))
        item["index"] = torch.tensor(used, dtype=torch.int64)
        item["replaced"] = torch.tensor(int(used != i), dtype=torch.int64)
        return item


def collate_native(items: list[dict]) -> dict:
    """A batch of :class:`DenseDataset` items: fields stacked, the ``native_*`` labels (stored sizes may
    differ between samples) kept as lists."""
    from torch.utils.data import default_collate

    native = {k: [it.pop(k) for it in items] for k in list(items[0]) if k.startswith("native_")}
    return {**default_collate(items), **native}
