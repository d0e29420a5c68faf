"""Accuracy of every registered method on syndigits -> handwritten, 3 seeds, same budget.

    python benchmarks/adaptation.py --profile cpu            # every registered method x seeds 0,1,2
    python benchmarks/adaptation.py --methods dann,source_only --seeds 0
    python benchmarks/adaptation.py --table-only             # rebuild JSON + README table from runs
    python benchmarks/adaptation.py --methods suit --try ema=0.999   # a candidate setting, judged label-free

Each (method, seed) run is stored as ``benchmarks/results/adaptation/<profile>/<method>-s<seed>.json``
and skipped when present (``--force`` reruns it), so the table can be built up method by method
and an interrupted benchmark continues where it stopped. The summary goes to
``benchmarks/results/adaptation.json`` and the README table between the ``adaptation-table`` markers.

Model selection follows each run's config (never target labels); target test accuracy is
reported only. A setting changes only by the rule in ``benchmarks/candidates.py`` (``--try``: the
candidate's runs are stored apart and compared on the label-free info_max score). Profiles: ``cpu`` is sized so that the whole table finishes in about two hours on
2 cores; ``gpu`` is a longer schedule with a wider backbone for GPU servers.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import candidates  # noqa: E402
from readme_tables import fmt_pct, replace_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAIR = {"source": "syndigits", "target": "handwritten"}

_CPU_GAN = {"g_width": 8, "g_kernel": 3, "d_width": 16}

# Shared settings per profile; per-method entries override them (state iterations per method).
PROFILES: dict[str, dict] = {
    "cpu": {  # why each setting is what it is: benchmarks/DECISIONS.md
        "common": {"iters": 6000, "batch_size": 32, "lr": 0.01, "backbone": "dtn",
                   "backbone_kwargs": {"width": 16, "out_dim": 128}, "source_n": 10000, "eval_every": 1000,
                   "checkpoint_every": 100000, "device": "cpu"},
        "methods": {
            "source_only": {"ema": 0.999},
            "coral": {"ema": 0.999},
            "csg": {"ema": 0.999,
                    "options": {"n_ops": 1, "magnitude": 0.2, "backbone_lr": 0.1, "weight": 1.0, "pretrain": 0.05, "layers": 2,
                                "momentum": 0.999, "temperature": 0.05}},
            "pixelda": {"iters": 1000, "eval_every": 250, "init_from": "source_only", "ema": 0.999, "options": dict(_CPU_GAN)},
            "suit": {"iters": 6000, "eval_every": 1500, "init_from": "source_only",
                     "options": {**_CPU_GAN, "bn": "target", "d_augment": "translation,cutout", "content": 3.0}},
            "cyclegan": {"iters": 4000, "eval_every": 500, "init_from": "source_only", "ema": 0.999,
                         "options": {**_CPU_GAN, "d_width": 8, "gan_fraction": 0.5, "identity": 0.5, "semantic_target": 1.0}},
            "fgbg_cyclegan": {"iters": 2000, "eval_every": 500, "init_from": "source_only", "ema": 0.999,
                              "options": {**_CPU_GAN, "d_width": 8, "gan_fraction": 0.15, "identity": 0.5,
                                          "d_augment": "translation,cutout", "semantic_target": 1.0, "semantic": 2.0}},
            "label2image": {"iters": 1500, "eval_every": 500, "init_from": "source_only",
                            "options": {"g_width": 16, "d_width": 32}},
        },
    },
    "gpu": {
        "common": {"iters": 10000, "batch_size": 64, "lr": 0.01, "backbone": "dtn",
                   "backbone_kwargs": {"width": 32, "out_dim": 256}, "source_n": 30000, "eval_every": 1000,
                   "checkpoint_every": 100000, "device": "auto"},
        "methods": {  # pixel-level methods: the method defaults (width-16 refiners) and GAN stages of 30%
            "cyclegan": {"options": {"gan_fraction": 0.3}},
            "fgbg_cyclegan": {"options": {"gan_fraction": 0.3}},
        },
    },
}


def run_config(profile: str, method: str, seed: int) -> dict:
    p = PROFILES[profile]
    cfg = {**p["common"], **p["methods"].get(method, {}), **PAIR, "method": method, "seed": seed}
    return cfg


def init_bundle(profile: str, init_from: str, seed: int, out_root: Path) -> tuple[Path, dict]:
    """The bundle a run starts from (the same seed's run of ``init_from``) and the profile config it was
    trained with; refused unless it was trained with the profile's current settings for that method."""
    init = out_root / f"{init_from}-s{seed}" / "model.edgeda"
    if not (init / "manifest.json").is_file():
        raise SystemExit(f"this run starts from {init}: run {init_from} seed {seed} first")
    want = run_config(profile, init_from, seed)
    got = json.loads((init / "manifest.json").read_text())["training"]["config"]
    diff = sorted(k for k, v in want.items() if k not in ("init_from", "options") and got.get(k) != v)
    if want.get("options", {}) != got.get("options", {}):
        diff.append("options")
    if diff:
        raise SystemExit(f"{init} was trained with other {', '.join(diff)} than the {profile} profile's {init_from}: "
                         f"rerun {init_from} seed {seed} (--force)")
    return init, want


def expected_init(profile: str, cfg: dict, seed: int) -> dict | None:
    """The profile config of the run that a run with ``cfg`` starts from (None: it starts from scratch)."""
    return run_config(profile, cfg["init_from"], seed) if cfg.get("init_from") else None


def data_version() -> str:
    from edgeda.data.builtin import SYNDIGITS_VERSION

    return f"syndigits-v{SYNDIGITS_VERSION}"


def run_one(profile: str, method: str, seed: int, out_root: Path, cfg: dict | None = None, name: str | None = None) -> dict:
    import torch

    from edgeda.training.trainer import train

    cfg = cfg or run_config(profile, method, seed)
    kw = {k: v for k, v in cfg.items() if k != "init_from"}
    init_cfg = None
    if cfg.get("init_from"):  # e.g. CSG's pre-trained encoder: the same seed's run of another method
        init, init_cfg = init_bundle(profile, cfg["init_from"], seed, out_root)
        kw["init"] = str(init)
    t0 = time.perf_counter()
    res = train(out=str(out_root / (name or f"{method}-s{seed}")), progress=False, log=None, **kw)
    wall = time.perf_counter() - t0
    from edgeda.utils import machine_info

    return {
        "method": method, "seed": seed, "profile": profile, "config": cfg, "data_version": data_version(),
        "method_options": method_options(cfg), "init_config": init_cfg,
        "source_val_acc": res.metrics.get("source_val_acc"), "target_test_acc": res.metrics.get("target_test_acc"),
        "target_entropy": res.metrics.get("target_entropy"), "selected_iteration": res.metrics.get("selected_iteration"),
        "history": res.history, "wall_time_s": round(wall, 1), "step_time_s": round(res.step_time, 5),
        "torch_threads": torch.get_num_threads(), "machine": machine_info(), "load_avg_1min_end": os.getloadavg()[0],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def cfg_full_eval(profile: str, method: str) -> int:
    return run_config(profile, method, 0)["eval_every"]


def estimate(profile: str, methods: list[str], seeds: int, probe_iters: int = 60) -> dict:
    """Time a short run of each method and extrapolate the whole table's duration on this machine."""
    import tempfile

    per_method = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            cfg = run_config(profile, m, 0)
            cfg.pop("init_from", None)  # per-iteration cost does not depend on the starting weights
            full = cfg["iters"]
            cfg.update(iters=probe_iters, eval_every=probe_iters)
            stamps: list[float] = []
            from edgeda.config import make_config
            from edgeda.training.trainer import Trainer

            t0 = time.perf_counter()
            tr = Trainer(make_config(None, {**cfg, "out": f"{tmp}/{m}"}), progress=False, log=None)
            tr.run(callback=lambda it: stamps.append(time.perf_counter()))
            total = time.perf_counter() - t0
            step = statistics.median(b - a for a, b in zip(stamps[5:], stamps[6:-1]))
            setup = stamps[0] - t0 - step  # data loading/rendering, model build
            evaluation = (stamps[-1] - stamps[-2]) - step  # the final iteration's evaluation
            finish = total - (stamps[-1] - t0)  # bundle writing
            evals = max(1, full // cfg_full_eval(profile, m))
            per_method[m] = {"iters": full, "s_per_iter": step, "setup_s": setup, "eval_s": evaluation,
                             "est_run_s": setup + step * full + evaluation * evals + finish}
            print(f"  {m}: {1000 * step:.1f} ms/iter x {full} -> ~{per_method[m]['est_run_s']:.0f} s per run", flush=True)
    total = seeds * sum(v["est_run_s"] for v in per_method.values())
    return {"profile": profile, "seeds": seeds, "methods": per_method, "est_total_s": total}


def method_options(cfg: dict) -> dict:
    """The options a run's method actually uses: its class defaults updated by the config's options."""
    from edgeda.methods import METHODS

    return {**METHODS.get(cfg["method"]).defaults, **cfg.get("options", {})}


def _task_options(cfg: dict, options: dict | None) -> dict | None:
    """``options`` less those of the run's method that apply only to other tasks."""
    from edgeda.methods import METHODS

    if options is None:
        return None
    return METHODS.get(cfg["method"]).options_for_task(options, cfg.get("task", "classification"))


def staleness(r: dict, profile: str) -> str | None:
    """Why a stored run no longer stands for this profile (None: it does): another renderer, another
    profile setting, other resolved method options (each run stores every option its method used,
    so adding or changing an option makes earlier runs stale, unless the method declares it for
    other tasks only: ``option_tasks``), or a start from another run that has changed."""
    if r.get("data_version") != data_version():  # rendered with an older syndigits: not comparable
        return f"made with {r.get('data_version', 'an unversioned renderer')}, not {data_version()}"
    cfg = run_config(profile, r["method"], r["seed"])
    if candidates.settled(r.get("config")) != cfg:
        return f"made with another {profile} profile setting"
    if _task_options(cfg, r.get("method_options")) != _task_options(cfg, method_options(cfg)):
        return "made with other method option defaults" if "method_options" in r else "its method options were not recorded"
    want = expected_init(profile, cfg, r["seed"])
    if want is not None:  # started from another method's run: that one's settings count too
        if r.get("init_config") != want:
            return f"started from a {cfg['init_from']} run with other settings"
    return None


def is_current(r: dict, profile: str) -> bool:
    """A stored run counts only if it used this renderer, this profile's settings and these defaults."""
    return staleness(r, profile) is None


def add_gains(rows: dict) -> None:
    """Each row's mean target accuracy minus source-only's row in the same dict (same seeds), in points."""
    base = rows.get("source_only", {}).get("target_test_acc", {}).get("mean")
    for row in rows.values():
        if base is not None:
            row["gain_vs_source_only_points"] = round(100 * (row["target_test_acc"]["mean"] - base), 2)


def summarise(profile: str) -> dict:
    folder = RESULTS / "adaptation" / profile
    runs: dict[str, list[dict]] = {}
    extra: dict[str, list[dict]] = {}  # seeds 3, 4 (candidate verdicts, checks of rows near targets): reported apart
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        why = staleness(r, profile)
        if why is not None:
            print(f"ignoring {f.name}: {why}; rerun it (--force)")
            continue
        (runs if r["seed"] in candidates.TABLE_SEEDS else extra).setdefault(r["method"], []).append(r)
    rows = {}
    for method, rs in sorted(runs.items()):
        rs.sort(key=lambda r: r["seed"])
        tgt = [r["target_test_acc"] for r in rs]
        src = [r["source_val_acc"] for r in rs]
        rows[method] = {
            "seeds": [r["seed"] for r in rs],
            "target_test_acc": {"mean": statistics.fmean(tgt), "std": statistics.pstdev(tgt), "per_seed": tgt},
            "source_val_acc": {"mean": statistics.fmean(src), "std": statistics.pstdev(src), "per_seed": src},
            "iters": rs[0]["config"]["iters"],
            "ema": rs[0]["config"].get("ema"),
            "wall_time_s": {"mean": statistics.fmean(r["wall_time_s"] for r in rs), "per_seed": [r["wall_time_s"] for r in rs]},
            "machine": rs[0]["machine"],
        }
    add_gains(rows)
    curve = {}  # source-only's target accuracy at each of its evaluations, mean over seeds
    for r in runs.get("source_only", []):
        for h in r["history"]:
            if "target_test_acc" in h:
                curve.setdefault(h["iteration"], []).append(h["target_test_acc"])
    five = {}  # methods with current runs on every table and extra seed, with source-only on the same seeds
    seeds5 = [*candidates.TABLE_SEEDS, *candidates.EXTRA_SEEDS]
    for method in sorted(extra):
        by_seed = {r["seed"]: r["target_test_acc"] for r in runs.get(method, []) + extra[method]}
        if all(s in by_seed for s in seeds5):
            five[method] = {"seeds": seeds5, "target_test_acc": {"mean": statistics.fmean(by_seed[s] for s in seeds5),
                                                                 "std": statistics.pstdev(by_seed[s] for s in seeds5)}}
    add_gains(five)
    return {"profile": profile, "pair": PAIR, "rows": rows, "five_seeds": five,
            "source_only_by_iteration": {it: statistics.fmean(v) for it, v in sorted(curve.items())},
            "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def machine_label(machine: dict) -> str:
    """CPU (with its generation and torch's vector kernels where recorded: one name can cover CPUs whose
    float results differ, so the same run can end elsewhere a few points apart), cores, torch."""
    cpu = machine.get("gpu") or machine["cpu"]
    extra = ", ".join(v for v in (machine.get("cpu_generation"), machine.get("cpu_capability")) if v)
    return f"{cpu}{f' ({extra})' if extra else ''}, {machine['cores']} cores, torch {machine['torch']}"


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    if not rows:
        return "_no runs yet_"
    machines: dict[str, list[str]] = {}
    for m, r in rows.items():
        machines.setdefault(machine_label(r["machine"]), []).append(m)
    where = next(iter(machines)) if len(machines) == 1 else "; ".join(
        f"{label} ({', '.join(ms)})" for label, ms in machines.items())
    lines = [
        f"`{summary['pair']['source']} -> {summary['pair']['target']}`, profile `{summary['profile']}`, "
        f"mean ± std over seeds; target = `handwritten:test` (labels used for this report only). "
        f"Machine: {where}. "
        "Wall time is per run as measured; runs shared the machine with other jobs at different loads "
        "(recorded per run in its JSON where available), so wall times are not comparable across rows.",
        "",
        "| method | target acc % | gain vs source-only (points) | source val acc % | iterations | weights shipped | seeds | wall time / run (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    est_file = RESULTS / f"adaptation-estimate-{summary['profile']}.json"
    if est_file.exists():
        est = json.loads(est_file.read_text())
        lines[0] += (f" Estimated duration of the whole table ({len(est['methods'])} methods x {est['seeds']} seeds) on "
                     f"{est['machine']['cpu']} from timed short runs (`--estimate`, load {est.get('load_avg_1min', '?')}): "
                     f"~{est['est_total_s'] / 60:.0f} min.")
    order = sorted(rows, key=lambda m: (m != "source_only", -rows[m]["target_test_acc"]["mean"]))
    for m in order:
        r = rows[m]
        gain = r.get("gain_vs_source_only_points")
        lines.append(
            f"| {m} | {fmt_pct(r['target_test_acc']['mean'], r['target_test_acc']['std'])} | "
            f"{'–' if gain is None or m == 'source_only' else f'{gain:+.2f}'} | "
            f"{fmt_pct(r['source_val_acc']['mean'], r['source_val_acc']['std'])} | {r['iters']} | "
            f"{'EMA ' + str(r['ema']) if r.get('ema') else 'trained'} | "
            f"{len(r['seeds'])} | {r['wall_time_s']['mean']:.0f} |"
        )
    five = summary.get("five_seeds") or {}
    if "source_only" in five and len(five) > 1:
        lines += ["", "Seeds 3 and 4 are not in the table: they are run to settle candidate verdicts (the rule's "
                  "sequential seeds) and to check the rows nearest their targets. Methods with current runs on all "
                  "5 seeds, mean ± std and gain vs source-only on the same seeds: " + ", ".join(
                      f"{m} {fmt_pct(r['target_test_acc']['mean'], r['target_test_acc']['std'])}"
                      + ("" if m == "source_only" else f" ({r['gain_vs_source_only_points']:+.2f})")
                      for m, r in sorted(five.items(), key=lambda kv: kv[0] != "source_only")) + "."]
    curve = summary.get("source_only_by_iteration") or {}
    if len(curve) > 1:
        lines += ["", "Source-only's own target accuracy depends on how long it trains on synthetic images (its "
                  "evaluations during the run, mean over seeds): "
                  + ", ".join(f"{it} it. {100 * a:.1f} %" for it, a in curve.items())
                  + ". Every gain above is against the full-length source-only row, also for methods run with "
                  "fewer iterations."]
    return "\n".join(lines)


def write_table(profile: str) -> str:
    """Summarise the current runs into ``adaptation.json`` and the README table; returns the table."""
    summary = summarise(profile)
    (RESULTS / "adaptation.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary)
    replace_block("adaptation-table", table)
    return table


def named_methods(args, flag: str) -> list[str]:
    """``--methods`` as a list; ``flag`` (--try, --promote) needs them named."""
    if args.methods == "all":
        raise SystemExit(f"{flag} needs --methods")
    return args.methods.split(",")


def ensure_runs(profile: str, methods: list[str], seeds: list[int], runs_dir: Path, force: bool = False) -> None:
    """Run the profile's current setting of ``methods`` for ``seeds`` where no current run is stored, after
    the runs they start from (``init_from``)."""
    order: list[str] = []

    def add(m: str) -> None:
        init = run_config(profile, m, 0).get("init_from")
        if init and init not in order:
            add(init)
        if m not in order:
            order.append(m)

    for m in methods:
        add(m)
    folder = RESULTS / "adaptation" / profile
    for m in order:
        for s in seeds:
            f = folder / f"{m}-s{s}.json"
            if f.exists() and not (force and m in methods) and is_current(json.loads(f.read_text()), profile):
                continue
            print(f"running {m} seed {s} ({profile} profile)...", flush=True)
            r = run_one(profile, m, s, runs_dir / profile)
            f.write_text(json.dumps(r, indent=1) + "\n")
            print(f"  target {r['target_test_acc']:.3f} source val {r['source_val_acc']:.3f} "
                  f"in {r['wall_time_s']:.0f}s", flush=True)


def try_candidate(args) -> int:
    """Run ``--try`` settings for the chosen methods and seeds, then print and record the rule's verdict."""
    change = candidates.parse_try(args.try_)
    label = candidates.tag(change)
    folder = RESULTS / "adaptation" / f"{args.profile}-try"
    folder.mkdir(parents=True, exist_ok=True)
    methods = named_methods(args, "--try")
    seeds = [int(s) for s in args.seeds.split(",")]
    log_file = RESULTS / "adaptation-candidates.json"
    ensure_runs(args.profile, methods, seeds, Path(args.runs_dir))  # the current setting on the same seeds
    for m in methods:
        for s in seeds:
            cfg = candidates.apply(run_config(args.profile, m, s), change)
            f = folder / f"{m}@{label}-s{s}.json"
            want_init = expected_init(args.profile, cfg, s)
            if f.exists() and not args.force:
                stored = json.loads(f.read_text())
                if candidates.settled(stored.get("config")) == cfg and stored.get("init_config") == want_init:
                    continue
            print(f"running {m} seed {s} with {label} ({args.profile} profile)...", flush=True)
            r = run_one(args.profile, m, s, Path(args.runs_dir) / args.profile, cfg=cfg, name=f"try/{m}@{label}-s{s}")
            r["candidate"] = change
            f.write_text(json.dumps(r, indent=1) + "\n")
            print(f"  target {r['target_test_acc']:.3f} source val {r['source_val_acc']:.3f} in {r['wall_time_s']:.0f}s", flush=True)
        current = [r for r in (json.loads(p.read_text()) for p in sorted((RESULTS / "adaptation" / args.profile).glob(f"{m}-s*.json")))
                   if is_current(r, args.profile) and r["seed"] in seeds]
        cand = [json.loads((folder / f"{m}@{label}-s{s}.json").read_text()) for s in seeds
                if (folder / f"{m}@{label}-s{s}.json").exists()]
        v = candidates.verdict(current, cand)
        if v["adopt"] is None:
            print(f"{m} {label}: fewer than 2 seeds have both a current and a candidate run; nothing to judge")
            continue
        c, n = v["current"], v["candidate"]
        print(f"{m} {label}, seeds {v['seeds']}: info_max {n['info_max']:.4f} vs current {c['info_max']:.4f}, gain "
              f"{v['gain']:+.4f} (standard error {v['gain_se']:.4f}) -> "
              f"{'ADOPT' if v['adopt'] else 'reject'} (target accuracy, reported only: {100 * n['target_test_acc']:.1f} "
              f"vs {100 * c['target_test_acc']:.1f} %)")
        if candidates.needs_more_seeds(v):
            more = ",".join(str(x) for x in (*v["seeds"], *candidates.EXTRA_SEEDS))
            print(f"  a positive gain inside its margin: not final; settle it on 5 seeds with "
                  f"--methods {m} --seeds {more} --try {' --try '.join(args.try_)}")
        log = json.loads(log_file.read_text()) if log_file.exists() else []  # read late: other runs may append too
        log.append({"method": m, "profile": args.profile, "change": change, "tag": label, **v,
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        log_file.write_text(json.dumps(log, indent=1) + "\n")
    return 0


def promote(args) -> int:
    """Copy the ``--try`` runs of an adopted candidate (JSON and run folder, whose bundle later runs may
    start from) into the table, seed by seed, where they equal what the current profile would run."""
    import shutil

    methods = named_methods(args, "--promote")
    runs = Path(args.runs_dir) / args.profile
    for m in methods:
        for s in (int(x) for x in args.seeds.split(",")):
            f = RESULTS / "adaptation" / f"{args.profile}-try" / f"{m}@{args.promote}-s{s}.json"
            if not f.exists():
                raise SystemExit(f"no candidate run {f}")
            r = json.loads(f.read_text())
            r.pop("candidate", None)
            why = staleness(r, args.profile)
            if why is not None:
                raise SystemExit(f"{f.name} is not what the {args.profile} profile runs now ({why}): change the profile first")
            src, dst = runs / "try" / f"{m}@{args.promote}-s{s}", runs / f"{m}-s{s}"
            if (src / "model.edgeda" / "manifest.json").is_file():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
            (RESULTS / "adaptation" / args.profile / f"{m}-s{s}.json").write_text(json.dumps(r, indent=1) + "\n")
            print(f"{m} seed {s}: {f.name} is now the table's run")
    write_table(args.profile)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--methods", default="all", help="comma-separated, or 'all' registered methods")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--force", action="store_true", help="rerun runs that already have results")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's choice)")
    ap.add_argument("--estimate", action="store_true", help="time short runs and estimate the whole table's duration")
    ap.add_argument("--try", dest="try_", action="append", default=[], metavar="KEY=VALUE",
                    help="run a candidate setting (ema=0.999, options.bn=joint; repeatable) apart from the table "
                         "and judge it against the current runs by the label-free rule (benchmarks/candidates.py)")
    ap.add_argument("--promote", metavar="TAG", help="after the profile was changed to an adopted candidate (e.g. "
                    "ema=0.999), use its stored --try runs as the table's runs instead of rerunning them")
    ap.add_argument("--runs-dir", default=os.environ.get("EDGEDA_BENCH_RUNS", "runs/bench-adaptation"))
    args = ap.parse_args(argv)

    folder = RESULTS / "adaptation" / args.profile
    folder.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.estimate:
        from edgeda.methods import METHODS
        from edgeda.utils import machine_info

        methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
        est = estimate(args.profile, methods, len(args.seeds.split(",")))
        est["machine"] = machine_info()
        est["load_avg_1min"] = round(os.getloadavg()[0], 1)
        est["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        (RESULTS / f"adaptation-estimate-{args.profile}.json").write_text(json.dumps(est, indent=1) + "\n")
        print(f"whole table ({len(methods)} methods x {est['seeds']} seeds): ~{est['est_total_s'] / 60:.0f} min")
        return 0
    if args.try_:
        return try_candidate(args)
    if args.promote:
        return promote(args)
    if not args.table_only:
        from edgeda.methods import METHODS

        methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
        ensure_runs(args.profile, methods, [int(s) for s in args.seeds.split(",")], Path(args.runs_dir), args.force)
    print(write_table(args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
