"""Benchmark the fused edgeda CUDA kernels against unfused PyTorch and device-to-device copy.

For each kernel and size: median time over ``--repeats`` runs (CUDA events, after ``--warmup``
runs) of the fused kernel, of the unfused PyTorch reference (float32, same device), and of a
``copy_`` between two device buffers of the fused kernel's input+output size. Bandwidth is
``bytes the kernel must move (input read once + output written) / time`` (for a shrinking
resize only the <= 4 neighbours per output value count); ``copy_fraction`` is the fused
kernel's bandwidth over the copy's. Writes ``benchmarks/results/kernels.json`` with the GPU name.

Targets: preprocess and instnorm_act >= 0.70 of copy bandwidth at the largest sizes; every fused
kernel >= 2x faster than its unfused reference.

    python benchmarks/kernel_speed.py [--out benchmarks/results/kernels.json] [--quick]

Without CUDA it prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    from edgeda.bench.harness import cuda_event_times_ms

    return statistics.median(cuda_event_times_ms(fn, repeats))


def measure(name, size, fused, unfused, nbytes, args) -> dict:
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)  # copy moves nbytes//2 read + nbytes//2 written = nbytes
    t_fused = median_ms(fused, args.warmup, args.repeats)
    t_unfused = median_ms(unfused, args.warmup, args.repeats)
    t_copy = median_ms(lambda: dst.copy_(src), args.warmup, args.repeats)
    gbs = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
    row = {"kernel": name, "size": size, "bytes": nbytes, "fused_ms": t_fused, "unfused_ms": t_unfused,
           "copy_ms": t_copy, "fused_GBps": gbs(t_fused), "copy_GBps": gbs(t_copy),
           "copy_fraction": gbs(t_fused) / gbs(t_copy), "speedup_vs_unfused": t_unfused / t_fused}
    print(f"{name:13s} {str(size):32s} fused {t_fused:8.4f} ms  unfused {t_unfused:8.4f} ms  "
          f"x{row['speedup_vs_unfused']:5.2f}  {row['fused_GBps']:7.1f} GB/s = "
          f"{row['copy_fraction']:.2f} of copy", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels.json")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="smallest sizes only (smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernel_speed.py: no CUDA device visible to torch; nothing measured.")
        return 2
    from edgeda import kernels
    from edgeda.errors import MissingDependency

    try:
        kernels.extension()
    except MissingDependency as exc:
        print(f"benchmarks/kernel_speed.py: {exc}")
        return 2

    rows = []
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pre_sizes = [(1, 480, 640, 224), (8, 1080, 1920, 224), (8, 1080, 1920, 1024), (16, 720, 1280, 720)]
    conf_sizes = [(256, 10), (4096, 1000), (8, 19, 512, 512), (32, 21, 256, 256)]
    inorm_sizes = [(1, 64, 64, 64), (8, 256, 64, 64), (8, 64, 256, 256), (4, 32, 512, 512)]
    if args.quick:
        pre_sizes, conf_sizes, inorm_sizes = pre_sizes[:1], conf_sizes[:2], inorm_sizes[:1]
    for n, h, w, o in pre_sizes:
        frame = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, device="cuda")
        # Bytes the kernel must move: the frame, or at most 4 neighbours per output value when
        # shrinking (then part of the frame is never read), plus the float32 output.
        nbytes = min(frame.numel(), 4 * n * 3 * o * o) + n * 3 * o * o * 4
        rows.append(measure("preprocess", [n, h, w, 3, o, o],
                            lambda: kernels.preprocess(frame, mean, std, (o, o)),
                            lambda: kernels.preprocess_reference(frame, mean, std, (o, o)), nbytes, args))
    for shape in conf_sizes:
        logits = torch.randn(*shape, device="cuda")
        nbytes = logits.numel() * 4 + 3 * 4 * logits.numel() // shape[1]
        rows.append(measure("confidence", list(shape), lambda: kernels.confidence(logits),
                            lambda: kernels.confidence_reference(logits), nbytes, args))
    for shape in inorm_sizes:
        x = torch.randn(*shape, device="cuda")
        g, b = torch.rand(shape[1], device="cuda"), torch.randn(shape[1], device="cuda")
        nbytes = 2 * x.numel() * 4
        rows.append(measure("instnorm_act", list(shape), lambda: kernels.instnorm_act(x, g, b),
                            lambda: kernels.instnorm_act_reference(x, g, b), nbytes, args))

    largest = {k: [r for r in rows if r["kernel"] == k][-1] for k in ("preprocess", "confidence", "instnorm_act")}
    targets = {
        "preprocess_copy_fraction_ge_0.70": largest["preprocess"]["copy_fraction"] >= 0.70,
        "instnorm_act_copy_fraction_ge_0.70": largest["instnorm_act"]["copy_fraction"] >= 0.70,
        "all_fused_ge_2x_unfused": all(r["speedup_vs_unfused"] >= 2.0 for r in rows),
    }
    props = torch.cuda.get_device_properties(0)
    result = {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{props.major}.{props.minor}",
              "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
              "timing": {"method": "CUDA events", "warmup": args.warmup, "repeats": args.repeats,
                         "statistic": "median", "unfused": "edgeda.kernels.*_reference, float32"},
              "rows": rows, "targets": targets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"targets: {targets}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
