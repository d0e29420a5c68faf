"""On-device adaptation of detection bundles: statistics, collapse monitoring, selection and the
per-anchor objectives of TENT and CoTTA.

A detector's raw outputs hold per-anchor class logits (``cls_logits`` (B, A, K+1), column 0 SSD's
background, unused by FCOS) and box regressions. Its class distribution per anchor is
(:func:`class_probs`): SSDLite the softmax over the K+1 columns (background included); FCOS the
per-class sigmoids of columns 1..K (independent binary decisions, background = every one low).

**Statistics** (:class:`DetectionStats`, per image over the monitor images): the detections after
the model's own decoding and NMS from score ``DETECTION_SCORE`` (0.3): their mean count per image,
the class histogram of the detections, their mean score; the mean over images of the best class
score over all anchors (``mean_max_score``); the histogram of every anchor's best class score in
100 bins on [0, 1] and, against the shipped model's histogram, the drift of that distribution:
its Wasserstein-1 distance ``sum_b |F_b - F_b^shipped| / 100`` (F the cumulative histograms), the
mean distance the anchors' best scores moved. Unlike a bin-by-bin distance it does not jump when
the many background anchors' scores cross a bin edge by a hair (as BatchNorm re-estimation alone
makes them), and it is in score units, as ``mean_max_score`` is.

**Collapse** (:class:`DetectionMonitor`), against the shipped model's statistics:

* non-finite outputs (scores or boxes) or weights;
* detections vanishing: mean count per image below ``vanish_ratio`` (0.25) x the shipped one;
* detections exploding: mean count above ``max(explode_ratio x shipped, shipped + explode_margin)``
  (4x, +3 per image);
* the class histogram of the detections collapsing onto one class: the top class's share above
  ``max(0.5, min(0.99, 1.5 x shipped top share), shipped top share + 0.01)``, judged once the
  monitor images hold at least 20 detections (fewer make the share noise);
* the anchor-score distribution moving away: ``score_drift`` above ``max_score_drift`` (0.25: the
  anchors' best scores moved by a quarter of the score range on average, e.g. every background
  anchor rising towards the detection threshold while the count above it has not yet moved).

**Selection** (``confidence_minus_drift``): ``mean_max_score - score_drift``, no labels. The first
term rewards confident detections (what entropy minimisation and self-training raise); the second
is the distance from the shipped score distribution, which grows when many anchors change their
scores at once (detections appearing everywhere, or fading everywhere). The shipped state scores
its own ``mean_max_score`` (drift 0), so an adapted state is written only when it gains more
confidence than it moves the score distribution. It is what ``--select info_max`` (the rule's name
for every task) ranks; the manifest's selection record keeps its keys (``info_max_per_check``,
``shipped_info_max``) and names the score in ``score``.

**TENT** (:meth:`DetectionAdaptation.entropy`): the entropy of each anchor's class distribution --
SSD: Shannon entropy of the K+1 softmax; FCOS: the sum over the K classes of the binary entropy
of each sigmoid -- averaged over anchors with weights ``w_a`` = the anchor's foreground confidence
(SSD ``1 - p_background``, FCOS the best class sigmoid), detached:

    L = sum_a w_a H(p_a) / sum_a w_a

Nearly every anchor is background. Unweighted, the objective is dominated by background anchors,
whose cheapest way to lower entropy is a more certain background everywhere, and the minimum
removes the detections (the collapse the monitor calls vanishing). The weights put the gradient
on anchors that may hold an object, where entropy minimisation sharpens the class decision.

**CoTTA** (:meth:`DetectionAdaptation.soft_cross_entropy`): the teacher's class distribution per
anchor is the soft target of the student's -- SSD ``-sum_c y_c log p_c`` over the K+1 columns,
FCOS the binary cross-entropy of each class's sigmoid against the teacher's -- averaged over
anchors (as CoTTA averages over pixels; the targets come from a teacher, not from the student's
own confidence, so background anchors hold the student to the teacher rather than pulling toward
a trivial minimum). Where the shipped model's anchor confidence is below the threshold the target
is averaged over the teacher's pass on the frame and on its mirror image, the mirror's anchors
mapped back by :func:`mirror_permutation`: that needs an anchor layout symmetric about the
vertical axis (every anchor's mirrored box is another anchor's box). SSDLite's default boxes are
centred in their cells and mirror exactly. FCOS's locations sit at ``j x stride`` (torchvision's
convention), so the mirror of column 0 falls off the grid: no one-to-one map exists, and FCOS
bundles take the unaugmented teacher scores as targets (a nearest-location map would pair
locations a stride apart at the border). Only flips: a rescaled frame has another anchor set with
no one-to-one map back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import BundleError, EdgedaError
from ..tasks.spec import TaskSpec
from .tasks import TASK_ADAPTATIONS, TaskAdaptation

DETECTION_SCORE = 0.3  # the monitor counts detections from this score
MAX_DETECTIONS = 1000  # per image, so an explosion is counted rather than cut at the usual 100
SCORE_BINS = 100
MIN_DETECTIONS_FOR_CLASSES = 20
# how each detector family turns its class logits into per-anchor class probabilities
CLASS_SCORES = {"ssdlite": "softmax", "fcos": "sigmoid"}


def score_kind(model) -> str:
    kind = CLASS_SCORES.get(getattr(model, "arch", ""))
    if kind is None:
        name = getattr(model, "arch", type(model).__name__)
        raise EdgedaError(f"no per-anchor class scores known for detector {name!r}")
    return kind


def class_probs(model, outputs: dict) -> torch.Tensor:
    """Per-anchor class probabilities: SSD softmax over the K+1 columns (B, A, K+1); FCOS sigmoids
    of the K class columns (B, A, K)."""
    z = outputs["cls_logits"].float()
    return z.softmax(-1) if score_kind(model) == "softmax" else torch.sigmoid(z[..., 1:])


def foreground(model, probs: torch.Tensor) -> torch.Tensor:
    """(B, A) foreground confidence: SSD ``1 - p_background``, FCOS the best class sigmoid."""
    return 1.0 - probs[..., 0] if score_kind(model) == "softmax" else probs.max(-1).values


def anchor_entropy(model, outputs: dict) -> torch.Tensor:
    """(B, A) entropy of each anchor's class distribution (SSD Shannon over K+1, FCOS summed binary)."""
    z = outputs["cls_logits"].float()
    if score_kind(model) == "softmax":
        logp = z.log_softmax(-1)
        return -(logp.exp() * logp).sum(-1)
    z = z[..., 1:]
    p = torch.sigmoid(z)
    return (F.binary_cross_entropy_with_logits(z, p, reduction="none")).sum(-1)


