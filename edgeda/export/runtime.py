"""Runners: one interface over PyTorch, ONNX Runtime and TensorRT for a bundle's task network.

Every runner applies the bundle's input spec the same way (:func:`prepare_batch`: channels,
resize, ``uint8 / 255``, ``(x - mean) / std``, NCHW float32) and then runs ``forward`` on the
normalised batch, returning float32 outputs (logits; per-pixel logits or depth for dense models). ``RUNNERS`` is a registry keyed by name::

    runner = make_runner("ort", bundle, precision="int8")
    logits = runner.predict(images_uint8_nhwc)

ONNX files come from the bundle (``onnx/classifier.<precision>.onnx`` written by ``edgeda
export``); a bundle without them gets them exported into a temporary folder on first use.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import EdgedaError, MissingDependency
from ..registry import Registry
from ..scores import softmax_stats  # noqa: F401  (part of the runtime API)
from ..tasks import task_of
from ..utils import choose_device
from .boxes_bundle import exports_postprocessing
from .detection import OUTPUTS as BOX_OUTPUTS, export_detector_onnx, padded_detections, run_detector_ort
from .files import PRECISIONS, calibration_images, export_deployable_onnx, onnx_name, plan_name, prepare_batch
from .onnx import ort_session
from .trt import TrtEngine, require_tensorrt

RUNNERS: Registry[type] = Registry("backend")


class Runner:
    """``forward(x)``: normalised float32 NCHW -> float32 logits; ``predict(images)`` adds the input spec."""

    name = "base"

    def __init__(self, bundle: Bundle, precision: str = "fp32", *, device: str = "cpu", threads: int | None = None):
        if precision not in PRECISIONS:
            raise EdgedaError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.bundle, self.precision, self.device, self.threads = bundle, precision, device, threads
        self.task = bundle.task
        self.timings: dict = {}  # per-call split (h2d/compute/d2h ms) where the backend measures it

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images) -> np.ndarray:
        return self.forward(prepare_batch(images, self.task))

    def describe(self) -> dict:
        return {"backend": self.name, "precision": self.precision, "device": self.device}

    def close(self) -> None:
        pass


def make_runner(name: str, bundle: Bundle | str | Path, precision: str = "fp32", **kw) -> Runner:
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    return RUNNERS.get(name)(b, precision, **kw)


@RUNNERS.register("torch")
class TorchRunner(Runner):
    """PyTorch eager (fp32; fp16 on CUDA only; no int8)."""

    name = "torch"

    def __init__(self, bundle, precision="fp32", *, device="cpu", threads=None, cuda_graph: bool = False):
        super().__init__(bundle, precision, device=device, threads=threads)
        import torch

        self.torch = torch
        self.dev = choose_device(device)
        if precision == "int8":
            raise EdgedaError("the torch backend has no int8 path; use --backend ort (Q/DQ) or trt")
        if precision == "fp16" and self.dev.type != "cuda":
            raise EdgedaError("the torch backend runs fp16 on CUDA only; this run is on the CPU")
        if threads:
            torch.set_num_threads(threads)
        self.model = bundle.module(bundle.primary, str(self.dev))
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = self.model.to(self.dtype)
        self.device = str(self.dev)

        self.infer = task_of(bundle.task).infer  # float outputs, or a detector's post-processed boxes

    def forward(self, x):
        torch = self.torch
        with torch.inference_mode():
            if self.dev.type != "cuda":
                return _numpy(self.infer(self.model, torch.from_numpy(x)))
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            ev[0].record()
            xd = torch.from_numpy(x).to(self.dev, non_blocking=False).to(self.dtype)
            ev[1].record()
            y = self.infer(self.model, xd)
            ev[2].record()
            out = _numpy(y)
            ev[3].record()
            ev[3].synchronize()
            self.timings = {"h2d_ms": ev[0].elapsed_time(ev[1]), "compute_ms": ev[1].elapsed_time(ev[2]),
                            "d2h_ms": ev[2].elapsed_time(ev[3])}
            return out


@contextlib.contextmanager
def onnx_file(bundle: Bundle, precision: str, deployable: str | None = None, calib: str | None = None):
    """``with onnx_file(bundle, "fp32") as path``: the bundle's ONNX for ``precision`` (of its task
    network unless ``deployable`` is named); a bundle without one is exported into a temporary folder
    that is removed when the block ends (ONNX Runtime holds the graph in memory once its session exists)."""
    deployable = deployable or bundle.primary
    rel = onnx_name(deployable, precision)
    if rel in bundle.manifest["files"]:
        yield bundle.file(rel)
        return
    folder = Path(tempfile.mkdtemp(prefix="edgeda-onnx-"))
    try:
        module = bundle.module(deployable, "cpu")
        if exports_postprocessing(module):  # a detector: decoding and NMS in the graph
            opts = task_of(bundle.task).postprocess_options
            path = folder / Path(rel).name
            export_detector_onnx(module, path, tuple(bundle.task.image_size), score_thresh=opts["score_thresh"],
                                 max_det=opts["max_det"], check=False, precision=precision,
                                 calib_images=calibration_images(bundle, calib)[0] if precision == "int8" else None)
            yield path
            return
        yield export_deployable_onnx(bundle, deployable, precision, folder, calib=calib)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@RUNNERS.register("ort")
class OrtRunner(Runner):
    """ONNX Runtime with the best installed provider: TensorRT > CUDA > CPU (``device='cpu'`` forces CPU)."""

    name = "ort"

    def __init__(self, bundle, precision="fp32", *, device="cpu", threads=None, providers=None):
        super().__init__(bundle, precision, device=device, threads=threads)
        import onnxruntime as ort

        available = ort.get_available_providers()
        if providers is None:
            wanted = ["CPUExecutionProvider"]
            if device != "cpu":
                wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + wanted
            providers = wanted
        missing = [p for p in providers if p not in available]
        if missing:
            raise MissingDependency(f"ONNX Runtime here lacks {', '.join(missing)} (has {', '.join(available)}); "
                                    f"install onnxruntime-gpu for CUDA/TensorRT")
        with onnx_file(bundle, precision) as path:  # a temporary export is gone once the session holds it
            self.path = path
            self.session = ort_session(path, providers, threads)
        self.providers = self.session.get_providers()
        self.input = self.session.get_inputs()[0].name

        # a graph ending in padded detections (NMS inside) gives one record per image, as the torch runner
        self.boxes = [o.name for o in self.session.get_outputs()] == list(BOX_OUTPUTS)

    def forward(self, x):
        if self.boxes:
            return run_detector_ort(self.session, x)
        return np.asarray(self.session.run(None, {self.input: x})[0], np.float32)

    def describe(self):
        return {**super().describe(), "providers": self.providers, "onnx": self.path.name}


@RUNNERS.register("trt")
class TrtRunner(Runner):
    """A TensorRT engine from the bundle (``edgeda export --trt``), checked against this GPU/TensorRT."""

    name = "trt"

    def __init__(self, bundle, precision="fp32", *, device="cuda", threads=None, plugin_library=None):
        super().__init__(bundle, precision, device="cuda", threads=threads)

        require_tensorrt()
        rel = plan_name(bundle.primary, precision)
        if rel not in bundle.manifest["files"]:
            raise EdgedaError(f"the bundle has no {precision} TensorRT engine; build one with "
                              f"`edgeda export BUNDLE --trt --precision {precision}`")
        self.engine = TrtEngine(bundle.file(rel), plugin_library)
        self.input = self.engine.inputs[0]
        self.output = next((o for o in ("logits", "depth") if o in self.engine.outputs), self.engine.outputs[0])
        # a detector's engine ends in EfficientNMS_TRT's padded detections: one record per image, as ort's
        self.boxes = set(self.engine.outputs) == set(BOX_OUTPUTS)

    def forward(self, x):
        out = self.engine.run({self.input: x})
        self.timings = dict(self.engine.timings)
        if self.boxes:
            return padded_detections(*(out[k] for k in BOX_OUTPUTS))
        return np.asarray(out[self.output], np.float32)


def _numpy(value):
    """Tensors as float32 numpy arrays (a detector's per-image records: dicts of arrays)."""
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numpy(v) for v in value]
    return (value.float() if value.is_floating_point() else value).cpu().numpy()
