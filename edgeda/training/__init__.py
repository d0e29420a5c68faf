"""Training: the trainer, evaluation, model selection, checkpoints, torchrun support and
``--method auto``. The top-level API is ``edgeda.train(...)`` (:func:`edgeda.training.trainer.train`)."""
from .model_eval import evaluate_classifier
from .trainer import TrainResult, Trainer, train

__all__ = ["TrainResult", "Trainer", "evaluate_classifier", "train"]
