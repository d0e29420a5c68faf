"""Shared plumbing of the pixel-level methods (PixelDA, CycleGAN, fore/background CycleGAN, SUIT,
Label2Image): generator/discriminator construction, tanh <-> input space, the GAN optimizers, the
loss-explosion guard, the sample grid and the deployables. Losses live in
:mod:`edgeda.models.gan_utils` and :mod:`edgeda.models.conditional`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import EdgedaError
from ..models import build
from ..models.conditional import gan_loss, input_to_tanh, tanh_to_input
from ..models.gan_utils import _to_uint8, write_sample_grid
from ..models.patchgan import PatchDiscriminator
from ..tasks import task_of
from ..tasks.draw import save_translation_grid
from .base import Batch, Method, NonFiniteLoss

# Options every pixel-level method takes (sized for 32x32 digits on a CPU).
PIXEL_DEFAULTS = {
    "g_width": 16,      # generator base channels
    "g_blocks": 2,      # residual blocks
    "g_kernel": 7,      # first/last conv kernel (reflection padded)
    "d_width": 32,      # PatchGAN base channels
    "d_layers": 2,      # PatchGAN stride-2 stages
    "d_augment": "",    # DiffAugment policy of every PatchGAN input, e.g. color,translation,cutout ("" = off)
    "gan": "lsgan",     # GAN objective: lsgan | nonsat | hinge
    "lr_g": 2e-4,       # Adam learning rate of generators and discriminators (betas 0.5, 0.999)
    "max_loss": 1e3,    # a loss above this stops the run as diverged (the last checkpoint is kept)
}


class PixelMethod(Method):
    """Base of the pixel-level methods: ``self.nets["refiner"]`` is the shipped image-to-image G."""

    # -- construction ---------------------------------------------------------------------------
    def make_refiner(self, noise_dim: int = 0) -> nn.Module:
        o, t = self.opts, self.task
        return build("resnet_generator", channels=t.channels, width=o.g_width, n_blocks=o.g_blocks,
                     n_down=1, kernel=o.g_kernel, noise_dim=noise_dim, image_size=t.image_size[0])

    def make_discriminator(self) -> nn.Module:
        try:
            return PatchDiscriminator(self.task.channels, self.opts.d_width, self.opts.d_layers,
                                      augment=self.opts.d_augment)
        except ValueError as e:
            raise EdgedaError(f"{self.name} option d_augment: {e}") from None

    def make_gan_optimizer(self, params) -> torch.optim.Optimizer:
        """Adam(lr_g, betas 0.5/0.999, no weight decay); the trainer's LR schedule still scales it."""
        return self.make_adam(params, self.opts.lr_g)

    # -- spaces and losses ----------------------------------------------------------------------
    def to_tanh(self, x: torch.Tensor) -> torch.Tensor:
        return input_to_tanh(x, self.task.mean, self.task.std)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return tanh_to_input(x, self.task.mean, self.task.std)

    def gan(self, logits: torch.Tensor, real: bool, generator: bool = False) -> torch.Tensor:
        kind = self.opts.gan
        if generator and kind == "hinge":
            return -logits.float().mean()
        return gan_loss(logits, real, kind)

    def update(self, loss: torch.Tensor, *optim_names: str, retain_graph: bool = False) -> None:
        """As :meth:`Method.update`, and a loss above ``max_loss`` counts as diverged (before any change)."""
        value = float(loss.detach())
        if value > self.opts.max_loss:
            raise NonFiniteLoss(f"exploded: {value:.4g} > max_loss {self.opts.max_loss:g} "
                                f"(updating {', '.join(optim_names) or 'all'})")
        super().update(loss, *optim_names, retain_graph=retain_graph)

    # -- what ships and what a person sees --------------------------------------------------------
    def deployables(self) -> dict[str, nn.Module]:
        return {task_of(self.task).deployable: self.model, "refiner": self.nets["refiner"]}

    def display_panels(self, source: Batch, target: Batch | None) -> list[torch.Tensor]:
        """Panels of the sample grid, in tanh space: source | refined source."""
        xs = self.to_tanh(source.x)
        return [xs, self.nets["refiner"](xs)]

    def visualize(self, folder, iteration: int, source: Batch, target: Batch | None):
        panels = self.display_panels(source, target)
        path = Path(folder) / f"samples_{iteration:06d}.png"
        if task_of(self.task).spatial_output:
            return self.dense_grid(path, panels, source, target, f"iteration {iteration}")
        return write_sample_grid(path, panels, source.y)

    def dense_grid(self, path: Path, panels: list[torch.Tensor], source: Batch, target: Batch | None, title: str = ""):
        """Dense sample grid: each panel (source | translated ...) with the source truth overlaid |
        target image with the task model's prediction overlaid."""
        if source is None or source.y is None:
            return None
        task = task_of(self.task)
        own_grid = getattr(task, "translation_grid", None)  # a task whose labels are not per-pixel maps draws its own
        if own_grid is not None:
            tgt = pred = None
            if target is not None:
                pred = task.decide(task.infer(self.model, target.x))
                tgt = _to_uint8(self.to_tanh(target.x))
            return own_grid(self.task, [_to_uint8(p) for p in panels], source.y, tgt, pred, path, title)
        tgt = pred = None
        if target is not None:
            pred = task.decide(self.model(target.x).float()).cpu().numpy()
            tgt = _to_uint8(self.to_tanh(target.x))
        return save_translation_grid(self.task, [_to_uint8(p) for p in panels], source.y.cpu().numpy(), tgt, pred,
                                     path, title)
