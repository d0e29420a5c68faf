"""edgeda CUDA kernels vs their PyTorch references, and the references vs NumPy.

GPU tests skip when torch sees no CUDA device. Error measures: ``rel`` is
``max|got - ref| / max|ref|`` over the tensor; probabilities and entropies use absolute error
(fp32) or ``|got - ref| <= tol * max(1, |ref|)`` (fp16, whose spacing near entropy ~7 is 4e-3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgeda import kernels
from edgeda.export.plugins_ort import confidence_numpy, instnorm_act_numpy, preprocess_numpy

F64 = torch.float64
FP32_TOL, FP16_TOL = 1e-5, 1e-3

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="no CUDA device visible to torch: GPU kernel tests not run")


def rel(got, ref) -> float:
    got, ref = torch.as_tensor(got).double().cpu(), torch.as_tensor(ref).double().cpu()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def abs_scaled(got, ref) -> float:
    got, ref = torch.as_tensor(got).double().cpu(), torch.as_tensor(ref).double().cpu()
    return float(((got - ref).abs() / ref.abs().clamp_min(1.0)).max())


# --------------------------------------------------------------------------- references (CPU)

PRE_SHAPES = [  # (n, in_h, in_w, c, out_h, out_w)
    (1, 5, 7, 3, 5, 7), (2, 47, 61, 3, 16, 16), (1, 9, 13, 1, 31, 17), (3, 64, 48, 4, 24, 32),
    (1, 1, 1, 3, 4, 4), (2, 33, 2, 3, 3, 40),
]


@pytest.mark.parametrize("shape", PRE_SHAPES)
def test_preprocess_reference_matches_numpy(shape):
    n, h, w, c, oh, ow = shape
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    mean, std = rng.uniform(0.3, 0.6, c), rng.uniform(0.2, 0.3, c)
    expected = preprocess_numpy(frame, mean, std, oh, ow)
    got64 = kernels.preprocess_reference(torch.from_numpy(frame), mean, std, (oh, ow), compute_dtype=F64,
                                         dtype=F64)
    assert got64.shape == (n, c, oh, ow)
    assert rel(got64, expected) <= 1e-12
    got32 = kernels.preprocess_reference(torch.from_numpy(frame), mean, std, (oh, ow))
    assert got32.dtype == torch.float32 and rel(got32, expected) <= FP32_TOL


def test_preprocess_reference_identity_size_is_plain_normalisation():
    frame = torch.arange(2 * 3 * 4 * 3, dtype=torch.uint8).reshape(2, 3, 4, 3)
    got = kernels.preprocess_reference(frame, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (3, 4), compute_dtype=F64)
    expected = (frame.double().permute(0, 3, 1, 2) / 255 - 0.5) / 0.25
    assert torch.allclose(got.double(), expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 2), (7, 10), (33, 1000), (2, 19, 9, 11), (1, 3, 1, 1)])
def test_confidence_reference_matches_numpy(shape):
    torch.manual_seed(len(shape) * 100 + shape[-1])
    logits = torch.randn(*shape) * 4
    cls, prob, ent = kernels.confidence_reference(logits)
    ncls, nprob, nent = confidence_numpy(logits.numpy())
    assert cls.dtype == torch.int32 and cls.shape == (shape[0],) + tuple(shape[2:])
    np.testing.assert_array_equal(cls.numpy(), ncls)
    assert np.abs(prob.numpy() - nprob).max() <= FP32_TOL
    assert np.abs(ent.numpy() - nent).max() <= FP32_TOL


def test_confidence_reference_is_stable_and_breaks_ties_first():
    logits = torch.tensor([[1e4, 1e4, -1e4], [0.0, 0.0, 0.0], [-80.0, 5.0, 5.0]])
    cls, prob, ent = kernels.confidence_reference(logits)
    assert cls.tolist() == [0, 0, 1]
    assert torch.allclose(prob, torch.tensor([0.5, 1 / 3, 0.5]))
    assert torch.allclose(ent, torch.tensor([math.log(2), math.log(3), math.log(2)]), atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "none"])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 8, 16, 16), (3, 2, 1, 9)])
def test_instnorm_act_reference_matches_numpy(shape, activation):
    torch.manual_seed(shape[1])
    x = torch.randn(*shape) * 3 + 1
    g, b = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    got = kernels.instnorm_act_reference(x, g, b, eps=1e-5, activation=activation, alpha=0.2)
    expected = instnorm_act_numpy(x.numpy(), g.numpy(), b.numpy(), 1e-5,
                                  kernels.ACTIVATIONS[activation], 0.2)
    assert rel(got, expected) <= FP32_TOL


def test_missing_cuda_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    from edgeda.errors import MissingDependency

    kernels.extension.cache_clear()
    with pytest.raises(MissingDependency, match="CUDA"):
        kernels.confidence(torch.randn(2, 3))


# --------------------------------------------------------------------------- CUDA kernels


def poison(nbytes: int) -> None:
    """Fill the caching allocator's next blocks with NaN so unwritten outputs are caught."""
    junk = torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")
    del junk


