"""TENT: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021).

Only the affine parameters (gamma, beta) of the BatchNorm2d layers change, as in the paper and
the authors' code (which collects ``nn.BatchNorm2d`` only); every other weight stays as shipped,
the affine parameters of a BatchNorm1d after a fully connected layer (the DTN digits backbone)
included. Every BatchNorm layer normalises with the statistics of the current target batch (the
authors' ``model.train()``):

    min_{gamma, beta}  E_x[ H(softmax(C(x))) ]      (x: a batch of target images)

On a segmentation bundle the expectation runs over every pixel of the batch's frames (or of the
crop the memory plan chose): ``E_{x, u}[ H(softmax(C(x)_u)) ]`` for pixel positions ``u``, as in
the paper's segmentation experiments (GTA -> Cityscapes). With ``balance`` (auto: segmentation) the
entropy is averaged within each predicted class, then over the classes
(:func:`~edgeda.adapt.losses.per_class_mean`; the predicted class detached): frames that are mostly
road or background otherwise give nearly all of the gradient to those pixels, and the lowest
per-pixel mean is reached by making every pixel surer of the majority class, which erases small
objects. The same reason as the foreground weighting of detection below; not in the paper. On the
benchmark's dense rows (3 seeds each, side by side) the per-pixel mean ended on a collapse exit in
all 6 runs and wrote a model 4.8 mIoU below the shipped one on synscenes -> synscenes:photo; the
balanced mean in none, +2.9 there and +1.1 on digitscenes -> handwritten-scenes
(``benchmarks/adapt.py``, the ``tent`` and ``tent[balance=off]`` rows; labels read for that report only).

On a detection bundle the entropy is that of each anchor's class distribution (SSDLite: the
softmax over the K classes and background; FCOS: the sum of the binary entropies of the per-class
sigmoids), averaged over anchors weighted by each anchor's foreground confidence, detached (SSD
``1 - p_background``, FCOS the best class sigmoid): almost every anchor is background, and an
unweighted mean is lowest when every anchor becomes surer background, which erases detections;
the weights spend the gradient on anchors that may hold an object. Derivation and choices:
:mod:`edgeda.adapt.detection`. BatchNorm affine parameters only, as for the other tasks (FCOS's
heads normalise with GroupNorm, which stays as shipped; its trunk's BatchNorm layers adapt).

The shipped model runs in eval mode, so the running statistics are first re-estimated on the
target images (AdaBN) and keep following the target batches during adaptation (momentum
``bn_momentum``); the new bundle therefore deploys with target statistics.

Defaults: Adam, lr 1e-3, betas (0.9, 0.999), no weight decay (the paper's CIFAR settings);
BatchNorm momentum 0.1; 200 iterations unless ``--iters`` says otherwise (``--minutes`` only ends them early).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EdgedaError
from ..methods.base import build_optimizer
from .base import ADAPT_METHODS, AdaptMethod, bn_layers, reestimate_bn
from .tasks import adaptation_of


@ADAPT_METHODS.register("tent")
class Tent(AdaptMethod):
    summary = "TENT (Wang et al. 2021): entropy minimisation on BatchNorm affine parameters only"
    defaults = {"lr": 1e-3, "bn_momentum": 0.1, "balance": "auto"}
    choices = {"balance": ("auto", "on", "off")}
    option_help = {"balance": "average the entropy within each predicted class, then over the classes: "
                              "auto = segmentation"}
    default_iters = 200
    tasks = ("classification", "segmentation", "detection")

    def build(self) -> None:
        clf = self.model
        for p in clf.parameters():
            p.requires_grad_(False)
        params = []
        for m in bn_layers(clf):
            m.momentum = self.opts.bn_momentum
            if not isinstance(m, nn.BatchNorm2d):  # the paper adapts the convolutional BatchNorm layers only
                continue
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
        if not params:
            raise EdgedaError("tent needs a model with BatchNorm2d layers; this classifier has none (try --method shot)")
        self.optims["bn"] = build_optimizer(params, "adam", self.opts.lr, betas=(0.9, 0.999))
        self.objective = adaptation_of(self.task)
        self.balanced = self.objective.balanced(self.opts.balance, self.task, "tent")

    def prepare(self, target) -> None:
        reestimate_bn(self.model, target.batches())

    def step(self, x: torch.Tensor, idx=None) -> dict[str, float]:
        self.model.train()
        with self.autocast():
            logits = self.model(x)
        # per image, per pixel for (N, K, H, W) logits, per anchor (foreground-weighted) for a detector
        loss = self.objective.entropy(self.model, logits, balanced=self.balanced)
        self.update(loss, "bn")
        return {"entropy": float(loss.detach())}
