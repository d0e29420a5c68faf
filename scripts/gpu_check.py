"""The steps of ``scripts/gpu_check.sh`` that need Python: environment, training throughput,
the 2-process torchrun, ``edgeda bench`` on CUDA, and the closing summary.

    python scripts/gpu_check.py env|train|torchrun|bench|summary --work DIR --out DIR [--dry-run]

Each subcommand writes its JSON under ``--out`` (at most a handful of files, so that every one of
them comes back from a machine that returns only a few) and keeps scratch files (runs, bundles,
caches) under ``--work``. A subcommand that cannot run here (no CUDA) prints ``skipped: ...`` and
exits with code 3, which the shell script records as a skip rather than a failure.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SKIP = 3  # exit code: the step does not apply on this machine
TENSORRT_NOTE = ("TensorRT is not installable on this machine (its wheels download only from NVIDIA's index, "
                 "which is not reachable here): no TensorRT engine was built or timed")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


# --------------------------------------------------------------------------- env


def cmd_env(args) -> int:
    import torch

    from edgeda.utils import machine_info

    info = {"date": _now(), "dry_run": args.dry_run, "machine": machine_info(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "host": platform.node()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    compute_capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
        try:
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
        except Exception as e:  # noqa: BLE001 - informational
            info["nccl"] = f"unavailable ({e})"
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    info["driver"] = smi.split(",")[1].strip() if smi and "," in smi else None
    info["nvidia_smi"] = smi
    nvcc = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
    out = _run([nvcc, "--version"]) if nvcc else None
    info["nvcc"] = out.splitlines()[-1] if out else None
    try:
        import onnxruntime as ort

        info["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    except Exception as e:  # noqa: BLE001 - reported
        info["onnxruntime"] = {"error": str(e)}
    try:
        import tensorrt  # noqa: F401

        info["tensorrt"] = f"installed ({tensorrt.__version__}) but not exercised by this check"
    except Exception:  # noqa: BLE001 - the expected case
        info["tensorrt"] = TENSORRT_NOTE
    _write(args.work / "env.json", info)
    print(f"torch {info['torch']} (CUDA build: {info['torch_cuda'] or 'none, a CPU build'}), "
          f"CUDA available: {info['cuda_available']}")
    if info["cuda_available"]:
        print(f"GPU {info['gpu']} (sm_{info['compute_capability'].replace('.', '')}, {info['gpu_memory_gib']} GiB), "
              f"driver {info['driver']}, NCCL {info.get('nccl')}, nvcc: {info['nvcc']}")
    elif torch.version.cuda is None and not args.dry_run:
        print("this torch is a CPU build: every CUDA step is skipped (install a CUDA build of torch to check the GPU)")
    print(f"onnxruntime: {info['onnxruntime']}")
    print(TENSORRT_NOTE if info["tensorrt"] == TENSORRT_NOTE else f"tensorrt: {info['tensorrt']}")
    return 0


# --------------------------------------------------------------------------- train


def train_configs(dry_run: bool) -> dict[str, dict]:
    """The CPU profiles' DANN classification, source-only segmentation and detection, and PixelDA, made short.

    Sources are rendered smaller than the profiles' (2000 digits, 256 scenes) to keep the check
    within its budget; the networks, image sizes and batch sizes are the profiles' own."""
    import adaptation
    import dense
    import detection

    dann = {**adaptation.run_config("cpu", "dann", 0), "source_n": 2000}
    pixelda = {k: v for k, v in adaptation.run_config("cpu", "pixelda", 0).items() if k != "init_from"}
    pixelda["source_n"] = 2000
    seg = {**dense.run_config("cpu", "syn_seg", 0, False, "source_only"), "source_n": 256}
    det = {**detection.run_config("cpu", "syn_det", 0, False), "source_n": 256}
    if dry_run:  # the same code path at toy sizes
        dann.update(source_n=200, backbone_kwargs={"width": 4, "out_dim": 16}, batch_size=8)
        pixelda.update(source_n=200, backbone_kwargs={"width": 4, "out_dim": 16}, batch_size=8,
                       options={**pixelda.get("options", {}), "g_width": 4, "d_width": 4})
        seg.update(source_n=8, backbone_kwargs={"width": 0.5}, image_size=[32, 64], batch_size=2, workers=0)
        # the digit pair: the same detection code path with far less to render than street scenes
        det = {**detection.run_config("cpu", "digits_det", 0, False), "source_n": 8, "backbone_kwargs": {"width": 0.25},
               "image_size": [64, 64], "batch_size": 2, "workers": 0}
    return {"dann": dann, "source_only_seg": seg, "source_only_det": det, "pixelda": pixelda}


