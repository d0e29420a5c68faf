"""What on-device adaptation does differently per task, keyed by task name (adapt-side registry).

The runner and the methods ask the task's :class:`TaskAdaptation` instead of testing the task's
name: how the shipped model's predictions are summarised and monitored for collapse, which
label-free score selects the written state, whether the memory plan may train on crops, and the
per-row objectives the methods are made of (TENT's entropy, CoTTA's class probabilities,
confidence and soft cross-entropy). :class:`TaskAdaptation` is the behaviour of the tasks whose
outputs are class logits per image or per pixel (classification, segmentation); a task with other
outputs registers its own (detection: :mod:`edgeda.adapt.detection`).

>>> ta = adaptation_of(spec)            # spec.task -> its TaskAdaptation
>>> before, ref = ta.shipped_stats(target, model, spec)
>>> monitor = ta.monitor(before, spec)
"""
from __future__ import annotations

import torch

from ..errors import EdgedaError
from ..models.superpixels import soft_cross_entropy
from ..registry import Registry
from ..scores import entropy
from ..tasks.spec import TaskSpec
from ..tasks import task_of
from .losses import class_balanced_soft_cross_entropy, per_class_mean
from .safety import CollapseMonitor, PredictionStats

TASK_ADAPTATIONS: Registry = Registry("task adaptation")


