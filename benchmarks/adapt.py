"""Source-free adaptation on the device: `edgeda adapt` from a source-only syndigits bundle to the
handwritten adapt split, 3 seeds, evaluated on handwritten:test.

    python benchmarks/adapt.py                         # tent, shot, 3cgan, cotta x seeds 0,1,2
    python benchmarks/adapt.py --methods 3cgan --seeds 0
    python benchmarks/adapt.py --table-only
    python benchmarks/adapt.py --rows digits_seg,syn_seg --seeds 0   # only the dense rows
    python benchmarks/adapt.py --rows digits_seg,syn_seg --methods cotta --seeds 0,1,2   # CoTTA's dense rows
    python benchmarks/adapt.py --rows digits_det,syn_det --methods tent,cotta --seeds 0   # detection rows
    python benchmarks/adapt.py --rows digits_seg,syn_seg --methods "tent[balance=off]"   # a default ablated
    python benchmarks/adapt.py --rows dense_shifts --methods tent,cotta --seeds 0   # the dense shift suite's targets

Per seed, the source-only bundle is trained with the `cpu` profile of benchmarks/adaptation.py
(or reused from that benchmark's run folder). The 1000 `handwritten:adapt` images are written as
PNG files to a temporary folder, so the real ``--target-dir`` path (folder walk, decoding,
resizing) is exercised. Each adaptation runs as its own ``python -m edgeda adapt ... --json``
process (so its peak RSS is its own) with ``--minutes 10 --memory-mb 2048 --threads 1`` (see
THREADS below); every method runs its default iteration count (TENT 200, SHOT 300, 3C-GAN 1500, CoTTA 200),
capped by the 10-minute budget, and writes the state its default label-free selection rule picks
(``--select info_max``: the check with the highest information maximisation on the target images).
Every setting is the method's default: nothing is chosen by test accuracy; the labels of handwritten:test are only passed through ``--labels`` for the
report. Results: ``benchmarks/results/adapt/<method>-s<seed>.json``, the summary in
``benchmarks/results/adapt.json`` and the README table between the ``adapt-table`` markers.

Dense rows (``--rows digits_seg,syn_seg``): TENT, SHOT, 3C-GAN and CoTTA from the source-only segmentation bundle
of benchmarks/dense.py's ``cpu`` profile (``digitscenes -> handwritten-scenes``, DeepLab ResNet-18
w0.25 at 64x64; ``synscenes -> synscenes:photo``, LR-ASPP at 64x128): the bundle its stored run
names when it is still on disk, else one trained afresh with that row's ``run_config`` into
``edgeda-adapt-bench`` in the scratch folder (:mod:`scratch`). The unlabeled target split is written as a folder of PNG frames; the
same budget and flags as above, each method's default iteration count for segmentation bundles
(no ``--iters``: TENT 200, SHOT 300, 3C-GAN 500, its dense default, CoTTA 200); mIoU on the row's
labeled test split (``--labels``, report only). CoTTA writes its mean teacher (the model the collapse
monitor watched). The table counts the runs that ended on a collapse (rolled back, exit code 3).
Results: ``benchmarks/results/adapt/dense/<row>-<method>-s<seed>.json``, summarised under
``"dense"`` in ``adapt.json`` and in a second table in the same README block, next to the
source-using methods' stored mIoU from benchmarks/dense.py.

Dense shift rows (``--rows dense_shifts``, or one ``BASE@TARGET`` such as ``syn_seg@fog``): the same on the
nine controlled targets of the dense shift suite (:mod:`dense_shifts`), each from the source-only bundle of
its base row (the bundle that suite's candidates start from): its adaptation split written as the PNG
folder, its test split for the report. Results: ``benchmarks/results/adapt/dense_shifts/``, under
``"dense_shifts"`` in ``adapt.json`` and a fourth table next to that suite's seed-0 candidates.

Method variants (``--methods "tent[balance=off]"``): a method with ``--option`` settings, stored and tabled
under that name beside the default (ablations of a default, run side by side on one machine).

Detection rows (``--rows digits_det,syn_det``): TENT and CoTTA, the source-free methods that take
detection bundles, from the source-only bundle of benchmarks/detection.py's ``cpu`` profile
(``digitscenes -> handwritten-scenes``: SSDLite w0.5 at 128x128; ``synscenes -> synscenes:photo``: FCOS
on MobileNetV3 w0.5 at 128x256),
found or trained the same way; same budget and flags, each method's default iteration count; COCO
mAP@[.5:.95] (the task's headline) on the row's labeled test split (report only). The collapse monitor
watches the detections per image and the score distribution. Results:
``benchmarks/results/adapt/detection/<row>-<method>-s<seed>.json``, summarised under ``"detection"`` in
``adapt.json`` and in a third table next to the source-using methods of benchmarks/detection.py.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adaptation import data_version  # noqa: E402
from dense_shifts import TARGETS as SHIFT_TARGETS, write_frames  # noqa: E402
from readme_tables import fmt_pct, replace_block  # noqa: E402
from scratch import scratch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("tent", "shot", "3cgan", "cotta")
MINUTES, MEMORY_MB = 10.0, 2048
# Every method runs its default iteration count, capped by the budget (until 2026-11-21 3C-GAN ran
# until the budget ended instead: its accuracy then depended on the machine's speed, and drifted down
# in longer runs)
ITERS = {"tent": 200, "shot": 300, "3cgan": 1500, "cotta": 200}
# One torch thread per run: the 2 cores of the measuring machine were shared with ~15-20 runnable
# processes of other jobs; with torch's default 2 threads per run, TENT's 200 iterations took
# 354-589 s and 3C-GAN managed 21 iterations in 10 minutes (vs 20 s for TENT and ~1 s per 3C-GAN
# iteration with 1 thread at a lower load earlier; the two effects were not separated).
# Set EDGEDA_BENCH_THREADS=2 on a quiet machine.
THREADS = int(os.environ.get("EDGEDA_BENCH_THREADS", "1"))


def source_bundle(seed: int, runs: Path) -> Path:
    """The shipped source-only model for ``seed`` (trained once with the cpu profile, then reused)."""
    for cand in (ROOT / "runs" / "bench-adaptation" / "cpu" / f"source_only-s{seed}" / "model.edgeda",
                 runs / f"source_only-s{seed}" / "model.edgeda"):
        if (cand / "manifest.json").is_file():
            return cand
    import edgeda
    from adaptation import run_config

    cfg = run_config("cpu", "source_only", seed)
    print(f"training the source-only bundle for seed {seed} ...", flush=True)
    res = edgeda.train(out=str(runs / f"source_only-s{seed}"), progress=False, log=None, **cfg)
    return Path(res.bundle)


def write_target_folder(folder: Path) -> int:
    """handwritten:adapt as 8x8 greyscale PNGs (edgeda resizes them exactly as the built-in does)."""
    from PIL import Image

    from edgeda.data import load_domain

    dom = load_domain("handwritten:adapt", labeled=False, size=(8, 8), channels=1)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(dom.images):
        Image.fromarray(img[:, :, 0]).save(folder / f"{i:04d}.png")
    return len(dom)


def run_one(method: str, seed: int, bundle: Path, target: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "edgeda", "adapt", str(bundle), "--target-dir", str(target), "--out", str(out),
           "--method", method, "--minutes", str(MINUTES), "--memory-mb", str(MEMORY_MB), "--labels",
           "handwritten:test", "--seed", str(seed), "--threads", str(THREADS), "--json"]
    if method in ITERS:
        cmd += ["--iters", str(ITERS[method])]
    r, load_before = _adapt_json(cmd)
    a = r["adaptation"]
    return {
        "method": method, "seed": seed, "data_version": data_version(), "command": " ".join(cmd[1:]), "bundle": str(bundle),
        "accuracy_before": r["accuracy"]["before"], "accuracy_after": r["accuracy"]["after"],
        "iterations": r["iterations"], "stopped_because": r["stopped_because"], "collapsed": r["collapsed"],
        "selection": {k: a.get("selection", {}).get(k) for k in ("rule", "selected_iteration")},
        "cpu_time_s": a.get("cpu_time_s"), "torch_threads": a.get("torch_threads"),
        "wall_time_s": r["wall_time_s"], "peak_rss_mb": r["peak_rss_mb"], "batch": a["budget"]["batch"],
        "before": r["before"], "after": r["after"], "target": {k: a["target"][k] for k in ("images_used", "files_skipped")},
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "machine": a["machine"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


DENSE_ROWS = ("digits_seg", "syn_seg")
DENSE_METHODS = ("tent", "shot", "3cgan", "cotta")
DENSE_BUNDLES = scratch("edgeda-adapt-bench")
DET_ROWS = ("digits_det", "syn_det")
DET_METHODS = ("tent", "cotta")
# the dense shift suite's targets (benchmarks/dense_shifts.py): BASE@TARGET adapts the BASE row's source-only
# bundle to that target's frames (``--rows dense_shifts`` = all of them)
SHIFT_ROWS = tuple(f"{base}@{name}" for name, (base, _, _) in SHIFT_TARGETS.items())
# per kind of row: the benchmark whose cpu-profile source-only bundle is adapted, the methods, and the
# headline score's key and name in the tables
KINDS = {"dense": {"rows": DENSE_ROWS, "bench": "dense", "methods": DENSE_METHODS, "score": "miou", "label": "mIoU"},
         "detection": {"rows": DET_ROWS, "bench": "detection", "methods": DET_METHODS, "score": "map",
                       "label": "mAP@[.5:.95]"},
         "dense_shifts": {"rows": SHIFT_ROWS, "bench": "dense", "methods": DENSE_METHODS, "score": "miou",
                          "label": "mIoU"}}


def kind_name(row: str) -> str:
    return next(name for name, k in KINDS.items() if row in k["rows"])


def kind_of(row: str) -> dict:
    return KINDS[kind_name(row)]


def base_row(row: str) -> str:
    """The benchmark row whose source-only bundle a row adapts (``syn_seg@fog`` -> ``syn_seg``)."""
    return row.split("@", 1)[0]


def pair_of(row: str) -> dict:
    """``source``, ``target`` (the unlabeled frames adapted to) and ``test`` (labelled, report only) of a row."""
    pairs = _bench(row).PAIRS
    if row in SHIFT_ROWS:
        _, target, test = SHIFT_TARGETS[row.split("@", 1)[1]]
        return {"source": pairs[base_row(row)]["source"], "target": target, "test": test}
    return pairs[row]


def split_variant(name: str) -> tuple[str, list[str]]:
    """``tent[balance=off,lr=0.01]`` -> ("tent", ["balance=off", "lr=0.01"]): a method run with
    ``--option`` settings (an ablation of a default), stored and tabled under its full name."""
    if not name.endswith("]") or "[" not in name:
        return name, []
    base, opts = name[:-1].split("[", 1)
    return base, [o for o in opts.split(",") if o]


def _bench(row: str):
    return importlib.import_module(kind_of(row)["bench"])


def dense_bundle(row: str, seed: int) -> tuple[Path, dict]:
    """(source-only bundle, its stored record of benchmarks/dense.py or detection.py, or {}) for a row and seed."""
    bench, row = _bench(row), base_row(row)
    stored = RESULTS / bench.__name__ / "cpu" / f"{row}-s{seed}.json"
    rec = json.loads(stored.read_text()) if stored.is_file() else {}
    cfg = bench.run_config("cpu", row, seed, False)
    cand = Path(rec.get("bundle", "")) if rec.get("config") == cfg else None
    if cand is not None and (cand / "manifest.json").is_file():
        return cand, rec
    out = DENSE_BUNDLES / f"{row}-s{seed}"
    if not (out / "model.edgeda" / "manifest.json").is_file():
        import torch

        import edgeda

        torch.set_num_threads(THREADS)
        print(f"training the source-only {row} bundle for seed {seed} ...", flush=True)
        edgeda.train(out=str(out), progress=False, log=None, **cfg)
    return out / "model.edgeda", rec


def write_dense_target(row: str, folder: Path, size) -> int:
    """The row's unlabeled target split as PNG frames at the bundle's size."""
    return write_frames(pair_of(row)["target"], folder, size)


def _adapt_json(cmd: list[str]) -> tuple[dict, tuple]:
    """Run an ``edgeda adapt ... --json`` command (exit 0, or 3 after a collapse); its JSON and the
    load average before it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout), load_before