def timed_run(cfg: dict, device: str, iters: int, out: Path) -> dict:
    """Train ``cfg`` on ``device`` for ``iters`` iterations; iterations/s from the per-iteration
    wall times after a warm-up (the last interval holds the final evaluation and is dropped)."""
    import torch

    from edgeda.config import make_config
    from edgeda.training.trainer import Trainer

    cfg = {**cfg, "device": device, "iters": iters, "eval_every": iters, "checkpoint_every": 10**9, "out": str(out)}
    trainer = Trainer(make_config(None, cfg), progress=False, log=None)
    stamps: list[float] = []

    def stamp(_it):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    result = trainer.run(callback=stamp)
    wall = time.perf_counter() - t0
    diffs = [b - a for a, b in zip(stamps, stamps[1:])][:-1]
    warm = min(len(diffs) // 5, 20)
    timed = diffs[warm:] or diffs or [result.step_time]
    eng = trainer.method.engine
    key = next((k for k in result.metrics if k.startswith("target_test_") and isinstance(result.metrics[k], float)), None)
    return {"device": str(trainer.device), "iters": iters, "timed_iters": len(timed), "warmup_iters_dropped": warm,
            "median_s_per_iter": statistics.median(timed), "mean_s_per_iter": statistics.fmean(timed),
            "iters_per_s": 1.0 / statistics.median(timed), "amp": bool(eng.amp),
            "autocast_dtype": str(eng.dtype).replace("torch.", "") if eng.amp else "float32 (no autocast)",
            "torch_threads": torch.get_num_threads(), "run_wall_s": round(wall, 2),
            "bundle": str(result.bundle) if result.bundle else None,
            "target_test": {key: result.metrics[key]} if key else {}}


def cmd_train(args) -> int:
    import torch

    os.environ.setdefault("EDGEDA_CACHE", str(args.work / "cache"))
    cuda = _cuda()
    configs = train_configs(args.dry_run)
    iters = {"cuda": {"dann": 300, "source_only_seg": 150, "source_only_det": 100, "pixelda": 150},
             "cpu": {"dann": 40, "source_only_seg": 20, "source_only_det": 10, "pixelda": 20}}
    if args.dry_run:
        iters["cpu"] = {"dann": 3, "source_only_seg": 2, "source_only_det": 2, "pixelda": 2}
    rows, bundles, failures = [], {}, {}
    for name, cfg in configs.items():
        row = {"run": name, "method": cfg["method"], "task": cfg.get("task", "classification"),
               "backbone": cfg["backbone"], "backbone_kwargs": cfg["backbone_kwargs"], "batch_size": cfg["batch_size"],
               "image_size": cfg.get("image_size"), "source_n": cfg["source_n"]}
        devices = (["cuda"] if cuda else []) + ["cpu"]
        for device in devices:
            try:
                row[device] = timed_run(cfg, device, iters[device][name], args.work / "runs" / f"{name}-{device}")
                r = row[device]
                print(f"{name:16s} {device:4s} {r['iters_per_s']:8.2f} it/s  (median of {r['timed_iters']} iterations, "
                      f"autocast {r['autocast_dtype']}, run {r['run_wall_s']:.0f} s)", flush=True)
                if r["bundle"] and (device == "cuda" or not cuda):
                    bundles.setdefault(row["task"], r["bundle"])
            except Exception as e:  # noqa: BLE001 - one run's failure is recorded, the others go on
                failures[f"{name}/{device}"] = f"{type(e).__name__}: {e}"
                row[device] = {"error": failures[f"{name}/{device}"]}
                print(f"{name:16s} {device:4s} FAILED: {failures[f'{name}/{device}']}", flush=True)
        if not cuda:
            row["cuda"] = {"skipped": "no CUDA"}
            print(f"{name:16s} cuda skipped: no CUDA", flush=True)
        elif "iters_per_s" in row.get("cuda", {}) and "iters_per_s" in row.get("cpu", {}):
            row["cuda_over_cpu"] = row["cuda"]["iters_per_s"] / row["cpu"]["iters_per_s"]
        rows.append(row)
    _write(args.work / "bundles.json", bundles)
    result = {"date": _now(), "dry_run": args.dry_run, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpu_threads": torch.get_num_threads(),
              "timing": "wall time per training iteration (callback stamps; CUDA synchronised), median after a warm-up",
              "note": "short runs: throughput, not accuracy; AMP is the trainer's default (bf16 autocast where the GPU has it)",
              "rows": rows, "failures": failures}
    _write(args.out / "train.json", result)
    return 1 if failures else 0


# --------------------------------------------------------------------------- torchrun


def cmd_torchrun(args) -> int:
    if not _cuda():
        print("skipped: no CUDA")
        return SKIP
    import torch
    import yaml

    cfg = {**train_configs(False)["dann"], "iters": 40, "eval_every": 40, "checkpoint_every": 10**9,
           "device": "cuda", "batch_size": 16}
    cfg_file = args.work / "torchrun.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(yaml.safe_dump(cfg))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(Path(__file__).resolve()), "torchrun-worker", "--config", str(cfg_file),
           "--out", str(args.work / "runs" / "torchrun")]
    env = {**os.environ, "EDGEDA_CACHE": os.environ.get("EDGEDA_CACHE", str(args.work / "cache")),
           "NCCL_DEBUG": "WARN", "OMP_NUM_THREADS": "2"}
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired as e:  # a hang in NCCL set-up: said so, not waited for
        out = (e.stdout or b"") + (e.stderr or b"")
        text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        _write(args.out / "distributed.json", {"date": _now(), "processes": 2, "backend": "nccl", "status": "timed out",
                                               "reason": f"no result within {args.timeout:.0f} s", "output_tail": text[-4000:]})
        print(f"2-process NCCL torchrun on one GPU: no result within {args.timeout:.0f} s (stopped)")
        return 1
    wall = time.perf_counter() - t0
    text = res.stdout + res.stderr
    result = {"date": _now(), "processes": 2, "gpus": torch.cuda.device_count(), "backend": "nccl",
              "command": " ".join(cmd[1:]), "returncode": res.returncode, "wall_s": round(wall, 1)}
    if res.returncode == 0:
        try:
            info = json.loads(res.stdout[res.stdout.index("{"):])
        except ValueError:
            info = {}
        result.update(status="ok", train_wall_time_s=info.get("wall_time_s"), metrics=info.get("metrics"))
        print(f"2-process NCCL torchrun on one GPU: ok ({wall:.0f} s)")
    else:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        reason = next((ln.strip() for ln in lines if "Duplicate GPU" in ln or "ncclInvalidUsage" in ln
                       or "NCCL error" in ln), lines[-1].strip() if lines else "no output")
        result.update(status="nccl refused" if "NCCL" in text or "nccl" in text else "failed", reason=reason,
                      output_tail=text[-4000:])
        print(f"2-process NCCL torchrun on one GPU did not run: {reason}")
    _write(args.out / "distributed.json", result)
    return 0 if res.returncode == 0 else 1


