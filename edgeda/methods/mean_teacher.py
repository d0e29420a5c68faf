"""Mean-teacher self-training for detectors: pseudo-boxes from an EMA teacher, strong views for the student."""
from __future__ import annotations

import torch

from ..errors import EdgedaError
from ..models.mixing import strong_augment
from ..models.detection.boxes import box_iou
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


class RateMatchedThresholds:
    """Per-class pseudo-box score thresholds that keep, per target image, as many boxes of each
    class as the source labels hold per image -- CBST's class-balanced selection (Zou et al. 2018)
    with the source's objects-per-image as the proportion, bounded to ``[floor, ceiling]``.

    A fixed threshold assumes a calibrated, confident teacher: a detector trained on few source
    iterations, or far from its target, scores almost nothing above it and the self-training term
    sees only background. The threshold of class c is the n_c-th highest score of c among the
    teacher's detections on the last ``window`` target images (n_c = the source's boxes of c per
    image times the images in the window); where fewer than n_c detections of c score above
    ``floor``, it is ``floor``; it never exceeds ``ceiling`` (a confident teacher keeps the paper's
    fixed threshold). Source counts are taken from the source batches the student trains on (the same
    random scale-crop as the target stream), so no target label is read."""

    def __init__(self, num_classes: int, floor: float, ceiling: float, window: int = 256):
        if not 0.0 <= floor <= ceiling <= 1.0:
            raise EdgedaError(f"pseudo-box thresholds need 0 <= floor ({floor}) <= threshold ({ceiling}) <= 1")
        self.num_classes, self.floor, self.ceiling, self.window = int(num_classes), float(floor), float(ceiling), int(window)
        self.source_boxes = torch.zeros(self.num_classes, dtype=torch.float64)
        self.source_images = 0
        self.recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # (scores, labels) per target image, newest last

    def observe_source(self, targets: list[dict]) -> None:
        for t in targets:
            labels = t["labels"].detach().to("cpu", torch.long)
            self.source_boxes += torch.bincount(labels, minlength=self.num_classes)[:self.num_classes].double()
        self.source_images += len(targets)

    def observe_target(self, detections: list[dict]) -> None:
        for d in detections:
            self.recent.append((d["scores"].detach().float().cpu(), d["labels"].detach().long().cpu()))
        del self.recent[:max(0, len(self.recent) - self.window)]

    def source_rate(self) -> torch.Tensor:
        """Source boxes per image, per class."""
        return self.source_boxes / max(self.source_images, 1)

    def thresholds(self) -> torch.Tensor:
        """(num_classes,) score thresholds for the next pseudo-boxes."""
        out = torch.full((self.num_classes,), self.ceiling)
        if not self.recent or not self.source_images:
            return out
        scores = torch.cat([s for s, _ in self.recent])
        labels = torch.cat([l for _, l in self.recent])
        wanted = (self.source_rate() * len(self.recent)).round().long()
        for c in range(self.num_classes):
            n = int(wanted[c])
            if n == 0:
                continue
            mine = scores[labels == c]
            nth = float(mine.topk(n).values[-1]) if mine.numel() >= n else self.floor
            out[c] = min(max(nth, self.floor), self.ceiling)
        return out

    def select(self, detections: list[dict]) -> list[dict]:
        """Record ``detections`` (scored at least ``floor``) and keep those above their class's threshold."""
        self.observe_target(detections)
        thr = self.thresholds()
        kept = []
        for d in detections:
            ok = d["scores"] >= thr.to(d["scores"].device)[d["labels"]]
            kept.append({k: v[ok] for k, v in d.items()})
        return kept

    def state_dict(self) -> dict:
        return {"source_boxes": self.source_boxes.clone(), "source_images": self.source_images,
                "recent_scores": [s for s, _ in self.recent], "recent_labels": [l for _, l in self.recent]}

    def load_state_dict(self, state: dict) -> None:
        self.source_boxes = state["source_boxes"].double().clone()
        self.source_images = int(state["source_images"])
        self.recent = list(zip(state["recent_scores"], state["recent_labels"]))


