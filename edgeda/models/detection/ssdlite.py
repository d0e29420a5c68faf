"""SSDLite on MobileNetV3-Large (Howard et al. 2019 section 6.3; SSDLite: Sandler et al. 2018 section 6.2;
SSD: Liu et al. 2016), in the layout of torchvision's ``ssdlite320_mobilenet_v3_large``.

Layout (parameter names as torchvision's, so its checkpoints load with no missing or unexpected keys):

``backbone.features.0``
    MobileNetV3-Large ``features[0 .. 12]`` (see :mod:`edgeda.models.mobilenetv3`) followed by the
    expanding 1x1 conv of block 13 (``backbone.features.0.13.{0,1}``): the 672-channel, stride-16 map.
``backbone.features.1``
    the rest of block 13 (``backbone.features.1.0.{1,2,3}``: depthwise, squeeze-excitation, projection),
    blocks 14-15 and the final 1x1 conv (``backbone.features.1.{1,2,3}``): stride 32. With
    ``reduced_tail=True`` (torchvision's choice whenever no ImageNet backbone is loaded, so also the COCO
    checkpoint) the last stage has half the channels: 80-wide blocks, 480-channel final conv.
``backbone.extra.{0..3}``
    four blocks, each 1x1 conv to half width, 3x3 stride-2 depthwise, 1x1 conv (BN + ReLU6 after each),
    to 512, 256, 256, 128 channels (times ``width``, at least 16): strides 64 .. 512.
``head.classification_head.module_list.{k}`` / ``head.regression_head.module_list.{k}``
    per level a 3x3 depthwise conv + BN + ReLU6 and a 1x1 conv (with bias) to ``6 (K+1)`` / ``6 * 4``
    channels: 6 default boxes per cell (:func:`~edgeda.models.detection.anchors.ssd_default_boxes` with
    scales 0.2 .. 0.95 and ratios 2, 3).

BatchNorm: eps 1e-3, momentum 0.03 as torchvision's SSDLite. ``width`` scales every channel count (1.0:
the published layout; 0.25-0.5 make a model for CPU tests). Inputs: the normalised image batch (SSDLite's
checkpoints expect ``(x - 0.5) / 0.5``, i.e. ``[-1, 1]``). NMS IoU 0.55 (torchvision's SSDLite).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import EdgedaError
from ..mobilenetv3 import LARGE, STEM, ConvBNAct, InvertedResidual, divisible8
from .anchors import grid_sizes, ssd_default_boxes
from .base import Detector, check_common
from .boxes import box_iou, clip_boxes, decode_deltas
from .losses import SSD_IOU, ssd_loss

ASPECT_RATIOS = [[2, 3]] * 6
MIN_RATIO, MAX_RATIO = 0.2, 0.95
EXTRA_WIDTHS = (512, 256, 256, 128)
BN_MOMENTUM = 0.03


def _normal_init(module: nn.Module, std: float = 0.03) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def mobilenet_v3_large_trunk(channels: int, width: float, reduced_tail: bool) -> list[nn.Module]:
    """``features[0 .. 16]`` of MobileNetV3-Large; ``reduced_tail`` halves the last stage (Howard et al. table 6)."""
    cin = divisible8(STEM * width)
    layers: list[nn.Module] = [ConvBNAct(channels, cin, 3, 2)]
    first_last = True
    for k, exp, cout, se, hs, stride, last in LARGE:
        if last and reduced_tail:
            cout //= 2
            if not first_last:
                exp //= 2
            first_last = False
        exp_c, out_c = divisible8(exp * width), divisible8(cout * width)
        layers.append(InvertedResidual(cin, k, exp_c, out_c, se, hs, stride, 1))
        cin = out_c
    layers.append(ConvBNAct(cin, 6 * cin, 1))
    return layers


class SSDLiteBackbone(nn.Module):
    def __init__(self, channels: int, width: float, reduced_tail: bool):
        super().__init__()
        trunk = mobilenet_v3_large_trunk(channels, width, reduced_tail)
        c4 = 1 + max(i for i, row in enumerate(LARGE) if row[5] == 2)  # the last stage's first (stride-2) block
        split = trunk[c4].block
        self.features = nn.Sequential(nn.Sequential(*trunk[:c4], split[0]),
                                      nn.Sequential(split[1:], *trunk[c4 + 1:]))
        depth = [max(16, int(d * width)) for d in EXTRA_WIDTHS]
        cin, extra = trunk[-1].out_channels, []
        for d in depth:
            mid = d // 2
            extra.append(nn.Sequential(ConvBNAct(cin, mid, 1, act=nn.ReLU6),
                                       ConvBNAct(mid, mid, 3, 2, groups=mid, act=nn.ReLU6),
                                       ConvBNAct(mid, d, 1, act=nn.ReLU6)))
            cin = d
        self.extra = nn.ModuleList(extra)
        self.out_channels = [split[0].out_channels, trunk[-1].out_channels, *depth]
        self._trunk = (trunk,)  # the same layers in MobileNetV3's own order (a tuple: not registered twice)

    def trunk(self) -> nn.Sequential:
        """MobileNetV3-Large's ``features`` in its own layout (``{i}.block.*``), sharing this backbone's layers:
        an ImageNet ``mobilenet_v3_large`` checkpoint (``features.*``) loads into it (with ``reduced_tail=False``)."""
        return nn.Sequential(*self._trunk[0])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.features:
            x = block(x)
            out.append(x)
        for block in self.extra:
            x = block(x)
            out.append(x)
        return out


class ScoringHead(nn.Module):
    """Per-level prediction blocks whose ``(N, A*C, H, W)`` maps are flattened to ``(N, H*W*A, C)`` and concatenated."""

    def __init__(self, in_channels: list[int], anchors_per_cell: int, columns: int):
        super().__init__()
        self.module_list = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, c, 3, groups=c, act=nn.ReLU6), nn.Conv2d(c, columns * anchors_per_cell, 1))
            for c in in_channels)
        self.columns = columns

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for f, block in zip(feats, self.module_list):
            y = block(f)
            n, _, h, w = y.shape
            out.append(y.view(n, -1, self.columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.columns))
        return torch.cat(out, dim=1)


class SSDLiteHead(nn.Module):
    def __init__(self, in_channels: list[int], anchors_per_cell: int, num_outputs: int):
        super().__init__()
        self.classification_head = ScoringHead(in_channels, anchors_per_cell, num_outputs)
        self.regression_head = ScoringHead(in_channels, anchors_per_cell, 4)


class SSDLite(Detector):
    """SSDLite320-MobileNetV3-Large detector (see the module docstring and :mod:`edgeda.models.detection`)."""

    arch = "ssdlite"
    nms_iou = 0.55
    normalised_features = True  # every level ends in conv + BN + activation (Hardswish or ReLU6)
    checkpoint_mean = (0.5, 0.5, 0.5)
    checkpoint_std = (0.5, 0.5, 0.5)

    def __init__(self, num_classes: int, channels: int = 3, image_size=(320, 320), backbone: str = "mobilenet_v3_large",
                 width: float = 1.0, reduced_tail: bool = True):
        super().__init__()
        check_common(num_classes, channels)
        if backbone != "mobilenet_v3_large":
            raise EdgedaError(f"ssdlite runs on mobilenet_v3_large, not {backbone!r}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
            raise EdgedaError(f"ssdlite width must be a number in (0, 4] (1.0 in the published model), not {width!r}")
        if not isinstance(reduced_tail, bool):
            raise EdgedaError(f"ssdlite reduced_tail must be true or false, not {reduced_tail!r}")
        self._init_common(num_classes, image_size)
        self.backbone = SSDLiteBackbone(channels, width, reduced_tail)
        self.head = SSDLiteHead(self.backbone.out_channels, 2 + 2 * len(ASPECT_RATIOS[0]), num_classes + 1)
        _normal_init(self)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = BN_MOMENTUM

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    @property
    def trunk(self) -> nn.Module:
        return self.backbone.trunk()

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The six maps the heads see (strides 16, 32, 64, 128, 256, 512)."""
        return self.backbone(images)

    def heads(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"cls_logits": self.head.classification_head(feats), "bbox_regression": self.head.regression_head(feats)}

    def _make_anchors(self, image_size: tuple[int, int]) -> torch.Tensor:
        return ssd_default_boxes(image_size, grid_sizes(image_size, 4, 6), ASPECT_RATIOS, MIN_RATIO, MAX_RATIO)

    def decode(self, outputs: dict[str, torch.Tensor], image_size=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``boxes`` (B, A, 4) in pixels, clipped to the image; ``scores`` (B, A, K): softmax without background."""
        anchors, size = self._anchors_for(outputs, image_size)
        boxes = clip_boxes(decode_deltas(outputs["bbox_regression"], anchors), size)
        return boxes, torch.softmax(outputs["cls_logits"], dim=-1)[..., 1:]

    def loss(self, outputs: dict[str, torch.Tensor], targets: list[dict], image_size=None) -> dict[str, torch.Tensor]:
        anchors, _ = self._anchors_for(outputs, image_size)
        self._check_targets(outputs, targets)
        return ssd_loss(outputs, targets, anchors)

    def assigned(self, gt_boxes: torch.Tensor, image_size=None) -> torch.Tensor:
        """Boxes some default box overlaps at IoU >= 0.5 (SSD's positive threshold; the others get only
        their forced best match)."""
        anchors = self.anchors(image_size)
        if gt_boxes.numel() == 0:
            return torch.zeros(0, dtype=torch.bool)
        return box_iou(gt_boxes.float().reshape(-1, 4), anchors).max(dim=1).values >= SSD_IOU

    @staticmethod
    def classes_in_checkpoint(state: dict) -> int | None:
        """``K`` of a checkpoint in this layout (6 boxes x ``K + 1`` logits per cell), None without a head."""
        w = state.get("head.classification_head.module_list.0.1.weight")
        return None if w is None else int(w.shape[0]) // 6 - 1

    @classmethod
    def options_for_checkpoint(cls, state: dict, options: dict) -> dict:
        """``reduced_tail=False`` when not given and the checkpoint's final 1x1 conv (``features.16`` of a
        MobileNetV3-Large classifier, ``backbone.features.1.3`` of this layout) reads the full last stage
        (160 channels times ``width``; an ImageNet trunk, on which torchvision builds SSDLite with the full
        tail); the reduced one (80, the COCO checkpoint's) is the default."""
        from ..weights import _candidates

        options = dict(options)
        if "reduced_tail" in options:
            return options
        width = options.get("width", 1.0)
        full, reduced = divisible8(160 * width), divisible8(80 * width)
        for key, t in state.items():
            forms = _candidates(key)
            if t.dim() == 4 and ("16.0.weight" in forms or "features.1.3.0.weight" in forms):
                if t.shape[1] == full and full != reduced:
                    options["reduced_tail"] = False
                break
        return options

    def output_keys(self) -> list[str]:
        """The class-count-dependent tensors (a checkpoint with another class count leaves them initialised)."""
        return [f"head.classification_head.module_list.{i}.1.{p}"
                for i in range(len(self.head.classification_head.module_list)) for p in ("weight", "bias")]
