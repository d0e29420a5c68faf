"""Label2Image-DA: generate labeled target-like images from labels, then train on them."""
from __future__ import annotations

import torch
from torch import nn

from ..models import build
from ..models.conditional import ImageDiscriminator
from ..models.patchgan import PatchDiscriminator
from ..tasks import task_of
from ._pixel import PIXEL_DEFAULTS, PixelMethod
from .base import Batch
from .losses import entropy
from .registry import METHODS


@METHODS.register("label2image")
class Label2Image(PixelMethod):
    """Label2Image-DA: a class-conditional G(y, z) learns target-style images of each class.

    Li, Cao, Wu & Wong, "Generating Target Image-Label Pairs for Unsupervised Domain Adaptation",
    IEEE TIP 2020. G(y, z) is the shared :class:`~edgeda.models.conditional.ConditionalGenerator`.

    Phase 1 (progress < ``phase1``): C learns the source,      L_C = CE(C(x_s), y_s).
    Phase 2 (< ``phase2``): G and D (unconditional, spectral norm) adversarially on target images,
      min_G max_D  L_adv(D, G) + l_sem CE(C(G(y, z)), y)    (C fixed, in eval mode, as the teacher)
    Phase 3: generated pairs join training (G and D keep training),
      L_C = CE(C(x_s), y_s) + l_gen CE(C(G(y, z)), y) + l_reg H(C(x_t))
    where the optional regulariser H is the mean prediction entropy on target images (our reading
    of L_reg: the entropy term of the clustering regulariser of the same authors' 3C-GAN; 0 turns
    it off). y ~ uniform over classes, z ~ N(0, I).

    Segmentation (the paper's street-scene experiments generate from label maps): y is a label map
    and G(y, z) the spatially-adaptive generator of :class:`~edgeda.models.spade.LabelMapGenerator`
    (SPADE, Park et al. 2019: the one-hot map modulates every normalisation layer, so the layout
    survives to the output). The layouts are the batch's source masks (255 pixels carry no class
    and are ignored by the losses): real scene layouts, where the classification path draws y
    uniformly; D is the PatchGAN of the pixel methods (one real/fake logit per patch, any frame
    size) on real target frames; CE is per pixel and H the mean per-pixel prediction entropy on
    target frames. A segmentation bundle ships ``model`` + ``generator`` (inputs: a (N, H, W)
    label map and a (N, z_dim) noise vector); the sample grid shows source | G(y_s, z) with y_s
    overlaid | target with the model's prediction.

    Defaults: phases at 0.3 / 0.6 of the iterations, l_sem = 1, l_gen = 1, l_reg = 0.1,
    non-saturating GAN loss, Adam 2e-4 (betas 0.5, 0.999), z_dim 64, generator width 32,
    discriminator width 32. Ships G as ``"generator"`` (not ``"refiner"``: its inputs are a label
    and a noise vector, not an image).
    """

    summary = "class-conditional G(y,z) on target images with the task model as semantic teacher; train on generated pairs (Li et al. 2020)"
    defaults = {"g_width": 32, "d_width": 32, "z_dim": 64, "gan": "nonsat", "lr_g": 2e-4,
                "max_loss": PIXEL_DEFAULTS["max_loss"], "phase1": 0.3, "phase2": 0.6, "semantic": 1.0,
                "gen_weight": 1.0, "reg": 0.1}
    tasks = ("classification", "segmentation")

    def build(self) -> None:
        t, o = self.task, self.opts
        self.nets["model"] = self.make_model()
        if task_of(t).spatial_output:
            self.nets["generator"] = build("label_map_generator", num_classes=t.num_classes, channels=t.channels,
                                           z_dim=o.z_dim, width=o.g_width)
            self.nets["disc"] = PatchDiscriminator(t.channels, o.d_width, 3)
        else:
            self.nets["generator"] = build("conditional_generator", num_classes=t.num_classes, channels=t.channels,
                                           image_size=t.image_size[0], z_dim=o.z_dim, width=o.g_width)
            self.nets["disc"] = ImageDiscriminator(t.channels, t.image_size[0], o.d_width)
        self.optims["model"] = self.make_optimizer(self.model.parameters())
        self.optims["generator"] = self.make_gan_optimizer(self.nets["generator"].parameters())
        self.optims["disc"] = self.make_gan_optimizer(self.nets["disc"].parameters())

    def deployables(self) -> dict[str, nn.Module]:
        return {task_of(self.task).deployable: self.model, "generator": self.nets["generator"]}

    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """C in eval mode (BatchNorm running statistics) so generated batches do not shift it."""
        was = self.model.training
        self.model.eval()
        try:
            return self.model(x).float()
        finally:
            self.model.train(was)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o, p = self.opts, self.progress
        out: dict[str, float] = {}
        fake = y = None
        if p >= o.phase1:
            fake, y, gan_out = self.gan_step(source, target)
            out.update(gan_out)
        if p < o.phase1 or p >= o.phase2:
            with self.autocast():
                ce_src = self.task_loss_of(self.model(source.x), source.y)
                loss = ce_src
                out["loss/cls_src"] = ce_src.item()
                if fake is not None:
                    logits = self.model(torch.cat([self.to_input(fake.detach()), target.x])).float()
                    ce_gen = self.task_loss_of(logits[: len(y)], y)
                    ent = entropy(logits[len(y):]).mean()
                    loss = loss + o.gen_weight * ce_gen + o.reg * ent
                    out.update({"loss/cls_gen": ce_gen.item(), "loss/target_entropy": ent.item()})
            self.update(loss, "model")
        return out

    def sample(self, source: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(G(y, z), y): y uniform over classes, or the source masks as layouts (dense tasks)."""
        G = self.nets["generator"]
        if not task_of(self.task).spatial_output:
            return G.sample(len(source))
        z = torch.randn(len(source), G.z_dim, device=source.x.device)
        return G(source.y, z), source.y

    def gan_step(self, source: Batch, target: Batch):
        D = self.nets["disc"]
        xt = self.to_tanh(target.x)
        with self.autocast():
            fake, y = self.sample(source)
            d_loss = 0.5 * (self.gan(D(xt), True) + self.gan(D(fake.detach()), False))
        self.update(d_loss, "disc")
        with self.autocast():
            adv = self.gan(D(fake), True, generator=True)
            sem = self.task_loss_of(self._teacher_logits(self.to_input(fake)), y)
            g_loss = adv + self.opts.semantic * sem
        self.update(g_loss, "generator")
        return fake, y, {"loss/d": d_loss.item(), "loss/g_adv": adv.item(), "loss/semantic": sem.item()}

    def display_panels(self, source: Batch, target: Batch | None) -> list[torch.Tensor]:
        """source | G(y, z) for the same labels, with a fixed z so grids are comparable over time."""
        G = self.nets["generator"]
        z = torch.randn(len(source), G.z_dim, generator=torch.Generator().manual_seed(0)).to(source.x.device)
        return [self.to_tanh(source.x), G(source.y, z)]
