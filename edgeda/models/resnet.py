"""ResNet-18/34/50/101 encoders whose parameter names follow the common public ResNet checkpoints.

Names: ``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.bn1``, ..., ``layerK.0.downsample.0/1``,
bottlenecks add ``conv3``/``bn3``; there is no ``fc`` (pooling and classifiers belong to heads),
so a state dict from such a checkpoint loads with only ``fc.*`` left over
(:func:`edgeda.models.weights.load_backbone_weights`). Bottlenecks put the stride on the 3x3 conv.

Options:

``channels``
    input channels. A 1-channel encoder loads 3-channel ``conv1`` weights summed over RGB.
``width``
    base channel count (64 in the published models; the stages have ``width * (1, 2, 4, 8)``
    planes, times 4 for bottlenecks). A small width (8, 16) keeps every name and only shrinks the
    tensors, for CPU tests.
``output_stride``
    32 (plain), 16 (``layer4`` dilated) or 8 (``layer3`` and ``layer4`` dilated), as DeepLab does:
    the dilated stage's stride becomes 1 and its later 3x3 convs use the accumulated dilation
    (its first block keeps the previous one).

Contract (see :mod:`edgeda.models.dense`): ``forward(x)`` is the globally average-pooled vector
(N, ``out_dim``), so the encoders also serve as classification backbones; ``forward_features(x)``
is the unpooled ``layer4`` map; ``forward_intermediates(x)`` gives ``stem`` (after ``conv1``/
``bn1``/ReLU, stride 2), ``layer1`` .. ``layer4`` and ``out`` (= ``layer4``); ``feature_info``
has the channels and stride of each.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EdgedaError
from .registry import BACKBONES


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, first_dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, first_dilation, dilation=first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, first_dilation: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, first_dilation, dilation=first_dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetEncoder(nn.Module):
    """A ResNet trunk (stem + four stages), no classifier. See the module docstring."""

    public_head = "fc"  # the logits layer of the public classification checkpoints (an edgeda Classifier's ``head``)

    def __init__(self, block: type, layers: tuple[int, ...], channels: int = 3, width: int = 64,
                 output_stride: int = 32, zero_init_residual: bool = False):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise EdgedaError(f"ResNet output_stride must be 8, 16 or 32, not {output_stride!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise EdgedaError(f"ResNet width must be a positive integer (64 in the published models), not {width!r}")
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise EdgedaError(f"ResNet channels must be a positive integer, not {channels!r}")
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
        self.conv1 = nn.Conv2d(channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.feature_info = {"stem": {"channels": width, "stride": 2}}
        cin, stride_so_far, dilation = width, 4, 1
        for i, (n, mult) in enumerate(zip(layers, (1, 2, 4, 8))):
            stride = 1 if i == 0 else 2
            first_dilation = dilation
            if i > 0 and dilate[i - 1]:
                dilation *= stride
                stride = 1
            planes = width * mult
            blocks = [block(cin, planes, stride, dilation, first_dilation)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, dilation, dilation) for _ in range(1, n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stride_so_far *= stride
            self.feature_info[f"layer{i + 1}"] = {"channels": cin, "stride": stride_so_far}
        self.feature_info["out"] = dict(self.feature_info["layer4"])
        self.out_channels = cin
        self.out_dim = cin
        self.output_stride = output_stride
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None
                if last is not None:
                    nn.init.zeros_(last.weight)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"stem": self.relu(self.bn1(self.conv1(x)))}
        x = self.maxpool(out["stem"])
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        out["out"] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled ``layer4`` features, (N, out_dim)."""
        return self.forward_features(x).mean(dim=(2, 3))


def resnet18_encoder(channels: int = 3, **kw) -> ResNetEncoder:
    return ResNetEncoder(BasicBlock, (2, 2, 2, 2), channels, **kw)


def resnet34_encoder(channels: int = 3, **kw) -> ResNetEncoder:
    return ResNetEncoder(BasicBlock, (3, 4, 6, 3), channels, **kw)


def resnet50_encoder(channels: int = 3, **kw) -> ResNetEncoder:
    return ResNetEncoder(Bottleneck, (3, 4, 6, 3), channels, **kw)


def resnet101_encoder(channels: int = 3, **kw) -> ResNetEncoder:
    return ResNetEncoder(Bottleneck, (3, 4, 23, 3), channels, **kw)


ENCODERS = {"resnet18": resnet18_encoder, "resnet34": resnet34_encoder, "resnet50": resnet50_encoder,
            "resnet101": resnet101_encoder}


@BACKBONES.register("resnet18")
def resnet18(channels: int = 3, image_size: int | None = None, **kw) -> ResNetEncoder:
    """ResNet-18 (basic blocks 2-2-2-2); ``width`` 64, ``output_stride`` 32 by default. ``image_size`` is unused."""
    return resnet18_encoder(channels, **kw)


@BACKBONES.register("resnet34")
def resnet34(channels: int = 3, image_size: int | None = None, **kw) -> ResNetEncoder:
    """ResNet-34 (basic blocks 3-4-6-3). ``image_size`` is unused."""
    return resnet34_encoder(channels, **kw)


@BACKBONES.register("resnet50")
def resnet50(channels: int = 3, image_size: int | None = None, **kw) -> ResNetEncoder:
    """ResNet-50 (bottlenecks 3-4-6-3, 2048 output channels at width 64). ``image_size`` is unused."""
    return resnet50_encoder(channels, **kw)


@BACKBONES.register("resnet101")
def resnet101(channels: int = 3, image_size: int | None = None, **kw) -> ResNetEncoder:
    """ResNet-101 (bottlenecks 3-4-23-3). ``image_size`` is unused."""
    return resnet101_encoder(channels, **kw)