@torch.no_grad()
def mirror_permutation(anchors: torch.Tensor, width: float, decimals: int = 3) -> torch.Tensor | None:
    """Index ``perm`` (A,) with ``anchors[perm[a]]`` the horizontal mirror of ``anchors[a]`` in an
    image ``width`` wide, or None when some anchor's mirror is no anchor (an asymmetric layout).
    Scores of a mirrored frame ``s_m`` map back to the frame as ``s_m[:, perm]``."""
    a = anchors.detach().double().cpu()
    mirrored = torch.stack([width - a[:, 2], a[:, 1], width - a[:, 0], a[:, 3]], 1)
    scale = 10.0 ** decimals
    index = {tuple(r): i for i, r in enumerate(torch.round(a * scale).long().tolist())}
    if len(index) != len(a):  # duplicate anchors: no unique map
        return None
    perm = [index.get(tuple(r)) for r in torch.round(mirrored * scale).long().tolist()]
    if any(p is None for p in perm):
        return None
    return torch.tensor(perm, dtype=torch.long)


class DetectionStats:
    """Streaming statistics of a detector's outputs on unlabeled images (see the module doc):
    ``update(model, outputs)`` per batch, then :meth:`result` (``reference``: the shipped model's
    ``score_histogram``, for the drift)."""

    def __init__(self, num_classes: int, score_thresh: float = DETECTION_SCORE):
        self.k, self.thresh = num_classes, score_thresh
        self.finite = True
        self.n = 0
        self.counts: list[int] = []
        self.hist = torch.zeros(num_classes, dtype=torch.float64)
        self.score_hist = torch.zeros(SCORE_BINS, dtype=torch.float64)
        self.det_score_sum = self.max_score_sum = 0.0

    @torch.no_grad()
    def update(self, model, outputs: dict) -> torch.Tensor:
        """Adds a batch; returns its detection counts per image (B,)."""
        b = len(outputs["cls_logits"])
        self.n += b
        if not self.finite or not all(bool(torch.isfinite(t).all()) for t in outputs.values()):
            self.finite = False
            return torch.zeros(b, dtype=torch.long)
        boxes, scores = model.decode(outputs)
        if not (bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores).all())):
            self.finite = False
            return torch.zeros(b, dtype=torch.long)
        best = scores.float().max(-1).values  # (B, A)
        self.max_score_sum += float(best.max(1).values.double().sum())
        self.score_hist += torch.histc(best.double().clamp(0, 1).cpu(), SCORE_BINS, 0.0, 1.0)
        dets = model.postprocess(outputs, score_thresh=self.thresh, max_det=MAX_DETECTIONS,
                                 pre_nms_topk=MAX_DETECTIONS)
        counts = []
        for d in dets:
            counts.append(len(d["scores"]))
            self.hist += torch.bincount(d["labels"].cpu(), minlength=self.k)[: self.k].double()
            self.det_score_sum += float(d["scores"].double().sum())
        self.counts += counts
        return torch.tensor(counts, dtype=torch.long)

    def result(self, reference=None) -> dict:
        if not self.finite:
            return {"finite": False, "n": self.n}
        n = max(self.n, 1)
        total = float(self.hist.sum())
        hist = self.hist / max(total, 1.0)
        # rounded as stored, so the shipped histogram against its stored copy drifts by exactly 0
        sh = torch.round(self.score_hist / max(float(self.score_hist.sum()), 1.0), decimals=6)
        drift = 0.0
        if reference is not None:
            ref = torch.as_tensor(reference, dtype=torch.float64)
            drift = float((sh.cumsum(0) - ref.cumsum(0)).abs().sum()) / SCORE_BINS  # Wasserstein-1 on [0, 1]
        mean_max = self.max_score_sum / n
        counts = torch.tensor(self.counts, dtype=torch.float64)
        return {
            "finite": True,
            "n": int(self.n),
            "score_threshold": self.thresh,
            "detections": int(total),
            "mean_detections": float(counts.mean()) if len(counts) else 0.0,
            "images_without_detections": round(float((counts == 0).double().mean()) if len(counts) else 0.0, 4),
            "class_histogram": [round(float(h), 4) for h in hist],
            "top_class_fraction": float(hist.max()) if total else 0.0,
            "classes_present": int((self.hist > 0).sum()),
            "mean_detection_score": self.det_score_sum / total if total else 0.0,
            "mean_max_score": mean_max,
            "score_histogram": [float(v) for v in sh],
            "score_drift": drift,
            # the label-free selection of the written state (module doc)
            "confidence_minus_drift": mean_max - drift,
        }


