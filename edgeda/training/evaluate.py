"""Evaluation of a task model on a domain, streamed batch by batch.

:func:`evaluate_model` runs the model over a domain once and returns, as asked: the task's
scores against the domain's labels (accumulated in a streaming metric, so memory does not grow
with the number of images), the rows of logits that label-free validators score, and (for
classifiers) the features. In-memory classification domains are sliced directly; dense domains
go through a ``DataLoader`` (worker processes for folders on disk).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data.domain import Domain
from ..data.transforms import to_float_nchw
from ..task import TaskSpec
from ..tasks import task_of
from ..tasks.metrics import classification_scores
from ..utils import save_figure


@dataclass
class EvalOutput:
    scores: dict | None = None
    rows: torch.Tensor | None = None  # (M, K) logits for label-free validators
    features: torch.Tensor | None = None  # (N, d) classifier features


def eval_batches(domain, spec: TaskSpec, device, batch_size: int, *, labels: bool, workers: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, np.ndarray]]:
    """(normalised images on ``device``, labels on CPU or None, uint8 NHWC images) in domain order."""
    if isinstance(domain, Domain):
        for i in range(0, len(domain), batch_size):
            raw = np.ascontiguousarray(domain.images[i:i + batch_size])
            xb = torch.from_numpy(raw).to(device)
            y = torch.from_numpy(domain.labels[i:i + batch_size]) if labels and domain.labels is not None else None
            yield to_float_nchw(xb, spec.mean, spec.std), y, raw
        return
    from torch.utils.data import DataLoader

    from ..data.dense_transforms import DenseDataset
    from .dense_stream import default_workers

    ds = DenseDataset(domain, spec.image_size, spec.channels, train=False, labels=labels)
    workers = default_workers(domain) if workers is None else workers
    key = task_of(spec).label_key
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
    for item in loader:
        keep = item["replaced"] == 0  # an undecodable sample stands in as a copy of the next one: not scored twice
        if not bool(keep.any()):
            continue
        raw = item["image"][keep]
        y = item[key][keep] if labels and key in item else None
        yield to_float_nchw(raw.to(device), spec.mean, spec.std), y, raw.numpy()


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, domain, spec: TaskSpec, device="cpu", *, labels: bool = True,
                   rows: bool = False, features: bool = False, batch_size: int | None = None, seed: int = 0,
                   rows_per_image: int = 64) -> EvalOutput:
    """One pass of ``model`` (eval mode; its mode is restored) over ``domain``.

    ``labels``: score against the domain's labels; ``rows``: collect the validators' logit rows
    (a fixed pixel sample per image for dense tasks, seeded by ``seed``); ``features``: collect the
    features of a classifier (``features_and_logits``).
    """
    task = task_of(spec)
    batch_size = batch_size or (256 if not task.dense else 16)
    was_training = model.training
    model.eval()
    meter = task.meter(spec) if labels else None
    gen = torch.Generator().manual_seed(seed)
    row_chunks, feat_chunks = [], []
    try:
        for x, y, _ in eval_batches(domain, spec, device, batch_size, labels=labels):
            if features:
                f, out = model.features_and_logits(x)
                feat_chunks.append(f.float().cpu())
            else:
                out = model(x)
            out = out.float()
            if meter is not None and y is not None:
                task.update(meter, out.cpu(), y)
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
    return res


def evaluate_classifier(model: torch.nn.Module, domain, task: TaskSpec, device="cpu") -> dict:
    """The task's scores of ``model`` on a labeled ``domain`` (accuracy for classifiers, mIoU or
    depth errors for dense models)."""
    return evaluate_model(model, domain, task, device).scores


def predict_features(model: torch.nn.Module, images: np.ndarray, task: TaskSpec, device="cpu", batch_size: int = 256):
    """(features (N, d), logits (N, K)) of a classifier on in-memory images, on CPU, in eval mode."""
    dom = Domain("images", images)
    out = evaluate_model(model, dom, task, device, labels=False, rows=True, features=True, batch_size=batch_size)
    return out.features, out.rows


def classification_metrics(pred: np.ndarray, labels: np.ndarray, num_classes: int, classes: list[str] | None = None) -> dict:
    conf = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(conf, (labels, pred), 1)
    return classification_scores(conf, classes)


def plot_confusion(metrics: dict, classes: list[str], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(metrics["confusion"], dtype=np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]) if conf[i, j] < 1e5 else f"{conf[i, j]:.0e}", ha="center",
                            va="center", fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if not title:
        title = (f"accuracy {metrics['accuracy']:.1%} (n={metrics['n']})" if "accuracy" in metrics
                 else f"mIoU {metrics['miou']:.1%}")
    ax.set_title(title)
    return save_figure(fig, path)
