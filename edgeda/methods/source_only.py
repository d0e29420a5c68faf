"""Source-only baseline."""
from __future__ import annotations

from .base import Batch, Method
from .registry import METHODS


@METHODS.register("source_only")
class SourceOnly(Method):
    """Source only: train on labeled source images, no adaptation; the baseline every method must beat.

    Loss: the task's supervised loss on source, L = CE(C(x_s), y_s) (per pixel with ignore index
    255 for segmentation; scale-invariant log loss or L1 on valid pixels for depth; for detection the
    detector's own loss on its matched anchors or locations, ``model.loss(outputs, boxes)``).
    Option ``encoder_lr`` scales the learning rate of the encoder (a dense model's ``encoder``, a
    classifier's ``features``): 1.0, or 0.1 when ``--backbone-weights`` start it from pre-trained
    weights (an explicit ``--option encoder_lr`` wins). Defaults: the trainer's optimizer and schedule.
    """

    summary = "no adaptation: the task's supervised loss on labeled source images (the baseline)"
    uses_target = False
    tasks = ("classification", "segmentation", "depth", "detection")
    defaults: dict = {"encoder_lr": 1.0}

    def build(self) -> None:
        self.nets["model"] = self.make_model()
        self.optims["main"] = self.make_optimizer(self.param_groups(self.model, self.opts.encoder_lr))

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        with self.autocast():
            loss = self.task_loss_of(self.model(source.x), source.y)
        self.update(loss)
        return {"loss/cls": loss.item()}
