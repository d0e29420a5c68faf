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

Segmentation bundles. The paper adapts classifiers only; the dense path below is our carry-over
of the same three players and the same four losses to per-pixel outputs. What follows the paper:
a conditional generator against a discriminator on real target images, the l_sem / l_gen / l_wReg
/ l_cluReg terms and their roles, the ramp of l_gen, the optimisers. What is ours:

- the condition y is a label map instead of a class: a *layout* per target frame, the frozen
  shipped segmenter's per-pixel argmax on that (real) frame, with pixels whose top softmax
  probability is below its class's threshold set to ignore (255) (:func:`confident_layouts`). The
  threshold of class c is min(``confidence``, the (1 - ``portion``) quantile of the top
  probabilities of the pixels predicted c) (:func:`class_thresholds`, as class-balanced
  self-training, Zou et al. 2018, thresholds pseudo-labels): with one threshold of 0.9 for all,
  99.8 % of the confident pixels of digitscenes -> handwritten-scenes frames were background and the
  run collapsed onto it at iteration 50; per class, every predicted class keeps at least
  ``portion`` of its pixels. The layouts are computed once, before the first step, from a
  frozen copy of the shipped weights (``source_state``), so they never follow the model being
  adapted. Each step conditions on the layouts of the frames of its own batch (a random draw of
  the target set), cut to the same training crop (``self.window``).
- G(m, z) is the SPADE label-map generator (:class:`~edgeda.models.spade.LabelMapGenerator`,
  Park et al. 2019), D a PatchGAN (:class:`~edgeda.models.patchgan.PatchDiscriminator`): one
  real/fake logit per patch, the GAN loss averaged over patches.
