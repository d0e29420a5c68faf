"""Latency of the public-architecture segmentation models at deployment resolutions.

SegFormer-B0 and the torchvision-layout ``lraspp_mobilenet_v3_large`` and ``deeplabv3_resnet50``
(the models users start from pre-trained weights with) at 256x512 and 512x1024, batch 1, 19
classes (Cityscapes), one thread: PyTorch eager fp32, ONNX Runtime fp32 and ONNX Runtime int8
(Q/DQ, calibrated on ``synscenes:photo`` frames resized to the timed input). The weights are the
random initialisation (latency does not depend on their values; no accuracy is measured here:
the int8 accuracy of trained bundles is in ``benchmarks/dense.py --latency``). Each model and
size is exported with ``edgeda``'s own exporter (``export_onnx``: dynamic batch, H, W) and timed
in interleaved rounds (eager, ORT fp32, ORT int8, eager, ...) so that other jobs on the machine
hit every configuration alike. Where a CUDA GPU is present, PyTorch CUDA eager fp32 and fp16
latency (CUDA events) are added.

Writes ``benchmarks/results/latency_public.json`` and the block between
``<!-- public-latency-table:start/end -->`` in ``benchmarks/README.md``.

    python benchmarks/latency_public.py [--rounds 3] [--calls 2] [--models segformer_b0,...] [--sizes 256x512,512x1024]
    python benchmarks/latency_public.py --table-only
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results" / "latency_public.json"
MODELS = {
    "segformer_b0": {"arch": "segformer", "variant": "b0"},
    "lraspp_mobilenet_v3_large": {"arch": "lraspp_mobilenet_v3_large"},
    "deeplabv3_resnet50": {"arch": "deeplabv3_resnet50"},
}
SIZES = ((256, 512), (512, 1024))
NUM_CLASSES = 19
CALIB_FRAMES = 2  # latency only; ORT's calibrator holds every activation of every frame (8 frames of
# deeplabv3_resnet50 at 512x1024 ran this 24 GiB machine out of memory)


def calibration_frames(size: tuple[int, int]) -> np.ndarray:
    """``CALIB_FRAMES`` synscenes:photo frames at ``size``, normalised like an ImageNet-initialised
    model's input (mean/std of ImageNet, as the public checkpoints expect)."""
    import torch
    import torch.nn.functional as F

    from edgeda.data.builtin import synscenes

    dom = synscenes("photo", size=(128, 256), n=CALIB_FRAMES)
    imgs = np.stack([dom.sample(i).image for i in range(CALIB_FRAMES)]).astype(np.float32) / 255.0
    x = F.interpolate(torch.from_numpy(imgs).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return ((x - mean) / std).numpy().astype(np.float32)


def time_configs(fns: dict, rounds: int, calls: int) -> dict:
    for f in fns.values():  # warm-up (ORT's first calls allocate)
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(calls):
                t = time.perf_counter()
                f()
                times[k].append(1000 * (time.perf_counter() - t))
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "n": len(v)} for k, v in times.items()}


def measure_gpu(model, size, iters: int = 50) -> dict:
    import torch

    from edgeda.bench.harness import cuda_event_times_ms

    m = model.to("cuda").eval()
    x = torch.randn(1, 3, *size, device="cuda")
    out = {"gpu": torch.cuda.get_device_name(0)}
    with torch.inference_mode():
        for name, dtype in (("cuda_eager_fp32", None), ("cuda_eager_fp16", torch.float16)):
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                for _ in range(10):
                    m(x)
                torch.cuda.synchronize()
                out[f"{name}_median_ms"] = statistics.median(cuda_event_times_ms(lambda: m(x), iters))
    m.to("cpu")
    return out


