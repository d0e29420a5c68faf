"""3C-GAN: model adaptation without source data (Li, Jiao, Cao, Wong & Wu, CVPR 2020).

A collaborative class-conditional GAN. The generator G(y, z) (label + noise -> image) and a
discriminator D (spectral norm) play the adversarial game on *real target images* versus
generated ones, while the shipped classifier C acts as the conditioning critic: G must produce
target-looking images that C assigns to the requested class. C in turn learns from those
generated image-label pairs, stays close to its source weights and clusters the target data:

    D:  min  l_adv^D = BCE(D(x_t), 1) + BCE(D(G(y, z)), 0)
    G:  min  BCE(D(G(y, z)), 1) + lambda_sem * l_sem,     l_sem = CE(C(G(y, z)), y)
    C:  min  lambda_gen * l_gen + lambda_w * l_wReg + lambda_clu * l_cluReg
        l_gen    = CE(C(x_g), y)                        (x_g = G(y, z), detached)
        l_wReg   = sum_i (theta_C,i - theta_Cs,i)^2      (theta_Cs: the shipped weights)
        l_cluReg = E[H(C(x_t))] + lambda_vat * KL(C(x_t) || C(x_t + r_adv))

with y uniform over classes, z ~ N(0, I) and r_adv the virtual-adversarial perturbation of radius
``vat_radius`` (one power iteration, Miyato et al. 2018). Generated images live in [-1, 1]
and are mapped to the classifier's normalised input space with ``tanh_to_input``.

Defaults: lambda_sem = 1, lambda_gen = 1 (ramped linearly from 0 over the first ``gen_warmup``
= 20 % of the run, while G still draws noise), lambda_w = 1e-3, lambda_clu = 0.1, lambda_vat = 1,
vat_radius = 3.5 (normalised-input L2 units, as VADA's digits setting); GAN loss ``nonsat``;
Adam (0.5, 0.999) lr 2e-4 for G and D, Adam (0.9, 0.999) lr 1e-4 for C; G width 32, z 64,
D width 32; 1500 iterations unless ``--iters`` says otherwise. Like every
adaptation method, the runner writes the healthy state with the highest information maximisation
on the target images (``--select info_max``), not necessarily the last: on syndigits -> handwritten
the classifier gains most in the first few hundred iterations (AdaBN + the clustering term) and
the later, generator-driven phase can drift.
C's forward on generated images uses its running (target) BatchNorm statistics, i.e. the
deployed behaviour; its forward on target batches uses batch statistics, which also keep the
running statistics on the target (they are re-estimated on the target images before the first
step, as in AdaBN). These two implementation choices are ours; the paper does not state them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..methods.losses import entropy
from ..models import build
from ..models.conditional import ImageDiscriminator, gan_loss, input_to_tanh, tanh_to_input
from ..models.norm import frozen_bn_statistics
from .base import ADAPT_METHODS, AdaptMethod, reestimate_bn
from .losses import virtual_adversarial_loss


def weight_regularizer(model: torch.nn.Module, reference: dict) -> torch.Tensor:
    """l_wReg = sum over parameters of ||theta - theta_ref||^2 (buffers such as BN statistics excluded)."""
    terms = [((p - reference[n].to(p.device)) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad]
    return torch.stack(terms).sum()


@ADAPT_METHODS.register("3cgan")
class ThreeCGAN(AdaptMethod):
    summary = "3C-GAN (Li et al. 2020): collaborative class-conditional GAN, no source data"
    defaults = {"lambda_sem": 1.0, "lambda_gen": 1.0, "gen_warmup": 0.2, "lambda_w": 1e-3, "lambda_clu": 0.1,
                "lambda_vat": 1.0, "vat_radius": 3.5, "gan_loss": "nonsat", "lr_gan": 2e-4, "lr": 1e-4,
                "g_width": 32, "d_width": 32, "z_dim": 64}
    default_iters = 1500
    classifier_passes = 5.0  # target clean + VAT (2) + generated (G step and C step)

    def build(self) -> None:
        t, o = self.task, self.opts
        self.G = build("conditional_generator", num_classes=t.num_classes, channels=t.channels,
                       image_size=t.image_size[0], z_dim=int(o["z_dim"]), width=int(o["g_width"])).to(self.device)
        self.D = ImageDiscriminator(channels=t.channels, image_size=t.image_size[0], width=int(o["d_width"])).to(self.device)
        self.optims["G"] = torch.optim.Adam(self.G.parameters(), lr=o["lr_gan"], betas=(0.5, 0.999))
        self.optims["D"] = torch.optim.Adam(self.D.parameters(), lr=o["lr_gan"], betas=(0.5, 0.999))
        self.optims["C"] = torch.optim.Adam(self.classifier.parameters(), lr=o["lr"], betas=(0.9, 0.999))

    def extra_modules(self):
        return {"generator": self.G, "discriminator": self.D}

    def prepare(self, target) -> None:
        reestimate_bn(self.classifier, target.batches())

    def _sample(self, n: int):
        y = torch.randint(0, self.task.num_classes, (n,), generator=self.generator).to(self.device)
        z = torch.randn(n, self.G.z_dim, generator=self.generator).to(self.device)
        return y, z

    def step(self, x: torch.Tensor, idx=None) -> dict[str, float]:
        o, C, t = self.opts, self.classifier, self.task
        self.G.train()
        self.D.train()
        y, z = self._sample(len(x))
        real = input_to_tanh(x, t.mean, t.std)

        # D: real target images vs generated ones
        with self.autocast():
            fake = self.G(y, z)
            d_loss = gan_loss(self.D(real), True, o["gan_loss"]) + gan_loss(self.D(fake.detach()), False, o["gan_loss"])
        self.update(d_loss, "D")

        # G: fool D, and be classified by C as the requested class (l_sem)
        C.eval()
        with self.autocast():
            d_fake = self.D(fake)
            g_adv = -d_fake.float().mean() if o["gan_loss"] == "hinge" else gan_loss(d_fake, True, o["gan_loss"])
            l_sem = F.cross_entropy(C(tanh_to_input(fake, t.mean, t.std)).float(), y)
            g_loss = g_adv + o["lambda_sem"] * l_sem
        self.update(g_loss, "G")

        # C: learn from generated pairs, stay near the source weights, cluster the target
        with self.autocast():
            gen_logits = C(tanh_to_input(fake.detach(), t.mean, t.std))
            l_gen = F.cross_entropy(gen_logits.float(), y)
            C.train()
            logits_t = C(x)
            ent = entropy(logits_t).mean()
            with frozen_bn_statistics(C):
                vat = virtual_adversarial_loss(C, x, logits_t, radius=o["vat_radius"], generator=self.generator)
        l_w = weight_regularizer(C, self.source_state)
        ramp = min(1.0, self.progress / o["gen_warmup"]) if o["gen_warmup"] > 0 else 1.0
        c_loss = (o["lambda_gen"] * ramp * l_gen + o["lambda_w"] * l_w
                  + o["lambda_clu"] * (ent + o["lambda_vat"] * vat))
        self.update(c_loss, "C")
        return {"d": float(d_loss.detach()), "g_adv": float(g_adv.detach()), "sem": float(l_sem.detach()),
                "gen": float(l_gen.detach()), "w": float(l_w.detach()), "ent": float(ent.detach()),
                "vat": float(vat.detach())}
