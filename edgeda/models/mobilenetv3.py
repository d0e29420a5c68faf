"""MobileNetV3-Large and -Small (Howard et al., "Searching for MobileNetV3", ICCV 2019) in the layout
of torchvision's checkpoints, so ``mobilenet_v3_large-*.pth`` and the segmentation models built on
it load with no missing keys and compute the same function.

Layout (``features`` is an ``nn.Sequential``):

``features.0``
    3x3 stride-2 conv (16 channels) + BatchNorm + hardswish: ``0.0.weight``, ``0.1.*``.
``features.1`` .. ``features.N``
    inverted residual blocks, each ``block.*``: an expanding 1x1 conv + BN + act (left out when the
    expansion equals the input width), a depthwise kxk conv + BN + act, optionally a
    squeeze-excitation ``fc1``/``fc2`` (1x1 convs with bias; squeeze width ``divisible8(exp // 4)``)
    whose gate is ``hardsigmoid(fc2(relu(fc1(mean_hw(x)))))``, and a linear 1x1 projection + BN.
    ``out = x + block(x)`` when the block keeps stride 1 and width (by its table entry, also when
    dilated).
``features.N+1``
    1x1 conv to ``6 x`` the last block's width + BN + hardswish (960 Large / 576 Small).

BatchNorm has ``eps=1e-3``, ``momentum=0.01`` as in the published models; convs have no bias
except the squeeze-excitation's. ``width`` multiplies every width, rounded to a multiple of 8 (the
published models: 1.0). ``dilated=True`` is the segmentation variant of torchvision: the last
stage's three blocks run at dilation 2 with stride 1 (output stride 16 instead of 32).

Levels (``forward_intermediates``): ``stem`` (``features.0``), ``c1`` .. ``c4`` (the output of each
stride-2 block, where torchvision's segmentation models tap them: LR-ASPP's low branch and
DeepLab's auxiliary head read ``c2``, stride 8) and ``out`` (the final conv).

:class:`MobileNetV3Features` is a dense encoder (``backbone.*`` of the segmentation layouts in
:mod:`edgeda.models.public_dense`); :class:`MobileNetV3Backbone` adds torchvision's pre-logits
``classifier.0`` (Linear to 1280 / 1024, hardswish, dropout 0.2) for the classification
backbones ``mobilenet_v3_large`` and ``mobilenet_v3_small`` (``forward`` is that vector; the
``Classifier``'s ``head`` plays ``classifier.3``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgedaError
from .registry import BACKBONES

# One row per inverted residual block:
# (kernel, expanded width, output width, squeeze-excitation, hardswish (else ReLU), stride, last stage)
LARGE = (
    (3, 16, 16, False, False, 1, False),
    (3, 64, 24, False, False, 2, False),
    (3, 72, 24, False, False, 1, False),
    (5, 72, 40, True, False, 2, False),
    (5, 120, 40, True, False, 1, False),
    (5, 120, 40, True, False, 1, False),
    (3, 240, 80, False, True, 2, False),
    (3, 200, 80, False, True, 1, False),
    (3, 184, 80, False, True, 1, False),
    (3, 184, 80, False, True, 1, False),
    (3, 480, 112, True, True, 1, False),
    (3, 672, 112, True, True, 1, False),
    (5, 672, 160, True, True, 2, True),
    (5, 960, 160, True, True, 1, True),
    (5, 960, 160, True, True, 1, True),
)
SMALL = (
    (3, 16, 16, True, False, 2, False),
    (3, 72, 24, False, False, 2, False),
    (3, 88, 24, False, False, 1, False),
    (5, 96, 40, True, True, 2, False),
    (5, 240, 40, True, True, 1, False),
    (5, 240, 40, True, True, 1, False),
    (5, 120, 48, True, True, 1, False),
    (5, 144, 48, True, True, 1, False),
    (5, 288, 96, True, True, 2, True),
    (5, 576, 96, True, True, 1, True),
    (5, 576, 96, True, True, 1, True),
)
VARIANTS = {"large": (LARGE, 1280), "small": (SMALL, 1024)}  # block table, pre-logits width
STEM = 16
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def divisible8(v: float, divisor: int = 8) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``, never below 90% of ``v``)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class ConvBNAct(nn.Sequential):
    """``0``: conv (no bias), ``1``: BatchNorm (eps 1e-3), ``2``: activation if any."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.Hardswish):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation, dilation=dilation, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)
        self.out_channels = cout


