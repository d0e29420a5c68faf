"""Backbones, heads, discriminators, generators/refiners and small layers."""
from . import backbones, classifier, conditional, generators, patchgan  # noqa: F401  (register entries)
from .classifier import Classifier
from .discriminators import DomainClassifier
from .layers import GradientReversal, dann_coefficient, gradient_reversal
from .registry import ARCHITECTURES, BACKBONES, arch_of, build, rebuild

__all__ = [
    "ARCHITECTURES", "BACKBONES", "Classifier", "DomainClassifier", "GradientReversal",
    "arch_of", "build", "dann_coefficient", "gradient_reversal", "rebuild",
]
