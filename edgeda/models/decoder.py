"""Image decoder from a feature vector (the shared decoder of Domain Separation Networks)."""
from __future__ import annotations

import torch
from torch import nn


class FeatureDecoder(nn.Module):
    """Feature vector (N, in_dim) -> image (N, channels, image_size, image_size), normalised input space.

    A linear layer to a (4 * width, s, s) map with s = image_size / 8, then three 2x nearest
    upsampling + 3x3 conv stages (BatchNorm + ReLU, the last one linear), mirroring the DTN trunk.
    """

    def __init__(self, in_dim: int, channels: int = 3, image_size: int = 32, width: int = 16):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"FeatureDecoder needs an image size divisible by 8, not {image_size}")
        self.side, self.c0 = image_size // 8, 4 * width
        self.fc = nn.Sequential(nn.Linear(in_dim, self.c0 * self.side * self.side), nn.ReLU(inplace=True))

        def up(cin, cout, last=False):
            layers = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1)]
            return layers if last else layers + [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.net = nn.Sequential(*up(4 * width, 2 * width), *up(2 * width, width), *up(width, channels, last=True))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(h).view(-1, self.c0, self.side, self.side))
