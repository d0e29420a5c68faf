"""TensorRT engines through the Python API, for TensorRT 10.3 (JetPack 6) and 11.x.

Imported only when an engine is built or run; nothing else in edgeda imports ``tensorrt``.

* 10.x: a weakly typed network (``create_network(0)``); fp16 with ``BuilderFlag.FP16``; int8 with
  ``BuilderFlag.INT8`` + an ``IInt8EntropyCalibrator2`` fed with target images and a calibration
  cache next to the engine (the fp32 ONNX is parsed; layers left in higher precision may use fp16).
* 11.x: networks are always strongly typed, there are no FP16/INT8 builder flags and no
  calibrators: the precision is the ONNX's own (the fp16 ONNX, or the Q/DQ int8 ONNX).
* Both: one optimization profile (min/opt/max batch) for every input, a workspace limit, a timing
  cache file, ``build_serialized_network``. Next to ``NAME.plan`` goes ``NAME.plan.json``: the
  TensorRT version, CUDA version, GPU name and compute capability and the build options, all as
  strings (TensorRT enum values changed between 10 and 11, so none is stored as an integer).
  :func:`check_engine_metadata` refuses an engine built elsewhere, with a message to rebuild.

Device memory comes from torch CUDA tensors when torch has CUDA, else from cuda-python.

Which paths have run: the dependency and metadata checks (and their tests) on machines without
TensorRT. Building and running engines is written against the public TensorRT 10.3 and 11 Python
API and is exercised by the tests marked for TensorRT, which skip where TensorRT and a GPU are
absent; the README says which of those ran on a GPU.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import EdgedaError, MissingDependency
from .files import plan_name

INSTALL_HINT = ("install TensorRT's Python package (JetPack 6 ships it as python3-libnvinfer; "
                "on x86-64: pip install tensorrt)")
METADATA_SUFFIX = ".json"


def require_tensorrt():
    """Return the ``tensorrt`` module if it and a CUDA GPU are usable; else raise one sentence."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise MissingDependency(f"--trt needs TensorRT, which is not installed: {INSTALL_HINT}") from None
    if gpu_info() is None:
        raise MissingDependency("--trt needs an NVIDIA GPU with a working CUDA driver, and none was found "
                                "(check nvidia-smi, or build the engine on the Jetson/GPU machine itself)")
    return trt


def gpu_info() -> dict | None:
    """Name, compute capability and CUDA runtime version of GPU 0, or None without one."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "sm": f"{major}.{minor}", "cuda": str(torch.version.cuda)}
    except ImportError:
        pass
    cudart = _cudart()
    if cudart is None:
        return None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return None
    _, props = cudart.cudaGetDeviceProperties(0)
    _, version = cudart.cudaRuntimeGetVersion()
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name, "sm": f"{props.major}.{props.minor}", "cuda": f"{version // 1000}.{(version % 1000) // 10}"}


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def _cuda_check(cudart, result, what: str):
    """cuda-python calls return ``(error, *values)``: raise on an error, else return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise EdgedaError(f"CUDA error during {what}: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


# -- metadata -----------------------------------------------------------------------------------
def runtime_identity(trt=None) -> dict:
    """What an engine is tied to, for the running process: TensorRT version, CUDA version, GPU, SM."""
    trt = trt or require_tensorrt()
    info = gpu_info() or {}
    return {"tensorrt": str(trt.__version__), "cuda": info.get("cuda"), "gpu": info.get("gpu"), "sm": info.get("sm")}


def check_engine_metadata(meta: dict, current: dict, engine: str | Path = "engine") -> None:
    """Refuse an engine whose recorded TensorRT version, CUDA version, GPU or SM differ from ``current``."""
    if not isinstance(meta, dict) or meta.get("format") != "edgeda-trt-engine":
        raise EdgedaError(f"{engine} has no edgeda engine metadata; rebuild it with `edgeda export BUNDLE --trt`")
    for key, what in (("tensorrt", "TensorRT"), ("cuda", "CUDA"), ("gpu", "GPU"), ("sm", "compute capability")):
        built, now = meta.get(key), current.get(key)
        if key == "tensorrt" and built and now:  # serialized engines need the same major.minor.patch
            built, now = ".".join(str(built).split(".")[:3]), ".".join(str(now).split(".")[:3])
        if key == "cuda" and built and now:
            built, now = ".".join(str(built).split(".")[:2]), ".".join(str(now).split(".")[:2])
        if built != now:
            raise EdgedaError(f"{engine} was built for {what} {built} but this machine has {now}; engines are not "
                              f"portable, so rebuild it here with `edgeda export BUNDLE --trt`")


def read_engine_metadata(plan: str | Path) -> dict:
    meta_path = Path(str(plan) + METADATA_SUFFIX)
    if not meta_path.is_file():
        raise EdgedaError(f"{plan} has no metadata file {meta_path.name}; rebuild it with `edgeda export BUNDLE --trt`")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise EdgedaError(f"{meta_path} is not valid JSON; rebuild the engine with `edgeda export BUNDLE --trt`") from None


# -- build --------------------------------------------------------------------------------------
class _Logger:
    def __init__(self, trt):
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)


