"""Re-export of an adapted bundle (``edgeda adapt --export``), kept in one place.

Uses the export subsystem (:mod:`edgeda.export`) when it provides ``export_onnx``; otherwise a
minimal export of the classifier: ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic
batch axis), ``onnx.checker`` and a parity check in ONNX Runtime, added to the bundle with its
checksum. A TensorRT engine is built only where TensorRT is installed.
"""
from __future__ import annotations

import importlib.util
import inspect
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..bundle import Bundle, update_bundle
from ..errors import MissingDependency

OPSET = 17


def reexport(bundle_path: str | Path, log=None) -> dict:
    """Add ``classifier.onnx`` (and a TensorRT engine where possible) to the bundle; return a report."""
    log = log or (lambda s: None)
    try:
        from ..export import export_onnx  # the export subsystem, when present
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        result = export_onnx(bundle_path)
        report = {"onnx": "edgeda.export.export_onnx", "result": _jsonable(result)}
    else:
        report = _minimal_onnx(Path(bundle_path))
    report["tensorrt"] = _tensorrt_note()
    log(f"ONNX: {report.get('file', 'written by edgeda.export')}; TensorRT: {report['tensorrt']}")
    return report


def _tensorrt_note() -> str:
    if importlib.util.find_spec("tensorrt") is None:
        return "not built: TensorRT is not installed here (build the engine on the device with `edgeda export --trt`)"
    return "not built here: run `edgeda export BUNDLE --trt` on the device to compile the engine from classifier.onnx"


def _jsonable(x):
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return str(x)


def _minimal_onnx(path: Path) -> dict:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependency(f"--export needs the onnx and onnxruntime packages ({e.name} is missing)") from None
    b = Bundle(path)
    task = b.task
    model = b.module("classifier").eval()
    h, w = task.image_size
    x = torch.randn(4, task.channels, h, w, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "classifier.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the TorchScript exporter: torch >= 2.9 defaults to dynamo (needs onnxscript); Jetson's 2.4 has no flag
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(model, (x[:1],), str(f), opset_version=OPSET, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              **legacy)
        onnx.checker.check_model(onnx.load(str(f)))
        sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        parity = {"max_abs_diff": float(np.abs(got - ref).max()), "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
        update_bundle(path, add_files={"classifier.onnx": f}, manifest_updates={
            "exports": {"classifier.onnx": {"opset": OPSET, "dynamic_batch": True, "exporter": "torch.onnx (dynamo=False)",
                                            "input": "input", "output": "logits", "parity": parity}}})
    return {"file": "classifier.onnx", "opset": OPSET, "parity": parity}
