"""Evaluate a bundle on a labeled domain: accuracy, per-class accuracy, confusion matrix PNG."""
from __future__ import annotations

from pathlib import Path

from .bundle import Bundle
from .data import load_domain
from .train.evaluate import evaluate_classifier, plot_confusion
from .utils import choose_device


def default_eval_spec(bundle: Bundle) -> str | None:
    """The bundle's built-in target test split (e.g. ``handwritten:test``), if it has one."""
    test = bundle.manifest.get("training", {}).get("domains", {}).get("target_test")
    return test


def evaluate_bundle(bundle: str | Path | Bundle, data: str | None = None, *, confusion_png: str | Path | None = None,
                    device: str = "auto") -> dict:
    """Accuracy of the bundle's classifier on ``data`` (a labeled domain spec)."""
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    spec = data or default_eval_spec(b)
    if spec is None:
        from .errors import EdgedaError

        raise EdgedaError("no --data given and the bundle names no target test domain")
    task = b.task
    dom = load_domain(spec, labeled=True, size=task.image_size, channels=task.channels)
    dom.require_usable(labeled=True, num_classes=task.num_classes)
    dev = choose_device(device)
    metrics = evaluate_classifier(b.module("classifier", str(dev)), dom, task, dev)
    metrics["data"] = spec
    metrics["bundle"] = str(b.path)
    metrics["load_report"] = dom.report.to_dict()
    grid = b.manifest.get("metrics", {}).get("samples_png")
    if grid:  # pixel-level methods: the last training sample grid (source | refined / generated)
        metrics["samples_png"] = grid
    if confusion_png:
        metrics["confusion_png"] = str(plot_confusion(metrics, task.classes, confusion_png,
                                                      f"{b.path.name} on {spec}: {metrics['accuracy']:.1%}"))
    return metrics
