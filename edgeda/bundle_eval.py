"""Evaluate a bundle on a labeled domain: the task's scores, a confusion matrix PNG and sample panels."""
from __future__ import annotations

from pathlib import Path

from .bundle import Bundle
from .errors import EdgedaError
from .tasks import load_for_task, task_of
from .training.model_eval import eval_batches, evaluate_model, plot_confusion
from .utils import choose_device


def evaluate_bundle(bundle: str | Path | Bundle, data: str | None = None, *, confusion_png: str | Path | None = None,
                    samples_png: str | Path | None = None, device: str = "auto") -> dict:
    """The task's scores of the bundle's task network on ``data`` (a labeled domain spec):
    accuracy, per-class accuracy and confusion for classifiers; mIoU, per-class IoU, pixel accuracy
    and confusion for segmentation; abs rel, sq rel, RMSE, RMSE log and delta < 1.25^k for depth.
    ``samples_png`` (dense tasks): image | truth | prediction | error for the first images."""
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    spec = data or b.target_test
    if spec is None:
        raise EdgedaError("no --data given and the bundle names no target test domain")
    task = b.task
    dom = load_for_task(spec, task, labeled=True)
    dev = choose_device(device)
    model = b.module(b.primary, str(dev))
    not_decoded: list[int] = []
    metrics = evaluate_model(model, dom, task, dev, not_decoded=not_decoded).scores
    interval = task_of(task).interval(metrics)
    if interval is not None:  # how far a small labeled set can be trusted
        metrics["interval"] = interval
    metrics["data"] = spec
    metrics["bundle"] = str(b.path)
    metrics["task"] = task.task
    report = dom.report.to_dict()
    for i in not_decoded:  # files whose headers were fine but whose pixels fail to decode: not scored, said
        try:
            dom.sample(i)
            reason = "could not be decoded when read"
        except ValueError as e:
            reason = f"could not be decoded when read: {e}"
        path = dom.items[i][0] if hasattr(dom, "items") else f"sample {i}"
        report["skipped"] += 1
        report["skipped_files"].append({"path": str(path), "reason": reason})
    report["loaded"] -= len(not_decoded)
    metrics["load_report"] = report
    grid = b.manifest.get("metrics", {}).get("samples_png")
    if grid:  # pixel-level methods: the last training sample grid (source | refined / generated)
        metrics["samples_png"] = grid
    if confusion_png and "confusion" in metrics:
        title = f"{b.path.name} on {spec}: " + (f"{metrics['accuracy']:.1%}" if "accuracy" in metrics
                                                else f"mIoU {metrics['miou']:.1%}")
        metrics["confusion_png"] = str(plot_confusion(metrics, task.classes, confusion_png, title))
    if samples_png and task_of(task).draws_samples:
        metrics["eval_samples_png"] = str(_samples(model, dom, task, dev, samples_png, f"{b.path.name} on {spec}"))
    return metrics


def _samples(model, dom, task, dev, path, title):
    import torch

    x, y, raw = next(eval_batches(dom, task, dev, 6, labels=True))
    with torch.no_grad():
        return task_of(task).sample_panels(task, model, x, y, raw, path, title)