def measure(models: list[str], sizes: list[tuple[int, int]], rounds: int, calls: int, done=None) -> dict:
    """Rows ``"<model> <H>x<W>"``; ``done(rows)`` is called after each one (so a long run keeps what it measured)."""
    import torch

    from edgeda.export.onnx import export_onnx, ort_session, signature_of
    from edgeda.export.quantize import quantize_int8
    from edgeda.models import build
    from edgeda.tasks.spec import TaskSpec

    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            calib = calibration_frames(size)
            x = calib[:1]
            xt = torch.from_numpy(x)
            spec = TaskSpec(NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)], task="segmentation", image_size=list(size))
            for name in models:
                kw = dict(MODELS[name])
                arch = kw.pop("arch")
                torch.manual_seed(0)
                model = build("dense_model", arch=arch, num_outputs=NUM_CLASSES, output="logits", channels=3, **kw).eval()
                t0 = time.perf_counter()
                fp32 = export_onnx(model, signature_of(model, spec), Path(tmp) / f"{name}-{size[0]}.onnx")
                int8 = quantize_int8(fp32, Path(tmp) / f"{name}-{size[0]}.int8.onnx", calib)
                prep_s = time.perf_counter() - t0
                s32, s8 = ort_session(fp32, threads=1), ort_session(int8, threads=1)
                with torch.inference_mode():
                    res = time_configs({"torch_eager_fp32": lambda: model(xt),
                                        "ort_fp32": lambda: s32.run(None, {"image": x}),
                                        "ort_int8": lambda: s8.run(None, {"image": x})}, rounds, calls)
                row = {"size": list(size), **{f"{k}_{s}": v[s] for k, v in res.items() for s in ("median_ms", "min_ms")},
                       "calls_per_config": res["ort_fp32"]["n"], "export_and_calibration_s": round(prep_s, 1),
                       "parameters": sum(p.numel() for p in model.parameters())}
                row["ort_fp32_over_eager"] = row["ort_fp32_median_ms"] / row["torch_eager_fp32_median_ms"]
                row["int8_over_fp32"] = row["ort_int8_median_ms"] / row["ort_fp32_median_ms"]
                if torch.cuda.is_available():
                    row["gpu"] = measure_gpu(model, size)
                rows[f"{name} {size[0]}x{size[1]}"] = row
                if done is not None:
                    done(rows)
                print(f"{name} {size[0]}x{size[1]}: eager {row['torch_eager_fp32_median_ms']:.0f} ms, ORT fp32 "
                      f"{row['ort_fp32_median_ms']:.0f} ms, ORT int8 {row['ort_int8_median_ms']:.0f} ms", flush=True)
    return rows


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"Batch 1, 1 thread, {NUM_CLASSES} classes, randomly initialised weights; {m.get('cpu')}, torch {m.get('torch')}, "
             f"onnxruntime {m.get('onnxruntime')}; {r['settings']['rounds']} interleaved rounds x {r['settings']['calls']} calls "
             "per configuration; median ms (other jobs may share this 2-core machine). int8: ORT Q/DQ calibrated on "
             f"{CALIB_FRAMES} synscenes:photo frames (latency only; no accuracy measured here).", "",
             "| model, input | parameters | PyTorch eager fp32 | ORT fp32 | ORT int8 | ORT fp32 / eager | int8 / fp32 |",
             "|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['parameters'] / 1e6:.1f} M | {row['torch_eager_fp32_median_ms']:.1f} | "
                     f"{row['ort_fp32_median_ms']:.1f} | {row['ort_int8_median_ms']:.1f} | {row['ort_fp32_over_eager']:.2f} | "
                     f"{row['int8_over_fp32']:.2f} |")
    gpu = [(n, row["gpu"]) for n, row in r["rows"].items() if row.get("gpu")]
    if gpu:
        lines += ["", f"On {gpu[0][1]['gpu']}, PyTorch CUDA eager, batch 1 (CUDA events), median ms:", "",
                  "| model, input | fp32 | fp16 autocast |", "|---|---|---|"]
        lines += [f"| {n} | {g['cuda_eager_fp32_median_ms']:.2f} | {g['cuda_eager_fp16_median_ms']:.2f} |" for n, g in gpu]
    else:
        lines += ["", "No GPU was present in this run: no CUDA rows."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in SIZES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2, help="calls per configuration per round")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    from readme_tables import replace_block

    if not args.table_only:
        from edgeda.utils import machine_info

        models = [m for m in args.models.split(",") if m]
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            sys.exit(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(MODELS)}")
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
        def save(rows):
            r = {"rows": rows, "machine": machine_info(),
                 "settings": {"rounds": args.rounds, "calls": args.calls, "threads": 1, "batch": 1, "interleaved": True,
                              "timed": "model(x) / session.run on a normalised float32 host batch"},
                 "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(r, indent=2) + "\n")

        measure(models, sizes, args.rounds, args.calls, done=save)
    r = json.loads(RESULTS.read_text())
    print(table(r))
    replace_block("public-latency-table", table(r))


if __name__ == "__main__":
    main()
