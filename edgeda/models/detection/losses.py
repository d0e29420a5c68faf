"""Target assignment and losses of the two detectors, as in their papers (and torchvision's reading of them).

Targets are one dict per image: ``boxes`` (N, 4) float ``x1 y1 x2 y2`` in input pixels, ``labels`` (N,)
int64 in ``0 .. K-1`` and optionally ``weights`` (N,) float (pseudo-label confidence; 1 when absent).
Internally class ``c`` is column ``c + 1`` of the logits, column 0 being SSD's background (FCOS never
assigns it), so the heads have torchvision's ``K + 1`` outputs. Boxes without positive width and height
are ignored. An image may have no boxes: all its anchors are then negatives.

SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016)
    matching (:func:`ssd_match`): each anchor takes the ground truth it overlaps most if that IoU is
    at least 0.5, and each ground truth takes its best anchor regardless; the loss is
    ``(sum_pos CE + sum_hardneg CE + sum_pos smoothL1(t, encode(g, a))) / N_pos`` where the hard
    negatives are each image's ``3 N_pos`` unmatched anchors of highest cross-entropy
    (:func:`ssd_loss`); the box code is :func:`~edgeda.models.detection.boxes.encode_deltas`. (When an
    image has fewer than ``3 N_pos`` negatives, torchvision's ranking also counts some positives a second
    time as negatives; here only negatives are mined. Otherwise the two losses are equal.)
FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019)
    assignment (:func:`fcos_assign`): a point is positive for a box when it lies inside the box, within
    ``1.5`` strides (anchor sizes) of its centre ("centre sampling") and its largest side distance falls
    in the level's range ``(4 s, 8 s)`` (no lower bound on the first level, no upper bound on the last);
    among several boxes it takes the smallest. The loss (:func:`fcos_loss`) is the sigmoid focal loss
    (alpha 0.25, gamma 2) over all points and classes, the GIoU loss of the decoded positive boxes and the
    binary cross-entropy of the centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``, each summed
    and divided by the number of positives.

Both return ``{"loss": total, <parts>}``; with ``weights``, a positive anchor's terms are multiplied by
its box's weight (negatives keep weight 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .boxes import box_area, box_iou, decode_ltrb, encode_deltas, encode_ltrb

SSD_IOU = 0.5
SSD_NEG_POS = 3.0
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
FCOS_CENTRE_RADIUS = 1.5


def clean_target(target: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``boxes`` (N, 4) float32, ``labels`` (N,) int64, ``weights`` (N,) float32 on ``device``, degenerate boxes dropped."""
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
    labels = torch.as_tensor(target["labels"], dtype=torch.int64, device=device).reshape(-1)
    weights = target.get("weights")
    weights = (torch.ones(len(labels), device=device) if weights is None
               else torch.as_tensor(weights, dtype=torch.float32, device=device).reshape(-1))
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[ok], labels[ok], weights[ok]


def ssd_match(gt_boxes: torch.Tensor, anchors: torch.Tensor, iou_thresh: float = SSD_IOU) -> torch.Tensor:
    """Index of the ground truth matched to each anchor, -1 for none (see the module docstring)."""
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # (M, A)
    best_iou, matched = iou.max(dim=0)
    matched[best_iou < iou_thresh] = -1
    best_anchor = iou.argmax(dim=1)
    matched[best_anchor] = torch.arange(gt_boxes.shape[0], device=anchors.device)
    return matched


def ssd_loss(outputs: dict[str, torch.Tensor], targets: list[dict], anchors: torch.Tensor,
             iou_thresh: float = SSD_IOU, neg_pos_ratio: float = SSD_NEG_POS) -> dict[str, torch.Tensor]:
    """SSD multibox loss; ``outputs``: ``cls_logits`` (B, A, K+1), ``bbox_regression`` (B, A, 4)."""
    logits, deltas = outputs["cls_logits"], outputs["bbox_regression"]
    device = logits.device
    cls_t, weight_t, box_losses, num_pos = [], [], [], 0
    for target, delta in zip(targets, deltas):
        boxes, labels, weights = clean_target(target, device)
        matched = ssd_match(boxes, anchors, iou_thresh)
        pos = matched >= 0
        idx = matched[pos]
        num_pos += int(pos.sum())
        cls = torch.zeros(anchors.shape[0], dtype=torch.long, device=device)
        cls[pos] = labels[idx] + 1
        w = torch.ones(anchors.shape[0], device=device)
        w[pos] = weights[idx]
        reg_t = encode_deltas(boxes[idx], anchors[pos])
        box_losses.append((F.smooth_l1_loss(delta[pos].float(), reg_t, reduction="none").sum(-1) * w[pos]).sum())
        cls_t.append(cls)
        weight_t.append(w)
    cls_t, weight_t = torch.stack(cls_t), torch.stack(weight_t)
    ce = F.cross_entropy(logits.float().flatten(0, 1), cls_t.flatten(), reduction="none").view_as(cls_t)
    fg = cls_t > 0
    num_neg = neg_pos_ratio * fg.sum(1, keepdim=True)
    neg_ce = ce.detach().masked_fill(fg, -float("inf"))
    rank = neg_ce.argsort(dim=1, descending=True).argsort(dim=1)
    hard_neg = (rank < num_neg) & ~fg
    n = max(1, num_pos)
    cls_loss = ((ce * weight_t)[fg].sum() + ce[hard_neg].sum()) / n
    box_loss = torch.stack(box_losses).sum() / n
    return {"loss": cls_loss + box_loss, "classification": cls_loss, "bbox_regression": box_loss}