def cmd_torchrun_worker(args) -> int:
    # Both ranks share the one GPU: the trainer binds rank r to cuda:LOCAL_RANK, so point both at cuda:0.
    os.environ["LOCAL_RANK"] = "0"
    from edgeda.cli import main

    return main(["train", "--config", str(args.config), "--out", str(args.out_run), "--json"], standalone_mode=False) or 0


# --------------------------------------------------------------------------- bench


def _fallback_bundles(args) -> dict:
    """Tiny CPU-trained bundles for when the train step left none (so bench still runs)."""
    configs = train_configs(True)
    bundles = {}
    for name in ("dann", "source_only_seg"):
        try:
            r = timed_run(configs[name], "cpu", 2, args.work / "runs" / f"fallback-{name}")
            bundles[configs[name].get("task", "classification")] = r["bundle"]
        except Exception as e:  # noqa: BLE001 - the other bundle is still benchmarked
            print(f"no {name} bundle could be trained either: {type(e).__name__}: {e}")
    return bundles


def cmd_bench(args) -> int:
    cuda = _cuda()
    os.environ.setdefault("EDGEDA_CACHE", str(args.work / "cache"))
    os.environ.setdefault("EDGEDA_ONNX_EXPORTER", "torchscript")  # seconds per export instead of ~15 s each
    path = args.work / "bundles.json"
    bundles = json.loads(path.read_text()) if path.is_file() else {}
    note = None
    if not all(bundles.get(t) for t in ("classification", "segmentation")):
        note = "the train step left no bundle for every task: tiny CPU-trained bundles were benchmarked"
        print(note)
        bundles = {**_fallback_bundles(args), **{k: v for k, v in bundles.items() if v}}
    if cuda:
        opts = ["--device", "cuda", "--backend", "torch,ort", "--precision", "fp32,fp16", "--batch", "1,8,32",
                "--iters", "100", "--warmup", "10", "--rounds", "3"]
    else:
        print("PyTorch CUDA eager and ONNX Runtime CUDA: skipped: no CUDA (the dry run times PyTorch on the CPU)")
        opts = ["--device", "cpu", "--backend", "torch", "--batch", "1,2", "--iters", "3", "--warmup", "1",
                "--rounds", "1", "--threads", "1"]
    results, failures = {}, {}
    for task, bundle in sorted(bundles.items()):
        js = args.work / f"bench-{task}.json"
        cmd = [sys.executable, "-m", "edgeda", "bench", bundle, *opts, "--json", str(js)]
        print("$ edgeda bench " + " ".join(cmd[4:]), flush=True)
        res = subprocess.run(cmd, text=True, capture_output=True)
        print(res.stdout.rstrip())
        if res.returncode != 0 or not js.is_file():
            failures[task] = (res.stdout + res.stderr)[-2000:]
            print(f"edgeda bench failed on the {task} bundle (exit {res.returncode}): {res.stderr[-800:]}")
            continue
        data = json.loads(js.read_text())
        for row in data["results"]:  # a CUDA provider that failed to load would leave ORT on the CPU
            provs = row.get("runner", {}).get("providers")
            if cuda and row["backend"] == "ort" and provs and not any(p != "CPUExecutionProvider" for p in provs):
                row["warning"] = "ONNX Runtime fell back to the CPU provider: not a CUDA result"
        results[task] = data
    result = {"date": _now(), "cuda": cuda, "options": opts, "note": note, "tensorrt": TENSORRT_NOTE,
              "ort_gpu_wheel": os.environ.get("GPU_CHECK_ORT_GPU", "not installed"), "results": results,
              "failures": failures}
    _write(args.out / "bench.json", result)
    return 1 if failures or not results else 0


