"""Label-map-conditioned image generator with spatially-adaptive normalisation (SPADE).

Park, Liu, Wang & Zhu, "Semantic Image Synthesis with Spatially-Adaptive Normalization", CVPR 2019.
A SPADE layer normalises its input with parameter-free BatchNorm and then modulates it per pixel,

    SPADE(h, m) = gamma(m) * BN(h) + beta(m),   gamma, beta = conv(ReLU(conv(m resized to h)))

so the semantic layout ``m`` (a one-hot label map) is not washed out by normalisation, as it is
when the map is only fed at the input. :class:`LabelMapGenerator` G(m, z) maps a label map and a
noise vector to an image in [-1, 1] ("tanh space", see :mod:`edgeda.models.conditional`).
Shared by the label-map variants of Label2Image (training with source masks as layouts) and of
3C-GAN (on-device adaptation, layouts from the shipped segmenter).

>>> g = LabelMapGenerator(num_classes=11, channels=3, width=32, n_up=3)
>>> masks = torch.randint(0, 11, (2, 64, 128))
>>> g(masks, torch.randn(2, g.z_dim)).shape           # (2, 3, 64, 128), values in [-1, 1]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dense import IGNORE_INDEX
from .registry import ARCHITECTURES


def one_hot_map(masks: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(N, H, W) integer masks -> (N, C, H, W) float one-hot maps; ``ignore_index`` pixels are all zero.
    A float (N, C, H, W) input is returned as it is (soft layouts, e.g. softmax outputs)."""
    if masks.dim() == 4:
        return masks.float()
    if masks.dim() != 3:
        raise ValueError(f"label maps must be (N, H, W) class ids or (N, C, H, W) maps, got shape {tuple(masks.shape)}")
    valid = (masks != ignore_index) & (masks >= 0) & (masks < num_classes)
    ids = torch.where(valid, masks, torch.zeros_like(masks)).long()
    out = F.one_hot(ids, num_classes).permute(0, 3, 1, 2).float()
    return out * valid.unsqueeze(1).float()


class SPADE(nn.Module):
    """gamma(m) * BN(h) + beta(m) with a parameter-free BatchNorm and a shared 3x3 conv on the layout."""

    def __init__(self, channels: int, label_channels: int, hidden: int = 64):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, 1, 1), nn.ReLU(True))
        self.gamma = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.beta = nn.Conv2d(hidden, channels, 3, 1, 1)

    def forward(self, h: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        m = F.interpolate(layout, size=h.shape[-2:], mode="nearest")
        a = self.shared(m)
        return self.norm(h) * (1 + self.gamma(a)) + self.beta(a)


class SPADEResBlock(nn.Module):
    """SPADE -> LeakyReLU -> conv, twice, plus a (SPADE, 1x1 conv) shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, label_channels: int, hidden: int = 64):
        super().__init__()
        mid = min(cin, cout)
        self.norm0, self.conv0 = SPADE(cin, label_channels, hidden), nn.Conv2d(cin, mid, 3, 1, 1)
        self.norm1, self.conv1 = SPADE(mid, label_channels, hidden), nn.Conv2d(mid, cout, 3, 1, 1)
        self.skip = None
        if cin != cout:
            self.skip_norm, self.skip = SPADE(cin, label_channels, hidden), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, h: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        s = h if self.skip is None else self.skip(self.skip_norm(h, layout))
        d = self.conv0(F.leaky_relu(self.norm0(h, layout), 0.2))
        d = self.conv1(F.leaky_relu(self.norm1(d, layout), 0.2))
        return s + d


class LabelMapGenerator(nn.Module):
    """G(m, z): noise broadcast over the layout downsampled by 2**n_up -> 3x3 conv -> n_up times
    (SPADE residual block, 2x nearest upsample) -> SPADE residual block -> LeakyReLU, 3x3 conv, tanh.

    Channels halve at each upsampling from ``width * 2**n_up`` (capped at 8 * width) down to
    ``width``. Any H and W work: the start grid is ceil(H / 2**n_up) x ceil(W / 2**n_up) and the
    output is resized to (H, W) when that is not exact. The label map may be class ids (N, H, W)
    (``ignore_index`` pixels carry no class) or a soft (N, C, H, W) map.
    """

    def __init__(self, num_classes: int, channels: int = 3, width: int = 32, n_up: int = 3, z_dim: int = 32,
                 hidden: int = 32, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if n_up < 0 or width < 1:
            raise ValueError(f"n_up must be >= 0 and width >= 1, got {n_up}, {width}")
        self.num_classes, self.z_dim, self.n_up, self.ignore_index = num_classes, z_dim, n_up, ignore_index
        top = min(width * 2**n_up, 8 * width)
        self.head = nn.Conv2d(num_classes + z_dim, top, 3, 1, 1)
        blocks, c = [], top
        for i in range(n_up):
            out = max(width, min(width * 2 ** (n_up - 1 - i), 8 * width))
            blocks.append(SPADEResBlock(c, out, num_classes, hidden))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.last = SPADEResBlock(c, width, num_classes, hidden)
        self.out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, masks: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        layout = one_hot_map(masks, self.num_classes, self.ignore_index)
        n, _, h, w = layout.shape
        if z is None:
            z = torch.randn(n, self.z_dim, device=layout.device)
        f = 2**self.n_up
        h0, w0 = -(-h // f), -(-w // f)
        small = F.interpolate(layout, size=(h0, w0), mode="nearest")
        x = self.head(torch.cat([small, z[:, :, None, None].expand(-1, -1, h0, w0)], 1))
        for block in self.blocks:
            x = F.interpolate(block(x, layout), scale_factor=2, mode="nearest")
        x = torch.tanh(self.out(F.leaky_relu(self.last(x, layout), 0.2)))
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x


@ARCHITECTURES.register("label_map_generator")
def label_map_generator(**kwargs) -> LabelMapGenerator:
    return LabelMapGenerator(**kwargs)
