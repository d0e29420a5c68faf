"""AdvEnt and MinEnt: entropy minimisation and adversarial entropy alignment for segmentation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.dense_alignment import FullyConvDiscriminator, entropy_map, self_information_map
from .base import Batch, Method
from .registry import METHODS


@METHODS.register("advent")
class AdvEnt(Method):
    """AdvEnt / MinEnt (Vu, Jain, Bucher, Cord & Perez, "ADVENT: Adversarial Entropy Minimization for
    Domain Adaptation in Semantic Segmentation", CVPR 2019).

    With P = softmax(G(x)) (N, C, H, W), the weighted self-information map I = -P log P / log C and
    the normalised entropy map E = sum_c I:

    * ``mode=minent``: L = CE(G(x_s), y_s) + lambda_ent * mean_{h,w} E(x_t)
    * ``mode=advent`` (default): a fully convolutional discriminator D on I (source = 0, target = 1):
      L_G = CE(G(x_s), y_s) + lambda_adv * BCE(D(I(x_t)), 0)  (target maps made to look like source),
      L_D = 1/2 [BCE(D(I(x_s)), 0) + BCE(D(I(x_t)), 1)] on detached maps; D is frozen in the G step.

    Source and target share one forward pass of the segmenter (BatchNorm sees both, as in the
    other feature-level methods here). Defaults from the paper: lambda_ent 1e-3, lambda_adv 1e-3,
    D Adam 1e-4 with betas (0.9, 0.99) and no weight decay, D of four 4x4 stride-2 convs with 64 ..
    512 channels and a 4x4 stride-2 output conv; the segmenter uses the trainer's optimizer and
    schedule (the paper's SGD 2.5e-4 with poly decay is for DeepLab-v2 from ImageNet weights over
    120k iterations). Only the final output is aligned (the authors' code also aligns the auxiliary
    classifier of DeepLab-v2, which the dense models here do not have). The CPU benchmark narrows
    the discriminator to ``d_width`` 16: with 64 a step took about six times a source-only one at 64x128.
    """

    summary = "entropy minimisation (MinEnt) or adversarial alignment of self-information maps (AdvEnt; Vu et al. 2019)"
    tasks = ("segmentation",)
    defaults = {"mode": "advent", "lambda_ent": 1e-3, "lambda_adv": 1e-3, "lr_d": 1e-4, "d_width": 64, "d_layers": 4}
    choices = {"mode": ("advent", "minent")}
    option_help = {
        "mode": "advent: adversarial alignment of self-information maps; minent: entropy minimisation",
        "lambda_ent": "weight of the target entropy loss (minent)",
        "lambda_adv": "weight of the adversarial loss on the segmenter (advent)",
        "lr_d": "discriminator Adam learning rate (betas 0.9, 0.99)",
        "d_width": "discriminator channels of its first conv",
        "d_layers": "discriminator stride-2 conv stages before the output conv",
    }

    @property
    def minent(self) -> bool:
        """``mode=minent``: entropy minimisation instead of the adversarial alignment."""
        return self.opts.mode == "minent"

    def build(self) -> None:
        self.nets["model"] = self.make_model()
        self.optims["main"] = self.make_optimizer(self.model.parameters())
        if not self.minent:
            self.nets["discriminator"] = FullyConvDiscriminator(self.task.num_classes, self.opts.d_width,
                                                                self.opts.d_layers)
            self.optims["discriminator"] = self.make_adam(self.nets["discriminator"].parameters(), self.opts.lr_d,
                                                          (0.9, 0.99))

    def aligned_map(self, logits: torch.Tensor) -> torch.Tensor:
        """The per-pixel map the discriminator sees: the weighted self-information I."""
        return self_information_map(logits)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns = len(source)
        with self.autocast():
            logits = self.model(torch.cat([source.x, target.x]))
            seg_loss = self.task_loss_of(logits[:ns], source.y)
        if self.minent:
            ent = entropy_map(logits[ns:]).mean()
            self.update(seg_loss + self.opts.lambda_ent * ent, "main")
            return {"loss/seg": seg_loss.item(), "loss/ent": ent.item()}

        d = self.nets["discriminator"]
        info = self.aligned_map(logits)
        d.requires_grad_(False)
        with self.autocast():
            out_t = d(info[ns:]).float()
        adv = F.binary_cross_entropy_with_logits(out_t, torch.zeros_like(out_t))  # target made to look like source
        self.update(seg_loss + self.opts.lambda_adv * adv, "main")
        d.requires_grad_(True)
        with self.autocast():
            out = d(info.detach()).float()
        labels = torch.zeros_like(out)
        labels[ns:] = 1.0
        d_loss = 0.5 * (F.binary_cross_entropy_with_logits(out[:ns], labels[:ns])
                        + F.binary_cross_entropy_with_logits(out[ns:], labels[ns:]))
        self.update(d_loss, "discriminator")
        acc = ((out > 0).float() == labels).float().mean()
        return {"loss/seg": seg_loss.item(), "loss/adv": adv.item(), "loss/d": d_loss.item(), "acc/domain": acc.item(),
                "ent/target": entropy_map(logits[ns:].detach()).mean().item()}
