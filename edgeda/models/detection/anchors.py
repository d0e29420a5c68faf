"""Anchors as a function of the input size only, in the order the heads emit their predictions.

Every detector here reaches each of its feature levels by stride-2 convolutions or poolings whose
padding gives ``ceil(n / 2)`` outputs for ``n`` inputs, so the grid of level ``k`` follows from the
input size alone (:func:`grid_sizes`). Anchors are listed level by level, row-major over the grid,
and for SSD anchor-type-minor within a cell, which is how the heads flatten ``(N, A*C, H, W)`` to
``(N, H*W*A, C)``.

``ssd_default_boxes`` (Liu et al. 2016, section 2.2, torchvision's ``DefaultBoxGenerator``)
    level ``k`` of ``m`` has scale ``s_k = s_min + (s_max - s_min) k / (m - 1)`` (``s_{m} = 1``); per
    cell the boxes ``(s_k, s_k)``, ``(s'_k, s'_k)`` with ``s'_k = sqrt(s_k s_{k+1})`` and for each
    aspect ratio ``r``: ``(s_k sqrt r, s_k / sqrt r)`` and its transpose, widths and heights clipped to
    ``[0, 1]``; centres ``((j + 0.5) / f_w, (i + 0.5) / f_h)``; all scaled by the image width and height.
    SSDLite-320: ``s_min = 0.2``, ``s_max = 0.95``, ratios ``(2, 3)`` on six levels, 6 boxes per cell.
``fcos_points``
    one square anchor per location (torchvision's ``AnchorGenerator`` with sizes 8 .. 128 and ratio 1):
    centre ``(j * stride_w, i * stride_h)`` with ``stride = input // grid`` (integer division, as
    torchvision computes it), half-size ``round(size / 2)``. FCOS's point is the anchor's centre and its
    regression is normalised by the anchor's size.
"""
from __future__ import annotations

import math

import torch


def grid_sizes(image_size: tuple[int, int], first_stride_log2: int, levels: int) -> list[tuple[int, int]]:
    """Grids of ``levels`` consecutive levels, the first after ``first_stride_log2`` halvings."""
    h, w = image_size
    out = []
    for i in range(first_stride_log2 + levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        if i + 1 >= first_stride_log2:
            out.append((h, w))
    return out


def ssd_scales(levels: int, min_ratio: float, max_ratio: float) -> list[float]:
    if levels == 1:
        return [min_ratio, max_ratio]
    return [min_ratio + (max_ratio - min_ratio) * k / (levels - 1.0) for k in range(levels)] + [1.0]


def ssd_wh_pairs(scales: list[float], aspect_ratios: list[list[float]]) -> list[torch.Tensor]:
    out = []
    for k, ratios in enumerate(aspect_ratios):
        s, s_prime = scales[k], math.sqrt(scales[k] * scales[k + 1])
        pairs = [[s, s], [s_prime, s_prime]]
        for r in ratios:
            w, h = s * math.sqrt(r), s / math.sqrt(r)
            pairs += [[w, h], [h, w]]
        out.append(torch.tensor(pairs, dtype=torch.float32).clamp(0, 1))
    return out


def ssd_default_boxes(image_size: tuple[int, int], grids: list[tuple[int, int]], aspect_ratios: list[list[float]],
                      min_ratio: float = 0.2, max_ratio: float = 0.95) -> torch.Tensor:
    """``(A, 4)`` default boxes in pixels, ``x1 y1 x2 y2`` (see the module docstring)."""
    wh = ssd_wh_pairs(ssd_scales(len(grids), min_ratio, max_ratio), aspect_ratios)
    boxes = []
    for (fh, fw), pairs in zip(grids, wh):
        cx = ((torch.arange(fw) + 0.5) / fw).float()
        cy = ((torch.arange(fh) + 0.5) / fh).float()
        yy, xx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1)  # (fh*fw, 2)
        n = pairs.shape[0]
        c = centres[:, None, :].expand(-1, n, -1).reshape(-1, 2)
        s = pairs[None].expand(fh * fw, -1, -1).reshape(-1, 2)
        boxes.append(torch.cat((c, s), dim=1))
    cxcywh = torch.cat(boxes)
    scale = torch.tensor([image_size[1], image_size[0]], dtype=torch.float32)
    return torch.cat(((cxcywh[:, :2] - 0.5 * cxcywh[:, 2:]) * scale, (cxcywh[:, :2] + 0.5 * cxcywh[:, 2:]) * scale), dim=1)


def fcos_points(image_size: tuple[int, int], grids: list[tuple[int, int]], sizes: list[int]) -> torch.Tensor:
    """``(A, 4)`` stride-sized anchor squares, one per location of each level (see the module docstring)."""
    out = []
    for (fh, fw), size in zip(grids, sizes):
        sh, sw = image_size[0] // fh, image_size[1] // fw
        half = float(round(size / 2))
        ys = torch.arange(fh, dtype=torch.float32) * sh
        xs = torch.arange(fw, dtype=torch.float32) * sw
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        out.append(torch.stack((xx - half, yy - half, xx + half, yy + half), dim=1))
    return torch.cat(out)
