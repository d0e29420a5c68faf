"""Backbones, heads, discriminators, generators/refiners and small layers."""
from . import backbones, classifier, conditional, dense, detection, generators, mobilenetv3, patchgan, public_dense, resnet, segformer, spade  # noqa: F401  (register entries)
from .classifier import Classifier
from .dense import DenseModel, make_dense_model
from .discriminators import DomainClassifier
from .layers import GradientReversal, dann_coefficient, gradient_reversal
from .registry import ARCHITECTURES, BACKBONES, arch_of, build, rebuild
from .weights import load_backbone_weights

__all__ = [
    "ARCHITECTURES", "BACKBONES", "Classifier", "DenseModel", "DomainClassifier", "GradientReversal",
    "arch_of", "build", "dann_coefficient", "gradient_reversal", "load_backbone_weights", "make_dense_model", "rebuild",
]
