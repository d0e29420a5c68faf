"""On-device source-free adaptation: a shipped bundle + unlabeled target images -> a new bundle.

Methods (one module each, registered in ``ADAPT_METHODS``): ``3cgan`` (Li et al., CVPR 2020),
``shot`` (Liang et al., ICML 2020), ``tent`` (Wang et al., ICLR 2021). See :func:`adapt`.
"""
import importlib
import pkgutil

from .base import ADAPT_METHODS, AdaptMethod
from .runner import AdaptResult, adapt

_INFRA = {"base", "runner", "losses", "safety", "budget", "export", "cli"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _INFRA and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["adapt", "AdaptResult", "AdaptMethod", "ADAPT_METHODS"]


class _CallableModule(__import__("types").ModuleType):
    """``edgeda.adapt(...)`` keeps working after ``import edgeda.adapt`` has bound the package to
    ``edgeda.adapt`` (a submodule attribute shadows the lazy function of the same name)."""

    def __call__(self, *args, **kwargs):
        return adapt(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
