"""The conditional feature generator of the structural adaptation network (Hong, Chang, Tong, Yang &
Tao, "Conditional Generative Adversarial Network for Structured Domain Adaptation", CVPR 2018).

G(l, z) maps a low-level feature map l of a source image, resized to the high-level grid and
concatenated with a noise map z, to a residual r with the high-level map's channels; the
transformed source map is f + r. The last conv starts at zero, so r = 0 at initialisation and
training starts from the plain source features.

>>> g = ConditionalFeatureGenerator(low_channels=16, high_channels=576, width=64, n_blocks=2, noise_channels=1)
>>> r = g(low, size=high.shape[-2:])      # (N, 576, h, w); low (N, 16, H/2, W/2)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ConditionalFeatureGenerator(nn.Module):
    """(low-level map (N, C_l, H_l, W_l), noise) -> residual (N, C_h, h, w) for a high-level grid (h, w).

    The low-level map is average-pooled to (h, w) (``adaptive_avg_pool2d``: each cell summarises
    the fine detail under it), z ~ N(0, 1) with ``noise_channels`` channels is drawn per location
    (or passed in), then: 3x3 conv + BN + ReLU to ``width`` channels, ``n_blocks`` residual blocks
    (two 3x3 conv + BN each), and a 1x1 conv to ``high_channels``, zero-initialised.
    """

    def __init__(self, low_channels: int, high_channels: int, width: int = 64, n_blocks: int = 2,
                 noise_channels: int = 1):
        super().__init__()
        self.noise_channels = int(noise_channels)
        self.stem = nn.Sequential(nn.Conv2d(low_channels + self.noise_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(True))
        self.blocks = nn.Sequential(*[_ResidualBlock(width) for _ in range(int(n_blocks))])
        self.out = nn.Conv2d(width, high_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, low: torch.Tensor, size: tuple[int, int], noise: torch.Tensor | None = None) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(low, tuple(size))
        if self.noise_channels:
            if noise is None:
                noise = torch.randn(x.shape[0], self.noise_channels, *x.shape[-2:], device=x.device, dtype=x.dtype)
            x = torch.cat([x, noise.to(x.dtype)], dim=1)
        return self.out(self.blocks(self.stem(x)))