@requires_cuda
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", PRE_SHAPES + [(2, 1080, 1920, 3, 224, 224), (4, 480, 640, 3, 513, 511)])
def test_preprocess_cuda(shape, in_dtype, out_dtype):
    n, h, w, c, oh, ow = shape
    gen = torch.Generator().manual_seed(sum(shape))
    frame = torch.randint(0, 256, (n, h, w, c), generator=gen, dtype=torch.uint8).to(in_dtype)
    mean, std = (torch.rand(c, generator=gen) * 0.5 + 0.2).tolist(), (torch.rand(c, generator=gen) * 0.2 + 0.2).tolist()
    ref = kernels.preprocess_reference(frame, mean, std, (oh, ow), compute_dtype=F64, dtype=F64)
    poison(n * c * oh * ow * 4)
    got = kernels.preprocess(frame.cuda(), mean, std, (oh, ow), dtype=out_dtype)
    torch.cuda.synchronize()
    assert got.dtype == out_dtype and got.shape == (n, c, oh, ow)
    assert torch.isfinite(got).all()
    assert rel(got, ref) <= (FP32_TOL if out_dtype == torch.float32 else FP16_TOL)


CONF_SHAPES = [(1, 2), (5, 10), (1, 63), (3, 64), (4096, 1000), (7, 4099), (1, 3, 1, 1), (2, 19, 37, 41),
               (8, 5, 256, 256)]


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", CONF_SHAPES)
def test_confidence_cuda(shape, dtype):
    gen = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    logits = (torch.randn(*shape, generator=gen) * 5).to(dtype)
    rcls, rprob, rent = kernels.confidence_reference(logits, dtype=F64, compute_dtype=F64)
    poison(logits.numel() * 4)
    cls, prob, ent = kernels.confidence(logits.cuda())
    torch.cuda.synchronize()
    assert cls.dtype == torch.int32 and prob.dtype == dtype and ent.dtype == dtype
    assert torch.equal(cls.cpu(), rcls)
    if dtype == torch.float32:
        assert float((prob.cpu().double() - rprob).abs().max()) <= FP32_TOL
        assert float((ent.cpu().double() - rent).abs().max()) <= FP32_TOL
    else:
        assert abs_scaled(prob, rprob) <= FP16_TOL and abs_scaled(ent, rent) <= FP16_TOL


@requires_cuda
def test_confidence_cuda_extremes():
    logits = torch.tensor([[1e4, 1e4, -1e4, 0.0], [float("-inf"), 2.0, 2.0, 1.0], [-1e30, -1e30, -1e30, -1e30]])
    rcls, rprob, rent = kernels.confidence_reference(logits, dtype=F64, compute_dtype=F64)
    cls, prob, ent = kernels.confidence(logits.cuda())
    assert cls.cpu().tolist() == rcls.tolist() == [0, 1, 0]
    assert float((prob.cpu().double() - rprob).abs().max()) <= FP32_TOL
    assert float((ent.cpu().double() - rent).abs().max()) <= FP32_TOL


INORM_SHAPES = [(1, 3, 5, 7), (2, 8, 32, 32), (1, 1, 1, 1), (2, 4, 33, 31), (1, 16, 64, 64),
                (2, 8, 128, 127), (1, 4, 256, 256), (2, 64, 64, 64)]


@requires_cuda
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", INORM_SHAPES)
def test_instnorm_act_cuda(shape, dtype, activation):
    gen = torch.Generator().manual_seed(shape[1] * 7 + shape[2])
    x = (torch.randn(*shape, generator=gen) * 2 + 3).to(dtype)
    g = (torch.rand(shape[1], generator=gen) + 0.5).to(dtype)
    b = torch.randn(shape[1], generator=gen).to(dtype)
    ref = kernels.instnorm_act_reference(x.double(), g.double(), b.double(), 1e-5, activation, 0.1, compute_dtype=F64)
    poison(x.numel() * 4)
    got = kernels.instnorm_act(x.cuda(), g.cuda(), b.cuda(), 1e-5, activation, 0.1)
    torch.cuda.synchronize()
    assert got.dtype == dtype and got.shape == x.shape and torch.isfinite(got).all()
    assert rel(got, ref) <= (FP32_TOL if dtype == torch.float32 else FP16_TOL)
