"""Latency/throughput harness over the runners of :mod:`edgeda.export.runtime`.

A configuration is (backend, precision, batch). Every runner is created first (its resident
memory increase is measured then, sampled every millisecond while it is created and warmed up);
the timed iterations are then run in ``rounds`` interleaved rounds (config A, B, C, A, B, C, ...)
so that CPU contention from other processes hits all configurations alike. A sample is one
``runner.forward`` call on a normalised float32 batch already in host memory, output back in host
memory (pre-processing excluded; on CUDA the copies are included and split out where measured).
"""
from __future__ import annotations

import datetime as _dt
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import EdgedaError
from ..utils import atomic_write_json, machine_info

STATS = ("min", "mean", "median", "p90", "p95", "p99", "max")


def cuda_event_times_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn()``, timed with CUDA events on the current stream."""
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """min/mean/median/p90/p95/p99/max of ``samples_ms`` (linear-interpolated percentiles)."""
    a = np.asarray(samples_ms, np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    q = np.percentile(a, [50, 90, 95, 99])
    return {"min": float(a.min()), "mean": float(a.mean()), "median": float(q[0]), "p90": float(q[1]),
            "p95": float(q[2]), "p99": float(q[3]), "max": float(a.max()), "n": int(a.size)}


def rss_mb() -> float:
    """This process's resident memory now, MiB."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakRss:
    """Sample resident memory in a thread; ``peak`` is the highest value seen."""

    def __init__(self, every_s: float = 0.001):
        self.every, self.peak, self._stop = every_s, rss_mb(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def time_calls(fn: Callable[[], object], *, iters: int | None = None, seconds: float | None = None,
               timings: Callable[[], dict] | None = None) -> tuple[list[float], list[dict]]:
    """Call ``fn`` ``iters`` times (or for ``seconds``); per-call milliseconds and split timings."""
    samples, splits = [], []
    deadline = time.perf_counter() + seconds if seconds else None
    while True:
        if iters is not None and len(samples) >= iters:
            break
        if deadline is not None and time.perf_counter() >= deadline and samples:
            break
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if timings is not None:
            split = timings()
            if split:
                splits.append(dict(split))
    return samples, splits


def bench(bundle, backends: Sequence[str] = ("torch", "ort"), batches: Sequence[int] = (1, 8, 32),
          precisions: Sequence[str] = ("fp32",), *, warmup: int = 10, iters: int | None = 100,
          seconds: float | None = None, threads: int | None = None, device: str = "cpu", rounds: int = 5,
          log: Callable[[str], None] | None = None, plugin_library: str | None = None) -> dict:
    """Benchmark every (backend, precision, batch); returns the JSON-ready result."""
    from ..bundle import Bundle
    from ..export.runtime import make_runner

    log = log or (lambda _m: None)
    if iters is None and seconds is None:
        iters = 100
    if threads:
        import torch

        torch.set_num_threads(threads)
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    task = b.task
    rng = np.random.default_rng(0)
    configs, skipped, runners = [], [], {}
    for backend in backends:
        for precision in precisions:
            key = (backend, precision)
            before = rss_mb()
            try:
                with PeakRss() as mem:
                    extra = {"plugin_library": plugin_library} if backend == "trt" else {}
                    runner = make_runner(backend, b, precision, device=device, threads=threads, **extra)
                    for batch in batches:
                        x = rng.standard_normal((batch, task.channels, *task.image_size)).astype(np.float32)
                        for _ in range(warmup):
                            runner.forward(x)
            except EdgedaError as e:
                skipped.append({"backend": backend, "precision": precision, "reason": str(e)})
                log(f"skip {backend}/{precision}: {e}")
                continue
            runners[key] = (runner, mem.peak - before)
            for batch in batches:
                configs.append({"backend": backend, "precision": precision, "batch": batch,
                                "x": rng.standard_normal((batch, task.channels, *task.image_size)).astype(np.float32),
                                "samples": [], "splits": []})
    rounds = max(1, rounds)
    for r in range(rounds):
        for c in configs:
            runner = runners[(c["backend"], c["precision"])][0]
            x = c["x"]
            n = None if iters is None else (iters * (r + 1)) // rounds - (iters * r) // rounds
            s = None if seconds is None else seconds / rounds
            samples, splits = time_calls(lambda: runner.forward(x), iters=n, seconds=s,
                                         timings=lambda: runner.timings)
            c["samples"] += samples
            c["splits"] += splits
    results = [_result_row(c, *runners[(c["backend"], c["precision"])], log) for c in configs]
    for runner, _ in runners.values():
        runner.close()
    return {
        "bundle": str(b.path),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "input": {"channels": int(task.channels), "height": int(task.image_size[0]), "width": int(task.image_size[1])},
        "settings": {"backends": list(backends), "batches": list(batches), "precisions": list(precisions),
                     "warmup": warmup, "iters": iters, "seconds": seconds, "threads": threads, "device": device,
                     "rounds": rounds, "timed": "runner.forward on a normalised float32 host batch -> host logits",
                     "process_peak_rss_mb": round(_peak_process_rss(), 1)},
        "results": results,
        "skipped": skipped,
    }


def _result_row(c: dict, runner, mem_mb: float, log: Callable[[str], None]) -> dict:
    """One (backend, precision, batch)'s latency statistics, throughput and memory."""
    stats = latency_stats(c["samples"])
    row = {"backend": c["backend"], "precision": c["precision"], "batch": c["batch"],
           "latency_ms": stats, "throughput_ips": c["batch"] / (stats["mean"] / 1e3),
           "peak_rss_increase_mb": round(mem_mb, 1), "runner": runner.describe(),
           "samples_ms": [round(v, 4) for v in c["samples"]]}
    if c["splits"]:
        row["split_ms"] = {k: latency_stats([s[k] for s in c["splits"]]) for k in c["splits"][0]}
    if runner.device.startswith("cuda"):
        try:
            import torch

            row["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except Exception:  # noqa: BLE001 - informational only
            pass
    log(f"{c['backend']:>5} {c['precision']} b{c['batch']:<3} median {stats['median']:.3f} ms  "
        f"p99 {stats['p99']:.3f} ms  {row['throughput_ips']:.0f} img/s")
    return row


def _peak_process_rss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_json(result: dict, path: str | Path) -> Path:
    atomic_write_json(path, result)
    return Path(path)
