"""The ``source_val`` validator."""
from __future__ import annotations

from .context import VALIDATORS, EvalContext


@VALIDATORS.register("source_val")
def source_val(ctx: EvalContext) -> float:
    """The task's score on held-out labeled source images (accuracy, mIoU, or minus abs rel for
    depth): the classic choice, blind to the shift."""
    return ctx.source_val
