"""Distribution-alignment losses on features: CORAL and multi-kernel MMD.

Both compare a batch of source features with a batch of target features, (Ns, d) and (Nt, d),
and are differentiable in both. ``coral`` is used by the ``coral`` method; ``multi_kernel_mmd``
by ``mmd`` (DAN) and ``two_stream`` (Rozantsev et al.'s domain discrepancy term).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def covariance(f: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (d, d) of the rows of ``f`` (N, d)."""
    f = f.float()
    c = f - f.mean(0, keepdim=True)
    return c.T @ c / max(f.shape[0] - 1, 1)


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL loss (Sun & Saenko, ECCV-W 2016): ``||C_s - C_t||_F^2 / (4 d^2)``.

    ``C_s``, ``C_t`` are the feature covariances of the two batches, ``d`` the feature size.
    Zero for batches with the same second-order statistics.

    >>> loss = coral(feats_source, feats_target)  # (Ns, d), (Nt, d)
    """
    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)


def gaussian_kernels(x: torch.Tensor, y: torch.Tensor, multipliers: Sequence[float], bandwidth: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over a family of Gaussian kernels ``k_m(a, b) = exp(-||a - b||^2 / (m * sigma^2))``
    (DAN's convex combination with equal weights 1/M, so the kernel stays in [0, 1]).

    ``sigma^2`` is the mean pairwise squared distance of the pooled sample (the median-style
    heuristic of DAN, computed without gradient) unless ``bandwidth`` gives it. Returns the
    (Nx + Ny, Nx + Ny) kernel matrix of ``cat([x, y])``.
    """
    z = torch.cat([x, y]).float()
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        n = z.shape[0]
        bandwidth = d2.detach().sum() / max(n * n - n, 1)
    bandwidth = bandwidth.clamp_min(1e-8)
    return sum(torch.exp(-d2 / (m * bandwidth)) for m in multipliers) / len(multipliers)


def multi_kernel_mmd(
    source: torch.Tensor, target: torch.Tensor, multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
) -> torch.Tensor:
    """Multi-kernel MMD^2 (Long et al., "Learning Transferable Features with Deep Adaptation
    Networks", ICML 2015), biased estimate; the kernel is DAN's convex combination of the family
    with equal weights (a plain sum, as some re-implementations use, is M times larger):

    MMD^2 = mean k(s, s') + mean k(t, t') - 2 mean k(s, t),  k = (1/M) sum_m exp(-||a-b||^2 / (m sigma^2)).

    Zero when the two batches are the same sample; grows as their distributions move apart.

    >>> loss = multi_kernel_mmd(feats_source, feats_target)  # (Ns, d), (Nt, d)
    """
    ns = source.shape[0]
    k = gaussian_kernels(source, target, multipliers)
    return k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2 * k[:ns, ns:].mean()
