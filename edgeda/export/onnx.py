"""ONNX export of a bundle's deployables, and the parity check against PyTorch in ONNX Runtime.

Each deployable declares its inputs through :data:`ONNX_SIGNATURES`, a registry keyed by the
architecture name recorded in the bundle (``classifier``: one normalised image; a
``conditional_generator``: a label and a noise vector; ``label_map_generator``: a label map and a
noise vector). A module may also carry its own
``onnx_signature`` attribute (a :class:`Signature`), which wins. Every input and output gets a
dynamic batch axis named ``batch``.

The exporter (:func:`export_onnx`, opset 17) is chosen by ``auto`` by default: torch's
torch.export-based exporter (``dynamo=True``, torch >= 2.9 with ``onnxscript``) where it is
available and its graph matches PyTorch in ONNX Runtime, else the TorchScript exporter
(``dynamo=False``; the Jetson wheels, torch 2.4--2.6, have only that one). ``EDGEDA_ONNX_EXPORTER``
or ``--exporter dynamo|torchscript`` picks one; the one used is recorded in each file.
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import EdgedaError, MissingDependency
from ..registry import Registry
from ..tasks.spec import TaskSpec
from ..tasks.base import argmax_agreement, output_difference

OPSET = 17
MAX_IR_VERSION = 10  # ONNX Runtime 1.31 refuses IR > 13; TensorRT 10.3's parser reads up to 10


@dataclass
class InputSpec:
    """One graph input: name, per-sample shape (batch axis excluded) and kind.

    ``kind``: ``"image"`` (normalised float NCHW in the task's input space), ``"float"`` (standard
    normal noise) or ``"label"`` (int64 class index below ``high``).
    """

    name: str
    shape: tuple[int, ...]
    kind: str = "image"
    high: int = 0

    def random(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "label":
            return rng.integers(0, self.high, size=(n, *self.shape)).astype(np.int64)
        return rng.standard_normal((n, *self.shape)).astype(np.float32)


@dataclass
class Signature:
    inputs: list[InputSpec]
    outputs: list[str]
    classifies: bool = False  # output 0 is (N, classes) logits: top-1 agreement is meaningful
    extra: dict = field(default_factory=dict)

    @property
    def image_input(self) -> InputSpec | None:
        return next((i for i in self.inputs if i.kind == "image"), None)


ONNX_SIGNATURES: Registry[Callable[[nn.Module, TaskSpec], Signature]] = Registry("ONNX signature")


def _image(task: TaskSpec) -> InputSpec:
    return InputSpec("image", (task.channels, *task.image_size), "image")


@ONNX_SIGNATURES.register("classifier")
def _classifier_signature(module: nn.Module, task: TaskSpec) -> Signature:
    return Signature([_image(task)], ["logits"], classifies=True)


@ONNX_SIGNATURES.register("dense_model")
def _dense_signature(module: nn.Module, task: TaskSpec) -> Signature:
    """A dense model: image in, (N, K, H, W) logits or (N, 1, H, W) depth out, at the input's size,
    so height and width are dynamic axes as well as the batch."""
    return Signature([_image(task)], ["depth" if getattr(module, "output", "logits") == "depth" else "logits"],
                     extra={"dynamic_hw": True})


@ONNX_SIGNATURES.register("conditional_generator")
def _generator_signature(module: nn.Module, task: TaskSpec) -> Signature:
    return Signature([InputSpec("label", (), "label", high=module.num_classes),
                      InputSpec("noise", (module.z_dim,), "float")], ["image"])


@ONNX_SIGNATURES.register("label_map_generator")
def _label_map_generator_signature(module: nn.Module, task: TaskSpec) -> Signature:
    """A label map (N, H, W) of class ids and a noise vector in, an image in [-1, 1] out."""
    return Signature([InputSpec("label_map", tuple(task.image_size), "label", high=module.num_classes),
                      InputSpec("noise", (module.z_dim,), "float")], ["image"])


def signature_of(module: nn.Module, task: TaskSpec) -> Signature:
    """The module's own ``onnx_signature``, else the registered one for its architecture, else
    image in -> ``output`` out (pixel-level refiners)."""
    own = getattr(module, "onnx_signature", None)
    if isinstance(own, Signature):
        return own
    arch = getattr(module, "edgeda_arch", {}).get("name")
    if arch in ONNX_SIGNATURES:
        return ONNX_SIGNATURES.get(arch)(module, task)
    return Signature([_image(task)], ["output"])


EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMO_OPSET = 18  # the torch.export-based exporter's lowest implemented opset


def _dynamo_available() -> bool:
    """torch >= 2.9 (where the torch.export-based exporter is torch.onnx.export's default) with onnxscript."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        return False
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) < (2, 9):
        return False
    import importlib.util

    return importlib.util.find_spec("onnxscript") is not None


