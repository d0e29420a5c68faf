"""Re-export of an adapted bundle (``edgeda adapt --export``), kept in one place.

The adapted bundle goes through the same export as any other (:func:`edgeda.export.export_bundle`):
ONNX of every deployable with a dynamic batch axis, ``onnx.checker``, the parity check against
PyTorch in ONNX Runtime, recorded under ``manifest["export"]``, written atomically. A TensorRT
engine is built only where TensorRT is installed (``edgeda export BUNDLE --trt`` on the device).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..export.api import export_bundle


def reexport(bundle_path: str | Path, log=None) -> dict:
    """Add ONNX files to the (new) bundle in place; return a short report for the adaptation record."""
    record = export_bundle(bundle_path, log=log)
    report = {"onnx": record.get("files", []), "tensorrt": _tensorrt_note()}
    if log:
        log(f"TensorRT: {report['tensorrt']}")
    return report


def _tensorrt_note() -> str:
    if importlib.util.find_spec("tensorrt") is None:
        return "not built: TensorRT is not installed here (build the engine on the device with `edgeda export --trt`)"
    return "not built here: run `edgeda export BUNDLE --trt` on the device to compile the engine from the ONNX"
