"""Evaluation of a task model on a domain, streamed batch by batch.

:func:`evaluate_model` runs the model over a domain once and returns, as asked: the task's
scores against the domain's labels (accumulated in a streaming metric, so memory does not grow
with the number of images), the rows of logits that label-free validators score, and (for
classifiers) the features. In-memory classification domains are sliced directly; dense domains
go through a ``DataLoader`` (worker processes for folders on disk).

:func:`augmentation_confusion` runs the model on augmented copies of a fixed sample of target
images (what ``aug_consistency`` scores) and :func:`evaluation_context` fills the validators'
:class:`~edgeda.training.validators.EvalContext` the same way for the trainer, ``--method auto`` and
the benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data.dense_transforms import DenseDataset
from ..data.domain import Domain
from ..data.transforms import to_float_nchw
from ..tasks import task_of
from ..tasks.detection_metrics import as_detections
from ..tasks.spec import TaskSpec
from ..utils import save_figure, to_device
from .validators import EvalContext, label_confusion


@dataclass
class EvalOutput:
    scores: dict | None = None
    rows: torch.Tensor | None = None  # (M, K) logits for label-free validators
    features: torch.Tensor | None = None  # (N, d) classifier features
    detections: list[dict] | None = None  # a detector's decoded detections per image (numpy boxes, scores, labels)


def eval_batches(domain, spec: TaskSpec, device, batch_size: int, *, labels: bool, workers: int | None = None,
                 not_decoded: list | None = None, native: bool = False) -> Iterator[tuple[torch.Tensor, object, np.ndarray]]:
    """(normalised images on ``device``, labels on CPU or None, uint8 NHWC images) in domain order;
    streamed domains are read the task's way (:meth:`edgeda.tasks.Task.eval_batches`). Samples of a
    streamed domain that fail only when decoded are left out; ``not_decoded`` (a list) receives
    their indices. ``native``: a dense domain's labels come as a list of per-image tensors at their
    stored size (what :func:`evaluate_model` scores), not resized to the model's input."""
    if isinstance(domain, Domain):
        for i in range(0, len(domain), batch_size):
            raw = np.ascontiguousarray(domain.images[i:i + batch_size])
            xb = torch.from_numpy(raw).to(device)
            y = torch.from_numpy(domain.labels[i:i + batch_size]) if labels and domain.labels is not None else None
            yield to_float_nchw(xb, spec.mean, spec.std), y, raw
        return
    yield from task_of(spec).eval_batches(domain, spec, device, batch_size, labels=labels, workers=workers,
                                          not_decoded=not_decoded, native=native)


def dense_eval_batches(domain, spec: TaskSpec, device, batch_size: int, *, labels: bool, workers: int | None = None,
                       key: str = "mask", not_decoded: list | None = None,
                       native: bool = False) -> Iterator[tuple[torch.Tensor, object, np.ndarray]]:
    """:func:`eval_batches` of a dense domain: a ``DataLoader`` over its un-augmented samples, the
    labels under ``key`` (``mask`` or ``depth``; with ``native``, a list of them at their stored sizes)."""
    from torch.utils.data import DataLoader

    from ..data.dense_transforms import collate_native
    from .dense_stream import default_workers

    ds = DenseDataset(domain, spec.image_size, spec.channels, train=False, labels=labels, native=native)
    workers = default_workers(domain) if workers is None else workers
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_native if native else None,
                        generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
    key = f"native_{key}" if native else key
    pos = 0
    for item in loader:
        keep = item["replaced"] == 0  # an undecodable sample stands in as a copy of the next one: not scored twice
        if not_decoded is not None:
            not_decoded.extend(pos + int(j) for j in torch.nonzero(~keep).flatten())
        pos += len(keep)
        if not bool(keep.any()):
            continue
        raw = item["image"][keep]
        y = None
        if labels and key in item:
            y = [v for v, k in zip(item[key], keep) if k] if native else item[key][keep]
        yield to_float_nchw(raw.to(device), spec.mean, spec.std), y, raw.numpy()


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, domain, spec: TaskSpec, device="cpu", *, labels: bool = True,
                   rows: bool = False, features: bool = False, batch_size: int | None = None, seed: int = 0,
                   rows_per_image: int = 64, not_decoded: list | None = None, detections: bool = False,
                   max_images: int | None = None) -> EvalOutput:
    """One pass of ``model`` (eval mode; its mode is restored) over ``domain``.

    ``labels``: score against the domain's labels -- per-pixel labels at their stored size, the output
    resized onto them (:meth:`edgeda.tasks.Task.at_size`), as dense benchmarks score at the labels'
    resolution; ``rows``: collect the validators' logit rows
    (a fixed pixel sample per image for dense tasks, seeded by ``seed``); ``features``: collect the
    features of a classifier (``features_and_logits``); ``detections``: keep a detector's decoded
    detections per image; ``max_images``: stop after the first that many images of the domain.
    """
    task = task_of(spec)
    batch_size = batch_size or task.eval_batch_size
    was_training = model.training
    model.eval()
    meter = task.meter(spec) if labels else None
    gen = torch.Generator().manual_seed(seed)
    row_chunks, feat_chunks, dets = [], [], []
    seen = 0
    try:
        for x, y, _ in eval_batches(domain, spec, device, batch_size, labels=labels, not_decoded=not_decoded,
                                    native=labels):
            if max_images is not None:
                if seen >= max_images:
                    break
                x = x[:max_images - seen]
                y = y[:max_images - seen] if y is not None else None
                seen += len(x)
            if features:
                f, out = model.features_and_logits(x)
                feat_chunks.append(f.float().cpu())
                out = out.float()
            else:
                out = task.infer(model, x)
            if meter is not None and y is not None:
                _score(task, meter, to_device(out, "cpu"), y)
            if detections:
                dets.extend(as_detections(d) for d in task.decide(to_device(out, "cpu")))
            if rows:
                r = task.validator_rows(out, gen, rows_per_image)
                if r is not None:
                    row_chunks.append(r.cpu())
    finally:
        model.train(was_training)
    res = EvalOutput()
    if meter is not None:
        res.scores = task.scores(meter, spec)
    if rows:
        res.rows = torch.cat(row_chunks) if row_chunks else torch.zeros(0, max(spec.num_classes, 1))
    if features:
        res.features = torch.cat(feat_chunks) if feat_chunks else torch.zeros(0, 0)
    if detections:
        res.detections = dets
    return res


