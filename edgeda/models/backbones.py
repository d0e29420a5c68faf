"""Feature extractors for small inputs. Each maps (N, C, H, W) -> (N, out_dim) features.

``dtn``: the digits CNN used throughout the DA literature for 32x32 digits (three strided 5x5
conv layers + a fully connected layer, as in DTN/ADDA/CyCADA), with a width multiplier.
``resnet_small``: a CIFAR-style ResNet (3 stages of basic blocks, global average pooling).
"""
from __future__ import annotations

from torch import nn

from .registry import BACKBONES


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DTN(nn.Module):
    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 32, out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Sequential(
            _conv_bn(channels, width, 5, 2),
            _conv_bn(width, 2 * width, 5, 2),
            _conv_bn(2 * width, 4 * width, 5, 2),
        )
        side = image_size
        for _ in range(3):  # each 5x5 / stride 2 / pad 2 conv maps n -> ceil(n / 2)
            side = (side + 1) // 2
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * width * side * side, out_dim),
            nn.BatchNorm1d(out_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_dim = out_dim

    def forward(self, x):
        return self.fc(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 16, blocks: int = 1):
        super().__init__()
        layers = [_conv_bn(channels, width, 3, 1)]
        cin = width
        for stage, mult in enumerate((1, 2, 4)):
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(cin, width * mult, stride))
                cin = width * mult
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        return self.net(x)


@BACKBONES.register("dtn")
def dtn(channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """Digits CNN (32x32 inputs): conv5x5/2 x3 with BatchNorm, FC 256."""
    return DTN(channels, image_size, **kw)


@BACKBONES.register("resnet_small")
def resnet_small(channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """CIFAR-style ResNet: 3 stages of basic blocks (16/32/64 channels), global average pooling."""
    return SmallResNet(channels, image_size, **kw)
