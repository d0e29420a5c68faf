"""CycleGAN refinement (GeneSIS-RT): translate source to target, then train on translated images."""
from __future__ import annotations

import torch

from ..models.gan_utils import ImagePool, cycle_loss
from ..errors import EdgedaError
from ..models.norm import frozen_bn_statistics
from ..tasks import task_of
from ._pixel import PIXEL_DEFAULTS, PixelMethod
from .base import Batch
from .registry import METHODS


@METHODS.register("cyclegan")
class CycleGANRefinement(PixelMethod):
    """GeneSIS-RT: unpaired CycleGAN source <-> target, then the task model on G(x_s) with y_s.

    Stein & Roy, "GeneSIS-RT: Generating Synthetic Images for training Secondary Real-world Tasks",
    ICRA 2018; CycleGAN: Zhu, Park, Isola & Efros, ICCV 2017; semantic consistency: Hoffman et al.,
    "CyCADA", ICML 2018.

    Stage 1 (the first ``gan_fraction`` of the iterations), G: S -> T, F: T -> S, PatchGANs D_T, D_S:
      min_{G,F} max_{D_T,D_S} L_gan(G, D_T) + L_gan(F, D_S) + l_cyc (||F(G(x_s)) - x_s||_1 + ||G(F(x_t)) - x_t||_1)
                              + l_sem CE(C(G(x_s)), y_s)        (CyCADA's semantic loss; 0 = plain GeneSIS-RT)
                              + l_semt CE(C(F(x_t)), argmax C(x_t))  (its target -> source half; 0 = off)
                              + l_idt l_cyc (||G(x_t) - x_t||_1 + ||F(x_s) - x_s||_1)  (CycleGAN's identity loss)
    while the classifier C learns the source, CE(C(x_s), y_s), so the semantic loss has a teacher
    (C is not updated by the semantic loss). Discriminators see a history pool of 50 fakes.
    Stage 2: G is frozen; C is trained on translated source images only, CE(C(G(x_s)), y_s).

    CyCADA's semantic consistency has two halves: a translated image keeps the class the source
    classifier gives the untranslated one, for G(x_s) (here against the label y_s, which C(x_s)
    predicts on the source) and for F(x_t) (against C's own prediction on x_t, no labels needed:
    ``semantic_target``). C's passes for the second half normalise by the batch's own statistics
    and leave C's running statistics alone.

    Defaults: ``gan_fraction`` 0.5, l_cyc = 10 (``cycle``), l_sem = 1 (``semantic``), l_semt = 0
    (``semantic_target``), l_idt = 0.5
    (``identity``, the CycleGAN paper's value; 0 = off, plain GeneSIS-RT), LSGAN, pool 50,
    plus the pixel-method defaults. The shipped refiner is G.

    Segmentation (GeneSIS-RT's and CyCADA's street-scene setting): the same two stages with the
    per-pixel cross-entropy; the target -> source half uses C's per-pixel argmax on x_t. Depth: the
    task's depth loss (``--task-loss``) in place of the cross-entropy (the semantic loss is then that
    depth loss on G(x_s) against y_s); the target -> source half needs class predictions and is
    refused. Dense bundles ship ``model`` + ``refiner``.

    Detection (Wang et al. 2019's translate-then-train for detectors; their PVANET, SSD and YOLOv3 are
    trained on refined renders): the detector's own loss (SSD: matching, hard negatives, smooth L1;
    FCOS: focal, GIoU, centerness) on G(x_s) with the source boxes, which G does not move; the
    semantic loss is that detection loss on G(x_s) (a detector has no class map for the target ->
    source half, which is refused). Bundles ship ``model`` + ``refiner``.

    Why the identity term is on: on the cpu benchmark profile (3 seeds) it raised the label-free
    information-maximisation score of the final classifier's target predictions (cyclegan 1.69 ->
    1.70, fgbg_cyclegan 1.69 -> 1.74); in the sample grids without it the small refiner darkens the
    background but leaves dark source digits dark, and the identity term penalises such a G on
    target-like inputs.
    """

    summary = "CycleGAN source<->target, then the classifier on translated source images (GeneSIS-RT; CyCADA semantic loss)"
    tasks = ("classification", "segmentation", "depth", "detection")
    defaults = {**PIXEL_DEFAULTS, "gan_fraction": 0.5, "cycle": 10.0, "semantic": 1.0, "identity": 0.5,
                "pool": 50, "semantic_target": 0.0}

    def build(self) -> None:
        if self.opts.semantic_target > 0 and not task_of(self.task).class_logits:
            raise EdgedaError(f"{self.name} option semantic_target needs class predictions; it is for classification "
                              f"and segmentation, not {self.task.task}")
        self.nets["model"] = self.make_model()
        self.nets["refiner"] = self.make_refiner()        # G: source -> target
        self.nets["inverse"] = self.make_refiner()        # F: target -> source
        self.nets["disc_t"] = self.make_discriminator()
        self.nets["disc_s"] = self.make_discriminator()
        self.optims["model"] = self.make_optimizer(self.model.parameters())
        self.optims["gen"] = self.make_gan_optimizer(list(self.nets["refiner"].parameters()) + list(self.nets["inverse"].parameters()))
        self.optims["disc"] = self.make_gan_optimizer(list(self.nets["disc_t"].parameters()) + list(self.nets["disc_s"].parameters()))
        self.pool_t, self.pool_s = ImagePool(self.opts.pool, 1), ImagePool(self.opts.pool, 2)

    def source_cycle_loss(self, reconstructed: torch.Tensor, original: torch.Tensor, source: Batch) -> torch.Tensor:
        """||F(G(x_s)) - x_s||_1; the fore/background variant overrides this."""
        return cycle_loss(reconstructed, original)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        if self.progress >= self.opts.gan_fraction:
            return self.task_step(source)
        o = self.opts
        G, Fi, Dt, Ds = self.nets["refiner"], self.nets["inverse"], self.nets["disc_t"], self.nets["disc_s"]
        xs, xt = self.to_tanh(source.x), self.to_tanh(target.x)
        with self.autocast():
            fake_t, fake_s = G(xs), Fi(xt)
            adv = self.gan(Dt(fake_t), True, generator=True) + self.gan(Ds(fake_s), True, generator=True)
            cyc = self.source_cycle_loss(Fi(fake_t), xs, source) + cycle_loss(G(fake_s), xt)
            sem = self.task_loss_of(self.model(self.to_input(fake_t)), source.y)
            g_loss = adv + o.cycle * cyc + o.semantic * sem
            sem_t = None
            if o.semantic_target > 0:  # F(x_t) keeps the class C gives x_t
                clf = self.model
                with frozen_bn_statistics(clf):
                    with torch.no_grad():
                        pseudo = clf(target.x).argmax(1)
                    sem_t = self.task_loss_of(clf(self.to_input(fake_s)), pseudo)
                g_loss = g_loss + o.semantic_target * sem_t
            idt = None
            if o.identity > 0:  # a generator fed an image of its output domain leaves it alone
                idt = cycle_loss(G(xt), xt) + cycle_loss(Fi(xs), xs)
                g_loss = g_loss + o.identity * o.cycle * idt
        self.update(g_loss, "gen")  # C's gradients from sem are dropped: its own update zeroes them first
        with self.autocast():
            ce_src = self.task_loss_of(self.model(source.x), source.y)
        self.update(ce_src, "model")
        with self.autocast():
            d_loss = 0.5 * (self.gan(Dt(xt), True) + self.gan(Dt(self.pool_t.query(fake_t)), False)
                            + self.gan(Ds(xs), True) + self.gan(Ds(self.pool_s.query(fake_s)), False))
        self.update(d_loss, "disc")
        out = {"loss/g_adv": adv.item(), "loss/cycle": cyc.item(), "loss/semantic": sem.item(),
               "loss/d": d_loss.item(), "loss/cls": ce_src.item()}
        if idt is not None:
            out["loss/identity"] = idt.item()
        if sem_t is not None:
            out["loss/semantic_target"] = sem_t.item()
        return out

    def task_step(self, source: Batch) -> dict[str, float]:
        with torch.no_grad(), self.autocast():
            refined = self.to_input(self.nets["refiner"](self.to_tanh(source.x)))
        with self.autocast():
            loss = self.task_loss_of(self.model(refined), source.y)
        self.update(loss, "model")
        return {"loss/cls_refined": loss.item()}