def correct_detections(det: dict, target: dict, iou: float = 0.5) -> torch.Tensor:
    """(n,) bool: which of one image's detections (by decreasing score) find a labelled box of their
    class at IoU >= ``iou`` not already taken by a higher-scoring detection (COCO's greedy matching)."""
    boxes, labels = target["boxes"].to(det["boxes"].device), target["labels"].to(det["labels"].device)
    ok = torch.zeros(len(det["scores"]), dtype=torch.bool)
    if not len(boxes) or not len(ok):
        return ok
    overlap = box_iou(det["boxes"].float(), boxes.float())
    overlap[det["labels"][:, None] != labels[None, :]] = -1.0
    taken = torch.zeros(len(boxes), dtype=torch.bool, device=overlap.device)
    for i in det["scores"].argsort(descending=True).tolist():
        row = overlap[i].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if float(row[j]) >= iou:
            taken[j], ok[i] = True, True
    return ok


class SourcePrecisionFloor:
    """The teacher's score above which its detections are right at least ``precision`` of the time,
    measured on the labelled source images the student trains on.

    Detectors do not share a score scale: SSD's softmax is near a probability, FCOS's
    ``sqrt(sigmoid(cls) * sigmoid(centerness))`` of a focal-loss classifier sits far lower for the same
    precision, so one fixed floor keeps most of one detector's true boxes and none of the other's.
    The teacher's detections on the last ``window`` source images are matched to their labels
    (:func:`correct_detections`); P(correct | score) is fitted as a non-decreasing function of the score
    (isotonic regression, Zadrozny and Elkan 2002) and the floor is the lowest score where it reaches
    ``precision`` -- the reading "more likely right than wrong" that a 0.5 floor gives a calibrated
    probability. No score reaching it: ``cap`` (no pseudo-box below the papers' threshold). No
    detection seen yet: ``fallback``. Source images are where the teacher is most accurate, so on the
    target the same floor admits boxes at a lower precision: it corrects the scale, not the shift."""

    def __init__(self, precision: float = 0.5, fallback: float = 0.5, cap: float = 1.0, window: int = 256,
                 min_detections: int = 20):
        self.precision, self.fallback, self.cap = float(precision), float(fallback), float(cap)
        self.window, self.min_detections = int(window), int(min_detections)
        self.recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # (scores, correct) per source image

    def observe(self, detections: list[dict], targets: list[dict]) -> None:
        for d, t in zip(detections, targets):
            self.recent.append((d["scores"].detach().float().cpu(), correct_detections(d, t).float()))
        del self.recent[:max(0, len(self.recent) - self.window)]

    def value(self) -> float:
        scores = torch.cat([s for s, _ in self.recent]) if self.recent else torch.zeros(0)
        if scores.numel() < self.min_detections:
            return self.fallback
        from sklearn.isotonic import IsotonicRegression

        correct = torch.cat([c for _, c in self.recent])
        fit = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0).fit_transform(
            scores.double().numpy(), correct.double().numpy())
        reached = scores[torch.from_numpy(fit) >= self.precision]
        return min(float(reached.min()), self.cap) if reached.numel() else self.cap

    def state_dict(self) -> dict:
        return {"recent_scores": [s for s, _ in self.recent], "recent_correct": [c for _, c in self.recent]}

    def load_state_dict(self, state: dict) -> None:
        self.recent = list(zip(state["recent_scores"], state["recent_correct"]))


