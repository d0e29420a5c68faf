"""Mean-teacher self-training for detectors: pseudo-boxes from an EMA teacher, strong views for the student."""
from __future__ import annotations

import torch

from ..errors import EdgedaError
from ..models.mixing import strong_augment
from ..models.mean_teacher import MeanTeacher
from .base import Batch, Method
from .registry import METHODS


def cutout(x: torch.Tensor, generator: torch.Generator, holes: int = 1, scale: tuple[float, float] = (0.05, 0.2),
           p: float = 0.7) -> torch.Tensor:
    """Random erasing (DeVries and Taylor 2017, as Unbiased Mean Teacher's strong view): with
    probability ``p`` per image, ``holes`` rectangles each covering a share of the image drawn from
    ``scale`` are set to 0 (the dataset mean of normalised inputs). Boxes are not moved. A copy."""
    n, _, h, w = x.shape
    out = x.clone()
    u = torch.rand(n, holes, 5, generator=generator)
    for i in range(n):
        for j in range(holes):
            if float(u[i, j, 0]) >= p:
                continue
            area = (scale[0] + (scale[1] - scale[0]) * float(u[i, j, 1])) * h * w
            side_h = max(1, min(h, int(round(area ** 0.5 * (0.5 + float(u[i, j, 2]))))))
            side_w = max(1, min(w, int(round(area / side_h))))
            top = int(float(u[i, j, 3]) * (h - side_h + 1))
            left = int(float(u[i, j, 4]) * (w - side_w + 1))
            out[i, :, top:top + side_h, left:left + side_w] = 0
    return out


@torch.no_grad()
def pseudo_boxes(teacher, x: torch.Tensor, threshold: float, max_det: int = 100) -> list[dict]:
    """The teacher's detections on ``x`` (eval mode) scoring at least ``threshold``, as targets
    ``{"boxes", "labels", "scores"}`` per image (class-aware NMS by the detector's own post-processing)."""
    teacher.eval()
    dets = teacher.postprocess(teacher(x), score_thresh=float(threshold), max_det=max_det)
    return [{"boxes": d["boxes"].detach(), "labels": d["labels"].detach(), "scores": d["scores"].detach()}
            for d in dets]


@METHODS.register("mean_teacher")
class DetectionMeanTeacher(Method):
    """Mean-teacher self-training for object detection.

    Deng et al., "Unbiased Mean Teacher for Cross-domain Object Detection", CVPR 2021; Li et al.,
    "Cross-Domain Adaptive Teacher for Object Detection", CVPR 2022 (its self-training branch; the
    adversarial branch is ``dann``); Tarvainen and Valpola 2017 for the teacher.

    The teacher T is an exponential moving average of the student S
    (:class:`~edgeda.models.mean_teacher.MeanTeacher`, with its warm-up rate). On each weakly
    augmented target batch (the stream's random scale-crop and flip) T's detections scoring at least
    ``threshold`` after class-aware NMS become pseudo-boxes B_t; S sees a strong view A(x_t) (colour
    jitter, Gaussian blur, cutout; geometry unchanged, so B_t stays valid):

        L = L_det(S(x_s), y_s) + lambda_unsup * L_cls(S(A(x_t)), B_t)

    L_det is the detector's supervised loss (SSD: matched-anchor cross-entropy with hard-negative
    mining + smooth L1; FCOS: focal + GIoU + centerness); L_cls is only its classification term on the
    pseudo-boxes, anchors matched to no pseudo-box counting as background, with no box regression
    on pseudo-labels (Adaptive Teacher: teacher scores say little about box precision). Burn-in:
    for the first ``burn_in`` share of training only L_det is used; the teacher then starts from the
    student's weights and follows it by EMA.

    Defaults: ``threshold`` 0.8 (Adaptive Teacher's, on the detection score), ``lambda_unsup`` 1.0
    (theirs), ``alpha`` 0.99 -- the papers use 0.9996 over tens of thousands of iterations; a CPU
    profile runs a few hundred, and an EMA with a half-life of ~70 updates lets the teacher follow
    the student within that budget -- ``burn_in`` 0.3 of training (their burn-in is a source-only
    stage of a similar share), strong augmentation as DACS's (colour jitter p 0.8 strength 0.2,
    blur p 0.5) plus one cutout hole (p 0.7, 5-20 % of the image).
    """

    summary = "mean-teacher self-training for detectors: EMA teacher pseudo-boxes above a score, strong views (Deng 2021, Li 2022)"
    tasks = ("detection",)
    defaults = {"threshold": 0.8, "alpha": 0.99, "lambda_unsup": 1.0, "burn_in": 0.3, "jitter_p": 0.8,
                "jitter_strength": 0.2, "blur_p": 0.5, "cutout_p": 0.7, "max_pseudo": 100, "encoder_lr": 1.0}

    def build(self) -> None:
        o = self.opts
        for key in ("threshold", "jitter_p", "blur_p", "cutout_p"):
            if not 0.0 <= float(o[key]) <= 1.0:
                raise EdgedaError(f"method 'mean_teacher' option {key}={o[key]} must lie in [0, 1]")
        if not 0.0 <= o["burn_in"] < 1.0:
            raise EdgedaError(f"method 'mean_teacher' option burn_in={o['burn_in']} must lie in [0, 1)")
        self.nets["classifier"] = self.make_classifier()
        if not callable(getattr(self.classifier, "postprocess", None)):
            raise EdgedaError("method 'mean_teacher' needs a detector (a network with postprocess and loss)")
        self.optims["main"] = self.make_optimizer(self.param_groups(self.classifier, o["encoder_lr"]))
        self.mean_teacher = MeanTeacher(self.classifier, o["alpha"])
        self.nets["teacher"] = self.mean_teacher.teacher  # moved, saved and restored with the student
        self.started = False
        self._generator = torch.Generator().manual_seed((torch.initial_seed() * 7919 + 29) % 2**63)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        o = self.opts
        x = strong_augment(x, self.task.mean, self.task.std, self._generator, jitter_p=o["jitter_p"],
                           jitter_strength=o["jitter_strength"], blur_p=o["blur_p"])
        return cutout(x, self._generator, p=o["cutout_p"])

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o = self.opts
        student = self.classifier
        with self.autocast():
            loss_src = self.task_loss_of(student(source.x), source.y)
        out = {"loss/src": loss_src.item()}
        if self.progress < o["burn_in"]:
            self.update(loss_src, "main")
            return out
        if not self.started:  # the teacher starts from the burnt-in student
            self.mean_teacher.teacher.load_state_dict(student.state_dict())
            self.mean_teacher.updates = 0
            self.started = True
        pseudo = pseudo_boxes(self.mean_teacher.teacher, target.x, o["threshold"], o["max_pseudo"])
        with self.autocast():
            loss_unsup = student.loss(student(self.strong(target.x)), pseudo)["classification"]
        loss = loss_src + o["lambda_unsup"] * loss_unsup
        self.update(loss, "main")
        self.mean_teacher.update(student)
        n = sum(len(p["labels"]) for p in pseudo)
        out.update({"loss/unsup": loss_unsup.item(), "pseudo/boxes_per_image": n / max(len(pseudo), 1),
                    "teacher/rate": self.mean_teacher.rate()})
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "teacher_updates": self.mean_teacher.updates, "started": self.started,
                "augment_rng": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mean_teacher.updates = int(state.get("teacher_updates", 0))
        self.started = bool(state.get("started", False))
        self.mean_teacher.teacher.eval()
        if "augment_rng" in state:
            self._generator.set_state(state["augment_rng"])
