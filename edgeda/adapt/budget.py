"""Time and memory budgets for adapting on a device.

Time: the clock starts when :func:`edgeda.adapt` is called (loading, set-up and the final
statistics and bundle write all count). The loop stops before the next step would leave less
than the measured finishing time, so the run ends within ``--minutes`` (the target is within 10%
of it) with the last healthy state.

Memory: :func:`plan_batch` picks the largest batch (halving from the requested one) whose
estimated peak fits ``--memory-mb``; on CUDA it first tries bf16/fp16 autocast before halving.
Dense frames are large: :func:`plan_dense` halves the batch down to ``MIN_DENSE_BATCH`` frames
and then trains on random crops, halving the crop's sides (multiples of 16 pixels, at least a
quarter of each side and 32 pixels) until the estimate fits; evaluation, the collapse monitor and
the written model always see full frames.
The estimate is the resident memory now + 4 x parameter bytes (weights, gradients, two Adam
moments) + batch x per-sample activation bytes (measured with forward hooks) x 3 (kept for
backward + gradients + allocator slack). Peak RSS comes from ``resource.getrusage`` and peak
CUDA memory from ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import resource
import sys
import time

import torch
from torch import nn

from ..errors import EdgedaError

ACTIVATION_FACTOR = 3.0
MIN_BATCH = 4
MIN_DENSE_BATCH = 2  # a dense batch normalises over every pixel of its frames: two frames give BatchNorm enough


class TimeBudget:
    def __init__(self, minutes: float | None, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.seconds = None if minutes is None else float(minutes) * 60.0
        self.step_s = 0.0  # running mean seconds per iteration (incl. checks), measured

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fraction(self) -> float:
        return 0.0 if not self.seconds else min(1.0, self.elapsed() / self.seconds)

    def record_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s == 0 else 0.9 * self.step_s + 0.1 * seconds

    def should_stop(self, reserve_s: float) -> bool:
        """True when one more step plus ``reserve_s`` (finishing work) would overrun the budget."""
        if self.seconds is None:
            return False
        return self.elapsed() + 1.5 * self.step_s + reserve_s > self.seconds


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB); ru_maxrss is KiB on Linux, bytes on macOS."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def activation_bytes_per_sample(module: nn.Module, *inputs) -> int:
    """Bytes of every leaf module's output in one forward of ``inputs`` divided by the batch size."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    was = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(*inputs)
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    n = len(inputs[0]) if inputs and hasattr(inputs[0], "__len__") else 1
    return total // max(n, 1)


def param_bytes(modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def plan_batch(requested: int, memory_mb: float | None, *, fixed_mb: float, per_sample_mb: float,
               cuda: bool = False) -> tuple[int, str, float]:
    """(batch size, precision, estimated peak MiB) fitting ``memory_mb``; raises if even the minimum does not."""
    def estimate(b, half):
        return fixed_mb + b * per_sample_mb * ACTIVATION_FACTOR * (0.5 if half else 1.0)

    if memory_mb is None:
        return requested, "fp32", estimate(requested, False)
    options = [(False,), (True,)] if cuda else [(False,)]
    b = requested
    while True:
        for (half,) in options:
            est = estimate(b, half)
            if est <= memory_mb:
                return b, ("fp16/bf16 autocast" if half else "fp32"), est
        if b <= MIN_BATCH:
            break
        b = max(MIN_BATCH, b // 2)
    raise EdgedaError(
        f"--memory-mb {memory_mb:g} is too small: even a batch of {MIN_BATCH} needs about "
        f"{estimate(MIN_BATCH, cuda):.0f} MiB here ({fixed_mb:.0f} MiB before adapting); raise it or use --method tent"
    )


def crop_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Full frame first, then crops with both sides halved (multiples of 16, >= max(32, side / 4))."""
    h, w = int(size[0]), int(size[1])
    out = [(h, w)]
    while True:
        ch, cw = out[-1]
        nh = max(min(h, max(32, h // 4)), (ch // 2) // 16 * 16)
        nw = max(min(w, max(32, w // 4)), (cw // 2) // 16 * 16)
        if (nh, nw) == (ch, cw):
            return out
        out.append((nh, nw))


def plan_dense(requested: int, memory_mb: float | None, *, fixed_mb: float, per_sample_mb: float,
               size: tuple[int, int], cuda: bool = False) -> tuple[int, tuple[int, int], str, float]:
    """(frames per step, training crop (h, w), precision, estimated peak MiB) fitting ``memory_mb``;
    ``per_sample_mb`` is for one full frame (activations scale with the crop's pixels)."""
    full = size[0] * size[1]

    def estimate(b, crop, half):
        return fixed_mb + b * per_sample_mb * (crop[0] * crop[1] / full) * ACTIVATION_FACTOR * (0.5 if half else 1.0)

    size = (int(size[0]), int(size[1]))
    if memory_mb is None:
        return requested, size, "fp32", estimate(requested, size, False)
    halves = (False, True) if cuda else (False,)
    batches, b = [], requested
    while True:
        batches.append(b)
        if b <= MIN_DENSE_BATCH:
            break
        b = max(MIN_DENSE_BATCH, b // 2)
    for crop in crop_sizes(size):
        for b in (batches if crop == size else batches[-1:]):
            for half in halves:
                est = estimate(b, crop, half)
                if est <= memory_mb:
                    return b, crop, ("fp16/bf16 autocast" if half else "fp32"), est
    smallest = crop_sizes(size)[-1]
    raise EdgedaError(
        f"--memory-mb {memory_mb:g} is too small: even {batches[-1]} crops of {smallest[0]}x{smallest[1]} pixels need "
        f"about {estimate(batches[-1], smallest, cuda):.0f} MiB here ({fixed_mb:.0f} MiB before adapting); raise it"
    )
