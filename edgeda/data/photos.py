"""Real photographs that are neither source nor target, for pre-training an encoder without downloads.

CSG (``edgeda/methods/csg.py``) keeps its features close to an encoder pre-trained on real images
(ImageNet in the paper). edgeda downloads no weights, so ``anchor_photos`` gives it real photos to
pre-train on, self-supervised: ``"photos"`` are the three photographs that the installed
scikit-learn and matplotlib ship (``china.jpg``, ``flower.jpg``, ``grace_hopper.jpg``), or a
folder of a user's own unlabeled real images (any camera footage that is not the target set).
Small pictures are cut from them by :func:`paired_crops`, as single-image self-supervision does
(Asano, Rupprecht and Vedaldi, "A critical analysis of self-supervision, or what we can learn from
a single image", ICLR 2020).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .files import list_images, read_image
from .transforms import convert_channels, resize_image

ANCHOR_SIDE = 96  # photos are kept as squares of this side; crops of 5-50 % of the area are 21-68 px
MAX_ANCHOR_IMAGES = 2048  # a folder's first images, in sorted order (96 x 96 x 3 bytes each)


def bundled_photo_paths() -> list[Path]:
    """The real photographs shipped with the installed scikit-learn and matplotlib (those found)."""
    paths = []
    try:
        import sklearn.datasets

        root = Path(sklearn.datasets.__file__).parent / "images"
        paths += [root / "china.jpg", root / "flower.jpg"]
    except ImportError:
        pass
    try:
        import matplotlib

        paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except ImportError:
        pass
    return [p for p in paths if p.is_file()]


def _square(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize_image(img[top:top + s, left:left + s], (side, side))


def anchor_photos(spec: str, channels: int, side: int = ANCHOR_SIDE) -> torch.Tensor:
    """(P, channels, side, side) uint8: the centre squares of the ``"photos"`` or of a folder's images.

    Unreadable files are skipped; no readable image at all is an error that names the place looked in.
    """
    if spec == "photos":
        paths, where = bundled_photo_paths(), "the installed scikit-learn and matplotlib"
    else:
        root = Path(spec).expanduser()
        if not root.is_dir():
            raise DataError(f"anchor images {spec!r}: not 'photos' and not a folder")
        paths, where = list_images(root)[:MAX_ANCHOR_IMAGES], str(root)
    images, skipped = [], []
    for p in paths:
        try:
            images.append(_square(convert_channels(read_image(p), channels), side))
        except ValueError as e:
            skipped.append(f"{p.name}: {e}")
    if not images:
        detail = f" (skipped: {'; '.join(skipped[:3])})" if skipped else ""
        raise DataError(f"no readable anchor image found in {where}{detail}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def paired_crops(photos: torch.Tensor, n: int, size: tuple[int, int], scale: tuple[float, float] = (0.05, 0.5),
                 jitter: float = 0.25, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of ``n`` random regions of ``photos`` (P, C, S, S), each (n, C, *size) float in [0, 1].

    A region covers a fraction in ``scale`` of a photo's area (aspect ratio 3/4 to 4/3, mirrored at
    random); each view moves it by up to ``jitter`` of its size and rescales it by up to that much,
    so the two views of a region overlap but differ, while other regions, even of the same photo,
    are the negatives.
    """
    dev = photos.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    idx = torch.randint(0, photos.shape[0], (n,), generator=generator).to(dev)
    area = scale[0] + (scale[1] - scale[0]) * rand(n)
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * rand(n))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # fractions of the side
    cx, cy = (2 * rand(n) - 1) * (1 - w), (2 * rand(n) - 1) * (1 - h)  # centres in [-1, 1] coordinates
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0).to(dev)
    src = photos[idx].float().div_(255.0)
    views = []
    for _ in range(2):
        z = 1 + jitter * (2 * rand(n) - 1)
        vw, vh = (w * z).clamp(max=1), (h * z).clamp(max=1)
        vx = (cx + jitter * w * (2 * rand(n) - 1)).clamp(-1 + vw, 1 - vw)
        vy = (cy + jitter * h * (2 * rand(n) - 1)).clamp(-1 + vh, 1 - vh)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = vw * flip, vx, vh, vy
        grid = F.affine_grid(theta, [n, photos.shape[1], *size], align_corners=False)
        views.append(F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return views[0], views[1]