@dataclass
class DetectionCriteria:
    vanish_ratio: float = 0.25
    explode_ratio: float = 4.0
    explode_margin: float = 3.0
    max_top_fraction: float = 0.5
    min_detections_for_classes: int = MIN_DETECTIONS_FOR_CLASSES
    max_score_drift: float = 0.25


class DetectionMonitor:
    """Judges :class:`DetectionStats` results against the shipped model's (``baseline``)."""

    def __init__(self, baseline: dict, num_classes: int, criteria: DetectionCriteria | None = None):
        if not baseline.get("finite", False):
            raise BundleError("the shipped model already produces NaN/inf on the target images; nothing to adapt from")
        self.baseline, self.k = baseline, num_classes
        self.c = c = criteria or DetectionCriteria()
        base = baseline["mean_detections"]
        self.vanish_floor = c.vanish_ratio * base
        self.explode_limit = max(c.explode_ratio * base, base + c.explode_margin)
        base_top = baseline["top_class_fraction"] if baseline["detections"] >= c.min_detections_for_classes else 0.0
        self.top_limit = max(c.max_top_fraction, min(0.99, 1.5 * base_top), base_top + 0.01)

    def check(self, stats: dict, model: torch.nn.Module | None = None) -> str | None:
        """None when healthy, else one sentence saying what collapsed."""
        if not stats.get("finite", False):
            return "the model's outputs became NaN/inf"
        if model is not None and not all(torch.isfinite(t).all() for t in model.state_dict().values()
                                         if t.is_floating_point()):
            return "the model's weights became NaN/inf"
        mean, base = stats["mean_detections"], self.baseline["mean_detections"]
        if mean < self.vanish_floor:
            return (f"detections vanished ({mean:.2f} per image above score {stats['score_threshold']:g}, the shipped "
                    f"model {base:.2f}; floor {self.vanish_floor:.2f})")
        if mean > self.explode_limit:
            return (f"detections exploded ({mean:.1f} per image above score {stats['score_threshold']:g}, the shipped "
                    f"model {base:.1f}; limit {self.explode_limit:.1f})")
        if (self.k > 1 and stats["detections"] >= self.c.min_detections_for_classes
                and stats["top_class_fraction"] > self.top_limit):
            top = max(range(self.k), key=lambda i: stats["class_histogram"][i])
            return (f"detections collapsed onto one class ({stats['top_class_fraction']:.0%} of them class {top}, "
                    f"limit {self.top_limit:.0%})")
        if stats.get("score_drift", 0.0) > self.c.max_score_drift:
            return (f"the anchor-score distribution moved away from the shipped model's (drift "
                    f"{stats['score_drift']:.2f} > limit {self.c.max_score_drift:.2f})")
        return None

    def limits(self) -> dict:
        return {"min_mean_detections": round(self.vanish_floor, 4), "max_mean_detections": round(self.explode_limit, 4),
                "max_top_class_fraction": round(self.top_limit, 4), "max_score_drift": self.c.max_score_drift,
                "score_threshold": DETECTION_SCORE}


