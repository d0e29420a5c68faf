"""The trainer, evaluation, checkpoints and torchrun support."""
from .evaluate import evaluate_classifier
from .trainer import TrainResult, Trainer, train

__all__ = ["TrainResult", "Trainer", "evaluate_classifier", "train"]
