"""CoTTA: continual test-time domain adaptation (Wang, Fink, Van Gool & Dai, CVPR 2022).

Three copies of the shipped network: the student theta (trained), the teacher theta' (an EMA of
the student, :class:`~edgeda.models.mean_teacher.MeanTeacher`; it labels the targets and it is
what ships, as the paper predicts with it) and the anchor theta_0 (the shipped weights, frozen;
only its confidence is read). On a target batch x:

    y' = f_theta'(x)                            where conf(f_theta0(x)) >= tau
    y' = mean_i f_theta'(aug_i(x))              elsewhere (augmentation-averaged, mapped back)
    L(theta) = -sum_c y'_c log f_theta(x)_c     (soft cross-entropy, per image or per pixel)
    theta' <- alpha theta' + (1 - alpha) theta;   theta <- M * theta_0 + (1 - M) * theta,  M ~ Bernoulli(p)

i.e. one Adam step on all of the student's parameters, the teacher's EMA update, then stochastic
restoration: every weight element of the student returns to its shipped value with probability
p (:func:`stochastic_restore`), which keeps it from drifting away for good.

Confidence is per image (classification) or per pixel (segmentation, as the authors' code for
Cityscapes -> ACDC), the paper's Eq. 4; the authors' CIFAR code thresholds the batch's mean
confidence instead. Augmentations: for classification the CIFAR recipe (:func:`cotta_augment`:
brightness, contrast, saturation and gamma jitter, a random affine map (+-15 deg, +-1/16 shift,
scale 0.9-1.1, edges replicated), Gaussian noise of std 0.005; their hue jitter and blur are left
out); for segmentation the scales x horizontal flips of the segmentation code
(:func:`multiscale_flip_probs`: each copy's logits resized back to the frame, softmaxed and
un-flipped before the average).

BatchNorm: the authors' CIFAR model normalises with test-batch statistics throughout. A bundle
predicts in eval mode with running statistics, so the student's are first re-estimated on the
target images (AdaBN, ``adabn``) and the teacher and anchor start from that state; the student
then trains in train mode (batch statistics, running ones following the target) and the teacher
averages the running statistics with the weights. The teacher EMA runs at alpha from its first
update (no warm-up: student and teacher both start from the shipped model, unlike DACS's).

Defaults, the paper's unless said: Adam (0.9, 0.999), no weight decay, lr 1e-3 (CIFAR); p = 0.01;
tau = 0.92 (the CIFAR-10 code's; segmentation 0.69, the Cityscapes -> ACDC code's). Scaled to a CPU
budget of 200 iterations: alpha = 0.995 (the paper's 0.999 spans 1/(1 - alpha) = 1000 steps against
its 750-step CIFAR10-C run; at 0.999 a 200-step run would leave the teacher 82 % shipped, so the
horizon is set to the run's 200 steps); N = 8 augmented copies for classification (the paper 32,
each one a teacher pass); for segmentation scales 0.75, 1.0, 1.5 x flip = 6 passes (the paper
0.5-2.0 in 7 steps x flip = 14; 2.0 alone would cost four passes, 0.5 of a 64-pixel frame leaves a
2x2 map at output stride 16). Segmentation lr 5e-4: the paper adapts SegFormer at its training
rate scaled by the batch ratio (6e-5 x 1/8); edgeda's dense bundles train with Adam 1e-3 at 16
frames and adapt at 8. Downscaled copies are used only where the shrunk frame keeps a short side
of 128 pixels (:func:`usable_scales`): on 64-pixel frames only 1.0 and 1.5 remain. With 0.75 on
digitscenes -> handwritten-scenes (seed 0) the averaged targets erased the small digits: after 200
iterations one class covered > 98 % of 52 % of the monitored frames (no test frame is like that)
and the collapse monitor stopped the run; with 1.0 and 1.5 the same run ended healthy. ``flip`` = auto mirrors segmentation frames (a mirrored scene is a scene)
when the shipped model was trained with horizontal flips (its manifest's ``augment_hflip``), and
never classifier inputs (digits and signs mirror into other glyphs; the paper flips CIFAR objects):
a model that never saw mirrored digit scenes reads their mirrored digits as other glyphs or
background, and averaging those copies into the targets pulls towards background (on
digitscenes -> handwritten-scenes, seed 0, the collapse monitor's "one class swallowed the frame"
criterion fired at iteration 150 with mirrors and at 200 without); ``on``/``off`` force it.

Class balance (``balance`` = auto: segmentation): the soft cross-entropy is averaged within each
class of the teacher's arg-max and then over those classes
(:func:`~edgeda.adapt.losses.class_balanced_soft_cross_entropy`), the weighting edgeda's dense SHOT
gives its hard pseudo-labels. Not in the paper, whose Cityscapes -> ACDC frames have no class near
90 % of the pixels; on digitscenes -> handwritten-scenes (about 89 % background) the per-pixel mean
let the background absorb the digits, and the monitor's "one class swallowed the frame" stopped 2 of
3 seeds at iteration 200; balanced, none (``benchmarks/adapt.py``, the ``cotta`` and
``cotta[balance=off]`` rows, side by side; on synscenes -> synscenes:photo neither collapses).

Detection bundles: the targets are the teacher's class distributions per anchor (SSDLite: softmax
over the K classes and background; FCOS: the per-class sigmoids) and the loss their soft
cross-entropy (FCOS: binary, per class) averaged over anchors; confidence is per anchor. Where the
shipped model is unsure the teacher's scores are averaged over the frame and its mirror image, the
mirrored anchors mapped back through the anchor layout (SSDLite: an anchor's mirrored box is
another anchor's box; FCOS's locations at ``j x stride`` have no such map, so FCOS uses the
unaugmented teacher scores). ``flip`` = auto mirrors detection frames where the bundle trained
with flips (its training config's ``augment_hflip``; on when the bundle does not record it); no
rescaled copies (their anchor sets have no one-to-one map back). Defaults as for segmentation (lr
5e-4, tau 0.69). Details: :mod:`edgeda.adapt.detection`.

Memory: the teacher and the anchor are two more copies of the weights (in the resident memory the
runner measures); only the student's forward keeps activations for backward: the anchor's and the
teacher's passes (one copy at a time) run without gradients before it.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgedaError
from ..methods.base import build_optimizer
from ..models.mean_teacher import MeanTeacher
from ..tasks import task_of
from .base import ADAPT_METHODS, AdaptMethod, reestimate_bn
from .tasks import adaptation_of


class _ShippedTeacher(MeanTeacher):
    """The shared mean teacher with a constant rate: CoTTA's teacher starts as the shipped model,
    as the student does, so it needs no warm-up."""

    def rate(self) -> float:
        return self.alpha


@torch.no_grad()
def stochastic_restore(model: nn.Module, source_state: dict, p: float, generator: torch.Generator) -> float:
    """Reset each element of every parameter of ``model`` to its value in ``source_state`` with
    probability ``p`` (independently): theta <- M * theta_0 + (1 - M) * theta, M ~ Bernoulli(p).
    Buffers (BatchNorm statistics) are left alone, as in the paper. Returns the share of elements reset.

    >>> stochastic_restore(student, shipped_state, 0.01, torch.Generator().manual_seed(0))
    """
    if p <= 0:
        return 0.0
    reset = total = 0
    for name, w in model.named_parameters():
        mask = (torch.rand(w.shape, generator=generator) < p).to(w.device)
        w.copy_(torch.where(mask, source_state[name].to(w.device, w.dtype), w))
        reset += int(mask.sum())
        total += mask.numel()
    return reset / max(total, 1)


def cotta_augment(x: torch.Tensor, mean, std, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """One random CoTTA augmentation of each image of ``x`` (N, C, H, W, normalised): colour jitter
    (brightness 0.6-1.4, contrast 0.7-1.3, saturation 0.5-1.5 on RGB, gamma 0.7-1.3), an affine map
    (rotation +-15 deg, shift +-1/16 of the side, scale 0.9-1.1, edges replicated), a horizontal
    flip with probability 0.5 when ``flip``, Gaussian noise of std 0.005; pixels kept in [0, 1]."""
    n, c = x.shape[:2]
    dev = x.device
    m = torch.tensor(mean, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(std, device=dev).view(1, -1, 1, 1)

    def uniform(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(*shape, generator=generator)).to(dev)

    p = (x.float() * s + m).clamp(0, 1)
    p = p * uniform(0.6, 1.4, n, 1, 1, 1)
    grey = p.mean(1, keepdim=True)
    p = (p - grey.mean((2, 3), keepdim=True)) * uniform(0.7, 1.3, n, 1, 1, 1) + grey.mean((2, 3), keepdim=True)
    if c == 3:
        grey = p.mean(1, keepdim=True)
        p = grey + (p - grey) * uniform(0.5, 1.5, n, 1, 1, 1)
    p = p.clamp(0, 1) ** uniform(0.7, 1.3, n, 1, 1, 1)
    angle = uniform(-math.radians(15), math.radians(15), n)
    scale = uniform(0.9, 1.1, n)
    shift = uniform(-1 / 8, 1 / 8, n, 2)  # affine_grid units: the side is 2, so 1/16 of it
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    p = F.grid_sample(p, F.affine_grid(theta, list(p.shape), align_corners=False), padding_mode="border",
                      align_corners=False)
    if flip:
        p = torch.where((torch.rand(n, generator=generator) < 0.5).to(dev).view(n, 1, 1, 1), p.flip(-1), p)
    p = p + 0.005 * torch.randn(p.shape, generator=generator).to(dev)
    return ((p.clamp(0, 1) - m) / s).to(x.dtype)


@torch.no_grad()
def multiscale_flip_probs(model: nn.Module, x: torch.Tensor, scales=(1.0,), flip: bool = True) -> torch.Tensor:
    """Mean class probabilities of a dense ``model`` over rescaled (and mirrored) copies of ``x``,
    each mapped back to the frame: logits of the copy resized (bilinear) to x's size, softmax over
    classes, mirrored back when the copy was mirrored. (N, K, H, W)."""
    size = x.shape[-2:]
    total, n = None, 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            z = model(xs.flip(-1) if mirrored else xs).float()
            prob = F.interpolate(z, size=size, mode="bilinear", align_corners=False).softmax(1)
            prob = prob.flip(-1) if mirrored else prob
            total = prob if total is None else total + prob
            n += 1
    return total / n


MIN_DOWNSCALED_SIDE = 128  # pixels: a shrunk copy's short side must keep at least this (16 cells at output stride 8)


def usable_scales(scales: tuple[float, ...], size) -> tuple[float, ...]:
    """The scales whose copy of a frame of ``size`` (H, W) is worth averaging: every scale >= 1, and a
    downscale only where the shrunk frame keeps a short side of :data:`MIN_DOWNSCALED_SIDE` pixels.
    The paper's smallest copy of a 1920x1080 ACDC frame is 540 pixels high; 0.75 of a 64-pixel frame
    is 48 pixels, a 6x6 map at output stride 8, on which objects a few pixels wide (digits) disappear
    and the averaged target turns them into background."""
    short = min(int(size[0]), int(size[1]))
    kept = tuple(s for s in scales if s >= 1.0 or s * short >= MIN_DOWNSCALED_SIDE)
    return kept or (1.0,)


def _scales(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        out = ()
    if not out or not all(math.isfinite(v) and 0.1 <= v <= 4.0 for v in out):
        raise EdgedaError(f"cotta scales must be comma-separated numbers in [0.1, 4], e.g. 0.75,1,1.5; not {text!r}")
    return out


@ADAPT_METHODS.register("cotta")
class CoTTA(AdaptMethod):
    summary = ("CoTTA (Wang et al. 2022): EMA teacher with augmentation-averaged targets, all weights trained, "
               "stochastic restoration to the shipped weights; the teacher ships")
    defaults = {"lr": 1e-3, "alpha": 0.995, "restore_p": 0.01, "anchor_threshold": 0.92, "augmentations": 8,
                "scales": "0.75,1.0,1.5", "flip": "auto", "adabn": True, "balance": "auto"}
    dense_defaults = {"lr": 5e-4, "anchor_threshold": 0.69}
    choices = {"flip": ("auto", "on", "off"), "balance": ("auto", "on", "off")}
    option_help = {
        "lr": "Adam learning rate of the student (segmentation default 5e-4)",
        "alpha": "EMA rate of the teacher",
        "restore_p": "probability that a weight element returns to its shipped value after each step",
        "anchor_threshold": "shipped-model confidence below which targets are augmentation-averaged (segmentation 0.69)",
        "augmentations": "classification: augmented copies averaged by the teacher",
        "scales": "segmentation: input scales averaged by the teacher (with flips; downscales only where the "
                  "shrunk frame keeps a 128-pixel short side)",
        "flip": "mirror the augmented copies: auto = segmentation, detection where the bundle trained with flips",
        "adabn": "re-estimate the BatchNorm statistics on the target images before the first step",
        "balance": "weigh each class of the teacher's targets alike in the loss: auto = segmentation",
    }
    default_iters = 200
    tasks = ("classification", "segmentation", "detection")
    model_passes = 1.0  # only the student's forward keeps activations; anchor and teacher run under no_grad first

    def build(self) -> None:
        o = self.opts
        if not 0.0 <= o.restore_p <= 1.0:
            raise EdgedaError(f"cotta restore_p must be in [0, 1], not {o.restore_p}")
        if not 0.0 <= o.anchor_threshold <= 1.0:
            raise EdgedaError(f"cotta anchor_threshold must be in [0, 1], not {o.anchor_threshold}")
        if o.augmentations < 1:
            raise EdgedaError(f"cotta augmentations must be at least 1, not {o.augmentations}")
        self.scales = _scales(o.scales)
        self.objective = adaptation_of(self.task)
        self.flip = o.flip == "on" or (o.flip == "auto" and task_of(self.task).spatial_output
                                          and self.objective.mirrors(self.shipped_training))
        self.balanced = self.objective.balanced(o.balance, self.task, "cotta")
        clf = self.model
        clf.requires_grad_(True)
        self.mean_teacher = _ShippedTeacher(clf, alpha=o.alpha)
        self.anchor = copy.deepcopy(clf).requires_grad_(False).eval()
        self.optims["student"] = build_optimizer(clf.parameters(), "adam", o.lr, betas=(0.9, 0.999))
        self._prepared = False

    @property
    def teacher(self) -> nn.Module:
        return self.mean_teacher.teacher

    @property
    def deployed(self) -> nn.Module:
        return self.teacher

    def prepare(self, target) -> None:
        if self._prepared:
            return
        self._prepared = True
        if self.opts.adabn:
            reestimate_bn(self.model, target.batches())
            state = self.model.state_dict()
            self.teacher.load_state_dict(state)
            self.anchor.load_state_dict(state)

    @torch.no_grad()
    def averaged_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's probabilities averaged over augmented copies of ``x``, in x's frame."""
        own = self.objective.averaged_probs(self, x)  # a task with its own mapping back (detection: anchors)
        if own is not None:
            return own
        t = self.teacher.eval()
        if task_of(self.task).spatial_output:
            return multiscale_flip_probs(t, x, usable_scales(self.scales, x.shape[-2:]), self.flip)
        total = None
        for _ in range(self.opts.augmentations):
            p = t(cotta_augment(x, self.task.mean, self.task.std, self.generator, self.flip)).float().softmax(1)
            total = p if total is None else total + p
        return total / self.opts.augmentations

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(the soft targets y' (N, K[, H, W]), the share of images / pixels that took the averaged ones)."""
        self.anchor.eval()
        ob = self.objective
        unsure = ob.confidence(self.anchor, self.anchor(x)) < self.opts.anchor_threshold
        t = self.teacher.eval()
        standard = ob.probs(t, t(x))
        if not bool(unsure.any()):
            return standard, 0.0
        return ob.blend(unsure, self.averaged_probs(x), standard), float(unsure.float().mean())

    def step(self, x: torch.Tensor, idx=None) -> dict[str, float]:
        y, share = self.targets(x)
        student = self.model
        student.train()
        with self.autocast():
            logits = student(x)
        # -sum_c y'_c log p_c, mean over images, pixels or anchors
        loss = self.objective.soft_cross_entropy(student, logits, y, balanced=self.balanced)
        self.update(loss, "student")
        self.mean_teacher.update(student)
        restored = stochastic_restore(student, self.source_state, self.opts.restore_p, self.generator)
        return {"consistency": float(loss.detach()), "averaged": share, "restored": restored}

    def state_snapshot(self) -> dict:
        """The student and the teacher (the one written)."""
        return copy.deepcopy({name: {k: v.detach().cpu() for k, v in m.state_dict().items()}
                              for name, m in (("student", self.model), ("teacher", self.teacher))})

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot["student"])
        self.teacher.load_state_dict(snapshot["teacher"])
