"""Small GAN parts shared by the pixel-level methods, each written once.

- :class:`ImagePool`: history of generated images for the discriminator (Shrivastava et al. 2017;
  CycleGAN uses a pool of 50).
- :func:`cycle_loss`: (masked) L1 cycle consistency, ||F(G(x)) - x||_1 (Zhu et al. 2017).
- :func:`hue_vector` / :func:`hue` / :func:`hue_loss`: the HSV hue channel as a unit vector on the
  colour wheel, and the foreground hue loss of Wang et al. 2019 (fore/background CycleGAN).
- :func:`masked_pairwise_mse`: PixelDA's content-similarity loss (Bousmalis et al. 2017).
- :func:`diff_augment`: differentiable augmentation of every discriminator input (Zhao et al. 2020).
- :func:`write_sample_grid`: the sample grid PNG written at each evaluation.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from ..utils import atomic_path


class ImagePool:
    """Return a batch where each image is, with probability 1/2 once the pool is full, swapped for an
    older generated image (the new one takes its place). ``size=0`` disables the pool.

    >>> pool = ImagePool(50); d_fake = D(pool.query(fake.detach()))
    """

    def __init__(self, size: int = 50, seed: int = 0):
        self.size, self.images = size, []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self.rng.random() < 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)


def _masked_mean(v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return v.mean()
    m = mask.expand_as(v)
    return (v * m).sum() / m.sum().clamp_min(1.0)


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L1 cycle consistency ||F(G(x)) - x||_1, averaged over the pixels where ``mask`` (N,1,H,W) is 1."""
    return _masked_mean((reconstructed.float() - original.float()).abs(), mask)


