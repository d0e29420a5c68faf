"""Image transforms without torchvision: resize, channel conversion, normalisation, light augmentation.

Per-image functions work on NumPy/Pillow at load time; batch functions work on torch tensors
inside the training loop (they are cheap, run on the training device and need no workers).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def convert_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) uint8 with C in {1, 3, 4} -> (H, W, channels); grey <-> RGB, alpha dropped."""
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 4:
        img, c = img[:, :, :3], 3
    if c == channels:
        return img
    if channels == 3 and c == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 1 and c == 3:
        grey = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, :, None]
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (size[0], size[1], C) uint8, bilinear (antialiased when shrinking)."""
    h, w = size
    if img.shape[0] == h and img.shape[1] == w:
        return img
    c = img.shape[2]
    pil = Image.fromarray(img[:, :, 0] if c == 1 else img)
    out = np.asarray(pil.resize((w, h), Image.BILINEAR))
    return out[:, :, None] if out.ndim == 2 else out


def prepare_image(img: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    return resize_image(convert_channels(img, channels), size)


def to_float_nchw(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32, scaled to [0, 1] then normalised per channel."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (edge padding): the light augmentation for digits."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).to(x.device)
    rows = offs[:, :1] + torch.arange(h, device=x.device)  # (n, h)
    cols = offs[:, 1:] + torch.arange(w, device=x.device)  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_contrast(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image contrast and brightness jitter of relative ``strength`` on normalised images."""
    if strength <= 0:
        return x
    n = x.shape[0]
    scale = 1 + strength * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    shift = strength * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    return x * scale.to(x.device) + shift.to(x.device)
