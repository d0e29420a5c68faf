"""Source-only baseline."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Batch, Method
from .registry import METHODS


@METHODS.register("source_only")
class SourceOnly(Method):
    """Source only: train on labeled source images, no adaptation; the baseline every method must beat.

    Loss: L = CE(C(x_s), y_s). Defaults: the trainer's optimizer and schedule.
    """

    summary = "no adaptation: cross-entropy on labeled source images (the baseline)"
    uses_target = False
    defaults: dict = {}

    def build(self) -> None:
        self.nets["classifier"] = self.make_classifier()
        self.optims["main"] = self.make_optimizer(self.nets.parameters())

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        with self.autocast():
            loss = F.cross_entropy(self.classifier(source.x).float(), source.y)
        self.update(loss)
        return {"loss/cls": loss.item()}