def fcos_assign(gt_boxes: torch.Tensor, anchors: torch.Tensor, num_per_level: list[int],
                radius: float = FCOS_CENTRE_RADIUS) -> torch.Tensor:
    """Index of the ground truth assigned to each point, -1 for none (see the module docstring)."""
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    sizes = anchors[:, 2] - anchors[:, 0]
    match = (centres[:, None, :] - gt_centres[None]).abs().max(dim=2).values < radius * sizes[:, None]
    x, y = centres[:, 0:1], centres[:, 1:2]
    dist = torch.stack((x - gt_boxes[None, :, 0], y - gt_boxes[None, :, 1],
                        gt_boxes[None, :, 2] - x, gt_boxes[None, :, 3] - y), dim=2)  # (A, M, 4)
    match &= dist.min(dim=2).values > 0
    lower, upper = sizes * 4, sizes * 8
    lower[:num_per_level[0]] = 0
    upper[-num_per_level[-1]:] = float("inf")
    far = dist.max(dim=2).values
    match &= (far > lower[:, None]) & (far < upper[:, None])
    score = match.float() * (1e8 - box_area(gt_boxes))[None, :]
    best, idx = score.max(dim=1)
    idx[best < 1e-5] = -1
    return idx


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA,
                       gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Element-wise focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def giou_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise ``1 - GIoU`` of paired boxes (Rezatofighi et al. 2019)."""
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    iou = inter / (union + eps)
    c = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2]))
    area_c = c[..., 0] * c[..., 1]
    return 1 - (iou - (area_c - union) / (area_c + eps))


def fcos_loss(outputs: dict[str, torch.Tensor], targets: list[dict], anchors: torch.Tensor,
              num_per_level: list[int], radius: float = FCOS_CENTRE_RADIUS) -> dict[str, torch.Tensor]:
    """FCOS loss; ``outputs``: ``cls_logits`` (B, A, K+1), ``bbox_regression`` (B, A, 4), ``bbox_ctrness`` (B, A, 1)."""
    logits = outputs["cls_logits"].float()
    reg = outputs["bbox_regression"].float()
    ctr = outputs["bbox_ctrness"].float()[..., 0]
    device = logits.device
    cls_t = torch.zeros_like(logits)
    box_t = torch.zeros_like(reg)
    w_t = torch.ones(logits.shape[:2], device=device)
    fg = torch.zeros(logits.shape[:2], dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        boxes, labels, weights = clean_target(target, device)
        idx = fcos_assign(boxes, anchors, num_per_level, radius)
        pos = idx >= 0
        fg[i] = pos
        cls_t[i, pos, labels[idx[pos]] + 1] = 1.0
        box_t[i, pos] = boxes[idx[pos]]
        w_t[i, pos] = weights[idx[pos]]
    n = max(1, int(fg.sum()))
    cls_loss = (sigmoid_focal_loss(logits, cls_t).sum(-1) * w_t).sum() / n
    a = anchors[None].expand_as(reg)
    w_pos = w_t[fg]
    pred = decode_ltrb(reg[fg], a[fg])
    box_loss = (giou_loss(pred, box_t[fg]) * w_pos).sum() / n
    ltrb = encode_ltrb(box_t[fg], a[fg])
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ctr_t = torch.sqrt((lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values))
    ctr_loss = (F.binary_cross_entropy_with_logits(ctr[fg], ctr_t, reduction="none") * w_pos).sum() / n
    return {"loss": cls_loss + box_loss + ctr_loss, "classification": cls_loss,
            "bbox_regression": box_loss, "bbox_ctrness": ctr_loss}
