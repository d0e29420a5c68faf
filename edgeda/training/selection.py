"""Unsupervised model selection (the validators live one per module in :mod:`edgeda.training.validators`;
this module keeps the names importable from here)."""
from __future__ import annotations

from .model_eval import evaluation_context
from .validators import (VALIDATORS, EvalContext, label_agreement, label_confusion, mean_iou,  # noqa: F401
                         score_all, score_candidates, selector_names, target_probs)
from .validators.agreement import agreement  # noqa: F401
from .validators.aug_consistency import aug_consistency  # noqa: F401
from .validators.bnm import bnm  # noqa: F401
from .validators.dev import dev  # noqa: F401
from .validators.entropy import entropy  # noqa: F401
from .validators.info_max import info_max  # noqa: F401
from .validators.info_max_prior import info_max_prior  # noqa: F401
from .validators.majority import majority  # noqa: F401
from .validators.reverse import reverse_validation  # noqa: F401
from .validators.snd import snd  # noqa: F401
from .validators.source_val import source_val  # noqa: F401


def score_model(net, domains, spec, device="cpu", seed: int = 0, reference_rows=None, hflip: bool = True):
    """(validator scores, target rows) of a trained network on ``domains`` — what the trainer records
    at an evaluation, computed the same way for every ``--method auto`` candidate (``hflip``: the run's
    ``augment_hflip``, whether ``aug_consistency`` checks flips of dense frames)."""
    ctx, _, out = evaluation_context(net, domains, spec, device, seed=seed, reference_rows=reference_rows, hflip=hflip)
    return score_all(ctx), (out.rows if out is not None else None)
