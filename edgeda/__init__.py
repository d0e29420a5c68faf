"""edgeda: synthetic-to-real domain adaptation that ships to the edge.

Library first: every CLI command wraps a function importable from here (loaded lazily so that
``import edgeda`` stays fast and needs no optional extra).
"""
__version__ = "0.1.0"

_LAZY = {
    "train": ("edgeda.training.trainer", "train"),
    "TrainConfig": ("edgeda.config", "TrainConfig"),
    "load_bundle": ("edgeda.bundle", "load_bundle"),
    "evaluate": ("edgeda.bundle_eval", "evaluate_bundle"),
    "load_domain": ("edgeda.data.spec", "load_domain"),
    "export": ("edgeda.export.api", "export_bundle"),
    "predict": ("edgeda.export.prediction", "predict"),
    "make_runner": ("edgeda.export.runtime", "make_runner"),
    "bench": ("edgeda.bench.harness", "bench"),
    "adapt": ("edgeda.adapt", "adapt"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'edgeda' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
