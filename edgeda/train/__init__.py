"""The trainer, evaluation, checkpoints and torchrun support.

``edgeda.train`` is both this subpackage and the top-level training function: once any
``edgeda.train.*`` module is imported, Python binds the name ``edgeda.train`` to this package,
so the package itself is made callable and forwards to :func:`edgeda.train.trainer.train`.
"""
import sys
import types

from .evaluate import evaluate_classifier
from .trainer import TrainResult, Trainer, train


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["TrainResult", "Trainer", "evaluate_classifier", "train"]