@METHODS.register("mean_teacher")
class DetectionMeanTeacher(Method):
    """Mean-teacher self-training for object detection.

    Deng et al., "Unbiased Mean Teacher for Cross-domain Object Detection", CVPR 2021; Li et al.,
    "Cross-Domain Adaptive Teacher for Object Detection", CVPR 2022 (its self-training branch; the
    adversarial branch is ``dann``); Tarvainen and Valpola 2017 for the teacher.

    The teacher T is an exponential moving average of the student S
    (:class:`~edgeda.models.mean_teacher.MeanTeacher`, with its warm-up rate). On each weakly
    augmented target batch (the stream's random scale-crop and flip) T's detections after class-aware
    NMS that score at least their class's threshold become pseudo-boxes B_t; S sees a strong view A(x_t) (colour
    jitter, Gaussian blur, cutout; geometry unchanged, so B_t stays valid):

        L = L_det(S(x_s), y_s) + lambda_unsup * L_cls(S(A(x_t)), B_t)

    L_det is the detector's supervised loss (SSD: matched-anchor cross-entropy with hard-negative
    mining + smooth L1; FCOS: focal + GIoU + centerness); L_cls is only its classification term on the
    pseudo-boxes, anchors matched to no pseudo-box counting as background, with no box regression
    on pseudo-labels (Adaptive Teacher: teacher scores say little about box precision). Burn-in:
    for the first ``burn_in`` share of training only L_det is used; the teacher then starts from the
    student's weights and follows it by EMA. Started from a trained bundle (``--init``, e.g. the
    source-only one) there is no burn-in: that bundle is the papers' burn-in stage (a detector
    trained on the source), and the teacher starts from it at the first iteration.

    Thresholds (``rate_prior``, on by default): the papers' fixed score threshold assumes a teacher
    that scores its true detections above it. On a CPU budget it did not: on digitscenes ->
    handwritten-scenes the burnt-in teacher kept 0.009-0.036 boxes per image at 0.8 where the source
    has several digits per image, so L_cls taught the student that the target is background
    (-3.0 mAP@.5 against source-only). With ``rate_prior`` the threshold of each class is lowered
    until the teacher keeps as many boxes of that class per target image as the source labels hold
    per image (:class:`RateMatchedThresholds`, CBST's class-balanced proportion with the source's
    counts), never above ``threshold`` (a confident teacher keeps the paper's rule) nor below a floor
    under which a box is more likely wrong than right. That floor is read on the teacher's own score
    scale (``calibrate_floor``, on by default; :class:`SourcePrecisionFloor`): the lowest score at which
    the teacher's detections on the labelled source batches are right (same class, IoU >= 0.5) at
    least ``floor_precision`` 0.5 of the time, by isotonic regression of correctness on score, refitted
    each step on the last 256 source images. A fixed 0.5 floor read SSD's softmax as a probability but
    cut FCOS's ``sqrt(sigmoid(cls) * sigmoid(centerness))``, which sits far lower at the same precision:
    on synscenes -> synscenes:photo the FCOS teacher kept 0.002-0.02 boxes per image at 0.5 where the
    source has ~3.5, and the student learnt that target frames are empty (-3.9 mAP@.5 started from
    the source-only bundle); with the calibrated floor (0.33-0.43 there) it kept 0.15-1.4 boxes per
    image and was +0.2 (3 seeds; ``benchmarks/detection.py``). The floor corrects the score scale, not
    the shift: where the teacher is right on the source far more often than on the target it admits
    the teacher's target errors at the source's rate (digit pair, source validation ~75 % against ~10 %
    on the target: floor 0.25-0.30, 1.5-2.4 boxes per image, -5.6 against -3.1 with the fixed floor).
    ``calibrate_floor=0`` keeps ``floor`` fixed; ``rate_prior=0`` is the papers' fixed threshold.

    Defaults: ``threshold`` 0.8 (Adaptive Teacher's, on the detection score), ``lambda_unsup`` 1.0
    (theirs), ``alpha`` 0.99 -- the papers use 0.9996 over tens of thousands of iterations; a CPU
    profile runs a few hundred, and an EMA with a half-life of ~70 updates lets the teacher follow
    the student within that budget -- ``burn_in`` 0.3 of training (their burn-in is a source-only
    stage of a similar share), strong augmentation as DACS's (colour jitter p 0.8 strength 0.2,
    blur p 0.5) plus one cutout hole (p 0.7, 5-20 % of the image).
    """

    summary = "mean-teacher self-training for detectors: EMA teacher pseudo-boxes above a score, strong views (Deng 2021, Li 2022)"
    tasks = ("detection",)
    defaults = {"threshold": 0.8, "rate_prior": True, "floor": 0.5, "calibrate_floor": True, "floor_precision": 0.5,
                "alpha": 0.99, "lambda_unsup": 1.0, "burn_in": 0.3, "jitter_p": 0.8,
                "jitter_strength": 0.2, "blur_p": 0.5, "cutout_p": 0.7, "max_pseudo": 100, "encoder_lr": 1.0}

    def build(self) -> None:
        o = self.opts
        for key in ("threshold", "floor", "floor_precision", "jitter_p", "blur_p", "cutout_p"):
            if not 0.0 <= o[key] <= 1.0:
                raise EdgedaError(f"method {self.name!r} option {key}={o[key]} must lie in [0, 1]")
        if not 0.0 <= o.burn_in < 1.0:
            raise EdgedaError(f"method {self.name!r} option burn_in={o.burn_in} must lie in [0, 1)")
        self.nets["model"] = self.make_model()
        if not callable(getattr(self.model, "postprocess", None)):
            raise EdgedaError(f"method {self.name!r} needs a detector (a network with postprocess and loss)")
        self.optims["main"] = self.make_optimizer(self.param_groups(self.model, o.encoder_lr) + self.extra_param_groups())
        self.mean_teacher = MeanTeacher(self.model, o.alpha)
        self.nets["teacher"] = self.mean_teacher.teacher  # moved, saved and restored with the student
        self.started, self.initialised = False, False
        floor = min(o.floor, o.threshold) if o.rate_prior else o.threshold
        self.thresholds = RateMatchedThresholds(self.task.num_classes, floor, o.threshold)
        # the floor read on the teacher's own score scale (rate_prior only: the fixed rule keeps its threshold)
        self.calibration = (SourcePrecisionFloor(o.floor_precision, fallback=floor, cap=o.threshold)
                            if o.rate_prior and o.calibrate_floor else None)
        self._generator = torch.Generator().manual_seed((torch.initial_seed() * 7919 + 29) % 2**63)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        o = self.opts
        x = strong_augment(x, self.task.mean, self.task.std, self._generator, jitter_p=o.jitter_p,
                           jitter_strength=o.jitter_strength, blur_p=o.blur_p)
        return cutout(x, self._generator, p=o.cutout_p)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o = self.opts
        student = self.model
        with self.autocast():
            loss_src = self.task_loss_of(student(source.x), source.y)
        out = {"loss/src": loss_src.item()}
        self.thresholds.observe_source(source.y)
        if not self.initialised and self.progress < o.burn_in:
            self.update(loss_src, "main")
            return out
        if not self.started:  # the teacher starts from the burnt-in student
            self.mean_teacher.teacher.load_state_dict(student.state_dict())
            self.mean_teacher.updates = 0
            self.started = True
        if self.calibration is not None:
            self.calibration.observe(pseudo_boxes(self.mean_teacher.teacher, source.x, 0.05, o.max_pseudo), source.y)
            self.thresholds.floor = self.calibration.value()
        pseudo = self.thresholds.select(
            pseudo_boxes(self.mean_teacher.teacher, target.x, self.thresholds.floor, o.max_pseudo))
        with self.autocast():
            loss_unsup = student.loss(student(self.strong(target.x)), pseudo)["classification"]
        loss, extra = self.alignment_terms(loss_src + o.lambda_unsup * loss_unsup, source, target)
        self.update(loss, "main")
        self.mean_teacher.update(student)
        n = sum(len(p["labels"]) for p in pseudo)
        out.update({"loss/unsup": loss_unsup.item(), "pseudo/boxes_per_image": n / max(len(pseudo), 1),
                    "teacher/rate": self.mean_teacher.rate(),
                    "pseudo/threshold_mean": float(self.thresholds.thresholds().mean()),
                    "pseudo/floor": self.thresholds.floor, **extra})
        return out

    def extra_param_groups(self) -> list[dict]:
        """Optimizer groups of networks a subclass adds to the student's (built before the optimizer)."""
        return []

    def alignment_terms(self, loss: torch.Tensor, source: Batch, target: Batch) -> tuple[torch.Tensor, dict]:
        """The adaptation-stage loss with any terms a subclass adds, and their logged values."""
        return loss, {}

    def load_init(self, path: str) -> None:
        """``--init``: the loaded detector is the burnt-in one (class doc); no burn-in follows."""
        super().load_init(path)
        self.initialised = True

    def state_dict(self) -> dict:
        return {**super().state_dict(), "teacher_updates": self.mean_teacher.updates, "started": self.started,
                "augment_rng": self._generator.get_state(), "thresholds": self.thresholds.state_dict(),
                **({"floor_calibration": self.calibration.state_dict()} if self.calibration is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mean_teacher.updates = int(state.get("teacher_updates", 0))
        self.started = bool(state.get("started", False))
        self.mean_teacher.teacher.eval()
        if "thresholds" in state:
            self.thresholds.load_state_dict(state["thresholds"])
        if self.calibration is not None and "floor_calibration" in state:
            self.calibration.load_state_dict(state["floor_calibration"])
            self.thresholds.floor = self.calibration.value()
        if "augment_rng" in state:
            self._generator.set_state(state["augment_rng"])
