"""PatchGAN discriminator (Isola et al., pix2pix, CVPR 2017; used by CycleGAN).

Classifies overlapping patches as real or fake: (N, C, H, W) -> (N, 1, h, w) logits, one per
receptive field. Conv(4, stride 2) + LeakyReLU(0.2) stages with instance norm after the first,
then a stride-1 conv and a 1-channel stride-1 conv. Losses: :func:`~edgeda.models.conditional.gan_loss`
takes the mean over every patch. ``augment`` (a DiffAugment policy, e.g. ``"color,translation,cutout"``)
transforms every input in training mode (:func:`~edgeda.models.gan_utils.diff_augment`); eval mode
and ``augment=""`` (the default) see the images as they are.

>>> d = PatchDiscriminator(channels=3, width=32, n_layers=2)
>>> d(torch.randn(4, 3, 32, 32)).shape   # (4, 1, 7, 7)
"""
from __future__ import annotations

import torch
from torch import nn

from .gan_utils import diff_augment, parse_policy
from .registry import ARCHITECTURES


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 3, width: int = 64, n_layers: int = 3, augment: str = ""):
        super().__init__()
        self.augment = parse_policy(augment)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for i in range(1, n_layers):
            out = width * min(2**i, 8)
            layers += [nn.Conv2d(c, out, 4, 2, 1), nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2, True)]
            c = out
        out = width * min(2**n_layers, 8)
        layers += [nn.Conv2d(c, out, 3, 1, 1), nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(out, 1, 3, 1, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment and self.training:
            x = diff_augment(x, self.augment)
        return self.body(x)


@ARCHITECTURES.register("patchgan")
def patchgan(**kwargs) -> PatchDiscriminator:
    return PatchDiscriminator(**kwargs)
