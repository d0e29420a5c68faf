"""Dense prediction benchmark: source-only segmentation and depth on the embedded pairs, the
target-trained upper bound, and latency of the dense models (ORT vs PyTorch eager, int8 vs fp32).

    python benchmarks/dense.py [--profile cpu|gpu|quick] [--rows digits_seg,syn_seg,syn_depth]
                               [--methods source_only,METHOD[@ITERS|@task],...] [--seeds 0,1,2] [--latency]
                               [--overhead] [--table-only]

Every method in ``--methods`` runs on every row (``select=last``; target labels are read for this
report only) with the row's settings below, except where ``METHOD_SETTINGS`` states otherwise; the
table reports each method's gain over source-only on the same seed.

| row | pair | task | cpu profile | gpu profile |
|---|---|---|---|---|
| digits_seg | digitscenes -> handwritten-scenes | segmentation, mIoU | deeplab resnet18 width 0.25, 64x64, batch 16, 3000 it., Adam 1e-3 constant, no flips | unet width 1.0, 128x128, batch 16, 20000 it. |
| syn_seg | synscenes -> synscenes:photo | segmentation, mIoU | lraspp width 1.0, 64x128, batch 8, 1200 it. | deeplab resnet50, 256x512, batch 8, 20000 it. |
| syn_depth | synscenes -> synscenes:photo | depth, abs rel | lraspp width 1.0, 64x128, batch 8, 1200 it. | deeplab resnet50, 256x512, batch 8, 20000 it. |

CPU iterations were chosen from timed 40-iteration runs on a 2-core machine (~0.13 s and ~0.11 s
per step at one thread) so one run takes about 2-5 minutes. On digit scenes a U-Net of width 0.25
with SGD 0.01 predicted background everywhere after 1000 iterations (source-val mIoU 8.4, every
digit IoU 0, the same for the target-trained upper bound: under-trained, not a domain gap); a
ResNet-18 DeepLab of width 0.25 is six times faster per step at 64x64 and leaves that plateau after
~1000 iterations with Adam 1e-3 (source labels only were read to see this), hence that row's
settings. Digits are not mirror-symmetric, so that row trains without horizontal flips. Each row's upper bound is the same
model and budget trained on the target's labelled adaptation split (``handwritten-scenes:adapt``,
``synscenes:photo``) and evaluated on the same target test split; it is run for seed 0 only.
Every run is stored under ``benchmarks/results/dense/<profile>/`` (a run with the same config is
not repeated) and the summary in ``benchmarks/results/dense.json``; README tables come from there.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_tables import METRIC_VALUES, replace_block  # noqa: E402
from scratch import copy_once, scratch  # noqa: E402
from edgeda.tasks import task_of  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAIRS = {
    "digits_seg": {"source": "digitscenes", "target": "handwritten-scenes", "task": "segmentation",
                   "upper_source": "handwritten-scenes:adapt", "test": "handwritten-scenes:test"},
    "syn_seg": {"source": "synscenes", "target": "synscenes:photo", "task": "segmentation",
                "upper_source": "synscenes:photo", "test": "synscenes:photo-test"},
    # the same pair with SegFormer-B0 (the model DAFormer adapts with), randomly initialised on the CPU profile
    "syn_seg_segformer": {"source": "synscenes", "target": "synscenes:photo", "task": "segmentation",
                          "upper_source": "synscenes:photo", "test": "synscenes:photo-test"},
    "syn_depth": {"source": "synscenes", "target": "synscenes:photo", "task": "depth",
                  "upper_source": "synscenes:photo", "test": "synscenes:photo-test"},
}
PROFILES = {
    "cpu": {
        "digits_seg": {"backbone": "deeplab", "backbone_kwargs": {"encoder": "resnet18", "width": 0.25}, "image_size": [64, 64],
                       "batch_size": 16, "iters": 3000, "optimizer": "adam", "lr": 1e-3, "lr_schedule": "constant",
                       "augment_hflip": False},
        "syn_seg": {"backbone": "lraspp", "backbone_kwargs": {"width": 1.0}, "image_size": [64, 128], "batch_size": 8, "iters": 1200},
        "syn_seg_segformer": {"backbone": "segformer", "backbone_kwargs": {"variant": "b0"}, "image_size": [64, 128],
                              "batch_size": 8, "iters": 1200},
        "syn_depth": {"backbone": "lraspp", "backbone_kwargs": {"width": 1.0}, "image_size": [64, 128], "batch_size": 8, "iters": 1200},
    },
    "gpu": {
        "digits_seg": {"backbone": "unet", "backbone_kwargs": {"width": 1.0}, "image_size": [128, 128], "batch_size": 16, "iters": 20000},
        "syn_seg": {"backbone": "deeplab", "backbone_kwargs": {"encoder": "resnet50"}, "image_size": [256, 512], "batch_size": 8, "iters": 20000},
        "syn_seg_segformer": {"backbone": "segformer", "backbone_kwargs": {"variant": "b0"}, "image_size": [256, 512],
                              "batch_size": 8, "iters": 20000},
        "syn_depth": {"backbone": "deeplab", "backbone_kwargs": {"encoder": "resnet50"}, "image_size": [256, 512], "batch_size": 8, "iters": 20000},
    },
    "quick": {
        "digits_seg": {"backbone": "unet", "backbone_kwargs": {"width": 0.125}, "image_size": [32, 32], "batch_size": 4, "iters": 6, "source_n": 32,
                       "augment_hflip": False},
        "syn_seg": {"backbone": "lraspp", "backbone_kwargs": {"width": 0.5}, "image_size": [32, 64], "batch_size": 4, "iters": 6, "source_n": 32},
        "syn_seg_segformer": {"backbone": "segformer", "backbone_kwargs": {"variant": "b0"}, "image_size": [32, 64], "batch_size": 4,
                              "iters": 6, "source_n": 32},
        "syn_depth": {"backbone": "lraspp", "backbone_kwargs": {"width": 0.5}, "image_size": [32, 64], "batch_size": 4, "iters": 6, "source_n": 32},
    },
}
# Per-method settings that differ from the row's (stated with the reason in the method's docstring);
# ``options`` are the method's own (``--option``). Filled in as dense methods are added.
METHOD_SETTINGS: dict[str, dict[str, dict]] = {"cpu": {
    # lr_f: the paper's 1e-5 fine-tunes an ImageNet VGG, from-scratch F, C need the row's rate; G/D widths 8/16 for CPU step time
    "gta_seg": {"options": {"lr_f": 1e-3, "g_width": 8, "d_width": 16}},
    "advent": {"options": {"d_width": 16}},  # the paper's 64-channel discriminator on 64x128 maps made a step ~6x a source-only one
    "adaptseg": {"options": {"d_width": 16}},  # the same discriminator as advent's, for the same reason
    "t2net": {"iters": 400},  # a step takes 1.0 s vs source-only's 0.12 s (measured side by side): 1200 it. would be 20 min a run
    # suit: G + PatchGAN D + the segmenter twice a step (~4x a source-only step); label2image: the SPADE generator's
    # full-resolution blocks, ~9x; budgets that keep a run within ~8 minutes, as cyclegan's and t2net's
    "suit": {"iters": 600},
    "label2image": {"iters": 400},
    "cyclegan": {"iters": 400},  # ~2.3 s a step at 64x128 (two generators, two discriminators): t2net's budget
}, "gpu": {}, "quick": {}}
# Budget variants, run with ``--methods NAME@ITERS``: the method with the row's settings and its own, at
# another iteration count, to compare methods at equal budgets where METHOD_SETTINGS shortens one.
# The table lists them under that name; their gain is against source-only at the row's budget.
# ``NAME@init``: the method started from the seed's source-only bundle (``--init``) and trained for its usual
# iterations; its gain is against ``source_only@init`` (source-only training continued as long) where that is stored.
# ``NAME@task`` (two-stage methods): the first stage as in METHOD_SETTINGS, then the row's iterations of the
# task stage, so the task network trains as long as source-only's (see ``task_phase_variant``).
LATENCY_MODELS = {
    "unet w0.25": {"arch": "unet", "width": 0.25},
    "lraspp w1.0": {"arch": "lraspp", "width": 1.0},
    "deeplab resnet18 w0.25": {"arch": "deeplab", "encoder": "resnet18", "width": 0.25},
}


def run_config(profile: str, row: str, seed: int, upper: bool, method: str = "source_only") -> dict:
    p, pair = PROFILES[profile][row], PAIRS[row]
    base, _, iters = method.partition("@")
    cfg = {"method": base, "task": pair["task"], "seed": seed, "select": "last", "device": "cpu" if profile != "gpu" else "auto",
           "source": pair["upper_source"] if upper else pair["source"], "target": pair["target"],
           "target_test": pair["test"], **p, **METHOD_SETTINGS.get(profile, {}).get(base, {})}
    if iters == "task":
        cfg.update(task_phase_variant(base, cfg, p["iters"]))
    elif iters == "init":
        cfg["init"] = str(init_bundle(profile, row, seed))
    elif iters:
        cfg["iters"] = int(iters)
    cfg["eval_every"] = max(1, cfg["iters"] // 4)
    cfg["checkpoint_every"] = cfg["iters"]
    return cfg


def task_phase_variant(method: str, cfg: dict, row_iters: int) -> dict:
    """``NAME@task``: the translation stage of the method's shortened budget, then the row's iterations of task training.

    For two-stage methods (``gan_fraction``): the first stage keeps its ``iters * gan_fraction`` iterations and the
    task stage gets the row's ``row_iters``, so the task network trains as long as source-only's does.
    """
    from edgeda.methods.registry import METHODS

    options = dict(cfg.get("options", {}))
    frac = float(options.get("gan_fraction", METHODS.get(method).defaults.get("gan_fraction", 0.0)))
    if not 0 < frac < 1:
        raise SystemExit(f"{method}@task needs a two-stage method (a gan_fraction option); {method} has none")
    gan = round(cfg["iters"] * frac)
    total = gan + row_iters
    return {"iters": total, "options": {**options, "gan_fraction": gan / total}}


def run_tag(row: str, method: str, seed: int, upper: bool = False) -> str:
    """Stored-run name: ``<row>-s<seed>`` for source-only (and ``<row>-upper-s<seed>``), else ``<row>-<method>-s<seed>``."""
    return f"{row}{'-upper' if upper else ''}{'' if method == 'source_only' else '-' + method}-s{seed}"


def machine_slug(cpu: str) -> str:
    """``Intel(R) Xeon(R) Processor`` -> ``intel-xeon-processor``: the folder of a machine's ``@init`` runs."""
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower().replace("(r)", "").replace("(tm)", "")).strip("-") or "unknown"