def hue_vector(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Hue of RGB images (N,3,H,W, any affine scale with a common offset) as a unit vector (N,2,H,W).

    HSV hue is the angle of (2R - G - B, sqrt(3) (G - B)) (the hexagonal hue of Smith 1978 in its
    smooth form); scaling the brightness V (x -> s x, s > 0) leaves it unchanged. Grey pixels have no
    hue: their vector shrinks to 0 (via ``eps``) instead of producing NaN gradients.
    """
    r, g, b = x.float().unbind(1)
    v = torch.stack([2 * r - g - b, math.sqrt(3.0) * (g - b)], 1)
    return v / torch.sqrt((v * v).sum(1, keepdim=True) + eps)


def hue(x: torch.Tensor) -> torch.Tensor:
    """HSV hue in [0, 1) of RGB images (N,3,H,W) -> (N,H,W)."""
    v = hue_vector(x)
    return torch.remainder(torch.atan2(v[:, 1], v[:, 0]) / (2 * math.pi), 1.0)


def hue_loss(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Foreground loss of Wang et al. 2019: hue difference |H(a) - H(b)| on the foreground mask.

    Computed on the colour wheel as ||u(a) - u(b)||^2 / 2 = 1 - cos(angle) for unit hue vectors u,
    so it is circular (hue 0.99 is near 0.01) and smooth. Needs RGB inputs in [0, 1] or [-1, 1]
    (pass the [0, 1] form: the offset of [-1, 1] cancels in 2R - G - B and G - B).
    """
    d = ((hue_vector(a) - hue_vector(b)) ** 2).sum(1, keepdim=True) / 2
    return _masked_mean(d, mask)


def masked_pairwise_mse(generated: torch.Tensor, original: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PixelDA content-similarity loss (Bousmalis et al. 2017, eq. 5), per image then averaged:

        L = 1/k ||(x - G(x)) o m||^2 - 1/k^2 ((x - G(x))^T m)^2,   k = number of masked values,

    i.e. the variance of the change inside the mask: shifting all object pixels by the same amount
    costs nothing, changing them inconsistently does. ``mask=None`` uses the whole image.
    """
    d = generated.float() - original.float()
    m = torch.ones_like(d) if mask is None else mask.float().expand_as(d)
    dm = d * m
    k = m.flatten(1).sum(1).clamp_min(1.0)
    first = (dm**2).flatten(1).sum(1) / k
    second = dm.flatten(1).sum(1) ** 2 / k**2
    return (first - second).mean()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,C,H,W) in [-1, 1] -> (N,H,W,3) uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def write_sample_grid(path: str | Path, panels: list[torch.Tensor], labels: torch.Tensor | None,
                      per_class: int = 8, pad: int = 2) -> Path:
    """Write a PNG with one row per class: panel 0 | panel 1 | ... (e.g. source | refined).

    ``panels`` are (N,C,H,W) images in [-1, 1] aligned with ``labels`` (N,) (or one row of all
    images when ``labels`` is None). Up to ``per_class`` images of each class per panel.
    """
    from PIL import Image

    if labels is None:
        groups = [np.arange(panels[0].shape[0])[:per_class]]
    else:
        lab = labels.detach().cpu().numpy()
        groups = [np.flatnonzero(lab == c)[:per_class] for c in np.unique(lab)]
    arrays = [_to_uint8(p) for p in panels]
    h, w = arrays[0].shape[1:3]
    cols = per_class * len(panels) + (len(panels) - 1)  # one blank column between panels
    canvas = np.full((len(groups) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, idx in enumerate(groups):
        for p, arr in enumerate(arrays):
            for j, i in enumerate(idx):
                c = p * (per_class + 1) + j
                y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
                canvas[y0 : y0 + h, x0 : x0 + w] = arr[i]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


DIFF_AUGMENT_OPS = ("color", "translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``""``/None -> () (off); unknown ops raise."""
    ops = tuple(p.strip() for p in (policy or "").split(",") if p.strip())
    bad = [p for p in ops if p not in DIFF_AUGMENT_OPS]
    if bad:
        raise ValueError(f"unknown augmentation {', '.join(bad)}; valid: {', '.join(DIFF_AUGMENT_OPS)}")
    return ops


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...], translation: float = 0.125,
                 cutout: float = 0.5) -> torch.Tensor:
    """DiffAugment (Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for Data-Efficient GAN
    Training", NeurIPS 2020) on a batch in [-1, 1] (N, C, H, W): the same kind of random, differentiable
    transform is applied to every image the discriminator sees, real and generated, in its own step and
    in the generator's, so D cannot win by memorising a small real set and G still gets gradients.

    Ops, each drawn per image: ``color``: brightness + U(-0.5, 0.5), saturation x U(0, 2) about the
    channel mean, contrast x U(0.5, 1.5) about the image mean; ``translation``: an integer shift of up
    to ``translation`` of each side, zero (mid-grey) filled; ``cutout``: one square of ``cutout`` of the
    side at a random centre set to 0.
    """
    ops = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
    n, c, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, device=dev, dtype=x.dtype)

    for op in ops:
        if op == "color":
            x = x + (rand(n, 1, 1, 1) - 0.5)
            if c > 1:
                mu = x.mean(1, keepdim=True)
                x = (x - mu) * (rand(n, 1, 1, 1) * 2) + mu
            mu = x.mean((1, 2, 3), keepdim=True)
            x = (x - mu) * (rand(n, 1, 1, 1) + 0.5) + mu
        elif op == "translation":
            sy, sx = int(h * translation + 0.5), int(w * translation + 0.5)
            dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=dev)
            dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=dev)
            iy = torch.arange(h, device=dev).view(1, h, 1) - dy   # output pixel (y, x) <- input (y - dy, x - dx)
            ix = torch.arange(w, device=dev).view(1, 1, w) - dx
            inside = ((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)).unsqueeze(1)
            flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
            x = torch.gather(x.reshape(n, c, h * w), 2, flat).view(n, c, h, w) * inside
        elif op == "cutout":
            ch, cw = int(h * cutout + 0.5), int(w * cutout + 0.5)
            y0 = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=dev) - ch // 2   # the square's top-left
            x0 = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=dev) - cw // 2
            yy = torch.arange(h, device=dev).view(1, h, 1)
            xx = torch.arange(w, device=dev).view(1, 1, w)
            hole = (yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw)
            x = x * (~hole).unsqueeze(1)
    return x
