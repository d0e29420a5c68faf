"""Fourier domain adaptation's image translation (Yang & Soatto, "FDA: Fourier Domain Adaptation for
Semantic Segmentation", CVPR 2020).

A source image keeps its phase (the layout and edges that the labels describe) and takes the
low-frequency amplitude (overall colour, illumination, tone) of a target image:

    x_s->t = F^-1( [M_b * |F(x_t)| + (1 - M_b) * |F(x_s)|] * exp(i * angle(F(x_s))) )

per channel, where M_b is 1 on the centred (2b+1) x (2b+1) square of frequencies |k_y| <= b,
|k_x| <= b (the DC term included) and b = floor(min(H, W) * beta), as in the authors' NumPy
implementation. ``beta = 0`` swaps nothing (the untranslated image); any ``beta > 0`` swaps at least
the DC term, i.e. each channel's mean.
"""
from __future__ import annotations

import math

import torch

from ..errors import EdgedaError


def low_frequency_band(height: int, width: int, beta: float) -> int:
    """Half-width b of the swapped square: floor(min(H, W) * beta); -1 (nothing) for beta = 0."""
    if not 0.0 <= beta <= 0.5:
        raise EdgedaError(f"FDA beta must be in [0, 0.5], not {beta!r}")
    return -1 if beta == 0 else int(math.floor(min(height, width) * beta))


def low_frequency_mask(height: int, width: int, beta: float, device=None) -> torch.Tensor:
    """M_b as a (H, W) float tensor in the *unshifted* FFT layout (DC at [0, 0])."""
    b = low_frequency_band(height, width, beta)
    ky = torch.fft.fftfreq(height, 1.0 / height, device=device).abs()
    kx = torch.fft.fftfreq(width, 1.0 / width, device=device).abs()
    return ((ky[:, None] <= b) & (kx[None, :] <= b)).float()


def fourier_amplitude_swap(source: torch.Tensor, target: torch.Tensor, beta: float = 0.01) -> torch.Tensor:
    """Source images with the low-frequency amplitude spectrum of the target images (FDA).

    ``source``, ``target``: (N, C, H, W) float images of the same shape (pair i with i; shuffle the
    target batch for random pairs), in any per-channel scale as long as it is the same for both and
    zero means black (e.g. [0, 1] pixels, not mean-subtracted inputs). Returns the real part of the
    inverse FFT, (N, C, H, W), not clipped (as the authors do). Differentiable, but FDA uses it on data.

    >>> x_s2t = fourier_amplitude_swap(xs01, xt01[torch.randperm(len(xt01))], beta=0.01)
    """
    if source.shape != target.shape:
        raise EdgedaError(f"FDA needs source and target batches of one shape, not {tuple(source.shape)} and {tuple(target.shape)}")
    h, w = source.shape[-2:]
    if low_frequency_band(h, w, beta) < 0:
        return source.clone()
    fs = torch.fft.fft2(source.float())
    ft = torch.fft.fft2(target.float())
    m = low_frequency_mask(h, w, beta, source.device)
    amplitude = m * ft.abs() + (1 - m) * fs.abs()
    out = torch.fft.ifft2(torch.polar(amplitude, fs.angle())).real
    return out.to(source.dtype)
