"""The ``aug_consistency`` validator."""
from __future__ import annotations

from .context import VALIDATORS, EvalContext, mean_iou


@VALIDATORS.register("aug_consistency")
def aug_consistency(ctx: EvalContext) -> float:
    """Augmentation consistency: how well the model's prediction on a fixed sample of target images
    agrees with its prediction on a flipped, a rescaled and a colour-jittered copy of each, mapped
    back to the original frame, as the mean over augmentations of the mIoU between the two labelings.

    Flips are checked only where training treats them as label-preserving (dense tasks trained with
    ``augment_hflip``; not digits, text or classification, see
    :func:`edgeda.training.model_eval.consistency_augmentations`).
    The mean runs over all K classes, a class that neither labeling uses counting 0: a model
    collapsed onto one class is perfectly stable but scores 1/K, and plain label agreement (which a
    constant classifier maximises) is not used for classification either. Can detect: predictions
    that rest on cues a flip, a scale or a colour change destroy (brittle alignment, noisy pseudo-label
    fits). Cannot detect: a model that is stably wrong (a consistent class swap), or one that
    consistently predicts classes the target never shows. Needs the evaluation's augmented passes
    (``EvalContext.augmented_confusion``, filled by :func:`edgeda.training.model_eval.augmentation_confusion`)."""
    confs = ctx.augmented_confusion
    if not confs:
        raise ValueError("needs the model's predictions on augmented target images")
    return sum(mean_iou(c, over_all_classes=True) for c in confs.values()) / len(confs)
