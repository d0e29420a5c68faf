"""Box operations shared by every detector: IoU, clipping, the two box codings, non-maximum suppression.

Boxes are ``(..., 4)`` tensors ``x1 y1 x2 y2`` in input pixels. Everything here is plain torch; the
coders and :func:`clip_boxes` use only element-wise ops, so a model's ``decode`` built from them exports
to ONNX.

Codings (the parametrisations of the two papers, as torchvision writes them):

``encode_deltas`` / ``decode_deltas`` (SSD, Faster R-CNN; Liu et al. 2016)
    ``t = (wx (gx - ax) / aw, wy (gy - ay) / ah, ww log(gw / aw), wh log(gh / ah))`` for a box of centre
    ``(gx, gy)`` and size ``(gw, gh)`` against an anchor ``(ax, ay, aw, ah)``; SSD uses the weights
    ``(10, 10, 5, 5)`` (the inverse of its "variances" 0.1 / 0.2). Decoding clamps the log-sizes at
    ``log(1000 / 16)`` so ``exp`` cannot overflow.
``encode_ltrb`` / ``decode_ltrb`` (FCOS; Tian et al. 2019)
    the distances ``(l, t, r, b)`` from the anchor point (the anchor box's centre) to the four sides,
    divided by the anchor box's size (one stride-sized square per point).

:func:`batched_nms` is the one class-aware non-maximum suppression of the package: greedy NMS (a box
is dropped when a higher-scoring kept box of the same class overlaps it with IoU above the threshold),
computed exactly as a fixed point over the pairwise suppression matrix (box by box only for long chains).
"""
from __future__ import annotations

import math

import torch

SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
LOG_SIZE_CLIP = math.log(1000.0 / 16)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU, ``(N, 4) x (M, 4) -> (N, M)``."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def clip_boxes(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Clamp ``x`` to ``[0, W]`` and ``y`` to ``[0, H]`` (``image_size = (H, W)``)."""
    h, w = image_size
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)), dim=-1)


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_deltas(boxes: torch.Tensor, anchors: torch.Tensor, weights=SSD_WEIGHTS) -> torch.Tensor:
    """SSD regression targets of ``boxes`` against ``anchors`` (same leading shape)."""
    gx, gy, gw, gh = _centre_size(boxes)
    ax, ay, aw, ah = _centre_size(anchors)
    wx, wy, ww, wh = weights
    return torch.stack((wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                        ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=-1)


def decode_deltas(deltas: torch.Tensor, anchors: torch.Tensor, weights=SSD_WEIGHTS) -> torch.Tensor:
    """Inverse of :func:`encode_deltas`; ``anchors`` broadcast against ``deltas`` (e.g. ``(A, 4)`` vs ``(B, A, 4)``)."""
    ax, ay, aw, ah = _centre_size(anchors.to(deltas.dtype))
    wx, wy, ww, wh = weights
    cx = deltas[..., 0] / wx * aw + ax
    cy = deltas[..., 1] / wy * ah + ay
    w = torch.exp((deltas[..., 2] / ww).clamp(max=LOG_SIZE_CLIP)) * aw
    h = torch.exp((deltas[..., 3] / wh).clamp(max=LOG_SIZE_CLIP)) * ah
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def encode_ltrb(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """FCOS regression targets: distances from each anchor's centre to the sides of ``boxes``, over its size."""
    ax, ay, aw, ah = _centre_size(anchors)
    d = torch.stack((ax - boxes[..., 0], ay - boxes[..., 1], boxes[..., 2] - ax, boxes[..., 3] - ay), dim=-1)
    return d / torch.stack((aw, ah, aw, ah), dim=-1)


def decode_ltrb(rel: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_ltrb`."""
    ax, ay, aw, ah = _centre_size(anchors.to(rel.dtype))
    return torch.stack((ax - rel[..., 0] * aw, ay - rel[..., 1] * ah,
                        ax + rel[..., 2] * aw, ay + rel[..., 3] * ah), dim=-1)


def nms_keep_mask(suppress: torch.Tensor, max_rounds: int = 32) -> torch.Tensor:
    """Greedy NMS on boxes already sorted by decreasing score, given ``suppress[i, j]`` (``i < j``: box ``i``
    removes box ``j`` if ``i`` is kept). Returns the keep mask.

    The greedy result is the unique ``keep`` with ``keep[j] = not any(keep[i] and suppress[i, j] for i < j)``;
    iterating that equation from "keep all" fixes one more leading entry per round and usually settles in a
    few rounds of one vector-matrix product each. A longer chain of suppressions (boxes each overlapping only the next)
    is finished box by box after ``max_rounds``.
    """
    n = suppress.shape[0]
    suppress = suppress.triu(1)
    weights = suppress.float()  # a round is one vector-matrix product: how many kept boxes remove each box
    keep = torch.ones(n, dtype=torch.bool, device=suppress.device)
    for _ in range(min(n, max_rounds)):
        new = (keep.float() @ weights) == 0
        if torch.equal(new, keep):
            return keep
        keep = new
    keep = torch.ones(n, dtype=torch.bool)
    rows = suppress.cpu()
    for i in range(n):
        if keep[i]:
            keep &= ~rows[i]
    return keep.to(suppress.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Class-aware NMS: indices of the kept boxes, by decreasing score. Boxes of different ``labels`` never
    suppress each other; a box is suppressed when its IoU with a kept, higher-scoring box is ``> iou_thresh``
    (ONNX ``NonMaxSuppression`` and torchvision use the same strict comparison)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b, lab = boxes[order].float(), labels[order]
    keep = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    for c in torch.unique(lab):  # one class at a time: n_c^2 IoUs each instead of all n^2 pairs
        idx = torch.nonzero(lab == c).squeeze(1)  # ascending: this class's boxes by decreasing score
        bc = b[idx]
        keep[idx] = nms_keep_mask(box_iou(bc, bc) > iou_thresh)
    return order[keep]


def boxes_to_mask(targets: list[dict], size: tuple[int, int], device=None) -> torch.Tensor:
    """``(N, 1, H, W)`` float masks, 1 on every pixel whose centre lies inside one of the image's boxes
    (``targets[i]["boxes"]`` (n, 4) ``x1 y1 x2 y2`` input pixels, any n including 0), 0 elsewhere: the
    foreground of a box-labelled image where no segmentation exists."""
    h, w = int(size[0]), int(size[1])
    dev = torch.device("cpu") if device is None else torch.device(device)
    ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    out = torch.zeros(len(targets), 1, h, w, device=dev)
    for i, t in enumerate(targets):
        b = torch.as_tensor(t["boxes"], dtype=torch.float32, device=dev).reshape(-1, 4)
        if not len(b):
            continue
        in_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] <= b[:, 3:4])  # (n, H)
        in_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] <= b[:, 2:3])  # (n, W)
        out[i, 0] = (in_y[:, :, None] & in_x[:, None, :]).any(0).float()
    return out
