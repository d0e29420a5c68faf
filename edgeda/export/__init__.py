"""Export: ONNX graphs, TensorRT plugins and engines for edge devices.

Public API (imported lazily; TensorRT is only imported by :mod:`edgeda.export.trt`):

* :func:`export_bundle` -- ONNX (+ fp16 / int8 Q/DQ, + TensorRT) of every deployable, parity-checked.
* :func:`predict` -- class, confidence and entropy per image with any backend.
* :func:`make_runner` / ``RUNNERS`` -- one runner interface over ``torch``, ``ort`` and ``trt``.
* :func:`check_engine_metadata` -- refuse an engine built for another TensorRT/CUDA/GPU.
"""
from .._callable import make_callable

make_callable(__name__, "edgeda.export.api:export_bundle")  # edgeda.export(...) exports a bundle

_LAZY = {
    "export_bundle": ("edgeda.export.api", "export_bundle"),
    "predict": ("edgeda.export.prediction", "predict"),
    "make_runner": ("edgeda.export.runtime", "make_runner"),
    "RUNNERS": ("edgeda.export.runtime", "RUNNERS"),
    "prepare_batch": ("edgeda.export.files", "prepare_batch"),
    "export_onnx": ("edgeda.export.onnx", "export_onnx"),
    "ONNX_SIGNATURES": ("edgeda.export.onnx", "ONNX_SIGNATURES"),
    "to_float16": ("edgeda.export.quantize", "to_float16"),
    "quantize_int8": ("edgeda.export.quantize", "quantize_int8"),
    "check_engine_metadata": ("edgeda.export.trt", "check_engine_metadata"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'edgeda.export' has no attribute {name!r}")


__all__ = list(_LAZY)