class TaskAdaptation:
    """Class logits per image (N, K) or per pixel (N, K, H, W): statistics of the softmax rows
    (:class:`~edgeda.adapt.safety.PredictionStats`), the :class:`~edgeda.adapt.safety.CollapseMonitor`,
    and ``info_max`` as the selection score (for dense outputs relative to the shipped model's
    pixel-class marginal)."""

    score_name = "info_max"
    crops = True  # dense frames may train on crops when the memory plan asks for it
    balances = True  # entropy and soft_cross_entropy can weigh each class alike (TENT's and CoTTA's ``balance``)

    # -- statistics, monitoring, selection -------------------------------------------------------
    def accumulate(self, target, model, reference_pred, spec: TaskSpec) -> PredictionStats:
        acc = PredictionStats(spec.num_classes)
        for sl, out in target.predictions(model):
            acc.update(out, None if reference_pred is None else reference_pred[sl])
        return acc

    def stats(self, target, model, reference_pred, spec: TaskSpec, prior=None) -> dict:
        """Prediction statistics of ``model`` over ``target``; ``prior``: see :meth:`prior`."""
        return self.accumulate(target, model, reference_pred, spec).result(prior)

    def shipped_stats(self, target, model, spec: TaskSpec) -> tuple[dict, torch.Tensor]:
        """(statistics, predicted classes (N,) or (N, H, W) on the CPU) of the shipped model in one
        pass; for dense outputs ``info_max`` is relative to its own pixel-class marginal."""
        k = spec.num_classes
        acc, preds = PredictionStats(k), []
        dtype = torch.uint8 if k <= 255 else torch.int32
        for _, out in target.predictions(model):
            pred = out.argmax(1)
            acc.update(out, pred)
            preds.append(pred.to("cpu", dtype))
        res = acc.result()
        if res.get("pixels"):
            res = acc.result(torch.tensor(res["mean_probabilities"]))
        return res, torch.cat(preds)

    def prior(self, shipped: dict, spec: TaskSpec):
        """The class marginal ``info_max`` measures diversity against: the shipped model's mean
        pixel-class probabilities for dense outputs, None (uniform) per image."""
        return torch.tensor(shipped["mean_probabilities"]) if task_of(spec).spatial_output else None

    def shipped_selection(self, target, model, reference_pred, spec: TaskSpec) -> tuple[dict, object]:
        """(statistics of the shipped state on the monitor images, the prior later checks use)."""
        acc = self.accumulate(target, model, reference_pred, spec)
        prior = self.prior(acc.result(), spec)
        return acc.result(prior), prior

    def monitor(self, baseline: dict, spec: TaskSpec):
        return CollapseMonitor(baseline, spec.num_classes)

    def selection_score(self, stats: dict) -> float:
        return stats["info_max"]

    def per(self, spec: TaskSpec) -> str:
        return "pixel" if task_of(spec).spatial_output else "image"

    def selection_record(self) -> dict:
        """Extra keys of the manifest's selection record (none: ``info_max`` is the rule's name)."""
        return {}

    def summary_lines(self, before: dict, after: dict) -> list[str]:
        """What ``edgeda adapt`` prints about the predictions before and after."""
        b, a = before, after
        return [f"  mean entropy     {b['mean_entropy']:.3f} -> {a['mean_entropy']:.3f}",
                f"  mean confidence  {b['mean_confidence']:.3f} -> {a['mean_confidence']:.3f}",
                f"  agreement with the shipped model {a['agreement_with_shipped']:.1%}; "
                f"class histogram entropy {b['histogram_entropy']:.2f} -> {a['histogram_entropy']:.2f}"]

    # -- objectives of the methods ---------------------------------------------------------------
    def entropy(self, model, outputs, balanced: bool = False) -> torch.Tensor:
        """TENT's objective: mean Shannon entropy of the softmax rows (per image or per pixel), or with
        ``balanced`` the mean within each predicted class, then over the classes
        (:func:`~edgeda.adapt.losses.per_class_mean`)."""
        h = entropy(outputs)
        if not balanced:
            return h.mean()
        return per_class_mean(h.reshape(-1), outputs.detach().argmax(1).reshape(-1), outputs.shape[1])

    def probs(self, model, outputs) -> torch.Tensor:
        return outputs.float().softmax(1)

    def confidence(self, model, outputs) -> torch.Tensor:
        """Top class probability per row: (N,) or (N, H, W)."""
        return self.probs(model, outputs).max(1).values

    def blend(self, unsure: torch.Tensor, averaged: torch.Tensor, standard: torch.Tensor) -> torch.Tensor:
        return torch.where(unsure.unsqueeze(1), averaged, standard)

    def balanced(self, choice: str, spec: TaskSpec, method: str) -> bool:
        """Whether a method's ``balance`` option (``auto`` | ``on`` | ``off``) weighs each class alike in
        its loss on ``spec``'s bundles: ``auto`` where the outputs are per pixel; ``on`` where this task's
        losses can (else one error)."""
        if choice == "on" and not self.balances:
            raise EdgedaError(f"{method} balance=on is for class logits per image or pixel, not {spec.task} bundles")
        return choice == "on" or (choice == "auto" and self.balances and task_of(spec).spatial_output)

    def soft_cross_entropy(self, model, outputs, targets: torch.Tensor, balanced: bool = False) -> torch.Tensor:
        """-sum_c y_c log p_c per image or pixel, averaged over them, or with ``balanced`` over each
        class of the targets' arg-max and then over the classes
        (:func:`~edgeda.adapt.losses.class_balanced_soft_cross_entropy`)."""
        if balanced:
            return class_balanced_soft_cross_entropy(outputs, targets)
        return soft_cross_entropy(outputs, targets)

    def mirrors(self, training: dict) -> bool:
        """Whether CoTTA's ``flip=auto`` may mirror this task's dense frames, given the bundle's
        training record: where it was trained with horizontal flips (a mirrored scene is a scene to it;
        a digit or text scene trained without flips mirrors into other glyphs)."""
        return bool(training.get("config", {}).get("augment_hflip", True))

    def averaged_probs(self, method, x: torch.Tensor):
        """CoTTA's augmentation-averaged teacher probabilities, or None: the method's own recipe."""
        return None


TASK_ADAPTATIONS.register("classification")(TaskAdaptation)
TASK_ADAPTATIONS.register("segmentation")(TaskAdaptation)
_INSTANCES: dict = {}


def adaptation_of(spec: TaskSpec | str) -> TaskAdaptation:
    """The registered :class:`TaskAdaptation` of a spec's task (one stateless instance each)."""
    # edgeda.adapt's package import registers every task's adaptation (edgeda.adapt.detection)
    name = spec if isinstance(spec, str) else spec.task
    if name not in _INSTANCES:
        _INSTANCES[name] = TASK_ADAPTATIONS.get(name)()
    return _INSTANCES[name]
