"""Training-step efficiency: achieved GFLOP/s of one training step against the machine's measured
matmul peak, and what channels-last, bf16 autocast and intra-op threads change, side by side.

Models (the CPU profiles' own networks, image and batch sizes; ``benchmarks/adaptation.py`` and
``benchmarks/dense.py``): DANN on the DTN classifier (32x32, 32 + 32 images), source-only
segmentation with LR-ASPP (64x128, 8) and with DeepLab ResNet-18 width 0.25 (64x64, 16, Adam),
and source-only depth with LR-ASPP (64x128, 8). A step is ``method.step`` (forward, backward,
optimizer) on batches drawn beforehand from the trainer's own streams.

FLOPs per step are counted once per model with ``torch.utils.flop_counter.FlopCounterMode``
(matmul/convolution-family ops, forward and backward; element-wise work is not counted, so the
figures are a lower bound on the work done), with a convolution backward counted as one forward
convolution per gradient computed (:func:`conv_backward_flops`; torch's formula overcounts grouped
convolutions). The peak is the fastest fp32 (and, where the CPU has
AVX512-BF16 or AMX, bf16) square matmul at the size that maximises it (searched over a range of
sizes before the first round and after every round, so it sees the same load as the steps; the
best is kept), at each thread count used; a variant's efficiency is its GFLOP/s over
the peak of its own dtype and thread count.

Variants, in interleaved rounds (A B C D E, A B C D E, ...) so that load from other processes hits
all alike: ``default`` (fp32, contiguous, ``--threads`` intra-op threads: torch's default, at most
2), ``loop_optim`` (the default numerics with the optimizer as torch's per-parameter loop: the step
as the trainer ran it before its fused optimizers, which the dense 1.4x target counts from; the table's
last lines give each dense model's fastest variant against it), ``channels_last`` (``--channels-last``),
``bf16`` (``--amp bf16``), ``bf16+channels_last``, and
``threads=K`` (the default numerics on the other thread count: 1 vs 2) and ``compile`` (the default
numerics with every network of the method through ``torch.compile``, in place, so parameter names
stay; its first step, compilation included and inductor's caches off, is timed apart, and the row
says after how many steps the compiled step pays back that time: ``never`` where it is not faster). On a machine whose cores
other jobs share, pass ``--threads 1``: a 2-thread step there waits for a descheduled thread, which
swamps what the layout and dtype change.
On CUDA (``--device cuda``, run by ``scripts/gpu_check.sh``) the variants are ``fp32`` (AMP off),
``default`` (the trainer's AMP: bf16 autocast where the GPU has it) and ``channels_last`` (``compile`` on request); times
are taken after ``torch.cuda.synchronize()`` and the fp32 peak is a plain fp32 matmul (TF32 off,
PyTorch's default).

    python benchmarks/step_efficiency.py [--rounds 3] [--steps 4] [--threads 1] [--device cpu|cuda] [--out FILE]
                                         [--models dann,lraspp_seg,deeplab_seg,lraspp_depth] [--no-readme]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from readme_tables import replace_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {  # name -> (amp, channels_last, threads: None = the default count)
    "fp32": (False, False, None),  # CUDA only: the default ("default") autocasts there
    "default": (True, False, None),
    "channels_last": (True, True, None),
    "bf16": ("bf16", False, None),
    "bf16+channels_last": ("bf16", True, None),
    "compile": (True, False, None),  # the default numerics, every network through torch.compile (inductor)
    "loop_optim": (True, False, None),  # the default numerics, the optimizer as torch's per-parameter loop
}
COMPILED = {"compile"}
LOOP_OPTIM = {"loop_optim"}  # the update as edgeda ran it before its fused optimizers: the step the 1.4x target counts from


def model_configs(small: bool = False) -> dict[str, dict]:
    """The profiles' training configs (sources rendered smaller: only step time is measured here)."""
    import adaptation
    import dense

    cfgs = {
        "dann": {**adaptation.run_config("cpu", "dann", 0), "source_n": 500},
        "lraspp_seg": {**dense.run_config("cpu", "syn_seg", 0, False), "source_n": 16},
        "deeplab_seg": {**dense.run_config("cpu", "digits_seg", 0, False), "source_n": 32},
        "lraspp_depth": {**dense.run_config("cpu", "syn_depth", 0, False), "source_n": 16},
    }
    for c in cfgs.values():
        c.update(workers=0, eval_every=10**6, checkpoint_every=10**6)
        if small:  # the tests' toy sizes: the same code path in seconds
            c.update(source_n=min(c["source_n"], 200), batch_size=2)
            c["backbone_kwargs"] = {**c["backbone_kwargs"], "width": 0.25 if c["backbone"] != "dtn" else 4}
            if c["backbone"] == "dtn":
                c["backbone_kwargs"]["out_dim"] = 16
    return cfgs


