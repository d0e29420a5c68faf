"""On-device source-free adaptation: a shipped bundle + unlabeled target images -> a new bundle.

Methods (one module each, registered in ``ADAPT_METHODS``): ``3cgan`` (Li et al., CVPR 2020),
``shot`` (Liang et al., ICML 2020), ``tent`` (Wang et al., ICLR 2021), ``cotta`` (Wang et al.,
CVPR 2022). See :func:`adapt`. What adaptation does differently per task (statistics, collapse
monitor, selection score, the methods' per-row objectives) is registered in ``TASK_ADAPTATIONS``
(:mod:`edgeda.adapt.tasks`; detection bundles: :mod:`edgeda.adapt.detection`).
"""
import importlib
import pkgutil

from .._callable import make_callable
from .base import ADAPT_METHODS, AdaptMethod
from .plan import AdaptOptions
from .runner import AdaptResult, adapt

_INFRA = {"base", "plan", "runner", "losses", "safety", "budget", "export", "cli"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _INFRA and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["adapt", "AdaptOptions", "AdaptResult", "AdaptMethod", "ADAPT_METHODS"]

make_callable(__name__, "edgeda.adapt.runner:adapt")
