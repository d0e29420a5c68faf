"""Evaluation of a classifier on a labeled domain: accuracy, per-class accuracy, confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.domain import Domain
from ..data.transforms import to_float_nchw
from ..task import TaskSpec
from ..utils import save_figure


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, task: TaskSpec, device="cpu", batch_size: int = 256) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        out.append(model(to_float_nchw(xb, task.mean, task.std)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, task.num_classes)


@torch.no_grad()
def predict_features(model: torch.nn.Module, images: np.ndarray, task: TaskSpec, device="cpu", batch_size: int = 256):
    """(features (N, d), logits (N, K)) on CPU, in eval mode, for a classifier with ``forward_features``."""
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        f, z = model.forward_features(to_float_nchw(xb, task.mean, task.std))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, task.num_classes)
    return torch.cat(feats), torch.cat(logits)


def classification_metrics(pred: np.ndarray, labels: np.ndarray, num_classes: int, classes: list[str] | None = None) -> dict:
    conf = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(conf, (labels, pred), 1)
    support = conf.sum(1)
    per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1), np.nan)
    names = classes or [str(i) for i in range(num_classes)]
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "n": int(len(labels)),
        "per_class": {names[i]: (None if np.isnan(a) else float(a)) for i, a in enumerate(per_class)},
        "confusion": conf.tolist(),
    }


def evaluate_classifier(model: torch.nn.Module, domain: Domain, task: TaskSpec, device="cpu") -> dict:
    if task.task != "classification":
        raise NotImplementedError(f"evaluation for task {task.task!r} is not implemented yet")
    logits = predict_logits(model, domain.images, task, device)
    return classification_metrics(logits.argmax(1).numpy(), domain.labels, task.num_classes, task.classes)


def plot_confusion(metrics: dict, classes: list[str], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(metrics["confusion"], dtype=np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {metrics['accuracy']:.1%} (n={metrics['n']})")
    return save_figure(fig, path)
