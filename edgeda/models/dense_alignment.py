"""Shared parts of the dense (segmentation / depth) alignment methods: entropy and self-information
maps of per-pixel predictions, the Charbonnier penalty, a fully convolutional discriminator on
output-space maps, and DANN's domain loss per pixel of an encoder feature map (with
:class:`edgeda.models.dense_gan.PixelDomainClassifier`).

Used by ``advent`` (self-information maps, entropy map, discriminator), ``fda`` (entropy map and
Charbonnier penalty) and ``dann``'s dense path (the per-pixel domain loss).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..scores import entropy
from .layers import gradient_reversal


def self_information_map(logits: torch.Tensor) -> torch.Tensor:
    """Weighted self-information I = -p log p / log C per class and pixel (Vu et al., AdvEnt, CVPR 2019).

    ``logits`` (N, C, H, W) -> (N, C, H, W) in [0, 1/e / log C]; its sum over classes is the
    normalised entropy map. Zero for one-hot predictions.

    >>> d_in = self_information_map(model(x_t))   # what AdvEnt's discriminator sees
    """
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp) / math.log(logits.shape[1])


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of softmax(logits) over classes, divided by log C so it lies in [0, 1].

    ``logits`` (N, C, H, W) -> (N, H, W): 0 where a pixel's prediction is one-hot, 1 where uniform.
    AdvEnt's MinEnt loss is its mean: L_ent = 1/(N H W) sum_{n,h,w} E[n, h, w].
    """
    return entropy(logits, dim=1) / math.log(logits.shape[1])


def charbonnier_penalty(x: torch.Tensor, eta: float, eps: float = 1e-3) -> torch.Tensor:
    """rho(x) = (x^2 + eps^2)^eta elementwise (FDA's robust penalty on the target entropy, Yang & Soatto 2020).

    With eta > 0.5 it penalises large values more than small ones, so uncertain pixels are pushed
    harder than almost-confident ones.
    """
    return (x.float().pow(2) + eps * eps).pow(eta)


class FullyConvDiscriminator(nn.Module):
    """Fully convolutional discriminator on output-space maps (Tsai et al., AdaptSegNet, CVPR 2018;
    the discriminator of AdvEnt, Vu et al. 2019).

    ``n_layers`` Conv(4x4, stride 2) + LeakyReLU(0.2) stages with ``width * 2^i`` channels
    (i < 4, then capped at 8x), then a Conv(4x4, stride 2) to one logit per location:
    (N, C, H, W) -> (N, 1, H / 2^(n_layers+1), W / 2^(n_layers+1)) for sides that are multiples of
    that. No normalisation layers: an instance-normalised discriminator (``PatchDiscriminator``)
    would rescale every map on its own and so hide the overall entropy level that tells domains apart.

    >>> d = FullyConvDiscriminator(19, width=64, n_layers=4)
    >>> d(torch.rand(2, 19, 64, 128)).shape    # (2, 1, 2, 4)
    """

    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(n_layers):
            out = width * min(2 ** i, 8)
            layers += [nn.Conv2d(c, out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c = out
        layers.append(nn.Conv2d(c, 1, 4, 2, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def channel_standardised(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``maps`` (N, C, h, w) standardised over channels at each location (zero mean, unit variance, no
    learned scale): what a domain classifier sees of features with no bound, so that the reversed
    gradient reaching them is orthogonal to their scale and offset and cannot win by growing them."""
    f = maps.float()
    mean = f.mean(dim=1, keepdim=True)
    var = f.var(dim=1, unbiased=False, keepdim=True)
    return ((f - mean) * torch.rsqrt(var + eps)).to(maps.dtype)


def pixel_domain_adversarial_loss(
    discriminator: nn.Module, source_maps: torch.Tensor, target_maps: torch.Tensor, coeff: float,
    return_logits: bool = False,
) -> tuple[torch.Tensor, ...]:
    """DANN's domain loss per pixel through gradient reversal.

    L_d = mean over pixels of BCE(D(R_c(f_s)), 1) and BCE(D(R_c(f_t)), 0), R_c identity forward and
    -c * grad backward, so D minimises L_d and the encoder maximises it in one backward pass.
    Shapes: maps (Ns, C, h, w) and (Nt, C, h, w). Returns (loss, per-pixel domain accuracy of D), and
    with ``return_logits`` also D's logits (Ns + Nt, 1, h, w), source first.

    >>> loss, acc = pixel_domain_adversarial_loss(PixelDomainClassifier(576), fs, ft, coeff=0.3)  # dense_gan's
    """
    f = torch.cat([source_maps, target_maps])
    logits = discriminator(gradient_reversal(f, coeff)).float()
    labels = torch.zeros_like(logits)
    labels[: len(source_maps)] = 1.0
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    acc = ((logits > 0).float() == labels).float().mean()
    return (loss, acc, logits) if return_logits else (loss, acc)


def level_domain_adversarial_loss(discriminators, maps: list[torch.Tensor], n_source: int, coeff: float,
                                  normalised: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """A detector's image-level alignment: :func:`pixel_domain_adversarial_loss` on each feature level
    (the first ``n_source`` maps of each the source's) with that level's discriminator, averaged over
    the levels. Plain-convolution levels (``normalised`` False: an FPN's) are seen standardised over
    channels (:func:`channel_standardised`). Returns (loss, accuracy, the maps the discriminators saw,
    their logits per level)."""
    seen = maps if normalised else [channel_standardised(f) for f in maps]
    parts = [pixel_domain_adversarial_loss(d, f[:n_source], f[n_source:], coeff, return_logits=True)
             for d, f in zip(discriminators, seen)]
    loss = torch.stack([p[0] for p in parts]).mean()
    acc = torch.stack([p[1] for p in parts]).mean()
    return loss, acc, seen, [p[2] for p in parts]
