"""Structural adaptation network: a conditional GAN that makes source high-level features look like target ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import EdgedaError
from ..models.dense_gan import PixelDomainClassifier
from ..models.structural import ConditionalFeatureGenerator
from .base import Batch, Method
from .registry import METHODS


def discriminator_loss(d_target: torch.Tensor, d_transformed: torch.Tensor) -> torch.Tensor:
    """L_D = 1/2 [BCE(D(f_t), 1) + BCE(D(f_s + r), 0)], per location of D's logit maps."""
    t, s = d_target.float(), d_transformed.float()
    return 0.5 * (F.binary_cross_entropy_with_logits(t, torch.ones_like(t))
                  + F.binary_cross_entropy_with_logits(s, torch.zeros_like(s)))


@METHODS.register("san")
class StructuralAdaptation(Method):
    """Structural adaptation network (Hong, Chang, Tong, Yang & Tao, "Conditional Generative
    Adversarial Network for Structured Domain Adaptation", CVPR 2018).

    With the segmenter's encoder giving a low-level map l(x) (an early level of
    ``forward_intermediates``) and the high-level map f(x) (its final map), a conditional generator
    G (:class:`~edgeda.models.structural.ConditionalFeatureGenerator`) turns a source image's
    low-level map and a noise map z ~ N(0, 1) into a residual, so that f_s + G(l_s, z) looks like a
    target image's f_t; target images go through the encoder unchanged. A fully convolutional
    discriminator D (:class:`~edgeda.models.dense_gan.PixelDomainClassifier`, one logit per
    location of the high-level map) tells them apart; the head T learns on the transformed and
    the plain source maps with the source labels. Alternating updates:

        L_D = 1/2 [BCE(D(f_t), 1) + BCE(D(f_s + G(l_s, z)), 0)]                       (D)
        L_G = BCE(D(f_s + G(l_s, z)), 1) + lambda_task * CE(T(f_s + G(l_s, z)), y_s)  (G)
        L_T = CE(T(f_s), y_s) + lambda_task * CE(T(f_s + G(l_s, z)), y_s)              (encoder + T)

    G and the segmenter take one joint step on L_T + BCE(D(sg(f_s) + G), 1) with D frozen (sg: stop
    gradient): the adversarial term reaches G only, G's input l_s is detached, and only the
    cross-entropies train the encoder. Only the segmenter ships; G and D are training-only.
    G's last conv starts at zero, so training starts as source-only and the residual grows as G
    learns. Source and target share one encoder pass (BatchNorm sees both).

    Defaults: ``low_level`` empty = the encoder's first (highest-resolution) level (``stem`` for
    lraspp and deeplab, ``stride1`` for unet), as the paper's generator reads the first
    convolutional layer's maps; G of ``g_width`` 64 channels with ``g_blocks`` 2 residual blocks and
    a 1-channel noise map, lambda_task 1.0 and D's ``d_width`` 256 (our choices, scaled to the CPU
    models here); G and D with Adam at 2e-4, betas (0.5, 0.999), no weight decay (the DCGAN
    settings: the paper's optimizer settings for G and D were not available to check); the
    segmenter uses the trainer's optimizer and schedule.
    """

    summary = "structural adaptation network: a conditional generator makes source high-level features target-like (Hong et al. 2018)"
    tasks = ("segmentation",)
    defaults = {"lambda_task": 1.0, "low_level": "", "g_width": 64, "g_blocks": 2, "noise_channels": 1,
                "d_width": 256, "lr_g": 2e-4, "lr_d": 2e-4}
    option_help = {
        "lambda_task": "weight of the cross-entropy on transformed source features (for G and the segmenter)",
        "low_level": "encoder level G is conditioned on (empty: the first, highest-resolution one)",
        "g_width": "generator channels",
        "g_blocks": "generator residual blocks",
        "noise_channels": "channels of the generator's Gaussian noise map",
        "d_width": "discriminator hidden channels",
        "lr_g": "generator Adam learning rate (betas 0.5, 0.999)",
        "lr_d": "discriminator Adam learning rate (betas 0.5, 0.999)",
    }

    def build(self) -> None:
        o = self.opts
        self.nets["model"] = self.make_model()
        info = self.model.encoder.feature_info
        levels = [k for k in info if k != "out"]
        self.low_level = o.low_level or levels[0]
        if self.low_level not in levels:
            raise EdgedaError(f"method 'san' option low_level={self.low_level!r}; valid for this encoder: {', '.join(levels)}")
        high = self.model.feature_channels
        self.nets["generator"] = ConditionalFeatureGenerator(info[self.low_level]["channels"], high, o.g_width,
                                                             o.g_blocks, o.noise_channels)
        self.nets["discriminator"] = PixelDomainClassifier(high, o.d_width)
        self.optims["main"] = self.make_optimizer(self.model.parameters())
        for name, lr in (("generator", o.lr_g), ("discriminator", o.lr_d)):
            self.optims[name] = self.make_adam(self.nets[name].parameters(), lr, (0.5, 0.999))

    def transformed_logits(self, feats: dict[str, torch.Tensor], residual: torch.Tensor, size) -> torch.Tensor:
        """The head on source levels ``feats`` twice, first with the plain final map f_s, then with
        f_s + residual: (2 N_s, K, H, W) at input size ``size``."""
        both = {k: torch.cat([v, v]) for k, v in feats.items()}
        both["out"] = torch.cat([feats["out"], feats["out"] + residual])
        return F.interpolate(self.model.head(both), size=size, mode="bilinear", align_corners=False)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns, G, D = len(source), self.nets["generator"], self.nets["discriminator"]
        lam = self.opts.lambda_task
        with self.autocast():
            feats = self.model.encoder.forward_intermediates(torch.cat([source.x, target.x]))
            f_s, f_t = feats["out"][:ns], feats["out"][ns:]
            residual = G(feats[self.low_level][:ns].detach(), size=f_s.shape[-2:])
            fake = f_s.detach() + residual
            d_t, d_s = D(f_t.detach()), D(fake.detach())
            d_loss = discriminator_loss(d_t, d_s)
        self.update(d_loss, "discriminator")
        D.requires_grad_(False)
        with self.autocast():
            d_fake = D(fake).float()
            adv = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
            logits = self.transformed_logits({k: v[:ns] for k, v in feats.items()}, residual, source.x.shape[-2:])
            ce_plain = self.task_loss_of(logits[:ns], source.y)
            ce_trans = self.task_loss_of(logits[ns:], source.y)
        self.update(ce_plain + lam * ce_trans + adv, "main", "generator")
        D.requires_grad_(True)
        with torch.no_grad():
            ratio = residual.float().abs().mean() / f_s.float().abs().mean().clamp_min(1e-12)
            acc = 0.5 * ((d_t > 0).float().mean() + (d_s <= 0).float().mean())
        return {"loss/seg": ce_plain.item(), "loss/seg_transformed": ce_trans.item(), "loss/adv": adv.item(),
                "loss/d": d_loss.item(), "acc/domain": acc.item(),
                "residual/relative": ratio.item()}
