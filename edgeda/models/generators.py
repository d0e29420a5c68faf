"""Image-to-image refiner: a ResNet-block generator (Johnson et al. 2016; CycleGAN's generator).

Used by every pixel-level method (PixelDA, CycleGAN/GeneSIS-RT, fore/background CycleGAN, SUIT) as
the shipped ``"refiner"``. Images go in and come out in "tanh space", [-1, 1] per channel
(uint8 / 127.5 - 1), which equals the classifier's input normalisation for the default
mean = std = 0.5; :func:`~edgeda.models.conditional.tanh_to_input` converts otherwise.

Layout: reflection pad + conv + instance norm + ReLU, ``n_down`` stride-2 convs, ``n_blocks``
residual blocks (reflection padding, instance norm), ``n_down`` (nearest upsample + conv) stages
(no transposed convs: no checkerboard artifacts), reflection pad + conv + tanh. Every op exports to
ONNX opset 17 (Pad mode=reflect, InstanceNormalization, Resize).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ARCHITECTURES


def _conv_block(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, stride), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(True)]


class ResnetBlock(nn.Module):
    """x + IN(conv(pad(ReLU(IN(conv(pad(x)))))))."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_block(c, c, 3), nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """G(x[, z]) -> image in [-1, 1] with the input's spatial size.

    ``noise_dim > 0`` (PixelDA) adds one input channel: z (N, noise_dim) -> linear -> an H x W map
    concatenated with the image; ``z=None`` uses z = 0 (the noise mean), so the shipped refiner is
    deterministic with a single image input.

    >>> g = ResnetGenerator(channels=3, width=16, n_blocks=2)
    >>> g(torch.rand(4, 3, 32, 32) * 2 - 1).shape   # (4, 3, 32, 32)
    """

    def __init__(self, channels: int = 3, out_channels: int | None = None, width: int = 32, n_blocks: int = 3,
                 n_down: int = 1, kernel: int = 7, noise_dim: int = 0, image_size: int = 32):
        super().__init__()
        self.noise_dim, self.image_size = noise_dim, image_size
        out_channels = out_channels or channels
        if noise_dim:
            self.noise = nn.Linear(noise_dim, image_size * image_size)
        layers = _conv_block(channels + (1 if noise_dim else 0), width, kernel)
        c = width
        for _ in range(n_down):
            layers += _conv_block(c, c * 2, 3, stride=2)
            c *= 2
        layers += [ResnetBlock(c) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_block(c, c // 2, 3)]
            c //= 2
        layers += [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c, out_channels, kernel), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.noise_dim:
            if z is None:
                z = x.new_zeros(x.shape[0], self.noise_dim)
            zmap = self.noise(z).view(-1, 1, self.image_size, self.image_size)
            if (h, w) != (self.image_size, self.image_size):
                zmap = F.interpolate(zmap, size=(h, w), mode="bilinear", align_corners=False)
            x = torch.cat([x, zmap], 1)
        y = self.body(x)
        if y.shape[-2:] != (h, w):  # odd sizes: stride-2 rounding; resample back to the input size
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return y


@ARCHITECTURES.register("resnet_generator")
def resnet_generator(**kwargs) -> ResnetGenerator:
    return ResnetGenerator(**kwargs)
