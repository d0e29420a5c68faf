"""Adaptation methods, one module each, registered by name.

Every module of this package is imported on first import, so adding a method is one new file
with a ``@METHODS.register("name")`` class and nothing else.
"""
import importlib
import pkgutil

from .base import Batch, Engine, Method, OptimConfig
from .registry import METHODS

_INFRA = {"base", "registry", "losses", "class_balanced"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _INFRA and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Batch", "Engine", "Method", "OptimConfig", "METHODS"]
