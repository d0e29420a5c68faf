"""Detection benchmark: source-only, mean-teacher self-training and DANN on the embedded detection
pairs, with the target-trained upper bound; COCO mAP@.5 and mAP@[.5:.95] and wall time per run.

    python benchmarks/detection.py [--profile cpu|gpu|quick] [--rows digits_det,syn_det]
                                   [--methods source_only,mean_teacher,dann] [--seeds 0,1,2] [--no-upper]
                                   [--table-only]

| row | pair | cpu profile | gpu profile |
|---|---|---|---|
| digits_det | digitscenes -> handwritten-scenes (10 digit classes) | ssdlite width 0.5, 128x128, batch 8, 600 it. | ssdlite width 1.0, 320x320, batch 32, 20000 it. |
| syn_det | synscenes -> synscenes:photo (6 thing classes) | ssdlite width 0.5, 128x256, batch 8, 600 it. | fcos resnet50, 512x1024, batch 8, 20000 it. |

Every method runs on every row with ``select=last`` (target labels are read for this report only),
Adam 1e-3 with a constant schedule on the CPU (the dense CPU rows' optimizer; not tuned on the
target), evaluated four times. The CPU iteration count is a budget, not a measured plateau. Digits
are not mirror-symmetric, so the digit row trains without horizontal flips (as the dense digit row). Method defaults are the papers' scaled to this budget and stated in
each method's docstring: ``mean_teacher`` threshold 0.8, EMA 0.99 (0.9996 in the papers, over
tens of thousands of iterations), burn-in 30 % of training; ``dann`` gamma 10, per-level domain
classifiers of 256 channels. The upper bound is the same model and budget trained on the target's
labelled adaptation split (``handwritten-scenes:adapt``, ``synscenes:photo``), seed 0 only.
``quick`` is a smoke profile (64 iterations) for checking the script, not for the table.
Every run is stored under ``benchmarks/results/detection/<profile>/`` (a run with the same config
is not repeated) and the summary in ``benchmarks/results/detection.json``; the markdown table is
written to ``benchmarks/results/detection-<profile>.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scratch import scratch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAIRS = {
    "digits_det": {"source": "digitscenes", "target": "handwritten-scenes", "upper_source": "handwritten-scenes:adapt",
                   "test": "handwritten-scenes:test"},
    "syn_det": {"source": "synscenes", "target": "synscenes:photo", "upper_source": "synscenes:photo",
                "test": "synscenes:photo-test"},
}
_CPU = {"backbone": "ssdlite", "backbone_kwargs": {"width": 0.5}, "batch_size": 8, "iters": 600, "optimizer": "adam",
        "lr": 1e-3, "lr_schedule": "constant", "workers": 0}
PROFILES = {
    "cpu": {"digits_det": {**_CPU, "image_size": [128, 128], "augment_hflip": False},
            "syn_det": {**_CPU, "image_size": [128, 256]}},
    "quick": {"digits_det": {**_CPU, "image_size": [128, 128], "iters": 64, "augment_hflip": False},
              "syn_det": {**_CPU, "image_size": [128, 256], "iters": 64}},
    "gpu": {"digits_det": {"backbone": "ssdlite", "backbone_kwargs": {"width": 1.0}, "image_size": [320, 320],
                           "augment_hflip": False, "batch_size": 32, "iters": 20000, "lr": 0.01, "lr_schedule": "cosine"},
            "syn_det": {"backbone": "fcos", "backbone_kwargs": {"backbone": "resnet50"}, "image_size": [512, 1024],
                        "batch_size": 8, "iters": 20000, "lr": 0.01, "lr_schedule": "cosine"}},
}
METHODS = ("source_only", "mean_teacher", "dann")


def run_config(profile: str, row: str, seed: int, upper: bool, method: str = "source_only") -> dict:
    p, pair = PROFILES[profile][row], PAIRS[row]
    cfg = {"method": method, "task": "detection", "seed": seed, "select": "last",
           "device": "cpu" if profile != "gpu" else "auto", "source": pair["upper_source"] if upper else pair["source"],
           "target": pair["target"], "target_test": pair["test"], **p}
    cfg["eval_every"] = cfg["iters"] if profile == "quick" else max(1, cfg["iters"] // 4)
    cfg["checkpoint_every"] = cfg["iters"]
    return cfg


def run_tag(row: str, method: str, seed: int, upper: bool = False) -> str:
    return f"{row}{'-upper' if upper else ''}{'' if method == 'source_only' else '-' + method}-s{seed}"


def run_one(profile: str, row: str, seed: int, upper: bool, method: str = "source_only") -> dict:
    import torch

    import edgeda
    from edgeda.utils import machine_info

    folder = RESULTS / "detection" / profile
    tag = run_tag(row, method, seed, upper)
    path = folder / f"{tag}.json"
    cfg = run_config(profile, row, seed, upper, method)
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("config") == cfg:
            print(f"{tag}: stored", flush=True)
            return old
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = edgeda.train(out=str(scratch("edgeda-detection-bench") / profile / tag), progress=False, log=None, **cfg)
    wall = time.perf_counter() - t0
    m = res.metrics
    scores = m.get("target_test_scores") or {}
    rec = {"row": row, "method": method, "upper_bound": upper, "seed": seed, "config": cfg, "wall_s": round(wall, 1),
           "step_s": round(res.step_time, 4), "machine": machine_info(), "date": dt.date.today().isoformat(),
           "source_val": {"map": m.get("source_val_map"), "map50": m.get("source_val_map50")},
           "target_test": {"map": scores.get("map"), "map50": scores.get("map50"), "map75": scores.get("map75")},
           "per_class_ap50": m.get("target_test_per_class") or scores.get("per_class_ap50"),
           "history": [{k: v for k, v in h.items() if k != "samples_png"} for h in res.history], "bundle": str(res.bundle)}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{tag}: mAP@.5 {rec['target_test']['map50']}, mAP {rec['target_test']['map']} in {wall:.0f}s", flush=True)
    return rec


def _mean_std(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def summarise(profile: str) -> dict:
    """Every stored run of ``profile``, grouped by row and method (upper bounds apart)."""
    folder = RESULTS / "detection" / profile
    rows: dict = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        r = json.loads(f.read_text())
        key = "upper" if r["upper_bound"] else r["method"]
        rows.setdefault(r["row"], {}).setdefault(key, []).append(r)
    out = {}
    for row, methods in rows.items():
        out[row] = {}
        ref = {r["seed"]: r for r in methods.get("source_only", [])}
        for key, runs in methods.items():
            stats = {}
            for metric in ("map50", "map"):
                mean, std, n = _mean_std([r["target_test"][metric] for r in runs])
                gains = [r["target_test"][metric] - ref[r["seed"]]["target_test"][metric] for r in runs
                         if r["seed"] in ref and r["target_test"][metric] is not None
                         and ref[r["seed"]]["target_test"][metric] is not None]
                gain = _mean_std(gains)[0] if key not in ("source_only", "upper") else None
                stats[metric] = {"mean": mean, "std": std, "n": n, "gain_over_source_only": gain}
            stats["wall_s"] = _mean_std([r["wall_s"] for r in runs])[0]
            stats["seeds"] = sorted(r["seed"] for r in runs)
            stats["machine"] = runs[0]["machine"].get("cpu") or runs[0]["machine"].get("gpu")
            out[row][key] = stats
    return out


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def table(profile: str, summary: dict) -> str:
    lines = [f"Detection, {profile} profile (COCO mAP on the target test split, %; mean over seeds; "
             "gain: paired with source-only on the same seed)", "",
             "| row | method | seeds | mAP@.5 | gain mAP@.5 | mAP@[.5:.95] | gain mAP | wall s |", "|---|---|---|---|---|---|---|---|"]
    for row, methods in summary.items():
        order = [m for m in (*METHODS, "upper") if m in methods] + sorted(set(methods) - set(METHODS) - {"upper"})
        for key in order:
            s = methods[key]
            name = "target-trained (upper bound)" if key == "upper" else key
            g50, g = s["map50"]["gain_over_source_only"], s["map"]["gain_over_source_only"]
            lines.append(f"| {row} | {name} | {len(s['seeds'])} | {_pct(s['map50']['mean'])} +- {_pct(s['map50']['std'])} | "
                         f"{'' if g50 is None else f'{100 * g50:+.1f}'} | {_pct(s['map']['mean'])} | "
                         f"{'' if g is None else f'{100 * g:+.1f}'} | {s['wall_s']:.0f} |")
    machines = sorted({s["machine"] for m in summary.values() for s in m.values() if s.get("machine")})
    lines += ["", f"Machine: {', '.join(machines) or 'n/a'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--rows", default=",".join(PAIRS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-upper", action="store_true", help="skip the target-trained upper bounds")
    ap.add_argument("--table-only", action="store_true", help="rebuild the summary and table from stored runs")
    a = ap.parse_args()
    rows = [r for r in a.rows.split(",") if r]
    unknown = [r for r in rows if r not in PAIRS]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; valid: {', '.join(PAIRS)}")
    if not a.table_only:
        seeds = [int(s) for s in a.seeds.split(",") if s]
        for row in rows:
            for seed in seeds:
                for method in [m for m in a.methods.split(",") if m]:
                    run_one(a.profile, row, seed, False, method)
            if not a.no_upper:
                run_one(a.profile, row, 0, True)
    summary = summarise(a.profile)
    path = RESULTS / "detection.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored[a.profile] = {"rows": summary, "date": dt.date.today().isoformat()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1) + "\n")
    md = RESULTS / f"detection-{a.profile}.md"
    md.write_text(table(a.profile, summary))
    print(md.read_text())


if __name__ == "__main__":
    main()
