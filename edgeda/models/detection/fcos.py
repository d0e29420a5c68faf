"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019) in the layout of
torchvision's ``fcos_resnet50_fpn``.

Layout (torchvision's parameter names):

``backbone.body``
    ``resnet50`` (default), ``resnet18``: :mod:`edgeda.models.resnet` names (``conv1``, ``bn1``,
    ``layer1`` .. ``layer4``), levels ``layer2..4`` (strides 8, 16, 32); ``mobilenet_v3_large``:
    MobileNetV3-Large ``features`` indices (``backbone.body.{i}``, as torchvision's MobileNet FPN
    backbones), levels the last block of each of the strides 8, 16, 32 (40, 112, 960 channels).
``backbone.fpn``
    :class:`~edgeda.models.detection.fpn.FeaturePyramid`: P3 .. P7 with ``fpn_channels`` (256) channels.
``head.classification_head``
    ``conv.{0,3,6,9}`` 3x3 convs each + GroupNorm(32) + ReLU, then ``cls_logits`` (3x3, ``K + 1`` outputs,
    bias ``-log((1 - 0.01) / 0.01)``: the focal-loss prior).
``head.regression_head``
    the same tower, then ``bbox_reg`` (3x3, 4 outputs, ReLU: distances are non-negative) and
    ``bbox_ctrness`` (3x3, 1 output).

Points: one per location of P3 .. P7, anchor squares of sizes 8 .. 128
(:func:`~edgeda.models.detection.anchors.fcos_points`). Scores: ``sqrt(sigmoid(cls) * sigmoid(ctrness))``
per class, as torchvision's FCOS ranks detections. NMS IoU 0.6. The backbone's BatchNorm is trainable
(torchvision freezes it when it starts from ImageNet weights; its COCO checkpoint has no
``num_batches_tracked``, which the loaders treat as optional). The published COCO file names the
pyramid's convs as torchvision did before 0.13 (``inner_blocks.{i}.weight``); ``convert_checkpoint``
renames them. ``width`` is the ResNet base width (64) or
the MobileNet multiplier (1.0), ``num_convs`` the tower depth (4).
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ...errors import EdgedaError
from ..mobilenetv3 import MobileNetV3Features
from ..resnet import ENCODERS as RESNETS
from .anchors import fcos_points, grid_sizes
from .base import Detector, check_common, image_size_of
from .boxes import clip_boxes, decode_ltrb
from .fpn import FeaturePyramid
from .losses import fcos_assign, fcos_loss

BACKBONES = ("resnet50", "resnet18", "mobilenet_v3_large")
ANCHOR_SIZES = (8, 16, 32, 64, 128)
PRIOR = 0.01
# a pre-0.13 torchvision pyramid conv (``...fpn.inner_blocks.0.weight``): the conv became ``inner_blocks.0.0``
LEGACY_FPN = re.compile(r"^(.*fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")


class FCOSBody(nn.Module):
    """``backbone``: the trunk as ``body`` and the pyramid as ``fpn``; ``forward`` gives P3 .. P7."""

    def __init__(self, backbone: str, channels: int, width, fpn_channels: int):
        super().__init__()
        if backbone.startswith("resnet"):
            self.body = RESNETS[backbone](channels, width=64 if width is None else width)
            self._levels = ["layer2", "layer3", "layer4"]
            in_channels = [self.body.feature_info[n]["channels"] for n in self._levels]
        else:
            self.body = MobileNetV3Features("large", channels, 1.0 if width is None else width)
            first = {self.body.feature_info[name]["stride"]: i for i, name in self.body.taps.items()}
            # the last layer at strides 8 and 16 precedes the next stage's first (strided) block
            self._levels = [first[16] - 1, first[32] - 1, len(self.body) - 1]
            in_channels = [self.body[i].out_channels for i in self._levels]
        self.fpn = FeaturePyramid(in_channels, fpn_channels)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if isinstance(self._levels[0], str):
            inter = self.body.forward_intermediates(x)
            feats = [inter[n] for n in self._levels]
        else:
            feats = []
            for i, layer in enumerate(self.body):
                x = layer(x)
                if i in self._levels:
                    feats.append(x)
                if i == self._levels[-1]:
                    break
        return self.fpn(feats)


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU()]
    return nn.Sequential(*layers)


def _flatten(y: torch.Tensor, columns: int) -> torch.Tensor:
    n, _, h, w = y.shape
    return y.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns)


class FCOSClassificationHead(nn.Module):
    def __init__(self, channels: int, num_outputs: int, num_convs: int):
        super().__init__()
        self.conv = _tower(channels, num_convs)
        self.cls_logits = nn.Conv2d(channels, num_outputs, 3, padding=1)
        self.num_outputs = num_outputs
        for m in [*self.conv, self.cls_logits]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_flatten(self.cls_logits(self.conv(f)), self.num_outputs) for f in feats], dim=1)