def _export(module, example, path, names, sig, opset, dynamo: bool) -> None:
    kwargs = dict(input_names=names, output_names=sig.outputs)
    if dynamo:
        dims = {0: torch.export.Dim("batch", min=1, max=4096)}
        if sig.extra.get("dynamic_hw"):
            dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
        kwargs.update(dynamo=True, opset_version=max(opset, DYNAMO_OPSET), dynamic_shapes=tuple(dict(dims) for _ in names),
                      optimize=True, verbose=False)
    else:
        axes = {n: {0: "batch"} for n in names + sig.outputs}
        if sig.extra.get("dynamic_hw"):  # fully convolutional: any input size (TensorRT takes min/opt/max shapes)
            axes = {n: {0: "batch", 2: "height", 3: "width"} for n in names + sig.outputs}
        kwargs.update(opset_version=opset, dynamic_axes=axes)
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            kwargs["dynamo"] = False
    with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), **kwargs)


class _quiet_exporter:
    """The torch.export-based exporter logs its progress to stdout and warnings through logging."""

    def __enter__(self):
        import contextlib
        import io
        import logging

        self._loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        self._out = contextlib.redirect_stdout(io.StringIO())
        self._out.__enter__()
        return self

    def __exit__(self, *exc):
        self._out.__exit__(*exc)
        for lg, lv in zip(self._loggers, self._levels):
            lg.setLevel(lv)
        return False


def default_exporter() -> str:
    """``EDGEDA_ONNX_EXPORTER`` (auto | dynamo | torchscript), else ``auto``."""
    return os.environ.get("EDGEDA_ONNX_EXPORTER", "auto")


def export_onnx(module: nn.Module, sig: Signature, path: str | Path, *, opset: int = OPSET,
                exporter: str | None = None) -> Path:
    """Export ``module`` (eval mode, CPU) with a dynamic batch axis (and H/W for fully
    convolutional models), then run ``onnx.checker``.

    ``exporter``: ``dynamo`` (the torch.export-based exporter, torch >= 2.9 with onnxscript),
    ``torchscript`` (the TorchScript exporter: torch 2.4-2.8, as on JetPack 6), or ``auto`` (the
    default; ``EDGEDA_ONNX_EXPORTER`` changes it): dynamo
    where it is available and its graph runs in ONNX Runtime with the same outputs as PyTorch
    (within 1e-4, on random inputs at two batch sizes), else TorchScript. Which one wrote the file
    is in its metadata (``edgeda_exporter``; :func:`exporter_of`). Callers still run their own
    parity checks on real data."""
    import onnx

    exporter = exporter or default_exporter()
    if exporter not in EXPORTERS:
        raise EdgedaError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    path = Path(path)
    module = module.eval().to("cpu")
    rng = np.random.default_rng(0)
    example = tuple(torch.from_numpy(i.random(2, rng)) for i in sig.inputs)
    names = [i.name for i in sig.inputs]
    used = "torchscript"
    if exporter in ("auto", "dynamo"):
        if not _dynamo_available():
            if exporter == "dynamo":
                raise MissingDependency("the torch.export-based ONNX exporter needs torch >= 2.9 and onnxscript "
                                        "(pip install onnxscript); or use --exporter torchscript")
        else:
            try:
                _export(module, example, path, names, sig, opset, dynamo=True)
                if exporter == "auto":
                    _check_against_torch(module, path, sig, rng)
                used = "dynamo"
            except Exception as e:  # noqa: BLE001 - any failure of the new exporter: the TorchScript one
                if exporter == "dynamo":
                    raise EdgedaError(f"the torch.export-based exporter failed on this model: {str(e)[:300]}") from None
    if used == "torchscript":
        try:
            _export(module, example, path, names, sig, opset, dynamo=False)
        except ImportError as e:
            raise MissingDependency(f"the ONNX exporter needs a missing package ({e}); pip install onnxscript") from None
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "edgeda_exporter": used})
    onnx.save(model, str(path))
    return path


