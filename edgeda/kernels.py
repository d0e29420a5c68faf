"""Fused CUDA kernels for edge inference, and the pure-PyTorch references they are tested against.

Three kernels live in ``kernels/src`` (C launchers in ``kernels/include/edgeda_kernels.h``); the
same code backs the TensorRT plugins in ``kernels/plugins``. Here each has a CUDA entry point
(CUDA tensors only; the extension is compiled on first use with
``torch.utils.cpp_extension.load``) and a ``*_reference`` that runs anywhere:

* :func:`preprocess` -- uint8 NHWC frames -> bilinear resize (half-pixel centres, PyTorch
  ``align_corners=False``) -> ``(v * scale - mean_c) / std_c`` -> NCHW float32/float16.
* :func:`confidence` -- logits ``(N, C[, H, W])`` -> class ``argmax_k x_k`` (int32), confidence
  ``max_k softmax(x)_k`` and entropy ``H = -sum_k p_k log p_k``.
* :func:`instnorm_act` -- ``act(gamma_c (x - mu) / sqrt(var + eps) + beta_c)`` with per-(n, c)
  mean ``mu`` and biased variance ``var`` (Ulyanov et al. 2016, "Instance Normalization"),
  ``act`` in {none, relu, leaky_relu}.

Usage::

    from edgeda import kernels
    x = kernels.preprocess(frames_u8.cuda(), mean=(0.5,) * 3, std=(0.5,) * 3, size=(224, 224))
    cls, conf, ent = kernels.confidence(model(x))
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from edgeda.errors import MissingDependency

ACTIVATIONS = {"none": 0, "relu": 1, "leaky_relu": 2}


# --------------------------------------------------------------------------- references


def _channel_vector(values, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(values, dtype=dtype, device=like.device).reshape(1, -1, 1, 1)


def preprocess_reference(frame: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                         size: tuple[int, int], scale: float = 1.0 / 255.0,
                         dtype: torch.dtype = torch.float32,
                         compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unfused pre-processing: ``(bilinear(frame) * scale - mean) / std`` in NCHW.

    ``frame`` is ``(N, H, W, C)`` (or ``(H, W, C)``) of uint8/float; ``size`` is ``(out_h, out_w)``.
    Interpolation is done on the pixel values converted to ``compute_dtype`` (no rounding back
    to uint8), with ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``.
    """
    if frame.dim() == 3:
        frame = frame.unsqueeze(0)
    x = frame.to(compute_dtype).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    y = (x * scale - _channel_vector(mean, x, compute_dtype)) / _channel_vector(std, x, compute_dtype)
    return y.to(dtype).contiguous()


def confidence_reference(logits: torch.Tensor, dtype: torch.dtype | None = None,
                         compute_dtype: torch.dtype = torch.float32):
    """Unfused confidence head over the class axis 1 of ``(N, C, ...)`` logits.

    Returns ``(cls, prob, entropy)``: ``cls = argmax_k x_k`` (int32, first maximum),
    ``prob = max_k p_k`` and ``entropy = -sum_k p_k log p_k`` with ``p = softmax(x)`` and the
    convention ``0 log 0 = 0``; ``prob``/``entropy`` have ``dtype`` (default: the logits' dtype).
    """
    out_dtype = dtype or logits.dtype
    x = logits.to(compute_dtype)
    logp = torch.log_softmax(x, dim=1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return (x.argmax(dim=1).to(torch.int32), p.amax(dim=1).to(out_dtype),
            (-plogp.sum(dim=1)).to(out_dtype))


def _activate(y: torch.Tensor, activation: str, alpha: float) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, alpha)
    if activation == "none":
        return y
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def instnorm_act_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float = 1e-5, activation: str = "relu", alpha: float = 0.01,
                           compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unfused ``act(F.instance_norm(x, weight, bias, eps))``, returned in ``x``'s dtype."""
    y = F.instance_norm(x.to(compute_dtype), weight=weight.to(compute_dtype),
                        bias=bias.to(compute_dtype), eps=eps)
    return _activate(y, activation, alpha).to(x.dtype)


# --------------------------------------------------------------------------- CUDA kernels


def kernels_dir() -> Path:
    """The ``kernels/`` source folder (``EDGEDA_KERNELS_DIR`` overrides the repository default)."""
    return Path(os.environ.get("EDGEDA_KERNELS_DIR", Path(__file__).resolve().parents[1] / "kernels"))


def cuda_available() -> bool:
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def extension():
    """Compile (once per process; cached on disk by torch) and return the CUDA extension."""
    if not torch.cuda.is_available():
        raise MissingDependency("The edgeda CUDA kernels need a CUDA device, and torch sees none.")
    root = kernels_dir()
    sources = [root / "torch" / "binding.cpp"] + sorted((root / "src").glob("*.cu"))
    if not all(p.exists() for p in sources) or len(sources) < 4:
        raise MissingDependency(f"The kernel sources were not found under {root}.")
    from torch.utils.cpp_extension import load

    try:
        return load(name="edgeda_kernels_ext", sources=[str(p) for p in sources],
                    extra_include_paths=[str(root / "include"), str(root / "src")],
                    extra_cflags=["-O3"],
                    extra_cuda_cflags=["-O3"], verbose=False)
    except (OSError, RuntimeError) as exc:  # no nvcc, no compiler, failed build
        raise MissingDependency(f"The edgeda CUDA extension could not be built: {exc}") from exc


def _device_vector(values, device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).reshape(-1).to(device).contiguous()


def preprocess(frame: torch.Tensor, mean: Sequence[float], std: Sequence[float],
               size: tuple[int, int], scale: float = 1.0 / 255.0,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fused :func:`preprocess_reference` on a CUDA ``(N, H, W, C)`` uint8/float16/float32 frame."""
    squeeze = frame.dim() == 3
    frame = (frame.unsqueeze(0) if squeeze else frame).contiguous()
    if dtype not in (torch.float32, torch.float16):
        raise ValueError("preprocess writes float32 or float16")
    out = extension().preprocess(frame, _device_vector(mean, frame.device),
                                 _device_vector(std, frame.device), float(scale),
                                 int(size[0]), int(size[1]), dtype == torch.float16)
    return out[0] if squeeze else out


def confidence(logits: torch.Tensor, dtype: torch.dtype | None = None):
    """Fused :func:`confidence_reference` on CUDA logits; returns ``(cls, prob, entropy)``."""
    out_dtype = dtype or logits.dtype
    if out_dtype not in (torch.float32, torch.float16):
        raise ValueError("confidence writes float32 or float16 probabilities")
    cls, prob, ent = extension().confidence(logits.contiguous(), out_dtype == torch.float16)
    return cls, prob, ent


def instnorm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                 activation: str = "relu", alpha: float = 0.01) -> torch.Tensor:
    """Fused :func:`instnorm_act_reference` on a CUDA ``(N, C, ...)`` float32/float16 tensor."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return extension().instnorm_act(x.contiguous(), weight.to(x.dtype).contiguous(),
                                    bias.to(x.dtype).contiguous(), float(eps),
                                    ACTIVATIONS[activation], float(alpha))
