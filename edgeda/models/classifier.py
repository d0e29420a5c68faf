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

    def checkpoint_key(self, key: str) -> str:
        """A public classification checkpoint's tensor name -> this model's: the backbone's logits
        layer (``public_head``: torchvision ResNet ``fc``, MobileNetV3 ``classifier.3``) is ``head``,
        everything else lives under ``features``."""
        head = getattr(self.features, "public_head", None)
        if head and key.startswith(head + "."):
            return "head." + key[len(head) + 1:]
        return "features." + key

    def output_keys(self) -> list[str]:
        """The tensors whose shape depends on the class count (re-initialised when a checkpoint's differs)."""
        return ["head.weight", "head.bias"]


@ARCHITECTURES.register("classifier")
def classifier(**kwargs) -> Classifier:
    return Classifier(**kwargs)
