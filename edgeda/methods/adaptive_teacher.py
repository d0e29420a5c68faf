"""Adaptive Teacher for detectors: mean-teacher self-training plus adversarial alignment of the student's features."""
from __future__ import annotations

import torch

from ..errors import EdgedaError
from ..models.dense_alignment import level_domain_adversarial_loss
from ..models.dense_gan import PixelDomainClassifier
from .base import Batch
from .mean_teacher import DetectionMeanTeacher
from .registry import METHODS


@METHODS.register("adaptive_teacher")
class AdaptiveTeacher(DetectionMeanTeacher):
    """Adaptive Teacher: the mean teacher's pseudo-boxes and a domain discriminator on the student.

    Li et al., "Cross-Domain Adaptive Teacher for Object Detection", CVPR 2022. Two branches trained
    together after a source-only burn-in: the teacher-student branch of ``mean_teacher`` (an EMA
    teacher's thresholded detections on weakly augmented target images are the student's
    classification targets on a strong view of them, no box regression on pseudo-boxes), and an
    adversarial branch that makes the student's features indistinguishable between domains: an
    image-level discriminator D on the student's features, through a gradient reversal layer, on the
    weak views of the source and the target batch (a forward pass of its own, as the authors' domain
    branch):

        L = L_det(S(x_s), y_s) + lambda_unsup * L_cls(S(A(x_t)), B_t)
            + dis_weight * (1/|levels|) sum_l mean_{h,w} [BCE(D_l(R(f_s^l)), 1) + BCE(D_l(R(f_t^l)), 0)]

    R is the identity forward and negates the gradient (coefficient 1, constant, as the authors'
    ``grad_reverse``). The authors put one discriminator on a Faster R-CNN C4 backbone's ``res4``, the
    one map its heads read; the heads of edgeda's detectors read every level of ``model.features``
    (SSDLite's six maps, FCOS's FPN), so there is one discriminator per level, as ``dann``'s detection
    branch (the same pieces: a pixel-wise classifier of three 1x1 convolutions with ``hidden``
    channels, and plain-convolution levels standardised over channels before it, so the student
    cannot win against D by scaling its features up). D trains with the detector in one optimizer,
    as the authors' does. Everything else -- pseudo-box thresholds with the calibrated floor, the
    strong view, burn-in and ``--init`` -- is ``mean_teacher``'s (its docstring).

    Defaults: the authors' ``DIS_LOSS_WEIGHT`` 0.1 (``dis_weight``), their 256-channel discriminator
    width (``hidden``); the rest ``mean_teacher``'s, scaled to the CPU budget there (EMA 0.99 where the
    authors' 0.9996 spans 10^5 iterations; burn-in 0.3 of training).
    """

    summary = "Adaptive Teacher: mean-teacher pseudo-boxes plus a gradient-reversed domain discriminator on the student (Li 2022)"
    tasks = ("detection",)
    defaults = {**DetectionMeanTeacher.defaults, "dis_weight": 0.1, "hidden": 256}

    def build(self) -> None:
        if self.opts.dis_weight < 0:
            raise EdgedaError(f"method {self.name!r} option dis_weight={self.opts.dis_weight} must be >= 0")
        if int(self.opts.hidden) < 1:
            raise EdgedaError(f"method {self.name!r} option hidden={self.opts.hidden} must be >= 1")
        super().build()

    def extra_param_groups(self) -> list[dict]:
        channels = self.model.level_channels(self.task.channels)
        self.nets["domain"] = torch.nn.ModuleList(PixelDomainClassifier(c, int(self.opts.hidden)) for c in channels)
        return [{"params": list(self.nets["domain"].parameters()), "lr_mult": 1.0}]

    def alignment_terms(self, loss: torch.Tensor, source: Batch, target: Batch) -> tuple[torch.Tensor, dict]:
        ns = len(source)
        model = self.model
        with self.autocast():
            feats = model.features(torch.cat([source.x, target.x]))
            dom_loss, dom_acc, _, _ = level_domain_adversarial_loss(self.nets["domain"], feats, ns, 1.0,
                                                                    model.normalised_features)
        return loss + self.opts.dis_weight * dom_loss, {"loss/domain": dom_loss.item(), "acc/domain": dom_acc.item()}
