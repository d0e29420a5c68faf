"""Top-level functions that share their name with a subpackage (``edgeda.export``, ``edgeda.bench``,
``edgeda.adapt``).

Once ``edgeda.export.api`` (say) is imported, Python binds ``edgeda.export`` to the subpackage,
which would shadow the lazily exported function of the same name. Each such subpackage is made
callable and forwards to its function, so ``edgeda.export(...)`` works however it was reached.
"""
from __future__ import annotations

import importlib
import sys
import types


def make_callable(package: str, target: str) -> None:
    """Calls of module ``package`` go to ``target`` ("module:function", imported on first call)."""
    mod_name, attr = target.split(":")

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(mod_name), attr)(*args, **kwargs)

    sys.modules[package].__class__ = _CallablePackage
