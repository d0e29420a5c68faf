"""RandAugment-style image augmentation as batched torch ops on normalised (N, C, H, W) images.

Cubuk et al., "RandAugment", CVPR-W 2020, reduced to a few photometric and geometric ops that
need no image library: each image gets on average ``n_ops`` ops drawn uniformly from the list,
each at a random strength up to ``magnitude`` (in [0, 1]). Works in the task's normalised input
space (``mean``/``std`` per channel), so it can run on the training device inside ``step``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = ("colour", "grayscale", "blur", "affine", "invert")


def _pixels(x, mean, std):
    return x * std + mean  # normalised -> [0, 1]


def rand_augment(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], n_ops: int = 2,
                 magnitude: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return an augmented copy of ``x`` (N, C, H, W); the input is left unchanged.

    Ops: colour (per-channel gain and offset, contrast around the image mean), grayscale (channel
    mean), blur (3x3 binomial filter, applied 1-2 times), affine (rotation up to 30 deg * m,
    scale 1 +- 0.2 m, shift up to 0.15 m of the side; borders replicate), invert (1 - pixel).
    """
    n, c = x.shape[:2]
    dev, g = x.device, generator
    m = torch.tensor(mean, device=dev, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=dev, dtype=x.dtype).view(1, -1, 1, 1)
    p = _pixels(x.float(), m, s)

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=g)  # a generator must live on x's device

    def chosen():
        return (rand(n) < n_ops / len(OPS)).view(n, 1, 1, 1)

    mag = magnitude
    # colour: contrast about the per-image mean, per-channel gain and offset
    contrast = 1 + mag * (2 * rand(n, 1, 1, 1) - 1)
    gain = 1 + 0.5 * mag * (2 * rand(n, c, 1, 1) - 1)
    offset = 0.3 * mag * (2 * rand(n, c, 1, 1) - 1)
    mu = p.mean((1, 2, 3), keepdim=True)
    p = torch.where(chosen(), ((p - mu) * contrast + mu) * gain + offset, p)
    if c > 1:
        p = torch.where(chosen(), p.mean(1, keepdim=True).expand_as(p), p)
    k = torch.tensor([1.0, 2.0, 1.0], device=dev)
    k2 = (k[:, None] * k[None, :] / 16).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), k2, groups=c)
    twice = F.conv2d(F.pad(blurred, (1, 1, 1, 1), mode="replicate"), k2, groups=c)
    p = torch.where(chosen(), torch.where(rand(n, 1, 1, 1) < 0.5, blurred, twice), p)
    angle = math.radians(30) * mag * (2 * rand(n) - 1)
    scale = 1 + 0.2 * mag * (2 * rand(n) - 1)
    shift = 0.3 * mag * (2 * rand(n, 2) - 1)  # affine_grid units: the side is 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(p.shape), align_corners=False)
    p = torch.where(chosen(), F.grid_sample(p, grid, padding_mode="border", align_corners=False), p)
    p = torch.where(chosen(), 1 - p, p)
    return ((p.clamp(0, 1) - m) / s).to(x.dtype)