def run_one_dense(row: str, method: str, seed: int, bundle: Path, target: Path, out: Path) -> dict:
    score = kind_of(row)["score"]
    base, options = split_variant(method)
    cmd = [sys.executable, "-m", "edgeda", "adapt", str(bundle), "--target-dir", str(target), "--out", str(out),
           "--method", base, "--minutes", str(MINUTES), "--memory-mb", str(MEMORY_MB), "--labels",
           pair_of(row)["test"], "--seed", str(seed), "--threads", str(THREADS), "--json"]
    for o in options:
        cmd += ["--option", o]
    r, load_before = _adapt_json(cmd)
    a = r["adaptation"]
    return {
        "row": row, "method": method, "seed": seed, "command": " ".join(cmd[1:]), "bundle": str(bundle),
        "parent_manifest_sha256": a["parent"]["manifest_sha256"],
        f"{score}_before": r["accuracy"]["before"], f"{score}_after": r["accuracy"]["after"],
        "gain_points": 100 * (r["accuracy"]["after"] - r["accuracy"]["before"]),
        "iterations": r["iterations"], "stopped_because": r["stopped_because"], "collapsed": r["collapsed"],
        "selection": {k: a["selection"].get(k) for k in ("rule", "selected_iteration", "written")},
        "cpu_time_s": a.get("cpu_time_s"), "wall_time_s": r["wall_time_s"], "peak_rss_mb": r["peak_rss_mb"],
        "budget": a["budget"], "before": r["before"], "after": r["after"],
        "target": {k: a["target"][k] for k in ("images_used", "files_skipped")},
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "machine": a["machine"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def summarise_dense(kind: str = "dense") -> dict:
    k = KINDS[kind]
    score = k["score"]
    rows = {}
    for row in k["rows"]:
        per = {}
        stored = {f.name[len(row) + 1:].rsplit("-s", 1)[0] for f in (RESULTS / "adapt" / kind).glob(f"{row}-*-s*.json")}
        variants = sorted(m for m in stored if split_variant(m)[1] and split_variant(m)[0] in k["methods"])
        for method in (*k["methods"], *variants):
            rs = sorted((json.loads(f.read_text()) for f in (RESULTS / "adapt" / kind).glob(f"{row}-{glob.escape(method)}-s*.json")
                         if f.name.rsplit("-s", 1)[0] == f"{row}-{method}"), key=lambda r: r["seed"])
            if not rs:
                continue
            before, after = [r[f"{score}_before"] for r in rs], [r[f"{score}_after"] for r in rs]
            per[method] = {
                "seeds": [r["seed"] for r in rs],
                f"{score}_before": {"mean": statistics.fmean(before), "std": statistics.pstdev(before), "per_seed": before},
                f"{score}_after": {"mean": statistics.fmean(after), "std": statistics.pstdev(after), "per_seed": after},
                "gain_points": {"mean": statistics.fmean(r["gain_points"] for r in rs),
                                "min": min(r["gain_points"] for r in rs), "per_seed": [r["gain_points"] for r in rs]},
                "iterations": [r["iterations"] for r in rs], "wall_time_s": [r["wall_time_s"] for r in rs],
                "cpu_time_s": [r["cpu_time_s"] for r in rs], "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                "selected_iteration": [r["selection"]["selected_iteration"] for r in rs],
                "batch": [r["budget"]["batch"] for r in rs], "train_crop": [r["budget"]["train_crop"] for r in rs],
                "collapsed": [r["collapsed"] for r in rs], "load_average": [r["load_average_before"][0] for r in rs],
                "machine": rs[0]["machine"],
            }
        source_using = {"dense": source_using_dense, "detection": source_using_detection,
                        "dense_shifts": source_using_shift}[kind](row)
        if per:
            rows[row] = {"methods": per, "source_using": source_using}
    return rows


def source_using_dense(row: str) -> dict:
    """The source-using methods as benchmarks/dense.py summarised them (its current-config runs only)."""
    dense_summary = json.loads((RESULTS / "dense.json").read_text()) if (RESULTS / "dense.json").is_file() else {}
    dense_row = dense_summary.get("profiles", {}).get("cpu", {}).get(row, {})
    return {m: {"mean": st["target"]["miou"][0], "n": len(st["seeds"])}
            for m, st in dense_row.get("methods", {}).items() if not m.startswith("source_only")}


def source_using_shift(row: str) -> dict:
    """The ``NAME@init`` candidates of benchmarks/dense_shifts.py on the row's target (seed 0), as it
    summarised them: trained with the source data from the same source-only bundle."""
    f = RESULTS / "dense_shifts.json"
    per = json.loads(f.read_text()).get("summary", {}).get("per_target", {}) if f.is_file() else {}
    target = row.split("@", 1)[1]
    return {m: {"mean": v["miou"], "n": 1} for m, v in per.get(f"{target} s0", {}).items()}


def source_using_detection(row: str) -> dict:
    """The source-using methods' mAP@[.5:.95] as benchmarks/detection.py summarised them (cpu profile)."""
    det = json.loads((RESULTS / "detection.json").read_text()) if (RESULTS / "detection.json").is_file() else {}
    methods = det.get("cpu", {}).get("rows", {}).get(row, {})
    return {m: {"mean": st["map"]["mean"], "n": st["map"]["n"]} for m, st in methods.items()
            if m not in ("source_only", "upper") and st.get("map", {}).get("mean") is not None}


def markdown_dense(rows: dict, kind: str = "dense") -> str:
    if not rows:
        return ""
    k = KINDS[kind]
    score, label = k["score"], k["label"]
    machines = {}  # machine -> the methods measured on it (the rows' runs may come from several)
    for r in rows.values():
        for m, v in r["methods"].items():
            mc = v["machine"]
            machines.setdefault(f"{mc.get('gpu') or mc['cpu']}, {mc['cores']} cores", []).append(m)
    where = ("; ".join(f"{name} ({', '.join(sorted(set(ms)))})" for name, ms in machines.items())
             if len(machines) > 1 else next(iter(machines)))
    intro = ("Dense rows: `edgeda adapt` on a PNG folder of the row's unlabeled target frames, from the source-only "
             "segmentation bundle of `benchmarks/dense.py` (cpu profile) of the same seed; mIoU on the labeled test split "
             "(labels used for this report only), per pixel on full frames" if kind == "dense" else
             "Dense shift rows: the same, on the targets of the dense shift suite (`benchmarks/dense_shifts.py`: "
             "its adaptation split as the PNG folder, its test split for the report) from the source-only bundle "
             "of the row's base pair; the source-using rows are that suite's seed-0 candidates started from the "
             "same bundle" if kind == "dense_shifts" else
             "Detection rows: `edgeda adapt` on a PNG folder of the row's unlabeled target frames, from the source-only "
             "detection bundle of `benchmarks/detection.py` (cpu profile) of the same seed; COCO mAP@[.5:.95] on the "
             "labeled test split (labels used for this report only); the collapse monitor watches detections per image "
             "and the score distribution")
    lines = [
        "",
        f"{intro}; same budget, defaults and selection as above. "
        f"Machine: {where} (shared).",
        "",
        f"| pair | method | source data | {label} % before | {label} % after | gain (points) | collapse exits | iterations | written state | wall time (s) | CPU time (s) | peak RSS (MiB) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, r in rows.items():
        pair = f"{pair_of(row)['source']} -> {pair_of(row)['target']}"
        for m, v in r["methods"].items():
            g = v["gain_points"]
            lines.append(
                f"| {pair} | {m} (source-free) | none | {fmt_pct(v[f'{score}_before']['mean'], v[f'{score}_before']['std'])} | "
                f"{fmt_pct(v[f'{score}_after']['mean'], v[f'{score}_after']['std'])} | {g['mean']:+.1f} (min {g['min']:+.1f}) | "
                f"{sum(v['collapsed'])}/{len(v['collapsed'])} | {'/'.join(str(i) for i in v['iterations'])} | "
                f"{'/'.join('–' if i is None else str(i) for i in v['selected_iteration'])} | "
                f"{'/'.join(f'{t:.0f}' for t in v['wall_time_s'])} | "
                f"{'/'.join('–' if c is None else f'{c:.0f}' for c in v['cpu_time_s'])} | {v['peak_rss_mb']:.0f} | "
                f"{len(v['seeds'])} |")
        for m, v in sorted(r["source_using"].items()):
            lines.append(f"| {pair} | {m} (trained with source, `benchmarks/{k['bench']}.py`) | yes | – | "
                         f"{fmt_pct(v['mean'])} | – | – | – | – | – | – | – | {v['n']} |")
    if kind == "dense_shifts":
        lines += ["", f"Over the {len(rows)} shift targets (per method: mean gain vs the shipped model, targets where "
                  "it wrote a model below it, collapse exits):", ""]
        for m in sorted({m for r in rows.values() for m in r["methods"]}):
            gains = [r["methods"][m]["gain_points"]["mean"] for r in rows.values() if m in r["methods"]]
            exits = sum(sum(r["methods"][m]["collapsed"]) for r in rows.values() if m in r["methods"])
            lines.append(f"* {m}: {statistics.fmean(gains):+.1f} points, below on {sum(g < 0 for g in gains)} of "
                         f"{len(gains)}, {exits} collapse exits")
    return "\n".join(lines)


def cpu_time(r: dict) -> float | None:
    """CPU seconds the adapt process got (from the adapted bundle's manifest, when it recorded them)."""
    if r.get("cpu_time_s") is not None:
        return r["cpu_time_s"]
    parts = r["command"].split()
    out = ROOT / parts[parts.index("--out") + 1] if "--out" in parts else None
    try:
        return json.loads((out / "manifest.json").read_text())["adaptation"].get("cpu_time_s")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarise() -> dict:
    rows = {}
    for method in METHODS:
        rs = sorted((r for f in (RESULTS / "adapt").glob(f"{method}-s*.json")
                     if (r := json.loads(f.read_text())).get("data_version") == data_version()),  # same renderer only
                    key=lambda r: r["seed"])
        if not rs:
            continue
        after = [r["accuracy_after"] for r in rs]
        before = [r["accuracy_before"] for r in rs]
        gains = [100 * (a - b) for a, b in zip(after, before)]
        rows[method] = {
            "seeds": [r["seed"] for r in rs],
            "accuracy_before": {"mean": statistics.fmean(before), "std": statistics.pstdev(before), "per_seed": before},
            "accuracy_after": {"mean": statistics.fmean(after), "std": statistics.pstdev(after), "per_seed": after},
            "gain_points": {"mean": statistics.fmean(gains), "min": min(gains), "per_seed": gains},
            "iterations": [r["iterations"] for r in rs], "wall_time_s": [r["wall_time_s"] for r in rs],
            "selected_iteration": [r.get("selection", {}).get("selected_iteration") for r in rs],
            "cpu_time_s": [cpu_time(r) for r in rs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "collapsed": [r["collapsed"] for r in rs],
            "load_average": [r["load_average_before"][0] for r in rs], "machine": rs[0]["machine"],
        }
    src = RESULTS / "adaptation.json"
    source_using = json.loads(src.read_text())["rows"] if src.exists() else {}
    return {"pair": "syndigits -> handwritten", "budget": {"minutes": MINUTES, "memory_mb": MEMORY_MB}, "rows": rows,
            "dense": summarise_dense(), "detection": summarise_dense("detection"),
            "dense_shifts": summarise_dense("dense_shifts"),
            "source_using": {m: {"target_test_acc": r["target_test_acc"], "iters": r["iters"]} for m, r in source_using.items()},
            "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def markdown(s: dict) -> str:
    rows = s["rows"]
    if not rows:
        return "_no runs yet_"
    m0 = next(iter(rows.values()))["machine"]
    lines = [
        f"`edgeda adapt` on a PNG folder of `handwritten:adapt` (1000 unlabeled images), starting from the source-only "
        f"bundle of the same seed; accuracy on `handwritten:test` (labels used for this report only); mean ± std over "
        f"seeds; per-seed iterations, wall and CPU time as seed0/seed1/seed2; budget `--minutes {s['budget']['minutes']:g} "
        f"--memory-mb {s['budget']['memory_mb']} --threads {THREADS}`; default settings, default iteration counts "
        f"and the default label-free selection of the written state (`--select info_max`). "
        f"Machine: {m0.get('gpu') or m0['cpu']}, {m0['cores']} cores (other jobs may share them) "
        f"(1-minute load average at the start of the runs: "
        f"{', '.join(f'{x:.1f}' for r in rows.values() for x in r['load_average'])}), torch {m0['torch']}.",
        "",
        "| method | source data | target acc % | gain vs shipped source-only (points) | iterations | written state (iteration) | wall time (s) | CPU time (s) | peak RSS (MiB) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = next(iter(rows.values()))
    lines.append(f"| shipped source-only model | used in training | {fmt_pct(first['accuracy_before']['mean'], first['accuracy_before']['std'])} "
                 f"| – | – | – | – | – | – | {len(first['seeds'])} |")
    for m, r in rows.items():
        g = r["gain_points"]
        lines.append(
            f"| {m} (source-free) | none | {fmt_pct(r['accuracy_after']['mean'], r['accuracy_after']['std'])} | "
            f"{g['mean']:+.1f} (min {g['min']:+.1f}) | {'/'.join(str(i) for i in r['iterations'])} | "
            f"{'/'.join('–' if i is None else str(i) for i in r['selected_iteration'])} | "
            f"{'/'.join(f'{t:.0f}' for t in r['wall_time_s'])} | "
            f"{'/'.join('–' if c is None else f'{c:.0f}' for c in r['cpu_time_s'])} | {r['peak_rss_mb']:.0f} | {len(r['seeds'])} |")
    for m, r in sorted(s["source_using"].items()):
        if m == "source_only":
            continue
        acc = r["target_test_acc"]
        lines.append(f"| {m} (trained with source, `benchmarks/adaptation.py`) | yes | {fmt_pct(acc['mean'], acc['std'])} "
                     f"| see the adaptation table | {r['iters']} | – | – | – | – | – |")
    if not s["source_using"]:
        lines.append("")
        lines.append("Source-using methods (DANN etc.) on the same pair and test split: see the adaptation accuracy "
                     "table above (`benchmarks/results/adaptation.json` had no rows when this table was written).")
    return ("\n".join(lines) + "\n" + markdown_dense(s.get("dense", {})) + markdown_dense(s.get("detection", {}), "detection")
            + markdown_dense(s.get("dense_shifts", {}), "dense_shifts"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated; dense and detection rows also take NAME[KEY=VALUE,...], the method "
                         "run with those --option settings (an ablation, tabled under that name)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", default="classification," + ",".join(DENSE_ROWS + DET_ROWS),
                    help="classification (syndigits -> handwritten) and/or dense and detection rows: "
                    + ", ".join(DENSE_ROWS + DET_ROWS) + "; dense_shifts (or one of " + ", ".join(SHIFT_ROWS) + ")")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--runs-dir", default=os.environ.get("EDGEDA_BENCH_RUNS", "runs/bench-adapt"))
    args = ap.parse_args(argv)
    folder = RESULTS / "adapt"
    folder.mkdir(parents=True, exist_ok=True)
    rows = args.rows.split(",")
    if not args.table_only:
        run_dense(rows, args)
    if not args.table_only and "classification" in rows:
        runs = Path(args.runs_dir)
        with tempfile.TemporaryDirectory(prefix="edgeda-adapt-target-") as tmp:
            target = Path(tmp) / "handwritten_adapt"
            print(f"wrote {write_target_folder(target)} target PNGs to {target}", flush=True)
            for seed in (int(s) for s in args.seeds.split(",")):
                bundle = None
                for m in args.methods.split(","):
                    f = folder / f"{m}-s{seed}.json"
                    if f.exists() and not args.force and json.loads(f.read_text()).get("data_version") == data_version():
                        continue
                    bundle = bundle or source_bundle(seed, runs)
                    print(f"adapting seed {seed} with {m} ...", flush=True)
                    r = run_one(m, seed, bundle, target, runs / f"{m}-s{seed}.edgeda")
                    f.write_text(json.dumps(r, indent=1) + "\n")
                    print(f"  {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f} in {r['wall_time_s']:.0f}s, "
                          f"{r['iterations']} iterations, peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
    s = summarise()
    (RESULTS / "adapt.json").write_text(json.dumps(s, indent=1) + "\n")
    replace_block("adapt-table", markdown(s))
    print(markdown(s))
    return 0


def split_methods(text: str) -> list[str]:
    """The comma-separated ``--methods``, commas inside a variant's brackets kept."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [m for m in (*out, cur) if m]


def run_dense(rows: list[str], args) -> None:
    from edgeda.bundle import Bundle

    rows = [r for row in rows for r in (SHIFT_ROWS if row == "dense_shifts" else (row,))]
    for row in (r for r in rows if r in DENSE_ROWS + DET_ROWS + SHIFT_ROWS):
        kind = kind_name(row)
        folder = RESULTS / "adapt" / kind
        folder.mkdir(parents=True, exist_ok=True)
        dense_methods = [m for m in split_methods(args.methods) if split_variant(m)[0] in KINDS[kind]["methods"]]
        with tempfile.TemporaryDirectory(prefix=f"edgeda-adapt-{row}-") as tmp:
            target = Path(tmp) / "frames"
            for seed in (int(s) for s in args.seeds.split(",")):
                todo = [m for m in dense_methods if args.force or not (folder / f"{row}-{m}-s{seed}.json").exists()]
                if not todo:
                    continue
                bundle, _ = dense_bundle(row, seed)
                if not target.exists():
                    print(f"wrote {write_dense_target(row, target, Bundle(bundle).task.image_size)} {row} target PNGs",
                          flush=True)
                for m in todo:
                    print(f"adapting {row} seed {seed} with {m} ...", flush=True)
                    out = Path(args.runs_dir) / f"{row}-{m}-s{seed}.edgeda"
                    r = run_one_dense(row, m, seed, bundle, target, out)
                    (folder / f"{row}-{m}-s{seed}.json").write_text(json.dumps(r, indent=1) + "\n")
                    sc = KINDS[kind]["score"]
                    print(f"  {KINDS[kind]['label']} {r[f'{sc}_before']:.3f} -> {r[f'{sc}_after']:.3f} in {r['wall_time_s']:.0f}s, "
                          f"{r['iterations']} iterations, peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
