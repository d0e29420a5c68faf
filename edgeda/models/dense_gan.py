"""Adversarial parts for dense (per-pixel) adaptation, each written once.

- :class:`FeatureImageGenerator`: G of generate-to-adapt (Sankaranarayanan et al., CVPR 2018):
  a dense encoder's final feature map -> an image in [-1, 1], with dropout in every stage as
  the noise source.
- :class:`FourClassPatchDiscriminator`: a PatchGAN trunk (:class:`~edgeda.models.patchgan.PatchDiscriminator`)
  with a 4-class output per patch (source-real, source-fake, target-real, target-fake) and an
  auxiliary pixel-wise labelling head; :func:`patch_targets` / :func:`four_class_loss` are its loss.
- :class:`PixelDomainClassifier`: a fully convolutional domain classifier giving one domain logit
  per location of a feature map (FCNs in the wild, Hoffman et al. 2016).

>>> g = FeatureImageGenerator(in_channels=128, channels=3, stride=16, width=32)
>>> g(torch.randn(2, 128, 4, 4), size=(64, 64)).shape        # (2, 3, 64, 64)
>>> d = FourClassPatchDiscriminator(channels=3, num_classes=11, width=32, n_layers=2)
>>> kinds, labels = d(torch.randn(2, 3, 64, 64))              # (2, 4, 16, 16), (2, 11, 64, 64)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .patchgan import PatchDiscriminator

SOURCE_REAL, SOURCE_FAKE, TARGET_REAL, TARGET_FAKE = 0, 1, 2, 3
KINDS = ("source-real", "source-fake", "target-real", "target-fake")


class FeatureImageGenerator(nn.Module):
    """G(F(x)) -> x_hat in [-1, 1]: a 1x1 conv from the feature map, then log2(stride) stages of
    (2x nearest upsample, 3x3 conv, BatchNorm, ReLU, dropout) halving the channels down to ``width``,
    a 3x3 conv and tanh; resized to ``size`` at the end (strides are exact only for multiples of 32).

    Dropout stays active in training only; it replaces an explicit noise input (as in pix2pix and
    generate-to-adapt).
    """

    def __init__(self, in_channels: int, channels: int = 3, stride: int = 16, width: int = 32, dropout: float = 0.5):
        super().__init__()
        n_up = max(0, int(round(math.log2(max(1, stride)))))
        c = width * 2 ** min(n_up, 3)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(n_up):
            out = max(width, c // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(True), nn.Dropout(dropout)]
            c = out
        layers += [nn.Conv2d(c, channels, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.body(features)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class FourClassPatchDiscriminator(nn.Module):
    """D(x) -> (patch logits over the 4 kinds (N, 4, h, w), pixel-wise class logits (N, K, H, W)).

    The trunk is a PatchGAN without its last 1-channel conv; two 3x3 convs on the trunk give the
    4-way real/fake x source/target decision per patch and the auxiliary labelling (upsampled
    bilinearly to the input size, as the auxiliary classifier of Odena et al. 2017 per pixel).
    """

    def __init__(self, channels: int = 3, num_classes: int = 2, width: int = 32, n_layers: int = 2):
        super().__init__()
        patch = PatchDiscriminator(channels, width, n_layers)
        self.trunk = patch.body[:-1]
        c = patch.body[-1].in_channels
        self.kind = nn.Conv2d(c, len(KINDS), 3, 1, 1)
        self.label = nn.Conv2d(c, num_classes, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        labels = F.interpolate(self.label(h), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.kind(h), labels


def patch_targets(kind: int, logits: torch.Tensor) -> torch.Tensor:
    """The class index ``kind`` (one of SOURCE_REAL .. TARGET_FAKE) at every patch of ``logits`` (N, 4, h, w) -> (N, h, w)."""
    if kind not in range(len(KINDS)):
        raise ValueError(f"patch kind must be one of 0..3 ({', '.join(KINDS)}), not {kind!r}")
    n, _, h, w = logits.shape
    return torch.full((n, h, w), kind, dtype=torch.long, device=logits.device)


def four_class_loss(logits: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Per-patch cross-entropy of the 4-class patch discriminator: mean over patches of
    -log softmax(logits)[kind]; ``kinds`` (N, h, w) from :func:`patch_targets` (or a concatenation)."""
    return F.cross_entropy(logits.float(), kinds)


class PixelDomainClassifier(nn.Module):
    """Feature map (N, C, h, w) -> one domain logit per location (N, 1, h, w): 1x1 conv, ReLU,
    1x1 conv, ReLU, 1x1 conv (a fully convolutional domain classifier, so the alignment is per
    receptive field, as FCNs in the wild align fc7 regions)."""

    def __init__(self, in_channels: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(True), nn.Conv2d(hidden, hidden, 1),
                                 nn.ReLU(True), nn.Conv2d(hidden, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