def _make_calibrator(trt, images: np.ndarray, cache: Path, batch: int):
    """IInt8EntropyCalibrator2 over ``images`` (N, C, H, W float32) -- TensorRT 10.x only."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        raise MissingDependency("int8 calibration on TensorRT 10 feeds images through PyTorch CUDA tensors; "
                                "install a CUDA build of PyTorch (or use the Q/DQ int8 ONNX on TensorRT 11)")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.data, self.i, self.batch = images, 0, batch
            self.device = torch.empty((batch, *images.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self):
            return self.batch

        def get_batch(self, names):
            if self.i + self.batch > len(self.data):
                return None
            self.device.copy_(torch.from_numpy(self.data[self.i:self.i + self.batch]))
            self.i += self.batch
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, blob):
            cache.write_bytes(bytes(blob))

    return EntropyCalibrator()


def _spatial_profile(rest: tuple, spatial, name: str):
    """min/opt/max of a (C, H, W) input whose H and W are dynamic (-1)."""
    if spatial is None or len(rest) != 3 or rest[0] < 0:
        raise EdgedaError(f"input {name!r} has dynamic dimensions {rest}; give the input size (H, W) for the profile")
    h, w = (int(v) for v in spatial)

    def r32(v):
        return max(32, int(round(v / 32)) * 32)

    c = rest[0]
    return (c, r32(h / 2), r32(w / 2)), (c, h, w), (c, max(r32(2 * h), h), max(r32(2 * w), w))


def _optimization_profile(builder, network, batch: tuple[int, int, int], spatial: Sequence[int] | None):
    """One profile over every input: the batch range, and for dynamic height and width the spatial one."""
    b_min, b_opt, b_max = batch
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        if any(d < 0 for d in rest):
            lo, opt, hi = _spatial_profile(rest, spatial, t.name)
            profile.set_shape(t.name, (b_min, *lo), (b_opt, *opt), (b_max, *hi))
        else:
            profile.set_shape(t.name, (b_min, *rest), (b_opt, *rest), (b_max, *rest))
    return profile


def _engine_metadata(trt, network, onnx_path, precision: str, batch: tuple[int, int, int], workspace_mb: int,
                     calibrated: bool, plugin_library) -> dict:
    """The JSON written beside an engine: the TensorRT/CUDA/GPU identity it was built with and its options."""
    major = trt_major(trt)
    return {
        "format": "edgeda-trt-engine",
        **runtime_identity(trt),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "options": {
            "precision": precision, "batch": dict(zip(("min", "opt", "max"), batch)),
            "workspace_mb": int(workspace_mb), "strongly_typed": major >= 11,
            "builder_flags": ([] if major >= 11 else (["FP16"] if precision != "fp32" else [])
                              + (["INT8"] if precision == "int8" else [])),
            "int8_calibrator": "IInt8EntropyCalibrator2" if calibrated else None,
            "plugin_library": Path(plugin_library).name if plugin_library else None,
            "onnx": Path(onnx_path).name,
        },
        "inputs": [network.get_input(i).name for i in range(network.num_inputs)],
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
    }


def build_engine(onnx_path: str | Path, plan_path: str | Path, *, precision: str = "fp32",
                 batch: Sequence[int] = (1, 8, 32), workspace_mb: int = 1024, calib: np.ndarray | None = None,
                 timing_cache: str | Path | None = None, plugin_library: str | Path | None = None,
                 spatial: Sequence[int] | None = None) -> dict:
    """Build ``plan_path`` from ``onnx_path`` and write its metadata; returns the metadata.

    ``precision`` names the ONNX's and the engine's precision: on 11.x ``onnx_path`` must already
    be the fp16 / Q/DQ int8 graph; on 10.x it is the fp32 graph and ``calib`` feeds int8 calibration.
    ``spatial`` = (H, W): for inputs whose height and width are dynamic (dense models), the
    profile's opt shape; min is half of it and max twice it (multiples of 32, at least 32).
    """
    trt = require_tensorrt()
    major = trt_major(trt)
    if precision not in ("fp32", "fp16", "int8"):
        raise EdgedaError(f"unknown precision {precision!r}; valid: fp32, fp16, int8")
    b_min, b_opt, b_max = (int(b) for b in batch)
    if not 1 <= b_min <= b_opt <= b_max:
        raise EdgedaError(f"--batch must be min,opt,max with 1 <= min <= opt <= max, got {b_min},{b_opt},{b_max}")
    plan_path = Path(plan_path)
    log = _Logger(trt).logger
    trt.init_libnvinfer_plugins(log, "")  # TensorRT's own plugins (EfficientNMS_TRT of a detector graph)
    if plugin_library:
        trt.get_plugin_registry().load_library(str(plugin_library))
    builder = trt.Builder(log)
    network = builder.create_network(0)  # never EXPLICIT_BATCH (removed in 11); 11 is always strongly typed
    parser = trt.OnnxParser(network, log)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgedaError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = _optimization_profile(builder, network, (b_min, b_opt, b_max), spatial)
    config.add_optimization_profile(profile)
    calib_cache = None
    if major < 11:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if calib is None:
                raise EdgedaError("an int8 engine on TensorRT 10 needs calibration images (--calib)")
            calib_cache = Path(str(plan_path) + ".calib")
            config.int8_calibrator = _make_calibrator(trt, calib, calib_cache, min(b_max, 32))
            config.set_calibration_profile(profile)
    cache_blob = b""
    if timing_cache and Path(timing_cache).is_file():
        cache_blob = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgedaError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = _engine_metadata(trt, network, onnx_path, precision, (b_min, b_opt, b_max), workspace_mb,
                            calib_cache is not None, plugin_library)
    Path(str(plan_path) + METADATA_SUFFIX).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def engine_into_bundle(src: Path, tmp: Path, name: str, precision: str, *, batch: Sequence[int], workspace_mb: int,
                       calib: np.ndarray | None, plugin_library, spatial: Sequence[int] | None, add: dict,
                       log: Callable[[str], None]) -> dict:
    """Build deployable ``name``'s engine from ``src`` into ``tmp/trt/`` and list its files (plan, metadata,
    calibration cache, timing cache) in ``add`` under their bundle paths; returns the manifest entry."""
    plan = tmp / plan_name(name, precision)
    meta = build_engine(src, plan, precision=precision, batch=batch, workspace_mb=workspace_mb, calib=calib,
                        timing_cache=tmp / "trt" / "timing.cache", plugin_library=plugin_library, spatial=spatial)
    for f in plan.parent.iterdir():
        if f.name.startswith(plan.name) or f.name == "timing.cache":
            add[f"trt/{f.name}"] = f
    log(f"  {name}: TensorRT {meta['tensorrt']} engine ({precision}) for {meta['gpu']} (SM {meta['sm']})")
    return {"plan": plan_name(name, precision), "metadata": meta}


# -- run ----------------------------------------------------------------------------------------
def resolve_plugin_library(meta: dict, given: str | Path | None, engine: str | Path = "engine") -> Path | None:
    """The plugin library to load before deserializing an engine: ``given``, else the
    ``EDGEDA_PLUGIN_LIBRARY`` environment variable. An engine whose metadata says it was built with
    edgeda's plugins cannot load without one: that is one clear error here instead of TensorRT's
    "plugin creator not found" deep inside deserialization."""
    lib = given or os.environ.get("EDGEDA_PLUGIN_LIBRARY") or None
    if lib:
        if not Path(lib).is_file():
            raise EdgedaError(f"plugin library {lib} does not exist (build it: see kernels/README.md)")
        return Path(lib)
    needed = meta.get("plugin_library") if isinstance(meta, dict) else None
    if needed:
        raise EdgedaError(f"{engine} was built with edgeda's TensorRT plugins ({needed}); pass --plugins PATH/{needed} "
                          "(or set EDGEDA_PLUGIN_LIBRARY)")
    return None


class TrtEngine:
    """A deserialized engine + execution context over torch CUDA tensors (or cuda-python buffers).

    ``run(inputs) -> {output name: np.ndarray}``; ``timings`` after each call holds the
    host-to-device / compute / device-to-host milliseconds measured with CUDA events.
    """

    def __init__(self, plan: str | Path, plugin_library: str | Path | None = None):
        trt = require_tensorrt()
        meta = read_engine_metadata(plan)
        check_engine_metadata(meta, runtime_identity(trt), plan)
        self.trt, self.meta = trt, meta
        self.log = _Logger(trt).logger
        plugin_library = resolve_plugin_library(meta, plugin_library, plan)
        trt.init_libnvinfer_plugins(self.log, "")
        if plugin_library:
            trt.get_plugin_registry().load_library(str(plugin_library))
        self.runtime = trt.Runtime(self.log)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise EdgedaError(f"TensorRT could not load {plan}; rebuild it with `edgeda export BUNDLE --trt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.timings: dict = {}
        self._dev, self._host, self._shape_key, self._stream = {}, {}, None, None
        try:
            import torch

            self.torch = torch if torch.cuda.is_available() else None
        except ImportError:
            self.torch = None
        if self.torch is None and _cudart() is None:
            raise MissingDependency("running a TensorRT engine needs PyTorch with CUDA or cuda-python "
                                    "(pip install cuda-python)")

    def _dtype(self, name):
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on host arrays. Device buffers (and the tensor addresses set on the
        context) are allocated once per combination of input shapes and reused by later calls."""
        arrays = {n: np.ascontiguousarray(inputs[n], self._dtype(n)) for n in self.inputs}
        key = tuple(arrays[n].shape for n in self.inputs)
        if key != self._shape_key:
            self._release()
            for name in self.inputs:
                if not self.context.set_input_shape(name, arrays[name].shape):
                    raise EdgedaError(f"TensorRT rejected input {name!r} of shape {arrays[name].shape} "
                                      "(outside the engine's optimization profile?)")
            self._allocate(arrays)
            self._shape_key = key
        if self.torch is not None:
            return self._run_torch(arrays)
        return self._run_cudart(arrays)

    def _allocate(self, arrays):
        shapes = {n: tuple(arrays[n].shape) for n in self.inputs}
        shapes.update({n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs})
        if self.torch is not None:
            torch = self.torch
            dt = {n: torch.from_numpy(np.zeros(0, self._dtype(n))).dtype for n in shapes}
            self._dev = {n: torch.empty(shapes[n], dtype=dt[n], device="cuda") for n in shapes}
            self._host = {n: torch.empty(shapes[n], dtype=dt[n]).pin_memory() for n in self.inputs}
            ptrs = {n: int(t.data_ptr()) for n, t in self._dev.items()}
        else:
            cudart = _cudart()
            if self._stream is None:
                self._stream = _cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._host = {n: np.empty(shapes[n], self._dtype(n)) for n in self.outputs}
            ptrs = {}
            for n in shapes:
                nbytes = max(int(np.prod(shapes[n])) * self._dtype(n).itemsize, 1)
                ptrs[n] = _cuda_check(cudart, cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {n!r}")
                self._dev[n] = ptrs[n]
        for n, ptr in ptrs.items():
            if not self.context.set_tensor_address(n, ptr):
                raise EdgedaError(f"TensorRT rejected the device address of {n!r}")

    def _release(self):
        if self.torch is None and self._dev:
            cudart = _cudart()
            for ptr in self._dev.values():
                _cuda_check(cudart, cudart.cudaFree(ptr), "cudaFree")
        self._dev, self._host, self._shape_key = {}, {}, None

    def close(self):
        """Free the device buffers and the stream (also done when the engine is garbage-collected)."""
        try:
            self._release()
            if self._stream is not None:
                cudart = _cudart()
                _cuda_check(cudart, cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
                self._stream = None
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver frees what is left
            pass

    def __del__(self):
        self.close()

    def _run_torch(self, arrays):
        torch = self.torch
        stream = torch.cuda.current_stream()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record(stream)
        for name in self.inputs:
            self._host[name].numpy()[...] = arrays[name]
            self._dev[name].copy_(self._host[name], non_blocking=True)
        ev[1].record(stream)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EdgedaError("TensorRT failed to run the engine")
        ev[2].record(stream)
        out = {n: self._dev[n].cpu().numpy() for n in self.outputs}
        ev[3].record(stream)
        ev[3].synchronize()
        self.timings = {"h2d_ms": ev[0].elapsed_time(ev[1]), "compute_ms": ev[1].elapsed_time(ev[2]),
                        "d2h_ms": ev[2].elapsed_time(ev[3])}
        return out

    def _run_cudart(self, arrays):
        cudart = _cudart()
        H2D, D2H = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        stream = self._stream
        for name in self.inputs:
            arr = arrays[name]
            _cuda_check(cudart, cudart.cudaMemcpyAsync(self._dev[name], arr.ctypes.data, arr.nbytes, H2D, stream),
                        f"copying input {name!r} to the GPU")
        if not self.context.execute_async_v3(int(stream)):
            raise EdgedaError("TensorRT failed to run the engine")
        for name in self.outputs:
            host = self._host[name]
            _cuda_check(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, self._dev[name], host.nbytes, D2H, stream),
                        f"copying output {name!r} from the GPU")
        _cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        self.timings = {}
        return {n: self._host[n].copy() for n in self.outputs}