class SqueezeExcitation(nn.Module):
    """Channel gate ``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`` (Hu et al. 2018, hard gate of MobileNetV3)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.fc2(s))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hardswish: bool, stride: int, dilation: int):
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, act=act))
        layers.append(ConvBNAct(exp, exp, k, 1 if dilation > 1 else stride, dilation, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, divisible8(exp // 4)))
        layers.append(ConvBNAct(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Features(nn.Sequential):
    """The MobileNetV3 trunk ``features.0`` .. ``features.N+1`` with the dense encoder contract
    (see the module docstring)."""

    def __init__(self, variant: str = "large", channels: int = 3, width: float = 1.0, dilated: bool = False):
        if variant not in VARIANTS:
            raise EdgedaError(f"unknown MobileNetV3 variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
            raise EdgedaError(f"MobileNetV3 width must be a number in (0, 4] (1.0 in the published models), not {width!r}")
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise EdgedaError(f"MobileNetV3 channels must be a positive integer, not {channels!r}")
        table, _ = VARIANTS[variant]
        cin = divisible8(STEM * width)
        layers: list[nn.Module] = [ConvBNAct(channels, cin, 3, 2)]
        info = {"stem": {"channels": cin, "stride": 2}}
        taps, stride_so_far = {0: "stem"}, 2
        for k, exp, cout, se, hs, stride, last in table:
            dilation = 2 if (dilated and last) else 1
            exp_c, out_c = divisible8(exp * width), divisible8(cout * width)
            layers.append(InvertedResidual(cin, k, exp_c, out_c, se, hs, stride, dilation))
            if stride > 1:
                if dilation == 1:
                    stride_so_far *= stride
                name = f"c{len(taps)}"
                taps[len(layers) - 1] = name
                info[name] = {"channels": out_c, "stride": stride_so_far}
            cin = out_c
        layers.append(ConvBNAct(cin, 6 * cin, 1))
        super().__init__(*layers)
        info["out"] = {"channels": 6 * cin, "stride": stride_so_far}
        self.taps = taps
        self.feature_info = info
        self.out_channels = 6 * cin
        self.variant, self.dilated = variant, dilated
        init_mobilenet(self)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self):
            x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x
        out["out"] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def init_mobilenet(module: nn.Module) -> None:
    """torchvision's initialisation: convs Kaiming-normal (fan out), BN ones/zeros, linears N(0, 0.01)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV3Backbone(nn.Module):
    """Classification backbone: ``features`` then global mean, ``classifier.0`` (Linear), hardswish,
    dropout; ``forward`` is that pre-logits vector (N, ``out_dim``)."""

    public_head = "classifier.3"  # torchvision's logits layer: the edgeda Classifier's ``head``

    def __init__(self, variant: str = "large", channels: int = 3, width: float = 1.0, dropout: float = 0.2,
                 dilated: bool = False):
        super().__init__()
        self.features = MobileNetV3Features(variant, channels, width, dilated)
        hidden = divisible8(VARIANTS[variant][1] * width)
        self.classifier = nn.Sequential(nn.Linear(self.features.out_channels, hidden), nn.Hardswish(), nn.Dropout(dropout))
        init_mobilenet(self.classifier)
        self.out_dim = hidden
        self.out_channels = self.features.out_channels
        self.feature_info = self.features.feature_info

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.features.forward_intermediates(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@BACKBONES.register("mobilenet_v3_large")
def mobilenet_v3_large(channels: int = 3, image_size: int | None = None, **kw) -> MobileNetV3Backbone:
    """MobileNetV3-Large (torchvision names; 960-channel map, 1280-d pre-logits). ``image_size`` is unused."""
    return MobileNetV3Backbone("large", channels, **kw)


@BACKBONES.register("mobilenet_v3_small")
def mobilenet_v3_small(channels: int = 3, image_size: int | None = None, **kw) -> MobileNetV3Backbone:
    """MobileNetV3-Small (torchvision names; 576-channel map, 1024-d pre-logits). ``image_size`` is unused."""
    return MobileNetV3Backbone("small", channels, **kw)