def _score(task, meter, out, y) -> None:
    """Add a batch to ``meter``; ``y`` a list of per-pixel labels at their stored sizes: each image's output
    brought to its labels' size first (one update where every size is the output's)."""
    if not (isinstance(y, list) and all(isinstance(t, torch.Tensor) for t in y)):  # also a detector's records
        task.update(meter, out, y)
    elif all(tuple(t.shape[-2:]) == tuple(out.shape[-2:]) for t in y):
        task.update(meter, out, torch.stack(y))
    else:
        for j, t in enumerate(y):
            task.update(meter, task.at_size(out[j:j + 1], tuple(t.shape[-2:])), t[None])


AUGMENTATIONS = ("flip", "rescale", "colour")
DETECTION_VALIDATOR_IMAGES = 256  # target images whose detections the box validators compare (in domain order)


def _augment_params(n: int, gen: torch.Generator, crop: float) -> dict:
    """Per image: the crop box (fractions) of the rescaled view and the colour factors."""
    u = torch.rand(n, 5, generator=gen, dtype=torch.float64)
    return {"crop_y": u[:, 0] * (1 - crop), "crop_x": u[:, 1] * (1 - crop),
            "brightness": 0.75 + 0.5 * u[:, 2], "contrast": 0.75 + 0.5 * u[:, 3], "saturation": 0.75 + 0.5 * u[:, 4]}


def _colour_jitter(raw: np.ndarray, prm: dict, spec: TaskSpec, device) -> torch.Tensor:
    """Brightness, contrast and saturation factors per image on the [0, 1] image, then the model's normalisation."""
    x = torch.from_numpy(np.ascontiguousarray(raw)).to(device).permute(0, 3, 1, 2).float() / 255.0
    view = (-1, 1, 1, 1)
    gray = x.mean(1, keepdim=True)
    x = x * prm["brightness"].float().to(device).view(view)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * prm["contrast"].float().to(device).view(view) + mean
    if x.shape[1] == 3:
        gray = x.mean(1, keepdim=True)
        x = gray + (x - gray) * prm["saturation"].float().to(device).view(view)
    x = x.clamp(0, 1)
    m = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    return (x - m) / s