- every cross-entropy is per pixel against the layout, ignored pixels skipped, and class-balanced
  (``class_balance``: each class's mean, then the mean over the classes present,
  :func:`~edgeda.adapt.losses.class_balanced_cross_entropy`, as SHOT's dense path) so the
  background's pixels do not outvote the other classes:

      G:  min  BCE(D(G(m, z)), 1) + lambda_sem * CE_px(C(G(m, z)), m)
      C:  min  lambda_gen * CE_px(C(x_g), m) + lambda_w * l_wReg + lambda_clu * E_{n,u}[H(C(x_t)_u)]
               (+ lambda_clu * lambda_vat * mean-pixel KL(C(x_t) || C(x_t + r_adv)) when lambda_vat > 0)

  l_sem uses the *current* segmenter (eval mode, running target statistics), as the paper's
  collaborative game and the classification path do: G has to produce images that the model being
  adapted reads as the layout, so G and C keep agreeing as C moves; a frozen shipped critic would
  pin G to the decision function C is meant to leave (and keep a second segmenter in memory for
  the whole run). The layouts themselves, which must not drift, come from the shipped weights.
- the clustering term is the mean pixel entropy on the real frames plus VAT, which works on dense
  logits unchanged (:func:`~edgeda.adapt.losses.virtual_adversarial_loss`: one perturbation per
  frame, its KL averaged over pixels). Its two extra segmenter passes cost about 20-30 % of a
  dense step on a CPU (measured below), cheap enough to keep the paper's term. The radius scales
  with the frame so that the perturbation per pixel is the classification one: ``vat_radius`` is
  per 32 x 32 x C values, the frame's radius ``vat_radius * sqrt(C H W / (32 * 32 * C))``
  (``--option lambda_vat=0`` drops VAT).
- AdaBN before the first step (as in the classification path) and, during the G step, the
  segmenter's and D's weights take no gradients (only G's do; the result is the same, it is cheaper).

Dense defaults (what differs from the classification ones is in ``dense_defaults``): G width 16
(also SPADE's hidden width) and z 32, D width 32 with 3 stride-2 stages (``d_layers``),
``confidence`` = 0.9, ``portion`` = 0.5 (CBST's final portion), ``class_balance`` on, and ``DENSE_ITERS`` = 500 iterations unless ``--iters`` says otherwise.
Measured with batch 8 on one thread of a 2-core CPU (the other core busy): 0.35 s per step for
DeepLab-ResNet-18 (w0.25) at 64 x 64 and 0.61 s for LR-ASPP (w1.0) at 64 x 128 (0.27 s / 0.51 s
without VAT; G width 32 would be 0.49 s / 0.89 s without VAT), so 500 steps take about 3 and 5
minutes and fit the 10-minute on-device budget with room for the runner's checks and a busier
CPU; 1500 would not. Everything else (lambda_sem, lambda_gen, gen_warmup, lambda_w, lambda_clu,
lambda_vat, vat_radius, the GAN loss, the learning rates) is the classification default.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dense import IGNORE_INDEX
from ..errors import EdgedaError
from ..methods.base import build_optimizer
from ..methods.losses import entropy
from ..models import build
from ..models.conditional import ImageDiscriminator, gan_loss, input_to_tanh, tanh_to_input
from ..models.norm import frozen_bn_statistics
from ..models.patchgan import PatchDiscriminator
from ..tasks import task_of
from .base import ADAPT_METHODS, AdaptMethod, reestimate_bn
from .losses import class_balanced_cross_entropy, virtual_adversarial_loss

DENSE_ITERS = 500


def weight_regularizer(model: torch.nn.Module, reference: dict) -> torch.Tensor:
    """l_wReg = sum over parameters of ||theta - theta_ref||^2 (buffers such as BN statistics excluded)."""
    terms = [((p - reference[n].to(p.device)) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad]
    return torch.stack(terms).sum()


def confident_layouts(logits: torch.Tensor, threshold, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Label maps from (N, K, H, W) logits: the per-pixel argmax, ``ignore_index`` where the top
    softmax probability is below ``threshold`` (a number, or a (K,) tensor: one threshold per
    predicted class). Returns (N, H, W) int64.

    >>> confident_layouts(shipped(x), 0.9)      # the layouts 3C-GAN's dense path conditions on
    """
    conf, arg = F.softmax(logits.float(), 1).max(1)
    if torch.is_tensor(threshold):
        threshold = threshold.to(conf.device, conf.dtype)[arg]
    return torch.where(conf >= threshold, arg, torch.full_like(arg, ignore_index))


def class_thresholds(conf: torch.Tensor, arg: torch.Tensor, num_classes: int, threshold: float, portion: float) -> torch.Tensor:
    """Per-class thresholds in the manner of class-balanced self-training (CBST, Zou et al. 2018):
    for each predicted class c, t_c = min(``threshold``, the (1 - ``portion``) quantile of the top
    probabilities of the pixels predicted c), so every predicted class keeps at least ``portion`` of
    its pixels and every pixel above ``threshold`` is kept. ``conf``, ``arg``: flat samples of
    pixels' top probability and class. Classes not predicted keep ``threshold``."""
    out = torch.full((num_classes,), float(threshold))
    for c in range(num_classes):
        v = conf[arg == c].float()
        if len(v):
            out[c] = min(float(threshold), float(torch.quantile(v, 1.0 - portion)))
    return out


@torch.no_grad()
def shipped_layouts(model: nn.Module, source_state: dict, target, threshold: float, portion: float = 0.0,
                    sample_pixels: int = 4096) -> torch.Tensor:
    """:func:`confident_layouts` of a frozen copy of ``model`` holding ``source_state`` over every
    target frame, (N, H, W) uint8 on the CPU (255 = ignore). With ``portion`` > 0 the thresholds are
    per class (:func:`class_thresholds`), estimated on up to ``sample_pixels`` random pixels of each
    frame (a first pass over the frames)."""
    frozen = copy.deepcopy(model)
    frozen.load_state_dict(source_state)
    for p in frozen.parameters():
        p.requires_grad_(False)
    thr = threshold
    if portion > 0:
        g = torch.Generator().manual_seed(0)
        confs, args = [], []
        for _, out in target.predictions(frozen):
            conf, arg = F.softmax(out, 1).max(1)
            conf, arg = conf.flatten(1).cpu(), arg.flatten(1).cpu()
            pick = torch.randperm(conf.shape[1], generator=g)[:sample_pixels]
            confs.append(conf[:, pick].reshape(-1))
            args.append(arg[:, pick].reshape(-1))
        thr = class_thresholds(torch.cat(confs), torch.cat(args), out.shape[1], threshold, portion)
    maps = [confident_layouts(out, thr).to("cpu", torch.uint8) for _, out in target.predictions(frozen)]
    del frozen
    return torch.cat(maps)


class _FrameProbe(nn.Module):
    """The label-map generator as the runner's memory plan measures extra modules (one forward of
    an image batch): G at the frames' size, with an all-ignore layout and zero noise."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.generator
        layout = torch.full((len(x), *x.shape[-2:]), g.ignore_index, dtype=torch.long, device=x.device)
        return g(layout, torch.zeros(len(x), g.z_dim, device=x.device))


@ADAPT_METHODS.register("3cgan")
class ThreeCGAN(AdaptMethod):
    summary = "3C-GAN (Li et al. 2020): collaborative class-conditional GAN, no source data"
    defaults = {"lambda_sem": 1.0, "lambda_gen": 1.0, "gen_warmup": 0.2, "lambda_w": 1e-3, "lambda_clu": 0.1,
                "lambda_vat": 1.0, "vat_radius": 3.5, "gan_loss": "nonsat", "lr_gan": 2e-4, "lr": 1e-4,
                "g_width": 32, "d_width": 32, "z_dim": 64, "confidence": 0.9, "d_layers": 3, "portion": 0.5,
                "class_balance": True, "adabn": True}
    dense_defaults = {"g_width": 16, "z_dim": 32}
    option_help = {"confidence": "segmentation: layout pixels whose shipped top probability is below this are ignored",
                   "portion": "segmentation: each predicted class keeps at least this share of its pixels in the layouts "
                              "(per-class thresholds, CBST); 0 = one threshold for all",
                   "adabn": "re-estimate the BatchNorm statistics on the target images before the first step",
                   "class_balance": "segmentation: cross-entropies on generated pairs averaged per class, then over classes",
                   "d_layers": "segmentation: stride-2 stages of the PatchGAN discriminator",
                   "vat_radius": "VAT radius (segmentation: per 32 x 32 x C values, scaled to the frame)",
                   "g_width": "generator width (segmentation default 16)",
                   "z_dim": "noise dimension (segmentation default 32)"}
    default_iters = 1500
    model_passes = 5.0  # target clean + VAT (2) + generated (G step and C step)
    tasks = ("classification", "segmentation")

    def build(self) -> None:
        if task_of(self.task).spatial_output:
            self._build_dense()
            return
        t, o = self.task, self.opts
        self.G = build("conditional_generator", num_classes=t.num_classes, channels=t.channels,
                       image_size=t.image_size[0], z_dim=o.z_dim, width=o.g_width).to(self.device)
        self.D = ImageDiscriminator(channels=t.channels, image_size=t.image_size[0], width=o.d_width).to(self.device)
        self.optims["G"] = build_optimizer(self.G.parameters(), "adam", o.lr_gan, betas=(0.5, 0.999))
        self.optims["D"] = build_optimizer(self.D.parameters(), "adam", o.lr_gan, betas=(0.5, 0.999))
        self.optims["C"] = build_optimizer(self.model.parameters(), "adam", o.lr, betas=(0.9, 0.999))

    def _build_dense(self) -> None:
        t, o = self.task, self.opts
        if not 0.0 <= o.confidence <= 1.0:
            raise EdgedaError(f"3cgan confidence must be in [0, 1], not {o.confidence}")
        if not 0.0 <= o.portion < 1.0:
            raise EdgedaError(f"3cgan portion must be in [0, 1), not {o.portion}")
        width = o.g_width
        self.G = build("label_map_generator", num_classes=t.num_classes, channels=t.channels, width=width,
                       z_dim=o.z_dim, hidden=width, ignore_index=IGNORE_INDEX).to(self.device)
        self.D = PatchDiscriminator(channels=t.channels, width=o.d_width, n_layers=o.d_layers).to(self.device)
        self.optims["G"] = build_optimizer(self.G.parameters(), "adam", o.lr_gan, betas=(0.5, 0.999))
        self.optims["D"] = build_optimizer(self.D.parameters(), "adam", o.lr_gan, betas=(0.5, 0.999))
        self.optims["C"] = build_optimizer(self.model.parameters(), "adam", o.lr, betas=(0.9, 0.999))
        self.layouts: torch.Tensor | None = None
        self.default_iters = DENSE_ITERS
        # target clean + generated (G step and C step) (+ VAT's two)
        self.model_passes = 3.0 + (2.0 if o.lambda_vat > 0 else 0.0)

    def extra_modules(self):
        if task_of(self.task).spatial_output:
            return {"generator": _FrameProbe(self.G), "discriminator": self.D}
        return {"generator": self.G, "discriminator": self.D}

    def prepare(self, target) -> None:
        if task_of(self.task).spatial_output and self.layouts is None:  # from the shipped weights, before anything moves
            self.layouts = shipped_layouts(self.model, self.source_state, target, self.opts.confidence,
                                           self.opts.portion)
        if self.opts.adabn:
            reestimate_bn(self.model, target.batches())

    def layout_stats(self) -> dict:
        """Label-free facts about the layouts: the confident fraction of pixels and each class's share of them."""
        lay = self.layouts.long()
        kept = lay != IGNORE_INDEX
        counts = torch.bincount(lay[kept], minlength=self.task.num_classes).double()
        return {"confident_fraction": float(kept.double().mean()),
                "class_fractions": (counts / counts.sum().clamp(min=1)).tolist()}

    def _batch_layouts(self, idx, n: int) -> torch.Tensor:
        if idx is None:  # no indices given: layouts of random frames
            idx = torch.randint(0, len(self.layouts), (n,), generator=self.generator)
        m = self.layouts[idx.cpu()]
        if self.window is not None:
            top, left, h, w = self.window
            m = m[:, top:top + h, left:left + w]
        return m.to(self.device).long()

    def _sample(self, n: int):
        y = torch.randint(0, self.task.num_classes, (n,), generator=self.generator).to(self.device)
        z = torch.randn(n, self.G.z_dim, generator=self.generator).to(self.device)
        return y, z

    def _d_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One discriminator update: real target images vs (detached) generated ones."""
        kind = self.opts.gan_loss
        with self.autocast():
            d_loss = gan_loss(self.D(real), True, kind) + gan_loss(self.D(fake.detach()), False, kind)
        self.update(d_loss, "D")
        return d_loss

    def _g_adv(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss on D's logits for ``fake``."""
        d_fake = self.D(fake)
        return -d_fake.float().mean() if self.opts.gan_loss == "hinge" else gan_loss(d_fake, True, self.opts.gan_loss)

    def _c_update(self, l_gen, ent, vat, logged: dict) -> dict[str, float]:
        """The classifier's (segmenter's) update: the ramped generated-pair loss, the weight
        regulariser towards the shipped weights and the clustering term; returns the step's losses."""
        o, C = self.opts, self.model
        l_w = weight_regularizer(C, self.source_state)
        ramp = min(1.0, self.progress / o.gen_warmup) if o.gen_warmup > 0 else 1.0
        c_loss = (o.lambda_gen * ramp * l_gen + o.lambda_w * l_w
                  + o.lambda_clu * (ent + o.lambda_vat * vat))
        self.update(c_loss, "C")
        logged = {**logged, "gen": l_gen, "w": l_w, "ent": ent, "vat": vat}
        return {k: float(v.detach()) for k, v in logged.items()}

    def step(self, x: torch.Tensor, idx=None) -> dict[str, float]:
        if task_of(self.task).spatial_output:
            return self._step_dense(x, idx)
        o, C, t = self.opts, self.model, self.task
        self.G.train()
        self.D.train()
        y, z = self._sample(len(x))
        real = input_to_tanh(x, t.mean, t.std)

        # D: real target images vs generated ones
        with self.autocast():
            fake = self.G(y, z)
        d_loss = self._d_step(real, fake)

        # G: fool D, and be classified by C as the requested class (l_sem)
        C.eval()
        with self.autocast():
            g_adv = self._g_adv(fake)
            l_sem = F.cross_entropy(C(tanh_to_input(fake, t.mean, t.std)).float(), y)
            g_loss = g_adv + o.lambda_sem * l_sem
        self.update(g_loss, "G")

        # C: learn from generated pairs, stay near the source weights, cluster the target
        with self.autocast():
            gen_logits = C(tanh_to_input(fake.detach(), t.mean, t.std))
            l_gen = F.cross_entropy(gen_logits.float(), y)
            C.train()
            logits_t = C(x)
            ent = entropy(logits_t).mean()
            with frozen_bn_statistics(C):
                vat = virtual_adversarial_loss(C, x, logits_t, radius=o.vat_radius, generator=self.generator)
        return self._c_update(l_gen, ent, vat, {"d": d_loss, "g_adv": g_adv, "sem": l_sem})

    def _step_dense(self, x: torch.Tensor, idx=None) -> dict[str, float]:
        o, C, t = self.opts, self.model, self.task
        self.G.train()
        self.D.train()
        m = self._batch_layouts(idx, len(x))
        z = torch.randn(len(x), self.G.z_dim, generator=self.generator).to(self.device)
        real = input_to_tanh(x, t.mean, t.std)

        # D: real target frames vs generated ones, per patch
        with self.autocast():
            fake = self.G(m, z)
        d_loss = self._d_step(real, fake)

        # G: fool D, and be segmented by C as the layout (l_sem, per pixel); only G's weights take gradients
        C.eval()
        frozen = [p for mod in (C, self.D) for p in mod.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self.autocast():
                g_adv = self._g_adv(fake)
                l_sem = self._pixel_ce(C(tanh_to_input(fake, t.mean, t.std)), m)
                g_loss = g_adv + o.lambda_sem * l_sem
            self.update(g_loss, "G")
        finally:
            for p in frozen:
                p.requires_grad_(True)

        # C: learn from generated (image, layout) pairs, stay near the shipped weights, cluster the real frames
        with self.autocast():
            l_gen = self._pixel_ce(C(tanh_to_input(fake.detach(), t.mean, t.std)), m)
            C.train()
            logits_t = C(x)
            ent = entropy(logits_t).mean()  # per pixel
            vat = torch.zeros((), device=x.device)
            if o.lambda_vat > 0:
                radius = o.vat_radius * math.sqrt(x[0].numel() / (32 * 32 * t.channels))
                with frozen_bn_statistics(C):
                    vat = virtual_adversarial_loss(C, x, logits_t, radius=radius, generator=self.generator)
        return self._c_update(l_gen, ent, vat, {"d": d_loss, "g_adv": g_adv, "sem": l_sem})


    def _pixel_ce(self, logits: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the layout's labelled pixels (0 when every pixel is ignored): class-balanced
        (each class's mean, then the mean over classes) with ``class_balance``, else the pixel mean."""
        if not bool((layout != IGNORE_INDEX).any()):
            return logits.float().sum() * 0.0
        if self.opts.class_balance:
            return class_balanced_cross_entropy(logits, layout)
        return F.cross_entropy(logits.float(), layout, ignore_index=IGNORE_INDEX)
