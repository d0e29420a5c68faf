"""Class-conditional generator G(y, z) and an image discriminator with spectral normalisation.

Shared by Label2Image-DA (Li et al. 2020) and 3C-GAN model adaptation (Li et al., CVPR 2020):
G maps a class label and noise to an image; D tells real (target) images from generated ones.
Generated images are in [-1, 1] per channel ("tanh space"); :func:`tanh_to_input` maps them to
the normalised input space of a :class:`~edgeda.tasks.spec.TaskSpec` so the classifier can consume them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .registry import ARCHITECTURES


def _up_steps(image_size: int) -> tuple[int, int]:
    """(start side, number of 2x upsamplings) so that start * 2**steps >= image_size."""
    steps = 0
    side = image_size
    while side > 4:
        side = (side + 1) // 2
        steps += 1
    return side, steps


class ConditionalGenerator(nn.Module):
    """G(y, z): label embedding concatenated with noise -> linear -> (upsample, conv, BN, ReLU)* -> tanh.

    >>> g = ConditionalGenerator(num_classes=10, channels=3, image_size=32)
    >>> x = g(torch.tensor([3, 7]), torch.randn(2, g.z_dim))   # (2, 3, 32, 32) in [-1, 1]
    """

    def __init__(self, num_classes: int, channels: int = 3, image_size: int = 32, z_dim: int = 64, width: int = 64):
        super().__init__()
        self.num_classes, self.z_dim, self.image_size = num_classes, z_dim, image_size
        self.start, steps = _up_steps(image_size)
        top = width * 2 ** max(steps - 1, 0)
        self.embed = nn.Embedding(num_classes, z_dim)
        self.fc = nn.Sequential(nn.Linear(2 * z_dim, top * self.start**2), nn.BatchNorm1d(top * self.start**2), nn.ReLU(True))
        layers, c = [], top
        for i in range(steps):
            out = max(width, c // 2) if i < steps - 1 else width
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(True)]
            c = out
        layers += [nn.Conv2d(c, channels, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.top = top

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([self.embed(y), z], 1)).view(-1, self.top, self.start, self.start)  # -1: traceable batch axis
        x = self.body(h)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x

    def sample(self, n: int, device=None, labels: torch.Tensor | None = None, generator=None):
        """Draw ``n`` (images, labels); labels are uniform over classes unless given."""
        device = device or next(self.parameters()).device
        y = labels if labels is not None else torch.randint(0, self.num_classes, (n,), generator=generator).to(device)
        z = torch.randn(n, self.z_dim, generator=generator).to(device)
        return self(y, z), y


class ImageDiscriminator(nn.Module):
    """Conv discriminator with spectral normalisation (Miyato et al. 2018) and LeakyReLU(0.2).

    Unconditional by default (real target images carry no labels); with ``num_classes`` it adds a
    projection term <embed(y), h> (Miyato & Koyama 2018). Returns one logit per image.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 64, num_classes: int | None = None,
                 use_spectral_norm: bool = True):
        super().__init__()
        sn = spectral_norm if use_spectral_norm else (lambda m: m)
        layers, c = [], channels
        side, w = image_size, width
        while side > 4:
            layers += [sn(nn.Conv2d(c, w, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c, w, side = w, min(w * 2, 8 * width), (side + 1) // 2
        self.body = nn.Sequential(*layers)
        self.out = sn(nn.Linear(c, 1))
        self.embed = sn(nn.Embedding(num_classes, c)) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x).sum(dim=(2, 3))  # global sum pooling
        logit = self.out(h).squeeze(1)
        if self.embed is not None and y is not None:
            logit = logit + (self.embed(y) * h).sum(1)
        return logit


def gan_loss(logits: torch.Tensor, real: bool, kind: str = "nonsat") -> torch.Tensor:
    """Discriminator/generator objective on D's logits for the target label ``real``.

    ``nonsat``: BCE with logits (Goodfellow et al. 2014, non-saturating for G);
    ``lsgan``: mean squared error to 1 / 0 (Mao et al. 2017);
    ``hinge``: mean(relu(1 - l)) for real, mean(relu(1 + l)) for fake (D side; G uses -mean(l)).
    """
    logits = logits.float()
    if kind == "nonsat":
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "lsgan":
        return ((logits - (1.0 if real else 0.0)) ** 2).mean()
    if kind == "hinge":
        return F.relu(1 - logits).mean() if real else F.relu(1 + logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; valid: hinge, lsgan, nonsat")


def tanh_to_input(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Generated images in [-1, 1] -> the task's normalised input space ((x01 - mean) / std)."""
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x + 1) * 0.5 - m) / s


def input_to_tanh(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`tanh_to_input`."""
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x * s + m) * 2 - 1


@ARCHITECTURES.register("conditional_generator")
def conditional_generator(**kwargs) -> ConditionalGenerator:
    return ConditionalGenerator(**kwargs)
