"""Feature extractors for small inputs. Each maps (N, C, H, W) -> (N, out_dim) features.

``dtn``: the digits CNN used throughout the DA literature for 32x32 digits (three strided 5x5
conv layers + a fully connected layer, as in DTN/ADDA/CyCADA), with a width multiplier.
``resnet_small``: a CIFAR-style ResNet (3 stages of basic blocks, global average pooling).

Both also follow the encoder contract of :mod:`edgeda.models.dense`: ``forward_features(x)`` is
the spatial map before the flatten/FC (DTN) or the global pooling (SmallResNet),
``forward_intermediates(x)`` the named levels from high to low resolution plus ``"out"``, and
``out_channels`` / ``feature_info`` describe them. ``forward`` stays the pooled vector.
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
        self.out_channels = 4 * width
        self.feature_info = {
            "stride2": {"channels": width, "stride": 2},
            "stride4": {"channels": 2 * width, "stride": 4},
            "stride8": {"channels": 4 * width, "stride": 8},
            "out": {"channels": 4 * width, "stride": 8},
        }

    def forward(self, x):
        return self.fc(self.conv(x))

    def forward_features(self, x):
        """The (N, 4 * width, ceil(H / 8), ceil(W / 8)) map before the flatten and FC."""
        return self.conv(x)

    def forward_intermediates(self, x) -> dict:
        out = {}
        for name, layer in zip(("stride2", "stride4", "stride8"), self.conv):
            x = layer(x)
            out[name] = x
        out["out"] = x
        return out


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
        self.out_channels = cin
        self.blocks = blocks
        self.feature_info = {
            "stem": {"channels": width, "stride": 1},
            "stage1": {"channels": width, "stride": 1},
            "stage2": {"channels": 2 * width, "stride": 2},
            "stage3": {"channels": 4 * width, "stride": 4},
            "out": {"channels": cin, "stride": 4},
        }

    def forward(self, x):
        return self.net(x)

    def forward_features(self, x):
        """The (N, 4 * width, ceil(H / 4), ceil(W / 4)) map before the global average pooling."""
        for layer in list(self.net)[:-2]:
            x = layer(x)
        return x

    def forward_intermediates(self, x) -> dict:
        trunk = list(self.net)[:-2]
        out = {"stem": trunk[0](x)}
        x = out["stem"]
        for stage in range(3):
            for layer in trunk[1 + stage * self.blocks: 1 + (stage + 1) * self.blocks]:
                x = layer(x)
            out[f"stage{stage + 1}"] = x
        out["out"] = x
        return out


@BACKBONES.register("dtn")
def dtn(channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """Digits CNN (32x32 inputs): conv5x5/2 x3 with BatchNorm, FC 256."""
    return DTN(channels, image_size, **kw)


@BACKBONES.register("resnet_small")
def resnet_small(channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """CIFAR-style ResNet: 3 stages of basic blocks (16/32/64 channels), global average pooling."""
    return SmallResNet(channels, image_size, **kw)
