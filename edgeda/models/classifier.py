"""The shipped classifier: a feature extractor followed by a head, so methods can reach the features."""
from __future__ import annotations

import torch
from torch import nn

from .registry import ARCHITECTURES, BACKBONES


class Classifier(nn.Module):
    """``logits = head(features(x))``. ``features`` is a registered backbone; ``head`` is linear."""

    def __init__(self, backbone: str, num_classes: int, channels: int = 3, image_size: int = 32, backbone_kwargs: dict | None = None):
        super().__init__()
        self.features = BACKBONES.get(backbone)(channels=channels, image_size=image_size, **(backbone_kwargs or {}))
        self.head = nn.Linear(self.features.out_dim, num_classes)
        self.feature_dim = self.features.out_dim
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(f)


@ARCHITECTURES.register("classifier")
def classifier(**kwargs) -> Classifier:
    return Classifier(**kwargs)