def run_folder(profile: str, method: str) -> Path:
    """Where a run is stored. ``NAME@init`` runs go under ``init/<machine>/``: their starting bundle is the
    seed's source-only bundle trained on that machine (runs of one seed differ across machines), so a
    method's gain is paired with the ``source_only@init`` run of the same machine and seed."""
    folder = RESULTS / "dense" / profile
    if method.endswith("@init"):
        from edgeda.utils import cpu_model

        folder = folder / "init" / machine_slug(cpu_model())
    return folder


def run_one(profile: str, row: str, seed: int, upper: bool, method: str = "source_only") -> dict:
    import torch

    import edgeda
    from edgeda.utils import machine_info, sha256_file

    folder = run_folder(profile, method)
    tag = run_tag(row, method, seed, upper)
    path = folder / f"{tag}.json"
    cfg = run_config(profile, row, seed, upper, method)
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("config") == cfg:
            print(f"{tag}: stored", flush=True)
            return old
    torch.set_num_threads(1)
    if cfg.get("init"):
        ensure_init_bundle(profile, row, seed)
    out = scratch("edgeda-dense-bench") / profile / tag
    t0 = time.perf_counter()
    res = edgeda.train(out=str(out), progress=False, log=None, **cfg)
    wall = time.perf_counter() - t0
    task = task_of(res.task)
    m = res.metrics
    rec = {"row": row, "method": method, "upper_bound": upper, "seed": seed, "config": cfg, "wall_s": round(wall, 1),
           "task": res.task, "machine": machine_info(), "date": dt.date.today().isoformat(),
           "source_val": {k: m.get(f"source_val_{k}") for k in task.record_keys},
           "target_test": {k: m.get(f"target_test_{k}") for k in task.record_keys},
           "target_test_scores": m.get("target_test_scores"), "per_class": m.get("target_test_per_class"),
           "history": [{k: v for k, v in h.items() if k != "samples_png"} for h in res.history],
           "bundle": str(res.bundle)}
    if cfg.get("init"):  # which starting bundle this run's gain is paired on
        rec["init_weights_sha256"] = {f.name: sha256_file(f) for f in sorted(Path(cfg["init"]).glob("*.safetensors"))}
    folder.mkdir(parents=True, exist_ok=True)
    png = next((h["samples_png"] for h in reversed(res.history) if h.get("samples_png")), None)
    if png and Path(png).is_file() and seed == 0:  # the last evaluation's sample grid, kept beside the run
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, folder / "samples" / f"{tag}.png")
        rec["samples_png"] = f"samples/{tag}.png"
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{tag}: {rec['target_test']} in {wall:.0f}s", flush=True)
    return rec