def _crop_boxes(prm: dict, crop: float, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) per image in an (h, w) frame."""
    ch, cw = max(1, int(round(crop * h))), max(1, int(round(crop * w)))
    return [(int(round(float(y) * h)), int(round(float(x) * w)), ch, cw) for y, x in zip(prm["crop_y"], prm["crop_x"])]


@torch.no_grad()
def augmentation_confusion(model: torch.nn.Module, domain, spec: TaskSpec, device="cpu", *, seed: int = 0,
                           n_images: int | None = None, augmentations=AUGMENTATIONS, crop: float = 0.8,
                           batch_size: int | None = None) -> dict[str, torch.Tensor] | None:
    """Per augmentation, the (K, K) confusion between the model's classes on a fixed sample of
    ``domain`` (rows) and its classes on an augmented copy mapped back to the original frame (columns).

    The sample (``n_images``: 32 for dense tasks, 256 for classification) and every augmentation's
    parameters are drawn from ``seed`` alone, so every model evaluated with the same seed sees the same
    copies. ``flip``: horizontal flip, flipped back; ``rescale``: a random crop of ``crop`` of each side
    resized to the input size (a zoom), its prediction resized back onto the crop's region (pixels
    outside it are not compared); ``colour``: brightness, contrast and saturation factors in
    [0.75, 1.25], same frame. Classification compares the image labels. Cost: (1 + augmentations)
    forward passes over the sample. None for tasks whose outputs are not class logits (depth)."""
    import torch.nn.functional as F

    task = task_of(spec)
    if not spec.num_classes or not task.class_logits or domain is None or len(domain) == 0:
        return None
    n_images = n_images or task.consistency_images
    rng = np.random.default_rng([seed, 20251])
    idx = np.sort(rng.choice(len(domain), min(n_images, len(domain)), replace=False))
    sample = domain.subset(idx)
    gen = torch.Generator().manual_seed(seed)
    k = spec.num_classes
    confs = {a: torch.zeros(k, k, dtype=torch.float64) for a in augmentations}
    was_training = model.training
    model.eval()
    try:
        for x, _, raw in eval_batches(sample, spec, device, batch_size or task.eval_batch_size, labels=False, workers=0):
            prm = _augment_params(len(x), gen, crop)
            base = model(x).float()
            lab = base.argmax(1)
            for a in augmentations:
                if a == "flip":
                    out = model(x.flip(-1)).float()
                    pairs = [(lab, task.unflip(out).argmax(1))]
                elif a == "rescale":
                    h, w = x.shape[-2:]
                    views = [F.interpolate(x[i:i + 1, :, t:t + ch, l:l + cw], size=(h, w), mode="bilinear", align_corners=False)
                             for i, (t, l, ch, cw) in enumerate(_crop_boxes(prm, crop, h, w))]
                    out = model(torch.cat(views)).float()
                    if task.spatial_output:
                        ho, wo = base.shape[-2:]
                        pairs = []
                        for i, (t, l, ch, cw) in enumerate(_crop_boxes(prm, crop, ho, wo)):
                            back = F.interpolate(out[i:i + 1], size=(ch, cw), mode="bilinear", align_corners=False)
                            pairs.append((lab[i, t:t + ch, l:l + cw], back[0].argmax(0)))
                    else:
                        pairs = [(lab, out.argmax(1))]
                elif a == "colour":
                    pairs = [(lab, model(_colour_jitter(raw, prm, spec, x.device)).float().argmax(1))]
                else:
                    raise ValueError(f"unknown augmentation {a!r}; known: {', '.join(AUGMENTATIONS)}")
                for r, c in pairs:
                    confs[a] += label_confusion(r.cpu(), c.cpu(), k)
    finally:
        model.train(was_training)
    return confs


def consistency_augmentations(mirror_invariant: bool, hflip: bool = True) -> tuple[str, ...]:
    """The augmentations ``aug_consistency`` checks: those training itself treats as label-preserving.
    A zoom and a colour change always; a horizontal flip only for tasks whose labels mirror with the
    image (:attr:`~edgeda.tasks.base.Task.mirror_invariant`: the dense ones) trained with flips
    (``augment_hflip``, off for mirror-sensitive content such as digits and text), never for
    classification (a mirrored digit or sign is another class, or none)."""
    return (("flip",) if mirror_invariant and hflip else ()) + ("rescale", "colour")


def label_marginal(scores: dict | None) -> torch.Tensor | None:
    """Class frequencies (K,) of the labels behind a task's scores (the row sums of their confusion
    matrix): on source validation, the source label marginal ``info_max_prior`` measures against."""
    conf = (scores or {}).get("confusion")
    if conf is None:
        return None
    counts = torch.as_tensor(conf, dtype=torch.float64).sum(1)
    return counts / counts.sum() if float(counts.sum()) > 0 else None


def evaluation_context(model: torch.nn.Module, domains, spec: TaskSpec, device="cpu", *, seed: int = 0,
                       reference_rows: torch.Tensor | None = None, augment: bool = True, hflip: bool = True,
                       detections: bool = False, reference_detections: list[dict] | None = None
                       ) -> tuple[EvalContext, dict, EvalOutput | None]:
    """(the validators' context, the source-validation scores, the target pass) of ``model`` on a run's
    ``domains``: source validation (with per-image rows and features for classification), the target
    rows (a fixed pixel sample per image for dense tasks, from ``seed``), the source label marginal,
    the augmented passes of :func:`augmentation_confusion` (``augment``; flips only where ``hflip`` and
:func:`consistency_augmentations` allow) and ``reference_rows`` (a
    source-only model's target rows, same seed). A detector's target pass runs only with ``detections``
    (the first :data:`DETECTION_VALIDATOR_IMAGES` target images, decoded, with the reference's
    ``reference_detections`` on the same images): what ``--method auto`` compares detectors on; a
    training run's evaluations skip it. What the trainer records at every evaluation and what
    ``--method auto`` and the benchmarks score candidates with."""
    t = task_of(spec)
    per_image = domains.target is not None and t.per_image_rows and domains.source_val.labels is not None
    sv = evaluate_model(model, domains.source_val, spec, device, rows=per_image, features=per_image)
    ctx = EvalContext(t.selection_score(sv.scores), dense=not t.per_image_rows, source_prior=label_marginal(sv.scores))
    if per_image:  # labeled source rows for DEV and reverse validation
        ctx.source_logits, ctx.source_features = sv.rows, sv.features
        ctx.source_labels = torch.as_tensor(np.asarray(domains.source_val.labels), dtype=torch.long)
    out = None
    if domains.target is not None and detections and t.output == "detections":
        out = evaluate_model(model, domains.target, spec, device, labels=False, detections=True,
                             max_images=DETECTION_VALIDATOR_IMAGES)
        ctx.target_detections, ctx.reference_detections = out.detections, reference_detections
        ctx.classes = list(spec.classes)
    elif domains.target is not None and not t.class_logits:
        # outputs that are not class logits give the validators no rows (nor features): no target pass
        out = EvalOutput(rows=torch.zeros(0, max(spec.num_classes, 1)))
        ctx.target_logits, ctx.target_features, ctx.reference_logits = out.rows, None, reference_rows
    elif domains.target is not None:
        out = evaluate_model(model, domains.target, spec, device, labels=False, rows=True, features=t.per_image_rows, seed=seed)
        ctx.target_logits, ctx.target_features = out.rows, out.features
        ctx.reference_logits = reference_rows
        if augment:
            ctx.augmented_confusion = augmentation_confusion(model, domains.target, spec, device, seed=seed,
                                                             augmentations=consistency_augmentations(t.mirror_invariant, hflip))
    return ctx, sv.scores, out


def evaluate_classifier(model: torch.nn.Module, domain, task: TaskSpec, device="cpu") -> dict:
    """The task's scores of ``model`` on a labeled ``domain`` (accuracy for classifiers, mIoU or
    depth errors for dense models)."""
    return evaluate_model(model, domain, task, device).scores


def format_count(n: float) -> str:
    """A count as the cells of a confusion matrix show it, one format at every size: 950, 44.3k, 1.2M."""
    n = float(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.0f}{unit}" if v >= 100 else f"{v:.1f}{unit}"
    return f"{n:.0f}"


def confusion_figure(metrics: dict, classes: list[str], title: str = ""):
    """The confusion matrix (rows: truth, columns: prediction, shaded by the row's share, cells with
    counts in one format), sized so that class names, counts and the title fit; returned unsaved."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(metrics["confusion"], dtype=np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    k = len(classes)
    longest = max((len(str(c)) for c in classes), default=1)
    label_in = 0.3 + 0.065 * longest  # room for the class names at 8 pt
    cell = 0.42
    side = max(2.2, cell * k)
    width, height = side + label_in + 1.0, side + label_in + 1.2
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        size = 7 if k <= 12 else 5.5
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(j, i, format_count(conf[i, j]), ha="center", va="center", fontsize=size,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    if not title:
        title = (f"accuracy {metrics['accuracy']:.1%} (n={metrics['n']})" if "accuracy" in metrics
                 else f"mIoU {metrics['miou']:.1%}")
    ax.set_title("\n".join(textwrap.wrap(title, max(20, int(width * 12)))), fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(metrics: dict, classes: list[str], path: str | Path, title: str = "") -> Path:
    return save_figure(confusion_figure(metrics, classes, title), path)
