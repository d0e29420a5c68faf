"""1 process vs 2 torchrun processes at the same global batch: target accuracy and wall time.

Runs ``edgeda train`` (DANN, the cpu profile's backbone and data from ``benchmarks/adaptation.py``)
once as one process with batch B and once under ``torchrun --nproc_per_node=2`` with batch B/2 per
process (gloo on CPU, NCCL on GPU), and writes ``benchmarks/results/distributed.json`` and the
README table between ``<!-- distributed-table:start/end -->``.

On a 2-core CPU this measures correctness and overhead, not a speed-up: the two processes share
the cores that the single process uses, and gradients are averaged through gloo every step.

    python benchmarks/distributed.py [--iters 1000] [--table-only]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adaptation import PAIR, PROFILES, data_version  # noqa: E402
from readme_tables import fmt_pct, replace_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args, runs_dir: Path, seed: int, batch_divisor: int | None = None) -> dict:
    """``world`` processes with batch B / ``batch_divisor`` each (default: B / world, the same global batch)."""
    import yaml

    common = dict(PROFILES[args.profile]["common"])
    divisor = batch_divisor or world
    global_batch = common["batch_size"] * world // divisor
    cfg = {**common, **PAIR, "method": args.method, "seed": seed, "iters": args.iters,
           "batch_size": common["batch_size"] // divisor, "eval_every": args.iters, "checkpoint_every": args.iters}
    out = runs_dir / f"{args.method}-w{world}-b{cfg['batch_size']}-s{seed}"
    cfg_file = runs_dir / f"w{world}-b{cfg['batch_size']}-s{seed}.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(yaml.safe_dump(cfg))
    edgeda = ["-m", "edgeda", "train", "--config", str(cfg_file), "--out", str(out), "--json"]
    if world == 1:
        cmd = [sys.executable, *edgeda]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
               f"--master_port={_free_port()}", *edgeda]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"world {world} failed:\n{res.stderr[-3000:]}")
    info = json.loads(res.stdout[res.stdout.index("{"):])
    from edgeda.utils import machine_info

    return {
        "processes": world, "batch_per_process": cfg["batch_size"], "global_batch": global_batch,
        "role": "control: half the global batch" if global_batch != common["batch_size"] else "same global batch",
        "threads_per_process": args.threads, "iters": args.iters, "method": args.method, "seed": seed,
        "target_test_acc": info["metrics"].get("target_test_acc"), "source_val_acc": info["metrics"].get("source_val_acc"),
        "train_wall_time_s": info["wall_time_s"], "process_wall_time_s": round(wall, 1),
        "backend": "nccl" if "cuda" in str(common.get("device")) else "gloo", "machine": machine_info(),
        "data_version": data_version(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def summarise(runs: list[dict]) -> list[dict]:
    import statistics

    rows = {}
    for r in runs:
        rows.setdefault((r["processes"], r["batch_per_process"]), []).append(r)
    out = []
    for (world, batch), rs in rows.items():
        acc = [r["target_test_acc"] for r in rs]
        src = [r["source_val_acc"] for r in rs]
        out.append({"processes": world, "batch_per_process": batch, "global_batch": rs[0]["global_batch"],
                    "seeds": [r["seed"] for r in rs], "target_test_acc": acc, "source_val_acc": src,
                    "target_test_acc_mean": statistics.fmean(acc), "target_test_acc_std": statistics.pstdev(acc),
                    "source_val_acc_mean": statistics.fmean(src), "source_val_acc_std": statistics.pstdev(src),
                    "train_wall_time_s_mean": statistics.fmean(r["train_wall_time_s"] for r in rs)})
    return out


def markdown(result: dict) -> str:
    rows = result["runs"]
    m = rows[0]["machine"]
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"`{result['method']}` {PAIR['source']} -> {PAIR['target']}, {rows[0]['iters']} iterations, global batch "
        f"{rows[0]['global_batch']} per domain (last row: a 1-process control at half that batch), mean ± std over seeds {', '.join(map(str, seeds))}, {rows[0]['threads_per_process']} thread(s) per "
        f"process, {rows[-1]['backend']}. Machine: {m.get('gpu') or m['cpu']}, {m['cores']} cores (shared with other "
        "jobs while measured, so wall times swing by 2x between identical runs and are not comparable across rows). "
        "On a 2-core CPU this is a correctness/overhead check, not a speed-up: the question is whether 2 x B/2 learns "
        "like 1 x B rather than like the 1 x B/2 control (two seeds only; 1000 iterations is early, high-variance "
        "training).",
        "",
        "| processes | batch / process | global batch | target acc % | source val acc % | per seed: target acc % | training wall time / run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        per_seed = ", ".join(f"{100 * a:.1f}" for a in r["target_test_acc"])
        lines.append(f"| {r['processes']} | {r['batch_per_process']} | {r['global_batch']} | "
                     f"{fmt_pct(r['target_test_acc_mean'], r['target_test_acc_std'])} | "
                     f"{fmt_pct(r['source_val_acc_mean'], r['source_val_acc_std'])} | {per_seed} | "
                     f"{r['train_wall_time_s_mean']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--method", default="dann")
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--runs-dir", default=os.environ.get("EDGEDA_BENCH_RUNS", "runs/bench-distributed"))
    args = ap.parse_args(argv)
    out = RESULTS / "distributed.json"
    if not args.table_only:
        # 1 x B, 2 x B/2 (same global batch), and 1 x B/2 as a control: if the 2-process run learned like
        # the control, gradients would not be averaged into the global batch
        cache = RESULTS / "distributed"
        cache.mkdir(parents=True, exist_ok=True)
        runs = []
        for seed in (int(x) for x in args.seeds.split(",")):
            for world, divisor in ((1, None), (2, None), (1, 2)):
                f = cache / f"{args.method}-w{world}-d{divisor or world}-i{args.iters}-s{seed}.json"
                # each run is kept (rerun by deleting its file); one made on another renderer is redone
                if not f.exists() or json.loads(f.read_text()).get("data_version") != data_version():
                    f.write_text(json.dumps(run(world, args, Path(args.runs_dir), seed, divisor), indent=2) + "\n")
                runs.append(json.loads(f.read_text()))
        result = {"method": args.method, "profile": args.profile, "pair": PAIR, "runs": runs, "summary": summarise(runs),
                  "note": "same global batch; 2 processes on a 2-core CPU measure correctness and overhead, not speed-up"}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    result = json.loads(out.read_text())
    replace_block("distributed-table", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
