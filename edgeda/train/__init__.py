"""The trainer, evaluation, checkpoints and torchrun support.

``edgeda.train`` is both this subpackage and the top-level training function: once any
``edgeda.train.*`` module is imported, Python binds the name ``edgeda.train`` to this package,
so the package itself is made callable and forwards to :func:`edgeda.train.trainer.train`.
"""
from .._callable import make_callable
from .evaluate import evaluate_classifier
from .trainer import TrainResult, Trainer, train

make_callable(__name__, "edgeda.train.trainer:train")

__all__ = ["TrainResult", "Trainer", "evaluate_classifier", "train"]