def _mean_std(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarise(profile: str) -> dict:
    """``{row: {..., "methods": {method: {...}}}}`` from the stored runs whose config is the current one."""
    folder = RESULTS / "dense" / profile
    rows = {}
    for row, pair in PAIRS.items():
        files = sorted(folder.glob(f"{row}-*s*.json")) + sorted(folder.glob(f"init/*/{row}-*s*.json"))
        stored = [json.loads(p.read_text()) for p in files]
        stored = [r for r in stored if r.get("row") == row]
        uppers = [r for r in stored if r["upper_bound"]
                  and r["config"] == run_config(profile, row, r["seed"], True, r.get("method", "source_only"))]
        methods = {}
        for r in stored:
            m = r.get("method", "source_only")
            if not r["upper_bound"] and r["config"] == run_config(profile, row, r["seed"], False, m):
                methods.setdefault(m, []).append(r)
        if "source_only" not in methods:
            continue
        keys = list(methods["source_only"][0]["target_test"])
        def reference(m):
            """(reference method, pairing key) for ``m``'s gain. Every run pairs on (machine, seed): runs of one
            seed on different machines differ, so a gain is only taken against a run of the same machine.
            ``@init`` runs pair against ``source_only@init`` (and that one against the source-only run it
            continued); the other runs against ``source_only``."""
            same = lambda r: (r["machine"].get("cpu"), r["seed"])  # noqa: E731
            if not m.endswith("@init"):
                return "source_only", same
            ref = "source_only@init" if m != "source_only@init" and "source_only@init" in methods else "source_only"
            return ref, same

        def stats(runs):
            ref_method, key = reference(runs[0].get("method", "source_only"))
            ref = {key(r): r["target_test"][keys[0]] for r in methods[ref_method]}
            gains = [r["target_test"][keys[0]] - ref[key(r)] for r in runs if key(r) in ref]
            return {"seeds": [r["seed"] for r in runs],
                    "target": {k: _mean_std([r["target_test"][k] for r in runs]) for k in keys},
                    "source_val": {k: _mean_std([r["source_val"][k] for r in runs]) for k in keys},
                    "gain_vs_source_only": _mean_std(gains), "config": runs[0]["config"],
                    "wall_s": statistics.fmean(r["wall_s"] for r in runs), "per_class": mean_per_class(runs),
                    "machines": sorted({r["machine"].get("cpu", "?") for r in runs})}

        order = sorted(methods, key=lambda m: (m != "source_only", m.endswith("@init"), m != "source_only@init", m))
        rows[row] = {
            "pair": f"{pair['source']} -> {pair['target']}", "task": pair["task"],
            "config": PROFILES[profile][row],
            "methods": {m: stats(methods[m]) for m in order},
            "upper": {k: _mean_std([r["target_test"][k] for r in uppers]) for k in keys} if uppers else None,
            "upper_seeds": [r["seed"] for r in uppers],
            "machine": methods["source_only"][0]["machine"],
        }
    return rows


def mean_per_class(runs: list[dict]) -> dict | None:
    """Per-class IoU, the mean over the runs that stored it (classes absent from the test split are None)."""
    per = [r["per_class"] for r in runs if r.get("per_class")]
    if not per:
        return None
    return {c: (statistics.fmean(v) if (v := [p[c] for p in per if p.get(c) is not None]) else None) for c in per[0]}


def per_class_table(profile: str, rows: dict) -> str:
    """One table per segmentation row: each method's per-class target IoU (%, mean over its seeds)."""
    out = []
    for r in rows.values():
        classes = next((s["per_class"] for s in r["methods"].values() if s.get("per_class")), None)
        if not task_of(r["task"]).has_classes or not classes:
            continue
        out += [f"{r['pair']}, profile `{profile}`: target IoU % per class, mean over each method's seeds.", "",
                "| method | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        for m, s in r["methods"].items():
            pc = s.get("per_class") or {}
            out.append(f"| {m} | " + " | ".join("–" if pc.get(c) is None else f"{100 * pc[c]:.1f}" for c in classes) + " |")
        out.append("")
    return "\n".join(out) if out else "No segmentation runs stored yet."


def _fmt(v, pct):
    if v[0] is None:
        return "–"
    return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}" if pct else f"{v[0]:.3f} ± {v[1]:.3f}"


def table(profile: str, rows: dict) -> str:
    if not rows:
        return "No dense runs stored yet."
    lines = [f"Profile `{profile}`, mean ± std over seeds; target test labels used for this "
             "report only; gain: the method minus source-only on the same seed (higher is better for mIoU, lower for "
             "abs rel); upper bound: source-only with the same model and budget trained on the target's labelled "
             "adaptation split (seed 0), evaluated on the same test split. Runs of one seed on different machines differ "
             "(floating-point order): a gain pairs runs of the same machine and seed, and a method run only where no "
             "source-only run of its seed was made has none. NAME@ITERS: the method at another iteration "
             "count; NAME@task: a two-stage method whose task stage gets the row's iterations; NAME@init: started from "
             "the seed's source-only bundle, its gain against source_only@init (source-only training continued as "
             "long) where stored.", "",
             "| pair | task | model | method | target (headline) | gain vs source-only | source val | upper bound | short of the upper bound | other target scores | seeds | wall / run (s) | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for row, r in rows.items():
        cfg = r["config"]
        model = f"{cfg['backbone']} {json.dumps(cfg['backbone_kwargs'])} {cfg['image_size'][0]}x{cfg['image_size'][1]}, {cfg['iters']} it."
        for method, s in r["methods"].items():
            keys = list(s["target"])
            head = keys[0]
            pct = task_of(r["task"]).higher_is_better  # a score in % (mIoU), else an error (abs rel)
            name = {"miou": "mIoU %"}.get(head, head.replace("_", " "))
            up = r["upper"][head] if (r["upper"] and method == "source_only") else (None, None)
            upper = r["upper"][head][0] if r["upper"] else None
            mean = s["target"][head][0]
            short = "–" if upper is None or mean is None else (
                f"{100 * (upper - mean):.1f} points" if pct else f"{mean - upper:+.3f}")
            g = s["gain_vs_source_only"]
            gain = "–" if method == "source_only" else "not paired: no source-only run on its machine" if g[0] is None else (
                f"{100 * g[0]:+.1f} ± {100 * g[1]:.1f}" if pct else f"{g[0]:+.3f} ± {g[1]:.3f}")
            its = s["config"]["iters"]
            others = ", ".join(f"{k} {_fmt(s['target'][k], k != 'rmse')}" + (" m" if k == "rmse" else "") for k in keys[1:])
            lines.append(f"| {r['pair']} | {r['task']} ({name}) | {model}{'' if its == cfg['iters'] else f' ({its} it.)'} | "
                         f"{method} | {_fmt(s['target'][head], pct)} | {gain} | {_fmt(s['source_val'][head], pct)} | "
                         f"{'–' if up[0] is None else _fmt(up, pct)} | {short} | {others} | {len(s['seeds'])} | {s['wall_s']:.0f} | "
                         f"{', '.join(s.get('machines', []))} |")
        gains = {m: s["gain_vs_source_only"][0] for m, s in r["methods"].items()
                 if not m.startswith("source_only") and s["gain_vs_source_only"][0] is not None}
        if gains:
            pct = "miou" in r["methods"]["source_only"]["target"]
            better = (lambda g: g > 0) if pct else (lambda g: g < 0)
            best = max(gains, key=gains.get) if pct else min(gains, key=gains.get)
            g = gains[best]
            verdicts.append(f"- {r['pair']}, {r['task']}: {sum(better(v) for v in gains.values())} of {len(gains)} methods better "
                            f"than source-only on the mean gain; best {best} "
                            f"({f'{100 * g:+.1f} points' if pct else f'{g:+.3f} abs rel'}).")
    return "\n".join(lines + ([""] + verdicts if verdicts else []))


def latency(profile: str, rounds: int = 15, calls: int = 20) -> dict:
    """ORT fp32 vs PyTorch eager fp32 at batch 1 (1 thread each, interleaved rounds) for each dense
    model at the CPU input sizes, and int8 vs fp32 (latency and target mIoU) on the seed-0
    segmentation bundles."""
    import tempfile

    import numpy as np
    import torch

    from edgeda.export.onnx import export_onnx, ort_session, signature_of
    from edgeda.models import build
    from edgeda.tasks.spec import TaskSpec

    torch.set_num_threads(1)
    out = {"models": {}, "int8": {}}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for size in ([64, 128], [128, 256]):
            spec = TaskSpec(19, [str(i) for i in range(19)], task="segmentation", image_size=size)
            for name, kw in LATENCY_MODELS.items():
                kw = dict(kw)
                arch = kw.pop("arch")
                model = build("dense_model", arch=arch, num_outputs=19, output="logits", channels=3, **kw).eval()
                path = export_onnx(model, signature_of(model, spec), Path(tmp) / f"{arch}.onnx")
                sess = ort_session(path, threads=1)
                x = rng.standard_normal((1, 3, *size)).astype(np.float32)
                xt = torch.from_numpy(x)
                fns = {"torch": lambda: model(xt), "ort": lambda: sess.run(None, {"image": x})}
                times = {k: [] for k in fns}
                with torch.inference_mode():
                    for f in fns.values():
                        for _ in range(3):
                            f()
                    for _ in range(rounds):
                        for k, f in fns.items():
                            for _ in range(calls):
                                t = time.perf_counter()
                                f()
                                times[k].append(1000 * (time.perf_counter() - t))
                med = {k: statistics.median(v) for k, v in times.items()}
                p90 = {k: float(np.percentile(v, 90)) for k, v in times.items()}
                out["models"][f"{name} {size[0]}x{size[1]}"] = {"torch_median_ms": med["torch"], "ort_median_ms": med["ort"],
                                                                 "torch_p90_ms": p90["torch"], "ort_p90_ms": p90["ort"],
                                                                 "ratio_ort_vs_torch": med["ort"] / med["torch"]}
                print(f"latency {name} {size}: torch {med['torch']:.2f} ms, ort {med['ort']:.2f} ms", flush=True)
        for row in ("digits_seg", "syn_seg"):
            out["int8"][row] = int8_vs_fp32(str(seed0_bundle(profile, row)), PAIRS[row], Path(tmp), rounds, calls)
    return out


def int8_vs_fp32(bundle: str, pair: dict, tmp: Path, rounds: int, calls: int) -> dict:
    r = precision_check(bundle, pair, tmp, rounds, calls, precisions=("int8",))
    f, q = r["fp32"], r["int8"]
    return {"fp32_median_ms": f["median_ms"], "int8_median_ms": q["median_ms"], "ratio_int8_vs_fp32": q["median_ms"] / f["median_ms"],
            "fp32_miou": f["target_miou"], "int8_miou": q["target_miou"], "pixel_agreement": q.get("pixel_agreement"),
            "n_images": r["n_images"]}


def precision_check(bundle: str, pair: dict, tmp: Path, rounds: int, calls: int,
                    precisions: tuple[str, ...] = ("fp16", "int8")) -> dict:
    """``edgeda export`` of ``bundle`` at each precision (int8 calibrated on the target adaptation
    images), then per precision: the task's target scores on ``pair``'s test split as ONNX Runtime
    computes them, the fp32 parity, agreement with fp32, and batch-1 ORT latency (1 thread,
    interleaved rounds)."""
    import numpy as np

    from edgeda.export.api import export_bundle
    from edgeda.export.onnx import ort_session

    out: dict = {}
    files = {}
    for p in precisions:
        dst = tmp / (Path(bundle).parent.name + f"-{p}.edgeda")
        rec = export_bundle(bundle, dst, precision=p, calib=pair["target"] if p == "int8" else None, data=pair["test"], log=None)
        entry = rec["deployables"]["model"]
        for q in ("fp32", p):
            out.setdefault(q, {}).update({k: v for k, v in rec["precisions"][q].items() if k != "target_scores"})
            out[q]["target_scores"] = rec["precisions"][q].get("target_scores")
            files[q] = dst / "onnx" / f"model.{q}.onnx"
        cmp = entry.get(f"vs_fp32_{p}", {})
        out[p]["pixel_agreement"] = rec["precisions"][p].get("pixel_agreement_with_fp32")
        out[p]["max_abs_diff_vs_fp32"] = cmp.get("max_abs_diff")
        out[p]["max_rel_diff_vs_fp32"] = cmp.get("max_rel_diff")  # depth only
        out["fp32"]["parity_max_abs_diff"] = max(c["max_abs_diff"] for c in entry["parity_fp32"].values())
        out["n_images"] = cmp.get("n")
    b = json.loads((Path(bundle) / "manifest.json").read_text())
    h, w = b["task"]["image_size"]
    x = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32)
    sess = {p: ort_session(f, threads=1) for p, f in files.items()}
    times = {p: [] for p in sess}
    for _ in range(rounds):
        for p, s in sess.items():
            for _ in range(calls):
                t = time.perf_counter()
                s.run(None, {"image": x})
                times[p].append(1000 * (time.perf_counter() - t))
    for p, v in times.items():
        out[p]["median_ms"] = statistics.median(v)
    return out


def seed0_bundle(profile: str, row: str, seed: int = 0) -> Path:
    """The row's source-only bundle of ``seed``: the stored run's when it is on this machine, else the
    same config trained here (benchmarks/adapt.py trains the same one for its dense rows)."""
    import edgeda

    cfg = run_config(profile, row, seed, False)
    stored = RESULTS / "dense" / profile / f"{row}-s{seed}.json"
    cands = [Path(json.loads(stored.read_text())["bundle"])] if stored.is_file() else []
    cands.append(scratch("edgeda-adapt-bench") / f"{row}-s{seed}" / "model.edgeda")
    local = scratch("edgeda-dense-bench") / profile / f"{row}-s{seed}-here"
    cands.append(local / "model.edgeda")
    for c in cands:
        man = c / "manifest.json"
        if man.is_file():
            return c
    print(f"training the seed-{seed} source-only {row} bundle ...", flush=True)
    return Path(edgeda.train(out=str(local), progress=False, log=None, **cfg).bundle)


def init_bundle(profile: str, row: str, seed: int) -> Path:
    """Where ``NAME@init`` runs start from: a fixed path (it is part of the stored config) holding a
    copy of the seed's source-only bundle (:func:`seed0_bundle`), made on first use."""
    return scratch("edgeda-dense-bench") / profile / "init" / f"{row}-s{seed}.edgeda"


def ensure_init_bundle(profile: str, row: str, seed: int) -> None:
    """Make the starting bundle of ``NAME@init`` runs (once, whole, under a lock: :func:`scratch.copy_once`)."""
    copy_once(init_bundle(profile, row, seed), lambda: seed0_bundle(profile, row, seed))


def precisions(profile: str, rows: list[str], rounds: int = 10, calls: int = 20) -> dict:
    import tempfile

    import torch

    from edgeda.errors import EdgedaError
    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            try:
                out[row] = precision_check(str(seed0_bundle(profile, row)), PAIRS[row], Path(tmp), rounds, calls)
            except EdgedaError as e:  # e.g. a parity failure: recorded, the other rows still run
                out[row] = {"failed": str(e)}
                print(f"precisions {row}: failed: {e}", flush=True)
                continue
            head = task_of(PAIRS[row]["task"]).headline
            print(f"precisions {row}: " + ", ".join(f"{p} {r.get('target_' + head)}" for p, r in out[row].items()
                                                  if isinstance(r, dict)), flush=True)
    return out


def precision_table(prec: dict, machine: str) -> str:
    lines = [f"Each precision of the seed-0 source-only bundles (`edgeda export --precision`; int8 calibrated on the "
             f"target adaptation images), scored by ONNX Runtime on the target test split; batch-1 ORT latency, 1 thread, {machine}:", "",
             "| pair, task | precision | target score | agreement with fp32 | max abs diff vs fp32 | ms |", "|---|---|---|---|---|---|"]
    for row, r in prec.items():
        task = task_of(PAIRS[row]["task"])
        metres = task.output == "depth"  # differences of metric depth maps, in metres
        if "failed" in r:
            lines.append(f"| {PAIRS[row]['source']} -> {PAIRS[row]['target']}, {PAIRS[row]['task']} | failed: {r['failed']} |||||")
            continue
        for p in ("fp32", "fp16", "int8"):
            if p not in r:
                continue
            q = r[p]
            score = METRIC_VALUES[task.headline](q[f"target_{task.headline}"])
            agree = "-" if p == "fp32" or q.get("pixel_agreement") is None else f"{100 * q['pixel_agreement']:.1f} %"
            diff = (f"{q['parity_max_abs_diff']:.1e} (PyTorch vs ORT)" if p == "fp32"
                    else f"{q['max_abs_diff_vs_fp32']:.3g}" if q.get("max_abs_diff_vs_fp32") is not None else "-")
            if metres and p != "fp32" and q.get("max_rel_diff_vs_fp32") is not None:
                diff += f" m (relative {q['max_rel_diff_vs_fp32']:.3g})"
            lines.append(f"| {PAIRS[row]['source']} -> {PAIRS[row]['target']}, {PAIRS[row]['task']} | {p} | {score} | {agree} | "
                         f"{diff} | {q['median_ms']:.2f} |")
    return "\n".join(lines)


def overhead(rounds: int = 3, iters: int = 40) -> dict:
    """Per-iteration time of ``edgeda train`` (source_only, digitscenes, the cpu profile's model)
    vs a bare loop doing the same forward / backward / step on batches drawn beforehand from the
    same stream, in alternating rounds; medians. Evaluation and checkpoints are outside both."""
    import torch

    from edgeda.config import make_config
    from edgeda.training.trainer import Trainer

    torch.set_num_threads(1)
    cfg = run_config("cpu", "digits_seg", 0, False)
    cfg.update(iters=iters, eval_every=10**9, checkpoint_every=10**9, out=str(scratch("edgeda-dense-overhead")), target_test=None)
    bare, trainer = [], []
    for _ in range(rounds):
        tr = Trainer(make_config(None, cfg), progress=False, log=None)
        tr.setup()
        m = tr.method
        batches = [tr.source_stream.next() for _ in range(iters)]
        m.train()
        for b in batches:
            t = time.perf_counter()
            loss = m.task_loss_of(m.model(b.x), b.y)
            m.optims["main"].zero_grad(set_to_none=True)
            loss.backward()
            m.optims["main"].step()
            bare.append(time.perf_counter() - t)
        times = []
        last = [time.perf_counter()]

        def tick(_it):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        tr2 = Trainer(make_config(None, {**cfg, "eval_every": iters}), progress=False, log=None)
        t0 = time.perf_counter()
        last[0] = t0
        tr2.run(callback=tick)
        trainer.extend(times[1:-1])  # the first includes set-up, the last the final evaluation
    med_b, med_t = statistics.median(bare), statistics.median(trainer)
    return {"bare_median_ms": 1000 * med_b, "trainer_median_ms": 1000 * med_t, "ratio": med_t / med_b,
            "rounds": rounds, "iters": iters}


def eval_memory(sizes=(50, 150, 500)) -> dict:
    """Peak resident memory added while evaluating one dense model on N images (streaming metrics:
    flat in N), measured in a fresh process per N so allocations of one N do not hide another's."""
    import subprocess

    out = {}
    for n in sizes:
        code = (
            "import json,sys,torch; sys.path.insert(0,%r); torch.set_num_threads(1)\n"
            "from edgeda.data import load_domain\nfrom edgeda.models import build\nfrom edgeda.tasks.spec import TaskSpec\n"
            "from edgeda.training.model_eval import evaluate_model\nfrom edgeda.bench.harness import PeakRss, rss_mb\n"
            "d=load_domain('synscenes:photo', labeled=True, size=(64,128))\nd=d.subset(list(range(%d)))\n"
            "s=TaskSpec(19,d.classes,task='segmentation',image_size=(64,128))\n"
            "m=build('dense_model',arch='lraspp',num_outputs=19,output='logits',channels=3)\n"
            "evaluate_model(m,d.subset([0,1]),s)\nbase=rss_mb()\n"
            "with PeakRss() as p: evaluate_model(m,d,s,rows=True)\nprint(json.dumps({'base_mb':base,'peak_mb':p.peak}))"
        ) % (str(ROOT), n)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        rec["added_mb"] = rec["peak_mb"] - rec["base_mb"]
        out[str(n)] = rec
        print(f"eval memory N={n}: +{rec['added_mb']:.1f} MiB", flush=True)
    return out


def latency_table(lat: dict) -> str:
    if not lat:
        return "Latency not measured yet (`python benchmarks/dense.py --latency`)."
    lines = [f"Batch 1, 1 thread, 19 classes, untrained models, {lat.get('machine', '')}; interleaved rounds, median (p90) ms.", "",
             "| model, input | PyTorch eager fp32 | ORT fp32 | ORT / eager (target <= 0.6) |", "|---|---|---|---|"]
    if not lat.get("models"):
        lines = ["ORT vs eager latency and int8 vs fp32 not measured in the stored cpu run (`--latency`)."]
    for name, r in lat.get("models", {}).items():
        lines.append(f"| {name} | {r['torch_median_ms']:.2f} ({r['torch_p90_ms']:.2f}) | {r['ort_median_ms']:.2f} "
                     f"({r['ort_p90_ms']:.2f}) | {r['ratio_ort_vs_torch']:.2f} |")
    if lat.get("int8"):
        lines += ["", "int8 (ORT Q/DQ, calibrated on the target adaptation images) vs fp32, the seed-0 bundles, batch 1:", "",
                  "| pair | fp32 ms | int8 ms | int8 / fp32 | fp32 mIoU % | int8 mIoU % | pixel agreement | images |",
                  "|---|---|---|---|---|---|---|---|"]
        for row, r in lat["int8"].items():
            if "skipped" in r:
                lines.append(f"| {PAIRS[row]['source']} -> {PAIRS[row]['target']} | not measured: {r['skipped']} |||||||")
                continue
            lines.append(f"| {PAIRS[row]['source']} -> {PAIRS[row]['target']} | {r['fp32_median_ms']:.2f} | {r['int8_median_ms']:.2f} | "
                         f"{r['ratio_int8_vs_fp32']:.2f} | {100 * r['fp32_miou']:.1f} | {100 * r['int8_miou']:.1f} | "
                         f"{100 * (r['pixel_agreement'] or 0):.1f} % | {r['n_images']} |")
    if lat.get("precisions"):
        lines += ["", precision_table(lat["precisions"], lat.get("precisions_machine", ""))]
    if lat.get("overhead"):
        o = lat["overhead"]
        lines += ["", f"Trainer overhead on a dense model (source_only, unet w0.25 64x64, batch 16; {o['rounds']} alternating rounds "
                  f"x {o['iters']} iterations): bare loop {o['bare_median_ms']:.1f} ms, `edgeda train` {o['trainer_median_ms']:.1f} ms "
                  f"per iteration (median), ratio {o['ratio']:.3f} (target <= 1.15)."]
    if lat.get("eval_memory"):
        mem = lat["eval_memory"]
        lines += ["", "Peak memory added by evaluating an lraspp model on N synscenes:photo images (64x128; fresh process per N): "
                  + ", ".join(f"N={n}: +{r['added_mb']:.0f} MiB" for n, r in mem.items()) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--rows", default=",".join(PAIRS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="source_only", help="comma-separated methods to run on each row (source_only is the reference)")
    ap.add_argument("--no-upper", action="store_true", help="skip the target-trained upper bounds")
    ap.add_argument("--latency", action="store_true", help="also measure latency and int8 vs fp32")
    ap.add_argument("--overhead", action="store_true", help="trainer vs bare loop on a dense model, and evaluation memory vs N")
    ap.add_argument("--precisions", action="store_true",
                    help="export each row's seed-0 bundle at fp32/fp16/int8 and score every precision")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    from edgeda.utils import machine_info

    summary_path = RESULTS / "dense.json"

    def load_summary() -> dict:
        return json.loads(summary_path.read_text()) if summary_path.is_file() else {}

    summary = load_summary()
    if not args.table_only:
        for row in [r for r in args.rows.split(",") if r]:
            for method in [m for m in args.methods.split(",") if m]:
                for seed in (int(s) for s in args.seeds.split(",")):
                    run_one(args.profile, row, seed, upper=False, method=method)
            if not args.no_upper and "source_only" in args.methods.split(","):
                run_one(args.profile, row, 0, upper=True)
        lat = summary.setdefault("latency", {}).setdefault(args.profile, {})
        if args.latency:
            lat.update({**latency(args.profile), "machine": machine_info().get("cpu")})
        if args.overhead:
            lat.update({"overhead": overhead(), "eval_memory": eval_memory(), "machine": machine_info().get("cpu")})
        if args.precisions:
            lat.update({"precisions": precisions(args.profile, [r for r in args.rows.split(",") if r]),
                        "precisions_machine": machine_info().get("cpu")})
        measured = lat
        extras = RESULTS / "dense" / args.profile / "extras.json"  # kept apart from the rows' summary
        if measured:
            old = json.loads(extras.read_text()) if extras.is_file() else {}
            extras.parent.mkdir(parents=True, exist_ok=True)
            extras.write_text(json.dumps({**old, **measured}, indent=1) + "\n")
        summary = load_summary()  # another run of this script may have written meanwhile
        summary.setdefault("latency", {}).setdefault(args.profile, {}).update(measured)
    extras = RESULTS / "dense" / args.profile / "extras.json"
    if extras.is_file():
        summary.setdefault("latency", {}).setdefault(args.profile, {}).update(json.loads(extras.read_text()))
    rows = summarise(args.profile)
    summary.setdefault("profiles", {})[args.profile] = rows
    summary["date"] = dt.date.today().isoformat()
    tables = {"dense-table": table(args.profile, rows), "dense-per-class-table": per_class_table(args.profile, rows),
              "dense-latency-table": latency_table(summary.get("latency", {}).get(args.profile, {}))}
    summary.setdefault("tables", {})[args.profile] = tables
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    if args.profile == "cpu":
        for name, md in tables.items():
            replace_block(name, md)
    print(tables["dense-table"])
    print(tables["dense-latency-table"])


if __name__ == "__main__":
    main()
