"""Feature pyramid (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017) with RetinaNet's
P6/P7, in torchvision's layout (``inner_blocks.{i}.0`` lateral 1x1 convs, ``layer_blocks.{i}.0`` 3x3 output
convs, both with bias; ``extra_blocks.p6`` / ``p7`` stride-2 3x3 convs).

``P_i = layer_i(lateral_i(C_i) + nearest_upsample(top-down_{i+1}))`` from the coarsest level down;
``P6 = p6(P5)`` (torchvision's ``LastLevelP6P7`` takes P5 when its input width equals the pyramid's,
as in FCOS) and ``P7 = p7(relu(P6))``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LastLevelP6P7(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class FeaturePyramid(nn.Module):
    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1)) for _ in in_channels)
        self.extra_blocks = LastLevelP6P7(channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        last = self.inner_blocks[-1](feats[-1])
        out = [self.layer_blocks[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            out.insert(0, self.layer_blocks[i](last))
        return out + self.extra_blocks(out[-1])