# --------------------------------------------------------------------------- summary


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmd_summary(args) -> int:
    steps = []
    tsv = args.work / "steps.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            name, status, rc, secs, cap, note = (line.split("\t") + [""] * 6)[:6]
            steps.append({"step": name, "status": status, "rc": int(rc), "seconds": int(secs), "cap_s": int(cap),
                          "note": note})
    env = _load(args.work / "env.json") or {}
    lines = [f"GPU check summary{' (DRY RUN: CPU only, toy sizes; nothing here measures a GPU)' if args.dry_run else ''}"]
    if env.get("cuda_available"):
        lines.append(f"GPU: {env.get('gpu')} (compute capability {env.get('compute_capability')}), driver {env.get('driver')}, "
                     f"CUDA {env.get('torch_cuda')} (torch build), nvcc: {env.get('nvcc')}, torch {env.get('torch')}")
    else:
        lines.append(f"GPU: none visible to torch {env.get('torch', '?')} (CUDA build: {env.get('torch_cuda') or 'no'}); "
                     f"driver {env.get('driver') or 'none'}; nvcc: {env.get('nvcc') or 'none'}")
    lines.append(f"TensorRT: {env.get('tensorrt', TENSORRT_NOTE)}")
    lines.append("steps:")
    for s in steps:
        took = f"{s['seconds']:4d} s (cap {s['cap_s']} s)" if s["cap_s"] else " " * 16
        lines.append(f"  {s['step']:16s} {s['status']:10s} {took}" + (f"  {s['note']}" if s["note"] else ""))
    kern = _load(args.out / "kernels.json")
    if kern:
        lines.append(f"kernels: targets {kern.get('targets')}")
        for r in kern.get("rows", []):
            lines.append(f"  {r['kernel']:13s} {str(r['size']):28s} {r['copy_fraction']:.2f} of copy bandwidth, "
                         f"x{r['speedup_vs_unfused']:.1f} vs unfused PyTorch")
    eff = _load(args.out / "step_efficiency.json")
    if eff:
        lines.append("training-step efficiency (GFLOP/s by FlopCounterMode; % of the measured matmul peak):")
        for r in eff.get("rows", []):
            pct = "–" if r.get("efficiency") is None else f"{100 * r['efficiency']:.1f}%"
            lines.append(f"  {r['model']:14s} {r['variant']:20s} {r['median_ms']:8.2f} ms/step {r['gflops']:9.1f} GFLOP/s "
                         f"{pct:>7s}  x{r['speedup_vs_default']:.2f} vs {eff['settings']['variants'][0]}")
    tr = _load(args.out / "train.json")
    if tr:
        lines.append("training iterations/s (short runs, same call):")
        for r in tr["rows"]:
            def fmt(d):
                return f"{d['iters_per_s']:.1f} it/s ({d['autocast_dtype']})" if "iters_per_s" in d else \
                    (d.get("skipped") and f"skipped: {d['skipped']}") or f"failed: {d.get('error', '?')[:80]}"
            ratio = f"  -> x{r['cuda_over_cpu']:.1f}" if "cuda_over_cpu" in r else ""
            lines.append(f"  {r['run']:16s} cuda {fmt(r.get('cuda', {}))}; cpu {fmt(r.get('cpu', {}))}{ratio}")
    dist = _load(args.out / "distributed.json")
    if dist:
        lines.append(f"torchrun 2 x NCCL on one GPU: {dist['status']}" + (f" ({dist.get('reason')})" if dist.get("reason") else ""))
    bench = _load(args.out / "bench.json")
    if bench:
        lines.append("edgeda bench (median ms per batch; torch on CUDA: H2D / compute / D2H by CUDA events):")
        for task, data in bench.get("results", {}).items():
            for r in data["results"]:
                sp = r.get("split_ms")
                split = (f"  [H2D {sp['h2d_ms']['median']:.3f} / compute {sp['compute_ms']['median']:.3f} / "
                         f"D2H {sp['d2h_ms']['median']:.3f}]") if sp else ""
                lines.append(f"  {task:14s} {r['backend']:5s} {r['runner'].get('device', '')} {r['precision']} b{r['batch']:<3d} "
                             f"{r['latency_ms']['median']:.3f} ms{split}" + (f"  {r['warning']}" if r.get("warning") else ""))
            for s in data.get("skipped", []):
                lines.append(f"  {task:14s} skipped {s['backend']} {s['precision']}: {s['reason'][:120]}")
    files = sorted(p.name for p in args.out.iterdir() if p.is_file()) if args.out.is_dir() else []
    lines.append(f"results in {args.out}: {', '.join(files + ['summary.json'] if 'summary.json' not in files else files)}")
    text = "\n".join(lines)
    print(text)
    _write(args.out / "summary.json", {"date": _now(), "dry_run": args.dry_run, "env": env, "steps": steps,
                                      "summary_text": text})
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["env", "train", "torchrun", "torchrun-worker", "bench", "summary"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeda-gpu-check"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--timeout", type=float, default=55, help="torchrun: seconds before it is stopped (under its step's cap)")
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args(argv)
    if args.command == "torchrun-worker":
        args.out_run = args.out
        return cmd_torchrun_worker(args)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    return {"env": cmd_env, "train": cmd_train, "torchrun": cmd_torchrun, "bench": cmd_bench,
            "summary": cmd_summary}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
