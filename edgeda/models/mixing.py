"""Cross-domain mixing, strong photometric augmentation, patch masking and feature distance for
self-training segmenters (DACS, DAFormer, MIC), as batched torch ops on (N, C, H, W) tensors.

* :func:`class_mix_masks`: ClassMix (Olsson et al., WACV 2021) as DACS uses it across domains
  (Tranheden et al., WACV 2021): per source image, half of the classes present (rounded up) are
  pasted, ``M = 1`` on their pixels.
* :func:`mix`: ``M * a + (1 - M) * b`` for images, ``where(M, a, b)`` for labels (255 stays 255).
* :func:`strong_augment`: DACS's colour jitter (brightness, contrast, saturation, hue) and Gaussian
  blur, each image with its own random parameters, in [0, 1] pixel space.
* :func:`patch_keep_mask`: MIC's random patch masking (Hoyer et al., CVPR 2023).
* :func:`label_at_feature_scale` and :func:`masked_feature_distance`: DAFormer's feature-distance
  regulariser (Hoyer et al., CVPR 2022) on the pixels of chosen classes.

Random numbers come from a CPU ``torch.Generator`` (so they are the same on every device and a
checkpoint can restore the generator) and are moved to the images' device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.dense import IGNORE_INDEX


def _rand(generator: torch.Generator | None, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=generator)


def class_mix_masks(labels: torch.Tensor, generator: torch.Generator | None = None,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(N, 1, H, W) float masks: 1 on the pixels of ceil(n_i / 2) of the n_i classes present in
    ``labels[i]`` (N, H, W) (the ignore label is not a class), chosen without replacement."""
    masks = torch.zeros(labels.shape[0], 1, *labels.shape[1:], device=labels.device)
    for i, y in enumerate(labels):
        present = torch.unique(y)
        present = present[present != ignore_index]
        if len(present) == 0:
            continue
        k = (len(present) + 1) // 2
        chosen = present[torch.randperm(len(present), generator=generator)[:k].to(present.device)]
        masks[i, 0] = torch.isin(y, chosen).float()
    return masks


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` where ``mask`` is 1, ``b`` elsewhere: images (N, C, H, W) blend with the (N, 1, H, W)
    mask; labels (N, H, W) are taken from one side per pixel (so an ignore label stays ignored)."""
    if a.dim() == mask.dim():
        return mask * a + (1 - mask) * b
    return torch.where(mask[:, 0].bool(), a, b)


def _gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    return k / k.sum(1, keepdim=True)  # (N, size)


def dacs_kernel_size(side: int) -> int:
    """The blur kernel size DACS uses for an image side: the largest odd number <= ceil(side / 10)."""
    a = math.ceil(0.1 * side)
    return max(1, a if a % 2 else a - 1)


def gaussian_blur(p: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``p`` (N, C, H, W) with its own isotropic Gaussian ``sigma`` (N,), kernel
    sides from :func:`dacs_kernel_size`, reflected borders."""
    n, c, h, w = p.shape
    ky, kx = dacs_kernel_size(h), dacs_kernel_size(w)
    out = p.reshape(1, n * c, h, w)
    for k, axis in ((ky, 2), (kx, 3)):
        if k <= 1:
            continue
        kern = _gaussian_kernels(sigma, k).to(p).repeat_interleave(c, 0)  # (N*C, k)
        pad = (0, 0, k // 2, k // 2) if axis == 2 else (k // 2, k // 2, 0, 0)
        mode = "reflect" if (h if axis == 2 else w) > k // 2 else "replicate"
        weight = kern.view(n * c, 1, k, 1) if axis == 2 else kern.view(n * c, 1, 1, k)
        out = F.conv2d(F.pad(out, pad, mode=mode), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def _rgb_hue_rotation(p: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB ``p`` by ``turns`` (N,) of a full circle in YIQ space (chroma rotation)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=p.device)
    from_yiq = torch.linalg.inv(to_yiq)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, p)
    ang = 2 * math.pi * turns.to(p.device).view(-1, 1, 1)
    cos, sin = torch.cos(ang), torch.sin(ang)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,njhw->nihw", from_yiq, yiq)


def colour_jitter(p: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] and a hue shift in [-s, s]
    turns (s = ``strength``; the last two only for RGB), per image, on [0, 1] pixels ``p``."""
    n, c = p.shape[:2]
    s = float(strength)

    def factor():
        return (1 + s * (2 * _rand(generator, n) - 1)).to(p).view(n, 1, 1, 1)

    p = (p * factor()).clamp(0, 1)  # brightness
    grey = p.mean(1, keepdim=True) if c == 1 else (0.299 * p[:, :1] + 0.587 * p[:, 1:2] + 0.114 * p[:, 2:3])
    p = (grey.mean((2, 3), keepdim=True) + factor() * (p - grey.mean((2, 3), keepdim=True))).clamp(0, 1)  # contrast
    if c == 3:
        grey = 0.299 * p[:, :1] + 0.587 * p[:, 1:2] + 0.114 * p[:, 2:3]
        p = (grey + factor() * (p - grey)).clamp(0, 1)  # saturation
        p = _rgb_hue_rotation(p, s * (2 * _rand(generator, n) - 1)).clamp(0, 1)
    return p


def strong_augment(x: torch.Tensor, mean, std, generator: torch.Generator | None = None, *,
                   jitter_p: float = 0.8, jitter_strength: float = 0.2, blur_p: float = 0.5,
                   sigma: tuple[float, float] = (0.15, 1.15)) -> torch.Tensor:
    """DACS's strong augmentation of normalised images ``x`` (N, C, H, W): colour jitter with
    probability ``jitter_p`` (:func:`colour_jitter`), then Gaussian blur with probability ``blur_p``
    and sigma uniform in ``sigma`` (:func:`gaussian_blur`); each image draws its own. Returns a copy."""
    n = x.shape[0]
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    p = x.float() * s + m
    use_jitter = (_rand(generator, n) < jitter_p).to(x.device).view(n, 1, 1, 1)
    p = torch.where(use_jitter, colour_jitter(p, jitter_strength, generator), p)
    use_blur = (_rand(generator, n) < blur_p).to(x.device).view(n, 1, 1, 1)
    sig = sigma[0] + (sigma[1] - sigma[0]) * _rand(generator, n)
    p = torch.where(use_blur, gaussian_blur(p, sig), p)
    return ((p - m) / s).to(x.dtype)


def patch_keep_mask(n: int, size: tuple[int, int], patch: int, ratio: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """MIC's input mask (N, 1, H, W): the image is cut into ``patch`` x ``patch`` squares and each is
    dropped (0) with probability ``ratio``, kept (1) otherwise."""
    h, w = size
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    keep = (_rand(generator, n, 1, gh, gw) >= ratio).float()
    return keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :h, :w]


def label_at_feature_scale(labels: torch.Tensor, size: tuple[int, int], num_classes: int, min_ratio: float = 0.75,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels (N, H, W) brought to a feature map's ``size`` (h, w): each feature pixel takes the class
    that covers at least ``min_ratio`` of its labelled block of the image, else ``ignore_index``."""
    onehot = F.one_hot(torch.where(labels == ignore_index, num_classes, labels).long(), num_classes + 1)
    share = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), size)  # (N, K+1, h, w)
    best, cls = share[:, :num_classes].max(1)
    return torch.where(best >= min_ratio, cls, torch.full_like(cls, ignore_index))


def masked_feature_distance(features: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the (N, h, w) positions of ``mask`` of ||f - f_ref||_2 over channels (0 when none)."""
    dist = torch.linalg.vector_norm(features.float() - reference.float(), dim=1)
    if mask is None:
        return dist.mean()
    if not bool(mask.any()):
        return dist.sum() * 0.0
    return dist[mask].mean()