@TASK_ADAPTATIONS.register("detection")
class DetectionAdaptation(TaskAdaptation):
    """Detection bundles (module doc): frames are never cropped (anchors belong to the full frame),
    monitoring counts detections, selection is ``confidence_minus_drift``."""

    score_name = "confidence_minus_drift"
    crops = False
    balances = False  # anchors are mostly background by design; their loss stays the per-anchor mean

    def accumulate(self, target, model, reference_pred, spec: TaskSpec) -> DetectionStats:
        acc = DetectionStats(spec.num_classes)
        for _, out in target.predictions(model):
            acc.update(model, out)
        return acc

    def stats(self, target, model, reference_pred, spec, prior=None) -> dict:
        return self.accumulate(target, model, reference_pred, spec).result(prior)

    def shipped_stats(self, target, model, spec):
        """(statistics, the shipped model's detection count per image (N,))."""
        acc, counts = DetectionStats(spec.num_classes), []
        for _, out in target.predictions(model):
            counts.append(acc.update(model, out))
        res = acc.result()
        return acc.result(res.get("score_histogram")), torch.cat(counts)

    def prior(self, shipped, spec):
        """The shipped model's anchor-score histogram (what ``score_drift`` is measured against)."""
        return shipped.get("score_histogram")

    def monitor(self, baseline, spec):
        return DetectionMonitor(baseline, spec.num_classes)

    def selection_score(self, stats):
        return stats["confidence_minus_drift"]

    def per(self, spec):
        return "image"

    def selection_record(self):
        return {"score": self.score_name}

    # -- objectives ------------------------------------------------------------------------------
    def entropy(self, model, outputs, balanced=False):
        """Foreground-weighted mean anchor entropy (module doc)."""
        h = anchor_entropy(model, outputs)
        with torch.no_grad():
            w = foreground(model, class_probs(model, outputs))
        return (w * h).sum() / w.sum().clamp_min(1e-8)

    def probs(self, model, outputs):
        return class_probs(model, outputs)

    def confidence(self, model, outputs):
        """(B, A): SSD the top softmax probability (background included: a sure background anchor is
        sure); FCOS the surer of 'the best class' and 'no class'."""
        p = class_probs(model, outputs)
        if score_kind(model) == "softmax":
            return p.max(-1).values
        top = p.max(-1).values
        return torch.maximum(top, 1.0 - top)

    def blend(self, unsure, averaged, standard):
        return torch.where(unsure.unsqueeze(-1), averaged, standard)

    def soft_cross_entropy(self, model, outputs, targets, balanced=False):
        z = outputs["cls_logits"].float()
        if score_kind(model) == "softmax":
            return -(targets * z.log_softmax(-1)).sum(-1).mean()
        return F.binary_cross_entropy_with_logits(z[..., 1:], targets, reduction="none").sum(-1).mean()

    def mirrors(self, training):
        """Where the bundle trained with random flips (``augment_hflip`` in its training config; on
        when not recorded): a detector trained without them need not score a mirrored frame alike."""
        return bool((training.get("config") or {}).get("augment_hflip", True))

    @torch.no_grad()
    def averaged_probs(self, method, x):
        """The teacher's class probabilities averaged over the frame and its mirror (anchors mapped
        back), or the frame's alone where flips are off or the anchor layout is not symmetric."""
        t = method.teacher.eval()
        p = class_probs(t, t(x))
        perm = self._perm(method, t, x) if method.flip else None
        if perm is None:
            return p
        pm = class_probs(t, t(x.flip(-1)))
        return 0.5 * (p + pm[:, perm.to(pm.device)])

    @staticmethod
    def _perm(method, model, x):
        """The mirror permutation of the anchors at x's size, kept on the method (computed once)."""
        size = tuple(x.shape[-2:])
        cache = getattr(method, "mirror_anchors", None)
        if cache is None or cache[0] != size:
            cache = (size, mirror_permutation(model.anchors(size), float(size[1])))
            method.mirror_anchors = cache
        return cache[1]

    def summary_lines(self, before: dict, after: dict) -> list[str]:
        return [f"  detections/image {before['mean_detections']:.2f} -> {after['mean_detections']:.2f} "
                f"(score >= {before['score_threshold']:g})",
                f"  mean max score   {before['mean_max_score']:.3f} -> {after['mean_max_score']:.3f}; "
                f"score drift {after['score_drift']:.3f}"]