def _check_against_torch(module, path, sig, rng, atol: float = 1e-4) -> None:
    """Raise unless the ONNX at ``path`` matches ``module`` on random inputs of batch 1 and 3
    (and another H/W for fully convolutional models)."""
    sess = ort_session(path)
    for n in (1, 3):
        inputs = [i.random(n, rng) for i in sig.inputs]
        if sig.extra.get("dynamic_hw") and n == 3:
            inputs = [x if x.ndim != 4 else np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (0, 16), (0, 16)), mode="reflect"))
                      for x in inputs]
        ref = run_torch(module, inputs)
        out = np.asarray(sess.run([sig.outputs[0]], dict(zip([i.name for i in sig.inputs], inputs)))[0], np.float32)
        scale = max(1.0, float(np.abs(ref).max()))
        if out.shape != ref.shape or not np.allclose(out, ref, atol=atol * scale, rtol=0):
            raise EdgedaError(f"dynamo export differs from PyTorch (max {np.abs(out - ref).max() if out.shape == ref.shape else out.shape})")


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def exporter_of(path: str | Path) -> str | None:
    """Which exporter wrote an ONNX file (``dynamo`` / ``torchscript``; None for files from elsewhere)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == "edgeda_exporter"), None)


def ort_session(path: str | Path, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def run_ort(session, sig: Signature, inputs: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Output 0 of the session for the whole arrays, in chunks of ``batch_size``."""
    n = len(inputs[0])
    outs = []
    for i in range(0, n, batch_size):
        feed = {spec.name: arr[i:i + batch_size] for spec, arr in zip(sig.inputs, inputs)}
        outs.append(np.asarray(session.run([sig.outputs[0]], feed)[0], np.float32))
    return np.concatenate(outs) if outs else np.zeros((0,))


@torch.no_grad()
def run_torch(module: nn.Module, inputs: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
    n = len(inputs[0])
    outs = []
    for i in range(0, n, batch_size):
        out = module(*(torch.from_numpy(np.ascontiguousarray(a[i:i + batch_size])) for a in inputs))
        outs.append(out.float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,))


def compare_outputs(ref: np.ndarray, out: np.ndarray, classifies: bool) -> dict:
    """Parity of a deployable that is not the task network (a refiner, a generator): max abs
    difference and, for logits, top-1 agreement of ``out`` with ``ref`` (the task network's parity
    is its task's :meth:`~edgeda.tasks.Task.compare`, from the same pieces)."""
    res = output_difference(ref, out)
    if classifies and len(ref):
        res["top1_agreement"] = argmax_agreement(ref, out)
    return res


def compare_runs(run_a, run_b, inputs: list[np.ndarray], compare, batch_size: int = 64) -> dict:
    """``compare(run_a(chunk), run_b(chunk))`` batch by batch, so memory stays bounded for dense
    outputs: the worst of each ``max_*`` entry and the sample-weighted mean of the others."""
    n = len(inputs[0])
    parts = []
    for i in range(0, n, batch_size):
        chunk = [a[i:i + batch_size] for a in inputs]
        parts.append(compare(run_a(chunk), run_b(chunk)))
    if not parts:
        return {"n": 0, "max_abs_diff": 0.0}
    out = {"n": n}
    for k in parts[0]:
        if k != "n":
            vals = [p[k] for p in parts]
            out[k] = max(vals) if k.startswith("max") else float(sum(v * p["n"] for v, p in zip(vals, parts)) / n)
    return out


def parity(module: nn.Module, session, sig: Signature, inputs: list[np.ndarray], compare=None) -> dict:
    """PyTorch vs ONNX Runtime on the same inputs (``compare``: a task's comparison, default
    :func:`compare_outputs`)."""
    compare = compare or (lambda r, o: compare_outputs(r, o, sig.classifies))
    return compare_runs(lambda c: run_torch(module, c), lambda c: run_ort(session, sig, c), inputs, compare)
