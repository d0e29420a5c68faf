"""PixelDA: pixel-level domain adaptation with a GAN refiner."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.gan_utils import masked_pairwise_mse
from ._pixel import PIXEL_DEFAULTS, PixelMethod
from .base import Batch
from .registry import METHODS


@METHODS.register("pixelda")
class PixelDA(PixelMethod):
    """PixelDA: G(x_s, z) makes source images look like target images; the classifier T learns on both.

    Bousmalis, Silberman, Dohan, Erhan & Krishnan, "Unsupervised Pixel-Level Domain Adaptation with
    Generative Adversarial Networks", CVPR 2017.

    min_{G,T} max_D  a L_d(D, G) + b L_t(G, T) + g L_c(G), with
      L_d = E[log D(x_t)] + E[log(1 - D(G(x_s, z)))]            (here LSGAN by default, PatchGAN D)
      L_t = CE(T(x_s), y_s) + CE(T(G(x_s, z)), y_s)
      L_c = 1/k ||(x_s - G(x_s,z)) o m||^2 - 1/k^2 ((x_s - G(x_s,z))^T m)^2   (masked pairwise MSE)
    m is the source foreground mask (``syndigits`` provides it). For sources without masks the
    content loss uses the whole image (m = 1), which still only penalises inconsistent changes.
    One D step (Adam) then one joint G + T step (G: Adam, T: the trainer's optimizer) per iteration.

    Defaults: a = 1 (``adv``), b = 1 (``task``), g = 1 (``content``), z ~ U(-1, 1)^10 fed as one
    extra input channel (``noise_dim``), plus the pixel-method defaults (ResNet generator width 16
    with 2 blocks, PatchGAN width 32, Adam 2e-4). The shipped refiner uses z = 0.
    """

    summary = "GAN refiner G(x_s, z) + classifier on source and refined images, masked content loss (Bousmalis et al. 2017)"
    defaults = {**PIXEL_DEFAULTS, "adv": 1.0, "task": 1.0, "content": 1.0, "noise_dim": 10}

    def build(self) -> None:
        self.nets["model"] = self.make_model()
        self.nets["refiner"] = self.make_refiner(noise_dim=self.opts.noise_dim)
        self.nets["disc"] = self.make_discriminator()
        self.optims["model"] = self.make_optimizer(self.model.parameters())
        self.optims["refiner"] = self.make_gan_optimizer(self.nets["refiner"].parameters())
        self.optims["disc"] = self.make_gan_optimizer(self.nets["disc"].parameters())

    def refine(self, xs_tanh: torch.Tensor) -> torch.Tensor:
        nz = self.opts.noise_dim
        z = torch.rand(len(xs_tanh), nz, device=xs_tanh.device) * 2 - 1 if nz else None
        return self.nets["refiner"](xs_tanh, z)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o, ns = self.opts, len(source)
        D = self.nets["disc"]
        xs, xt = self.to_tanh(source.x), self.to_tanh(target.x)
        with self.autocast():
            fake = self.refine(xs)
            d_loss = 0.5 * (self.gan(D(xt), True) + self.gan(D(fake.detach()), False))
        self.update(d_loss, "disc")
        with self.autocast():
            adv = self.gan(D(fake), True, generator=True)
            content = masked_pairwise_mse(fake, xs, source.foreground)
            logits = self.model(torch.cat([source.x, self.to_input(fake)])).float()
            ce_src = F.cross_entropy(logits[:ns], source.y)
            ce_gen = F.cross_entropy(logits[ns:], source.y)
            loss = o.adv * adv + o.content * content + o.task * (ce_src + ce_gen)
        self.update(loss, "refiner", "model")
        return {"loss/d": d_loss.item(), "loss/g_adv": adv.item(), "loss/content": content.item(),
                "loss/cls_src": ce_src.item(), "loss/cls_gen": ce_gen.item()}
