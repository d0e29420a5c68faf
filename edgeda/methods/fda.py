"""FDA: Fourier domain adaptation for semantic segmentation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.conditional import input_to_tanh, tanh_to_input
from ..models.dense import DenseModel
from ..models.dense_alignment import charbonnier_penalty, entropy_map
from ..models.fourier import fourier_amplitude_swap, low_frequency_band
from .base import Batch, Method
from .registry import METHODS


def head_and_output(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at the classifier's output resolution, logits at the input size) of a dense
    segmentation model, from one forward: for :class:`~edgeda.models.dense.DenseModel` the head's
    output and its bilinear upsampling (what ``forward`` computes); any other model gives its
    output twice."""
    if isinstance(model, DenseModel) and model.output == "logits":
        head = model.head(model.forward_intermediates(x))
        return head, F.interpolate(head, size=x.shape[-2:], mode="bilinear", align_corners=False)
    out = model(x)
    return out, out


@METHODS.register("fda")
class FDA(Method):
    """FDA (Yang & Soatto, "FDA: Fourier Domain Adaptation for Semantic Segmentation", CVPR 2020).

    Each source image x_s takes the low-frequency Fourier amplitude of a random target image of the
    batch, keeping its own phase (:func:`edgeda.models.fourier.fourier_amplitude_swap`, band
    half-width b = floor(min(H, W) * beta)), in [0, 1] pixel space; then

        L = CE(G(x_s->t), y_s) + lambda_ent * mean_{h,w} rho(E(x_t)),  rho(e) = (e^2 + 0.001^2)^eta,

    with E the per-pixel entropy of softmax(G(x_t)) divided by log C, taken at the classifier's
    output resolution as in the authors' code (their DeepLab computes it on the ASPP classifier's
    stride-8 output, before upsampling to the image for the cross-entropy). edgeda's dense models
    upsample inside ``forward``, so the head's logits are read before that step
    (``model.head(model.forward_intermediates(x))``, :func:`head_and_output`), and the
    cross-entropy uses the upsampled logits as ``forward`` returns them; a segmenter without that
    encoder + head split falls back to the entropy of its output. As in the authors' code the
    entropy term is switched on after a third of training (their ``switch2entropy`` 50k of 150k
    steps: first learn the task on translated images). Source and target share one forward pass.

    Defaults (the paper's): beta 0.01, eta 2.0, lambda_ent 0.005; the segmenter uses the trainer's
    optimizer and schedule. At 64-pixel-high inputs beta 0.01 gives b = 0, i.e. only each channel's
    mean (the DC term) is swapped; larger inputs swap a wider band. The paper's multi-band ensemble
    (beta 0.01/0.05/0.09 models averaged, then self-training) is not part of this method.
    """

    summary = "train on source images with a target's low-frequency Fourier amplitude, plus a robust target entropy (Yang & Soatto 2020)"
    tasks = ("segmentation",)
    defaults = {"beta": 0.01, "eta": 2.0, "lambda_ent": 0.005, "entropy_start": 1 / 3}
    option_help = {
        "beta": "half-width of the swapped low-frequency square as a fraction of min(H, W)",
        "eta": "Charbonnier exponent on the target entropy",
        "lambda_ent": "weight of the target entropy term",
        "entropy_start": "training progress in [0, 1] at which the entropy term is switched on",
    }

    def build(self) -> None:
        low_frequency_band(*self.task.image_size, self.opts.beta)  # checks beta
        self.nets["model"] = self.make_model()
        self.optims["main"] = self.make_optimizer(self.model.parameters())
        self._generator = torch.Generator().manual_seed(0)

    def translate(self, source_x: torch.Tensor, target_x: torch.Tensor) -> torch.Tensor:
        """Source inputs (normalised as the model sees them) with the low-frequency amplitude of
        randomly paired target inputs, normalised again."""
        order = torch.randint(0, len(target_x), (len(source_x),), generator=self._generator).to(target_x.device)
        xs = (input_to_tanh(source_x, self.task.mean, self.task.std) + 1) / 2  # [0, 1] pixels
        xt = (input_to_tanh(target_x[order], self.task.mean, self.task.std) + 1) / 2
        swapped = fourier_amplitude_swap(xs, xt, self.opts.beta)
        return tanh_to_input(swapped * 2 - 1, self.task.mean, self.task.std)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns = len(source)
        with torch.no_grad():
            x_s2t = self.translate(source.x, target.x)
        with self.autocast():
            head, logits = head_and_output(self.model, torch.cat([x_s2t, target.x]))
            seg_loss = self.task_loss_of(logits[:ns], source.y)
        ent = charbonnier_penalty(entropy_map(head[ns:]), self.opts.eta).mean()  # at the head's resolution
        on = 1.0 if self.progress >= self.opts.entropy_start else 0.0
        self.update(seg_loss + on * self.opts.lambda_ent * ent)
        return {"loss/seg": seg_loss.item(), "loss/ent": ent.item(), "ent/on": on}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pairing_rng": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "pairing_rng" in state:
            self._generator.set_state(state["pairing_rng"])
