"""Generate to adapt for semantic segmentation (4-class patch discriminator)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.conditional import input_to_tanh
from ..models.dense_gan import (SOURCE_FAKE, SOURCE_REAL, TARGET_FAKE, TARGET_REAL, FeatureImageGenerator,
                                FourClassPatchDiscriminator, four_class_loss, patch_targets)
from ..models.gan_utils import write_sample_grid
from .base import Batch, Method
from .registry import METHODS

# The patch class each kind of D input is trained towards in each update (the paper's Table 1).
# F receives the cross-domain gradients: generated source pushed to target-real and vice versa.
UPDATE_TARGETS = {
    "d": {"source-real": SOURCE_REAL, "source-fake": SOURCE_FAKE, "target-real": TARGET_REAL, "target-fake": TARGET_FAKE},
    "g": {"source-fake": SOURCE_REAL, "target-fake": TARGET_REAL},
    "f": {"source-fake": TARGET_REAL, "target-fake": SOURCE_REAL},
}


def update_targets(update: str, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per D input kind, the (N, h, w) patch targets of ``update`` ("d", "g" or "f") for its logits."""
    return {kind: patch_targets(UPDATE_TARGETS[update][kind], lg) for kind, lg in logits.items()}


def adversarial_loss(update: str, logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the given kinds of the mean per-patch 4-class cross-entropy towards ``update``'s targets."""
    targets = update_targets(update, logits)
    return sum(four_class_loss(lg, targets[kind]) for kind, lg in logits.items())


@METHODS.register("gta_seg")
class GenerateToAdaptSeg(Method):
    """Generate to adapt for segmentation: F/C segment, G reconstructs images from F's embedding,
    a 4-class patch D judges them, and F learns features whose reconstructions D takes for the other domain.

    Sankaranarayanan, Balaji, Jain, Lim & Chellappa, "Learning from Synthetic Data: Addressing
    Domain Shift for Semantic Segmentation", CVPR 2018.

    F is the dense model's encoder, C its head (together the shipped model); G maps F's final map
    to an image in [-1, 1] with dropout in every stage instead of a noise input; D is a PatchGAN
    with 4 classes per patch (sr, sf, tr, tf = source/target x real/fake) and an auxiliary pixel-wise
    labelling head D_cls. With x^ = G(F(x)) and CE the per-patch (per-pixel) cross-entropy, one
    iteration on (x_s, y_s, x_t) makes three updates in turn:

        D:  L_D = CE(D(x_s), sr) + CE(D(x^_s), sf) + CE(D(x_t), tr) + CE(D(x^_t), tf) + CE(D_cls(x_s), y_s)
        G:  L_G = CE(D(x^_s), sr) + CE(D(x^_t), tr) + w_rec (||x^_s - x_s||_1 + ||x^_t - x_t||_1)
        F:  L_F = CE(C(F(x_s)), y_s) + alpha CE(D_cls(x^_s), y_s) + beta (CE(D(x^_s), tr) + CE(D(x^_t), sr))

    F is never updated with the within-domain real/fake losses; G and D never see C's loss. Only F
    and C ship: G reconstructs the input from features, which a deployed segmenter has no use for.

    Defaults: the paper's Adam learning rates, 1e-5 for F and C (``lr_f``) and 2e-4 for G and D
    (``lr_gd``), betas (0.5, 0.999) (the trainer's), reconstruction weight 1; alpha = beta = 0.1
    (the paper's text gives no values); G of 32 base channels with dropout 0.5; D of 32 base
    channels and 2 stride-2 stages. The paper fine-tunes an ImageNet VGG-16 at 1e-5; an encoder
    trained from scratch on a CPU budget does not leave the all-background start at that rate, so
    the CPU benchmark sets ``lr_f`` to 1e-3, the Adam rate of its digit-scene row's source-only run,
    and G/D widths 8/16 (at 32/32 one 64x64 step of batch 16 took 1.8 s on one CPU thread, 0.6 s at 8/16).
    """

    summary = "generate to adapt: G reconstructs images from features, a 4-class patch D, cross-domain F updates (Sankaranarayanan et al. 2018)"
    tasks = ("segmentation",)
    defaults = {"lr_f": 1e-5, "lr_gd": 2e-4, "alpha": 0.1, "beta": 0.1, "rec_weight": 1.0,
                "g_width": 32, "g_dropout": 0.5, "d_width": 32, "d_layers": 2}
    option_help = {"lr_f": "Adam learning rate of F and C (the shipped model)",
                   "lr_gd": "Adam learning rate of G and D",
                   "alpha": "weight of D's auxiliary labelling loss on reconstructed source in F's update",
                   "beta": "weight of the cross-domain adversarial loss in F's update",
                   "rec_weight": "weight of G's L1 reconstruction loss",
                   "g_width": "G's last-stage channels", "g_dropout": "dropout in every G stage (its noise)",
                   "d_width": "D's base channels", "d_layers": "D's stride-2 stages"}

    def build(self) -> None:
        o, t = self.opts, self.task
        self.nets["model"] = self.make_model()
        enc = self.model.encoder
        self.nets["generator"] = FeatureImageGenerator(enc.out_channels, t.channels, enc.feature_info["out"]["stride"],
                                                       o.g_width, o.g_dropout)
        self.nets["discriminator"] = FourClassPatchDiscriminator(t.channels, t.num_classes, o.d_width, o.d_layers)
        self.optims["f"] = self.make_adam(self.model.parameters(), o.lr_f, weight_decay=self.optim_cfg.weight_decay)
        self.optims["g"] = self.make_adam(self.nets["generator"].parameters(), o.lr_gd)
        self.optims["d"] = self.make_adam(self.nets["discriminator"].parameters(), o.lr_gd)

    def to_tanh(self, x: torch.Tensor) -> torch.Tensor:
        return input_to_tanh(x, self.task.mean, self.task.std)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns, size = len(source), source.x.shape[-2:]
        G, D = self.nets["generator"], self.nets["discriminator"]
        real_s, real_t = self.to_tanh(source.x), self.to_tanh(target.x)
        with self.autocast():
            feats, logits = self.model.features_and_logits(torch.cat([source.x, target.x]))
            fake = G(feats.detach(), size)
            # D: within-domain real/fake of both domains, and the auxiliary labelling of real source
            kinds, labels_real = D(torch.cat([real_s, real_t, fake.detach()]))
            nt = len(target)
            parts = dict(zip(("source-real", "target-real", "source-fake", "target-fake"), kinds.split([ns, nt, ns, nt])))
            d_adv = adversarial_loss("d", parts)
            d_aux = self.task_loss_of(labels_real[:ns], source.y)
            loss_d = d_adv + d_aux
        self.update(loss_d, "d")
        with self.autocast():
            # G: fool D within each domain while reconstructing the input
            kinds_fake, _ = D(fake)
            g_adv = adversarial_loss("g", dict(zip(("source-fake", "target-fake"), kinds_fake.split([ns, nt]))))
            rec = F.l1_loss(fake.float(), torch.cat([real_s, real_t]).float())
            loss_g = g_adv + self.opts.rec_weight * 2 * rec  # the two domains' L1 terms
        self.update(loss_g, "g")
        with self.autocast():
            # F (and C): segmentation, auxiliary labelling of the reconstruction, cross-domain adversarial
            kinds_f, labels_f = D(G(feats, size))
            f_adv = adversarial_loss("f", dict(zip(("source-fake", "target-fake"), kinds_f.split([ns, nt]))))
            seg = self.task_loss_of(logits[:ns], source.y)
            f_aux = self.task_loss_of(labels_f[:ns], source.y)
            loss_f = seg + self.opts.alpha * f_aux + self.opts.beta * f_adv
        self.update(loss_f, "f")
        return {"loss/seg": seg.item(), "loss/d_adv": d_adv.item(), "loss/d_aux": d_aux.item(), "loss/g_adv": g_adv.item(),
                "loss/rec": rec.item(), "loss/f_adv": f_adv.item(), "loss/f_aux": f_aux.item()}

    def visualize(self, folder, iteration: int, source: Batch, target: Batch | None):
        """Sample grid: source | G(F(source)) | target | G(F(target))."""
        G = self.nets["generator"]
        panels = []
        for b in (source, target):
            if b is None:
                continue
            feats, _ = self.model.features_and_logits(b.x)
            panels += [self.to_tanh(b.x), G(feats, b.x.shape[-2:])]
        n = min(len(p) for p in panels)
        return write_sample_grid(Path(folder) / f"samples_{iteration:06d}.png", [p[:n] for p in panels], None)
