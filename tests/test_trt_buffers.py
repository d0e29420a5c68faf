"""The TensorRT runner's buffer handling, with stand-ins for TensorRT and cuda-python (the real
engine tests in test_runtime.py / test_kernels.py need both and a GPU): device buffers are
allocated once per input shape, outputs come back, and every CUDA return code is checked."""
import ctypes
import enum

import numpy as np
import pytest

from edgeda.errors import EdgedaError
from edgeda.export import trt as trt_mod


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class FakeCudart:
    """Device memory as host byte arrays keyed by fake pointers."""

    cudaError_t = _Err

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, fail_malloc=False):
        self.mem, self.next, self.mallocs, self.frees, self.fail_malloc = {}, 1000, 0, 0, fail_malloc

    def cudaStreamCreate(self):
        return _Err.cudaSuccess, 7

    def cudaStreamDestroy(self, s):
        return (_Err.cudaSuccess,)

    def cudaStreamSynchronize(self, s):
        return (_Err.cudaSuccess,)

    def cudaMalloc(self, n):
        if self.fail_malloc:
            return _Err.cudaErrorMemoryAllocation, 0
        self.mallocs += 1
        self.next += 1
        self.mem[self.next] = (ctypes.c_char * n)()
        return _Err.cudaSuccess, self.next

    def cudaFree(self, p):
        self.frees += 1
        del self.mem[p]
        return (_Err.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            ctypes.memmove(self.mem[dst], src, n)
        else:
            ctypes.memmove(dst, self.mem[src], n)
        return (_Err.cudaSuccess,)

    def cudaGetErrorName(self, err):
        return _Err.cudaSuccess, _Err(err).name.encode()


class FakeContext:
    """An 'engine' whose output is its input times two (float32, same shape)."""

    def __init__(self, cudart):
        self.cudart, self.shape, self.addr, self.address_sets = cudart, None, {}, 0

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape

    def set_tensor_address(self, name, ptr):
        self.address_sets += 1
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        src = np.frombuffer(self.cudart.mem[self.addr["image"]], np.float32)
        np.frombuffer(self.cudart.mem[self.addr["logits"]], np.float32)[:] = 2 * src
        return True


def _engine(monkeypatch, cudart):
    monkeypatch.setattr(trt_mod, "_cudart", lambda: cudart)
    e = object.__new__(trt_mod.TrtEngine)
    e.inputs, e.outputs, e.torch, e.timings = ["image"], ["logits"], None, {}
    e._dev, e._host, e._shape_key, e._stream = {}, {}, None, None
    e.context = FakeContext(cudart)
    e._dtype = lambda name: np.dtype(np.float32)
    return e


def test_buffers_are_allocated_once_per_shape(monkeypatch):
    cudart = FakeCudart()
    e = _engine(monkeypatch, cudart)
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    for _ in range(3):
        np.testing.assert_array_equal(e.run({"image": x})["logits"], 2 * x)
    assert cudart.mallocs == 2 and e.context.address_sets == 2  # one input + one output, once
    y = np.ones((2, 6), np.float32)
    np.testing.assert_array_equal(e.run({"image": y})["logits"], 2 * y)
    assert cudart.mallocs == 4 and cudart.frees == 2  # a new shape: the old buffers freed, new ones made
    e.close()
    assert cudart.frees == 4 and not cudart.mem


def test_cuda_errors_are_raised_by_name(monkeypatch):
    e = _engine(monkeypatch, FakeCudart(fail_malloc=True))
    with pytest.raises(EdgedaError, match="cudaErrorMemoryAllocation"):
        e.run({"image": np.zeros((1, 4), np.float32)})
