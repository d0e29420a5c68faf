"""CPU (NumPy) implementations of the edgeda plugin ops for ONNX Runtime.

They let a graph rewritten by :mod:`edgeda.export.plugins` run in ONNX Runtime on a CPU, through
Python custom ops of ``onnxruntime-extensions`` (domain ``ai.onnx.contrib``), so it can be
compared with the original graph without a GPU or TensorRT. They are written independently of
the PyTorch references in :mod:`edgeda.kernels` (float64, explicit gathers / two-pass softmax)
so the two can check each other.

Usage::

    sess = onnxruntime.InferenceSession(rewritten.SerializeToString(), ort_session_options(),
                                        providers=["CPUExecutionProvider"])
"""

from __future__ import annotations

import numpy as np

from edgeda.errors import MissingDependency

OP_PREPROCESS = "EdgedaPreprocess"
OP_CONFIDENCE = "EdgedaConfidence"
OP_INSTNORM_ACT = "EdgedaInstanceNormAct"


def bilinear_numpy(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear resize of ``(N, H, W, C)`` to ``(N, out_h, out_w, C)`` in float64.

    Source coordinate ``s = max((d + 0.5) * in / out - 0.5, 0)``; neighbours ``floor(s)`` and
    ``min(floor(s) + 1, in - 1)``; weights ``1 - frac(s)`` and ``frac(s)``.
    """
    img = img.astype(np.float64)
    _, h, w, _ = img.shape

    def axis(n_in: int, n_out: int):
        s = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    y0, y1, ly = axis(h, out_h)
    x0, x1, lx = axis(w, out_w)
    ly = ly[None, :, None, None]
    lx = lx[None, None, :, None]
    top = img[:, y0][:, :, x0] * (1 - lx) + img[:, y0][:, :, x1] * lx
    bottom = img[:, y1][:, :, x0] * (1 - lx) + img[:, y1][:, :, x1] * lx
    return top * (1 - ly) + bottom * ly


def preprocess_numpy(frame: np.ndarray, mean, std, out_h: int, out_w: int,
                     scale: float = 1.0 / 255.0) -> np.ndarray:
    """``(bilinear(frame) * scale - mean_c) / std_c``, NHWC in, NCHW float64 out."""
    v = bilinear_numpy(frame, out_h, out_w) * scale
    y = (v - np.asarray(mean, np.float64).reshape(-1)) / np.asarray(std, np.float64).reshape(-1)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def confidence_numpy(logits: np.ndarray):
    """Class (int32), max softmax probability and entropy over axis 1, in float64."""
    x = logits.astype(np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    z = e.sum(axis=1, keepdims=True)
    p = e / z
    logp = shifted - np.log(z)
    entropy = -np.sum(np.where(p > 0, p * logp, 0.0), axis=1)
    return x.argmax(axis=1).astype(np.int32), p.max(axis=1), entropy


def instnorm_act_numpy(x: np.ndarray, gamma, beta, eps: float = 1e-5, activation: int = 1,
                       alpha: float = 0.01) -> np.ndarray:
    """``act(gamma_c (x - mu) / sqrt(var + eps) + beta_c)`` per (n, c) plane, in float64."""
    x64 = x.astype(np.float64)
    axes = tuple(range(2, x.ndim))
    mu = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mu) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x64 - mu) / np.sqrt(var + eps) * np.asarray(gamma, np.float64).reshape(shape) \
        + np.asarray(beta, np.float64).reshape(shape)
    if activation == 1:
        return np.maximum(y, 0.0)
    if activation == 2:
        return np.where(y >= 0, y, y * alpha)
    return y


_REGISTERED = False


def register_ort_ops() -> str:
    """Register the three ops with onnxruntime-extensions (once) and return its library path."""
    global _REGISTERED
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError as exc:
        raise MissingDependency("Running plugin graphs in ONNX Runtime needs onnxruntime-extensions "
                                "(pip install onnxruntime-extensions).") from exc
    if not _REGISTERED:
        f32, i32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32
        i64 = PyCustomOpDef.dt_int64

        # The Python custom-op API has no float16 tensors: graphs for ONNX Runtime are made
        # with add_preprocess_prologue(..., frame_dtype="float32").
        @onnx_op(op_type=OP_PREPROCESS, inputs=[f32, f32, f32], outputs=[f32],
                 attrs={"out_height": i64, "out_width": i64, "scale": f32, "fp16_output": i64})
        def _preprocess(frame, mean, std, out_height=0, out_width=0, scale=1 / 255, fp16_output=0):
            if fp16_output:
                raise ValueError("the ONNX Runtime CPU op of EdgedaPreprocess writes float32 only")
            return preprocess_numpy(frame, mean, std, out_height, out_width, scale).astype(np.float32)

        @onnx_op(op_type=OP_CONFIDENCE, inputs=[f32], outputs=[i32, f32, f32])
        def _confidence(logits):
            cls, prob, ent = confidence_numpy(logits)
            return cls, prob.astype(np.float32), ent.astype(np.float32)

        @onnx_op(op_type=OP_INSTNORM_ACT, inputs=[f32, f32, f32], outputs=[f32],
                 attrs={"epsilon": f32, "activation": i64, "alpha": f32})
        def _instnorm_act(x, gamma, beta, epsilon=1e-5, activation=1, alpha=0.01):
            return instnorm_act_numpy(x, gamma, beta, epsilon, activation, alpha).astype(np.float32)

        _REGISTERED = True
    return get_library_path()


def ort_session_options():
    """``onnxruntime.SessionOptions`` with the edgeda plugin ops available (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(register_ort_ops())
    return options
