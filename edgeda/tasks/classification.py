"""Image classification: one label per image."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from ..data.domain import Domain
from ..errors import DataError
from ..models import build
from ..scores import softmax_stats
from ..trust import confusion_interval
from .base import TASKS, Task, argmax_agreement
from .metrics import ConfusionMeter, classification_scores
from .spec import TaskSpec


def _numbered(classes: list[str]) -> bool:
    """Whether ``classes`` are the ids 0..K-1 written out (an .npz without names), not names to compare."""
    return classes == [str(i) for i in range(len(classes))]


@TASKS.register("classification")
class Classification(Task):
    """Loss: cross-entropy. Metric: accuracy, per-class accuracy, confusion matrix."""

    name = "classification"
    deployable = "classifier"
    headline = "accuracy"
    record_keys = {"acc": "accuracy"}
    per_class_key = "per_class"
    dense = False
    aligns_classes = False
    default_backbone = "dtn"
    default_adapt_method = "shot"  # the best stored on-device result on the classification pair and shift suite
    default_size = (32, 32)
    losses = ("ce",)
    label_key = "labels"
    labels_flag = None  # per-image data is classification data by its kind (edgeda.training.domains.resolve_task)
    label_kind = "classes"
    spatial_output = False
    mirror_invariant = False
    per_image_rows = True
    display_per_class = True
    draws_samples = False
    prediction_files = False
    auto_from_init = False
    eval_batch_size = 256
    consistency_images = 256
    adapt_batch_size = 64
    monitor_images = 512
    calibration_images = 512
    parity_images = None

    def num_classes_of(self, domain):
        return domain.num_classes or int(domain.labels.max()) + 1

    def make_spec(self, domain, *, image_size, channels, mean=None, std=None) -> TaskSpec:
        k = self.num_classes_of(domain)
        classes = domain.classes or [str(i) for i in range(k)]
        return TaskSpec(num_classes=k, classes=classes, task=self.name, image_size=image_size, channels=channels,
                        mean=mean, std=std)

    def check_data(self, domain, spec, *, labeled, what, model="bundle"):
        if not isinstance(domain, Domain):
            raise DataError(f"{what} is dense data; this {model} is a classifier")
        domain.require_usable(labels=self.label_kind if labeled else None, num_classes=spec.num_classes if labeled else None)
        have, want = list(domain.classes or []), list(spec.classes or [])
        if labeled and have and want and have != want and not (_numbered(have) or _numbered(want)):
            raise DataError(f"{what} names the classes {', '.join(have)}, the {model} {', '.join(want)}: name its "
                            f"folders as the {model}'s classes (folders of some of them are read by name)")

    def stream(self, domain, spec, batch_size, device, seed, *, labeled, cfg, weights=None, rank=0, world_size=1):
        """In-memory images on the training device, shifted and contrast-jittered per batch (:class:`BatchStream`)."""
        from ..training.streams import BatchStream

        return BatchStream(domain, spec, batch_size, device, seed, labeled=labeled, shift=cfg.augment_shift,
                           contrast=cfg.augment_contrast, weights=weights, rank=rank, world_size=world_size)

    def loss(self, output, target, kind=None):
        return F.cross_entropy(output.float(), target)

    def build_model(self, spec, backbone, backbone_kwargs=None):
        return build("classifier", backbone=backbone, num_classes=spec.num_classes, channels=spec.channels,
                     image_size=spec.image_size[0], backbone_kwargs=dict(backbone_kwargs or {}))

    def meter(self, spec):
        return ConfusionMeter(spec.num_classes)

    def scores(self, meter, spec):
        return classification_scores(meter.matrix, spec.classes)

    def interval(self, scores):
        return confusion_interval(scores["confusion"]) if "confusion" in scores else None

    def format_scores(self, scores):
        return f"accuracy {scores['accuracy']:.1%} (n={scores['n']})"

    def eval_lines(self, scores):
        iv = scores.get("interval")
        extra = f", 95% bootstrap interval {iv['low']:.1%}-{iv['high']:.1%}" if iv else ""
        return [f"accuracy {scores['accuracy']:.1%} (n={scores['n']}{extra})",
                "per class: " + "  ".join(f"{k}:{'-' if v is None else f'{v:.0%}'}" for k, v in scores["per_class"].items())]

    def validator_rows(self, output, generator, per_image=64):
        return output.float()

    def compare(self, ref, out):
        res = super().compare(ref, out)
        if len(ref):
            res["top1_agreement"] = argmax_agreement(ref, out)
        return res

    def export_scores(self, scores):
        return {"target_accuracy": scores["accuracy"]}

    def ort_scores(self, outputs, labels, spec):
        return {"accuracy": float((np.asarray(outputs).argmax(1) == np.asarray(labels)).mean())}

    def prediction_row(self, spec, output, image, stem):
        cls, conf, ent = (v[0] for v in softmax_stats(np.asarray(output, np.float32)[None]))
        c = int(cls)
        return {"class": c, "class_name": spec.classes[c] if c < len(spec.classes) else str(c),
                "confidence": round(float(conf), 6), "entropy": round(float(ent), 6)}
