"""SUIT: simplified (one-way) unsupervised image translation with a semantic-content loss."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..models.norm import constant_parameters, frozen_bn_statistics
from ._pixel import PIXEL_DEFAULTS, PixelMethod
from .base import Batch
from .registry import METHODS


@METHODS.register("suit")
class SUIT(PixelMethod):
    """SUIT: one translator G: S -> T (no inverse), trained with the task model C = head(f(.)).

    Li, Cao, Jiao, Wu & Wong, "Simplified Unsupervised Image Translation for Semantic Segmentation
    Adaptation", Pattern Recognition 2020 (for classification and segmentation here).

    min_{G,C} max_D  L_adv(D, G) + L_semCon(G) + L_task(C), with
      L_adv    = E[log D(x_t)] + E[log(1 - D(G(x_s)))]                   (LSGAN by default, PatchGAN D)
      L_semCon = l_sem CE(C(G(x_s)), y_s) + l_con ||f(G(x_s)) - f(x_s)||^2   (f = the task features)
      L_task   = CE(C(x_s), y_s) + CE(C(G(x_s)), y_s)
    One D step, then one joint G + C step on the sum (C also minimises the content term, as in the
    joint min over G and C; the cycle of CycleGAN is replaced by these semantic constraints).

    BatchNorm (``bn``): ``joint`` forwards x_s and G(x_s) as one batch (one normaliser for both);
    ``separate`` forwards each on its own, each normalised by its own batch statistics, and only the
    translated batches update the running statistics inference on real target images uses (G(x_s)
    is the target-like domain; as ``coral``'s ``bn=separate``, AdaBN-style); ``target`` normalises
    x_s and G(x_s) each by its own batch statistics as ``separate`` does, updates no running
    statistics with either, and instead passes each real target batch through C (no gradient) to
    update them, so inference on real target images normalises by real target statistics (AdaBN,
    Li et al. 2016, during training). The paper's FCN-VGG16 has no BatchNorm, so it does not
    settle this. ``target`` is the default because the label-free score on the
    digits benchmark preferred it (benchmarks/DECISIONS.md); that score rewards confident
    predictions, and normalising by the statistics of the images scored makes them more
    confident, so part of that preference is the score's own.

    Who minimises what (``objectives``): ``joint`` steps G and C on the gradient of the whole sum
    (C also minimises the content term, G also the task term's CE(C(G(x_s)), y_s)); ``per_player``
    follows the paper's notation L_semCon(G), L_task(Seg): G minimises L_adv + L_semCon only (C's
    weights held constant in that pass, so the semantic and content terms train G alone) and C
    minimises L_task only (on G(x_s) detached). ``joint`` stays the default: the label-free score on
    the digits benchmark did not prefer ``per_player`` (benchmarks/DECISIONS.md).

    Segmentation (the paper's GTA5 -> Cityscapes setting): the same losses with CE the per-pixel
    cross-entropy (255 ignored) and f the encoder's final feature map, so the content term is the
    mean squared difference of the two feature maps; G and the PatchGAN D are fully convolutional
    and take any frame size. A segmentation bundle ships ``model`` + ``refiner``; the sample grid
    shows source | G(source) with the source mask overlaid | target with the model's prediction.

    Defaults: l_adv = 1 (``adv``), l_sem = 1 (``semantic``), l_con = 1 (``content``), bn = target,
    objectives = joint,
    plus the pixel-method defaults. The shipped refiner is G.
    """

    summary = "one-way translator G with semantic-content loss, classifier on source and translated images (Li et al. 2020)"
    defaults = {**PIXEL_DEFAULTS, "adv": 1.0, "semantic": 1.0, "content": 1.0, "bn": "target",
                "objectives": "joint"}
    choices = {"bn": ("joint", "separate", "target"), "objectives": ("joint", "per_player")}
    tasks = ("classification", "segmentation")

    def build(self) -> None:
        self.nets["model"] = self.make_model()
        self.nets["refiner"] = self.make_refiner()
        self.nets["disc"] = self.make_discriminator()
        self.optims["model"] = self.make_optimizer(self.model.parameters())
        self.optims["refiner"] = self.make_gan_optimizer(self.nets["refiner"].parameters())
        self.optims["disc"] = self.make_gan_optimizer(self.nets["disc"].parameters())

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o, ns = self.opts, len(source)
        D, G = self.nets["disc"], self.nets["refiner"]
        xs, xt = self.to_tanh(source.x), self.to_tanh(target.x)
        with self.autocast():
            fake = G(xs)
            d_loss = 0.5 * (self.gan(D(xt), True) + self.gan(D(fake.detach()), False))
        self.update(d_loss, "disc")
        per_player = self.opts.objectives == "per_player"
        with self.autocast():
            adv = self.gan(D(fake), True, generator=True)
            refined = self.to_input(fake)
            feats, logits = self._classify(source.x, refined.detach() if per_player else refined)
            ce_src = self.task_loss_of(logits[:ns], source.y)
            ce_gen = self.task_loss_of(logits[ns:], source.y)
            if per_player:  # G's terms through C with C's weights constant (and its statistics untouched)
                with constant_parameters(self.model), frozen_bn_statistics(self.model):
                    feats_g, logits_g = self._classify(source.x, refined)
                semantic = self.task_loss_of(logits_g[ns:], source.y)
                content = F.mse_loss(feats_g[ns:].float(), feats_g[:ns].float())
            else:
                semantic = ce_gen
                content = F.mse_loss(feats[ns:].float(), feats[:ns].float())
            loss = o.adv * adv + o.semantic * semantic + o.content * content + ce_src + ce_gen
        self.update(loss, "refiner", "model")
        if o.bn == "target":  # the running statistics inference uses: real target batches only
            with torch.no_grad(), self.autocast():
                self.model(target.x)
        return {"loss/d": d_loss.item(), "loss/g_adv": adv.item(), "loss/cls_src": ce_src.item(),
                "loss/cls_gen": ce_gen.item(), "loss/content": content.item()}

    def _classify(self, x_source: torch.Tensor, x_refined: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """C's (features, logits) of [x_s; G(x_s)], normalised as ``bn`` says."""
        clf = self.model
        if self.opts.bn in ("separate", "target"):
            with frozen_bn_statistics(clf):
                feats_s, logits_s = clf.features_and_logits(x_source)
            with frozen_bn_statistics(clf) if self.opts.bn == "target" else contextlib.nullcontext():
                feats_g, logits_g = clf.features_and_logits(x_refined)
            return torch.cat([feats_s, feats_g]), torch.cat([logits_s, logits_g])
        return clf.features_and_logits(torch.cat([x_source, x_refined]))