def cpu_flags() -> set[str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    flags = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("Flags")), "")
    if not flags:
        try:
            flags = next(ln.split(":", 1)[1] for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
        except (OSError, StopIteration):
            flags = ""
    return set(flags.split())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes=(256, 512, 1024, 2048), repeats: int = 3) -> dict:
    """Best GFLOP/s of an n x n x n matmul over ``sizes`` (fastest of ``repeats`` after a warm-up)."""
    best = {"gflops": 0.0, "n": None}
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - t0)
        g = 2 * n**3 / min(times) / 1e9  # a peak: the fastest call
        per_size[n] = round(g, 2)
        if g > best["gflops"]:
            best = {"gflops": g, "n": n}
    return {**best, "per_size": per_size}


def build(cfg: dict, variant: str, device: str, out: Path):
    """A built trainer for ``cfg`` under ``variant`` and a few batches drawn from its streams."""
    from edgeda.config import make_config
    from edgeda.training.trainer import Trainer, channels_last

    import edgeda.methods.base as method_base

    amp, cl, _ = VARIANTS.get(variant, VARIANTS["default"])  # threads=K: the default numerics
    full = {**cfg, "amp": amp, "channels_last": cl, "device": device, "out": str(out)}
    trainer = Trainer(make_config(None, full), progress=False, log=None)
    method_base.FUSED_OPTIMIZERS = variant not in LOOP_OPTIM
    try:
        trainer.setup()
    finally:
        method_base.FUSED_OPTIMIZERS = True
    batches = []
    for _ in range(3):
        s = trainer.source_stream.next()
        t = trainer.target_stream.next() if trainer.target_stream is not None else None
        batches.append((channels_last(s), channels_last(t)) if cl else (s, t))
    trainer.method.train()
    if variant in COMPILED:
        import torch._inductor.config as inductor_config

        inductor_config.force_disable_caches = True  # time what a first run on a machine pays, not a cache hit
        for net in trainer.method.nets.values():
            net.compile()
    return trainer.method, batches