class FCOSRegressionHead(nn.Module):
    def __init__(self, channels: int, num_convs: int):
        super().__init__()
        self.conv = _tower(channels, num_convs)
        self.bbox_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.bbox_ctrness = nn.Conv2d(channels, 1, 3, padding=1)
        for m in [*self.conv, self.bbox_reg, self.bbox_ctrness]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        reg, ctr = [], []
        for f in feats:
            t = self.conv(f)
            reg.append(_flatten(torch.relu(self.bbox_reg(t)), 4))
            ctr.append(_flatten(self.bbox_ctrness(t), 1))
        return torch.cat(reg, dim=1), torch.cat(ctr, dim=1)


class FCOSHead(nn.Module):
    def __init__(self, channels: int, num_outputs: int, num_convs: int):
        super().__init__()
        self.classification_head = FCOSClassificationHead(channels, num_outputs, num_convs)
        self.regression_head = FCOSRegressionHead(channels, num_convs)


class FCOS(Detector):
    """FCOS detector (see the module docstring and :mod:`edgeda.models.detection`)."""

    arch = "fcos"
    nms_iou = 0.6

    def __init__(self, num_classes: int, channels: int = 3, image_size=(800, 800), backbone: str = "resnet50",
                 width=None, fpn_channels: int = 256, num_convs: int = 4):
        super().__init__()
        check_common(num_classes, channels)
        if backbone not in BACKBONES:
            raise EdgedaError(f"fcos backbone must be one of {', '.join(BACKBONES)}, not {backbone!r}")
        if not isinstance(fpn_channels, int) or isinstance(fpn_channels, bool) or fpn_channels < 64 or fpn_channels % 32:
            # GroupNorm has 32 groups; with 32 channels a 1x1 level (P7 of a small input) at batch 1 has one value per group
            raise EdgedaError(f"fcos fpn_channels must be a multiple of 32 and at least 64, not {fpn_channels!r}")
        if not isinstance(num_convs, int) or isinstance(num_convs, bool) or num_convs < 0:
            raise EdgedaError(f"fcos num_convs must be a non-negative integer, not {num_convs!r}")
        self._init_common(num_classes, image_size)
        self.backbone = FCOSBody(backbone, channels, width, fpn_channels)
        self.head = FCOSHead(fpn_channels, num_classes + 1, num_convs)

    @property
    def encoder(self) -> nn.Module:
        """``backbone`` (trunk and pyramid): the module a whole-model checkpoint's ``backbone.*`` tensors fill."""
        return self.backbone

    @property
    def trunk(self) -> nn.Module:
        return self.backbone.body

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """P3 .. P7 (strides 8 .. 128), ``fpn_channels`` channels each."""
        return self.backbone(images)

    def heads(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        reg, ctr = self.head.regression_head(feats)
        return {"cls_logits": self.head.classification_head(feats), "bbox_regression": reg, "bbox_ctrness": ctr}

    def _grids(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        return grid_sizes(image_size, 3, 5)

    def _make_anchors(self, image_size: tuple[int, int]) -> torch.Tensor:
        return fcos_points(image_size, self._grids(image_size), list(ANCHOR_SIZES))

    def decode(self, outputs: dict[str, torch.Tensor], image_size=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``boxes`` (B, A, 4) in pixels, clipped; ``scores`` (B, A, K) = ``sqrt(sigmoid(cls) sigmoid(ctrness))``."""
        anchors, size = self._anchors_for(outputs, image_size)
        boxes = clip_boxes(decode_ltrb(outputs["bbox_regression"], anchors), size)
        scores = torch.sqrt(torch.sigmoid(outputs["cls_logits"][..., 1:]) * torch.sigmoid(outputs["bbox_ctrness"]))
        return boxes, scores

    def loss(self, outputs: dict[str, torch.Tensor], targets: list[dict], image_size=None) -> dict[str, torch.Tensor]:
        anchors, size = self._anchors_for(outputs, image_size)
        self._check_targets(outputs, targets)
        return fcos_loss(outputs, targets, anchors, [h * w for h, w in self._grids(size)])

    def assigned(self, gt_boxes: torch.Tensor, image_size=None) -> torch.Tensor:
        """Boxes that some location is assigned to (inside the box, near its centre, on the level of its size)."""
        size = self.image_size if image_size is None else image_size_of(image_size)
        gt = gt_boxes.float().reshape(-1, 4)
        idx = fcos_assign(gt, self.anchors(size), [h * w for h, w in self._grids(size)])
        out = torch.zeros(len(gt), dtype=torch.bool)
        out[idx[idx >= 0]] = True
        return out

    def output_keys(self) -> list[str]:
        """The class-count-dependent tensors (a checkpoint with another class count leaves them initialised)."""
        return ["head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"]

    @staticmethod
    def convert_checkpoint(state: dict) -> dict:
        """The pyramid's names before torchvision 0.13 (``backbone.fpn.inner_blocks.{i}.weight``, as the
        published ``fcos_resnet50_fpn_coco`` file still has them) -> today's (``inner_blocks.{i}.0.weight``)."""
        return {LEGACY_FPN.sub(r"\1.0.\2", k): v for k, v in state.items()}

    @staticmethod
    def classes_in_checkpoint(state: dict) -> int | None:
        """``K`` of a checkpoint in this layout (its logits have ``K + 1`` rows), None without a head."""
        w = state.get("head.classification_head.cls_logits.weight")
        return None if w is None else int(w.shape[0]) - 1