def step_times(method, batches, n: int, device: torch.device) -> list[float]:
    times = []
    for i in range(n):
        s, t = batches[i % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        method.step(s, t)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _compute_dtype(engine) -> str:
    if not engine.amp:
        return "fp32"
    return "bf16" if engine.dtype == torch.bfloat16 else "fp16"


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each gradient it computes (input, weight) costs what the
    forward convolution costs. torch's own formula counts the weight gradient of a grouped convolution
    as if it were dense (``groups`` times too many: 38x the forward pass on the LR-ASPP step, whose
    depthwise convolutions dominate), which made a step look faster than the machine's peak."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(method, batches) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    s, t = batches[0]
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        method.step(s, t)
    return int(counter.get_total_flops())


def _threads(variant: str, base: int) -> int:
    """Intra-op threads of ``variant``: its own count (``threads=K``) or the run's (``--threads``)."""
    return int(variant.split("=", 1)[1]) if variant.startswith("threads=") else base


def run(args) -> dict:
    from edgeda.utils import machine_info

    device = torch.device(args.device)
    default_threads = args.threads or (torch.get_num_threads() if device.type == "cuda" else min(2, torch.get_num_threads()))
    other_threads = 2 if default_threads == 1 else 1
    torch.set_num_threads(default_threads)
    if args.variants:
        variants = [v for v in args.variants.split(",") if v]
    elif device.type == "cuda":
        variants = ["fp32", "default", "channels_last"]
    else:
        variants = ["default", "loop_optim", "channels_last", "bf16", "bf16+channels_last", f"threads={other_threads}"]
        variants += [] if args.small else ["compile"]  # compilation takes minutes: not in smoke runs unless asked
    if device.type == "cuda":
        variants = [v for v in variants if not v.startswith("threads=")]
    unknown = [v for v in variants if v not in VARIANTS and not v.startswith("threads=")]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}, threads=K")
    flags = cpu_flags()
    cpu_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    has_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_bf16
    if not has_bf16:
        variants = [v for v in variants if VARIANTS.get(v, VARIANTS["default"])[0] != "bf16"]
    thread_counts = sorted({_threads(v, default_threads) for v in variants})
    sizes = (128, 256, 512) if args.small else ((1024, 2048, 4096, 8192) if device.type == "cuda" else (256, 512, 1024, 2048))
    dtypes_peak = {"fp32": torch.float32}
    if has_bf16:
        dtypes_peak["bf16"] = torch.bfloat16
    elif device.type == "cuda":  # the trainer's AMP autocasts in fp16 there
        dtypes_peak["fp16"] = torch.float16
    peaks: dict[str, dict] = {}

    def measure_peaks() -> None:
        """Every (dtype, threads) peak over all ``sizes``, again in each round (interleaved with the steps,
        so the peak sees the same load; a size slowed once by other jobs gets another chance); the best is kept."""
        for th in thread_counts:
            torch.set_num_threads(th)
            for name, dtype in dtypes_peak.items():
                key = f"{name}@{th}"
                m = matmul_peak(device, dtype, sizes)
                if key not in peaks:
                    peaks[key] = {**m, "per_round": []}
                peaks[key]["per_round"].append(round(m["gflops"], 2))
                if m["gflops"] > peaks[key]["gflops"]:
                    peaks[key].update(gflops=m["gflops"], n=m["n"], per_size=m["per_size"])
        torch.set_num_threads(default_threads)

    measure_peaks()
    print("peak matmul: " + ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s (n={v['n']})" for k, v in peaks.items()), flush=True)

    import tempfile

    configs = model_configs(args.small)
    models = [m for m in args.models.split(",") if m]
    built, flops, first_step = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            for v in variants:
                key = (m, v)
                torch.set_num_threads(_threads(v, default_threads))
                built[key] = build(configs[m], v, args.device, Path(tmp) / f"{m}-{v}")
                first_step[key] = step_times(*built[key], 1, device)[0]  # compilation, for compiled variants
                step_times(*built[key], args.warmup, device)  # kernel selection, allocator, caches
            torch.set_num_threads(default_threads)
            flops[m] = count_flops(*built[(m, variants[0])])
            print(f"{m}: {flops[m] / 1e9:.3f} GFLOP per step (FlopCounterMode)", flush=True)
        dtypes = {key: _compute_dtype(method.engine) for key, (method, _) in built.items()}
        samples = {key: [] for key in built}
        for r in range(args.rounds):
            for m in models:
                for v in variants:
                    torch.set_num_threads(_threads(v, default_threads))
                    samples[(m, v)] += step_times(*built[(m, v)], args.steps, device)
            torch.set_num_threads(default_threads)
            measure_peaks()
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    torch.set_num_threads(default_threads)

    rows = []
    for m in models:
        base = statistics.median(samples[(m, variants[0])])
        for v in variants:
            med = statistics.median(samples[(m, v)])
            th = _threads(v, default_threads)
            dtype = dtypes[(m, v)]
            peak = peaks.get(f"{dtype}@{th}") or peaks.get(f"{dtype}@{default_threads}")
            gflops = flops[m] / med / 1e9
            extra = {}
            if v in COMPILED:  # compile time = the first step's excess; pay-back = steps until the saving covers it
                compile_s = max(0.0, first_step[(m, v)] - med)
                saving = base - med
                extra = {"compile_s": compile_s, "payback_steps": math.ceil(compile_s / saving) if saving > 0 else None}
            rows.append({"model": m, "variant": v, "threads": th, "compute_dtype": dtype, "channels_last": VARIANTS.get(v, VARIANTS["default"])[1],
                         "median_ms": 1000 * med, "mean_ms": 1000 * statistics.fmean(samples[(m, v)]),
                         "steps": len(samples[(m, v)]), "gflop_per_step": flops[m] / 1e9, "gflops": gflops,
                         "peak_gflops": peak["gflops"] if peak else None,
                         "efficiency": gflops / peak["gflops"] if peak else None,
                         "speedup_vs_default": base / med, **extra})
    m_info = machine_info()
    return {
        "machine": {**m_info, "device": str(device), "cpu_flags_bf16": sorted({"avx512_bf16", "amx_bf16", "amx_tile"} & flags),
                    "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else m_info.get("gpu")},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "steps_per_round": args.steps, "warmup_steps": args.warmup,
                     "default_threads": default_threads, "threads_flag": args.threads, "variants": variants, "small": args.small,
                     "configs": {m: {k: configs[m][k] for k in ("method", "backbone", "backbone_kwargs", "batch_size", "image_size",
                                                                "optimizer") if k in configs[m]} for m in models}},
        "flops": "torch.utils.flop_counter.FlopCounterMode over one method.step (matmul/conv-family ops, fwd+bwd)",
        "peaks": peaks, "rows": rows,
        "note": ("the machine's cores were shared with other jobs while measured: absolute times are noisy; compare "
                 "variants within one model (interleaved rounds), not across runs"),
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    peaks = ", ".join(f"{k.replace('@', ' at ')} thread(s) {v['gflops']:.0f} GFLOP/s (n={v['n']})" for k, v in res["peaks"].items())
    lines = [
        f"One training step (`method.step`: forward, backward, optimizer) of each CPU-profile model, "
        f"{s['rounds']} interleaved rounds x {s['steps_per_round']} steps per variant after {s['warmup_steps']} warm-up steps, "
        f"median. Machine: {m.get('gpu') or m['cpu']} ({m['cores']} cores; bf16 flags: {', '.join(m['cpu_flags_bf16']) or 'none'}), "
        f"torch {m['torch']}, {s['default_threads']} intra-op thread(s) for every variant but threads=K"
        f"{' (--threads 1: other jobs share the cores)' if s.get('threads_flag') == 1 else ''}. Measured matmul peak: {peaks}. "
        "GFLOP counted by `FlopCounterMode` (matmul/conv only, so a lower bound); efficiency = achieved / peak of the "
        "same dtype and thread count. The cores were shared with other jobs while measured: the numbers are noisy, "
        "and only ratios within one model (same rounds) mean much.",
        "",
        "| model | variant | threads | ms / step | GFLOP / step | GFLOP/s | % of peak | speed-up vs default | compile s (pays back after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        eff = "–" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}"
        comp = "–"
        if "compile_s" in r:
            comp = f"{r['compile_s']:.0f} ({'never' if r['payback_steps'] is None else str(r['payback_steps']) + ' steps'})"
        lines.append(f"| {r['model']} | {r['variant']} | {r['threads']} | {r['median_ms']:.1f} | {r['gflop_per_step']:.3f} | "
                     f"{r['gflops']:.1f} | {eff} | {r['speedup_vs_default']:.2f} | {comp} |")
    lines += ["", *dense_speedup_lines(res)]
    return "\n".join(lines)


DENSE = ("lraspp_seg", "deeplab_seg", "lraspp_depth")


def dense_speedup_lines(res: dict) -> list[str]:
    """Each dense model's fastest variant at the default thread count against the loop-optimizer step
    (the trainer's step before fused optimizers), and their mean: the issue's 1.4x target."""
    default_threads = res["settings"]["default_threads"]
    out = []
    ratios = []
    for m in DENSE:
        rows = {r["variant"]: r for r in res["rows"] if r["model"] == m}
        if "loop_optim" not in rows:
            continue
        base = rows["loop_optim"]["median_ms"]
        best = min((r for r in rows.values() if r["threads"] == default_threads and r["variant"] not in LOOP_OPTIM
                    and r["variant"] not in COMPILED), key=lambda r: r["median_ms"])
        ratios.append(base / best["median_ms"])
        out.append(f"- {m}: fastest `{best['variant']}` {best['median_ms']:.1f} ms against the loop optimizer's "
                   f"{base:.1f} ms: **{base / best['median_ms']:.2f}x** (the fused update alone, `default`: "
                   f"{base / rows['default']['median_ms']:.2f}x)")
    if ratios:
        out.append(f"- mean over the {len(ratios)} dense models: **{statistics.fmean(ratios):.2f}x** (target 1.4x)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--models", default="dann,lraspp_seg,deeplab_seg,lraspp_depth")
    ap.add_argument("--variants", default=None,
                    help="default: cpu: every variant but fp32 (and but compile with --small); cuda: fp32,default,channels_last "
                         "(compile on request: its compilation does not fit the GPU check's time)")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads of every variant but threads=K (default: torch's, at most 2, on the CPU)")
    ap.add_argument("--small", action="store_true", help="toy sizes (a smoke run of the code path)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/step_efficiency[_cuda].json")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    ap.add_argument("--table-only", action="store_true", help="rewrite the README table from the stored JSON")
    args = ap.parse_args(argv)
    if args.table_only:
        res = json.loads((args.out or RESULTS / "step_efficiency.json").read_text())
        replace_block("step-efficiency-table", markdown(res))
        print(markdown(res))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("step_efficiency: no CUDA device visible to torch; nothing measured.")
        return 3
    res = run(args)
    out = args.out or RESULTS / ("step_efficiency.json" if args.device == "cpu" else "step_efficiency_cuda.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    if not args.no_readme and not args.small and args.device == "cpu":
        replace_block("step-efficiency-table", text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
