"""Detection benchmark: source-only, mean-teacher self-training (alone, and with Adaptive Teacher's
discriminator), DANN (image level, and with the
instance level) and translate-then-train (CycleGAN, fore/background CycleGAN) on the embedded detection
pairs, with the target-trained upper bound; COCO mAP@.5 and mAP@[.5:.95] and wall time per run.

    python benchmarks/detection.py [--profile cpu|gpu|quick] [--rows digits_det,syn_det]
                                   [--methods source_only,mean_teacher,dann,...] [--seeds 0,1,2] [--no-upper]
                                   [--latency [--latency-only]] [--precisions] [--no-train] [--table-only]

| row | pair | cpu profile | gpu profile |
|---|---|---|---|
| digits_det | digitscenes -> handwritten-scenes (10 digit classes) | ssdlite width 0.5, 128x128, batch 8, 3000 it. | ssdlite width 1.0, 320x320, batch 32, 20000 it. |
| syn_det | synscenes -> synscenes:photo (6 thing classes) | fcos mobilenet_v3_large width 0.5, fpn 64, 2 head convs, 128x256, batch 8, 600 it. | fcos resnet50, 512x1024, batch 8, 20000 it. |

The detector of each cpu row is the one whose target assignment reaches the source's boxes (training's
check, :mod:`edgeda.tasks.detection_fit`; source labels only): at 128x256 the synscenes boxes are a median
5x8 px, SSDLite's default boxes overlap 3 % of them by IoU 0.5 and FCOS's stride-8 locations are assigned
43 %; the digit boxes (median 21x29 px at 128x128) SSDLite 61 %, FCOS 100 % (the digit row stays on
SSDLite, the detector Jetsons run, with its stored runs). The synscenes row's SSDLite runs (its
target-trained upper bound: 4.0 mAP@.5; source validation 1.7 % at seed 0 against FCOS's 10.3 %) are
kept in ``benchmarks/results/detection/cpu-ssdlite-syn/`` and are not in the table.

Every method runs on every row with ``select=last`` (target labels are read for this report only),
Adam 1e-3 with a constant schedule on the CPU (the dense CPU rows' optimizer; not tuned on the
target), evaluated four times. The CPU iteration count is a budget, not a measured plateau (at 600 iterations the digit row's source
validation mAP@.5 was 10 % and climbing, so that row runs 3000; the synscenes row's 3000-iteration runs
have not been made on the CPU yet and it stays at 600). Digits
are not mirror-symmetric, so the digit row trains without horizontal flips (as the dense digit row). Method defaults are the papers' scaled to this budget and stated in
each method's docstring: ``mean_teacher`` per-class thresholds that keep the source's boxes per image,
between a floor and the papers' 0.8, the floor being the teacher's score at which its detections on the
source batches are right half the time (``mean_teacher_fixed``: the papers' fixed 0.8), EMA 0.99 (0.9996 in
the papers, over tens of thousands of iterations), burn-in 30 % of training; ``adaptive_teacher`` is
``mean_teacher`` with Li et al. 2022's discriminator on every feature level of the student (reversed
gradient, weight 0.1); ``dann`` gamma 10, per-level domain
classifiers of 256 channels; ``dann_instance`` is ``dann`` with option ``instance=1`` (Chen et al.
2018's instance-level classifier under boxes and the consistency term, 16 instances per image);
``cyclegan`` and ``fgbg_cyclegan`` translate for the first half of the iterations and train the
detector on translated sources for the second (``fgbg_cyclegan``'s foreground: the source boxes). The upper bound is the same model and budget trained on the target's
labelled adaptation split (``handwritten-scenes:adapt``, ``synscenes:photo``), seed 0 only.
``NAME@init`` rows (e.g. ``--methods source_only@init,mean_teacher@init``) start from the seed's
source-only bundle (``--init``; the stored run's bundle where it is on this machine, else the same
config trained again, copied once to a fixed path under the scratch folder) and train for the row's
iterations; their gain is paired with ``source_only@init``, source-only training continued as long
(the dense rows' rule). ``mean_teacher`` started from a bundle has no burn-in: the bundle is the
papers' burn-in stage.
``quick`` is a smoke profile (64 iterations) for checking the script, not for the table.
Every run is stored under ``benchmarks/results/detection/<profile>/`` (a run with the same config
is not repeated) and the summary in ``benchmarks/results/detection.json``; the markdown table is
written to ``benchmarks/results/detection-<profile>.md`` (for the cpu profile also to benchmarks/README.md).

Latency (``--latency``; ``--latency-only`` skips the training runs): each detector of
``LATENCY_MODELS`` at each input size of the profile's rows, with the row's class count, exported
with decoding and NMS in the graph (:func:`edgeda.export.detection.export_detector_onnx`, the
graph ``edgeda export`` ships), timed in ONNX Runtime against PyTorch eager (the model, then its
``postprocess``: decoding and the one PyTorch NMS, with the same ``score_thresh`` 0.05, ``max_det``
100 and ``pre_nms_topk`` 1000), at batch 1 and 8, one thread each, in interleaved rounds (every
configuration in each round, so contention from other jobs hits all alike); medians and p90 of the
per-call times. The eager forward pass alone is timed in the same rounds, to show what the NMS costs.
Untrained weights: every (anchor, class) pair scores above 0.05, so NMS always sees the full 1000
candidates, the heaviest case. Target: ORT at batch 1 <= 0.6x eager.

Precisions (``--precisions``; ``--no-train`` skips the method runs): each row's seed-0 source-only
bundle (the stored run's when it is on this machine, else the same config trained again) exported at
fp16 and int8 (calibrated on the first 128 target adaptation images) beside fp32, every precision
scored with COCO mAP on the whole target test split by the export itself, its agreement with the fp32
file, and batch-1 ORT latency per precision.
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

from scratch import copy_once, scratch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAIRS = {
    "digits_det": {"source": "digitscenes", "target": "handwritten-scenes", "upper_source": "handwritten-scenes:adapt",
                   "test": "handwritten-scenes:test"},
    "syn_det": {"source": "synscenes", "target": "synscenes:photo", "upper_source": "synscenes:photo",
                "test": "synscenes:photo-test"},
}
_CPU = {"backbone": "ssdlite", "backbone_kwargs": {"width": 0.5}, "batch_size": 8, "iters": 600, "optimizer": "adam",
        "lr": 1e-3, "lr_schedule": "constant", "workers": 0}
# the synscenes row's FCOS at the cpu budget: the latency table's (MobileNetV3-Large trunk at width 0.5,
# a 64-channel pyramid, two convs per head)
_FCOS_CPU = {"backbone": "fcos", "backbone_kwargs": {"backbone": "mobilenet_v3_large", "width": 0.5, "fpn_channels": 64,
                                                     "num_convs": 2}}
PROFILES = {
    "cpu": {"digits_det": {**_CPU, "image_size": [128, 128], "iters": 3000, "augment_hflip": False},
            "syn_det": {**_CPU, **_FCOS_CPU, "image_size": [128, 256]}},
    "quick": {"digits_det": {**_CPU, "image_size": [128, 128], "iters": 64, "augment_hflip": False},
              "syn_det": {**_CPU, **_FCOS_CPU, "image_size": [128, 256], "iters": 64}},
    "gpu": {"digits_det": {"backbone": "ssdlite", "backbone_kwargs": {"width": 1.0}, "image_size": [320, 320],
                           "augment_hflip": False, "batch_size": 32, "iters": 20000, "lr": 0.01, "lr_schedule": "cosine"},
            "syn_det": {"backbone": "fcos", "backbone_kwargs": {"backbone": "resnet50"}, "image_size": [512, 1024],
                        "batch_size": 8, "iters": 20000, "lr": 0.01, "lr_schedule": "cosine"}},
}
METHODS = ("source_only", "mean_teacher", "mean_teacher_fixed", "adaptive_teacher", "dann", "dann_instance", "cyclegan",
           "fgbg_cyclegan")
# rows that run a method with options other than its defaults: row name -> (method, options)
VARIANTS = {"dann_instance": ("dann", {"instance": 1.0}), "mean_teacher_fixed": ("mean_teacher", {"rate_prior": False})}
# the detectors timed by --latency: the cpu rows' ssdlite, and fcos scaled to the same budget (a
# MobileNetV3-Large trunk at width 0.5, a 64-channel FPN, two convs per head; the gpu row's fcos is resnet50)
LATENCY_MODELS = {
    "ssdlite w0.5": {"arch": "ssdlite", "width": 0.5},
    "fcos mobilenet_v3_large w0.5 fpn64": {"arch": "fcos", "backbone": "mobilenet_v3_large", "width": 0.5,
                                           "fpn_channels": 64, "num_convs": 2},
}
CLASSES = {"digits_det": 10, "syn_det": 6}


def run_config(profile: str, row: str, seed: int, upper: bool, method: str = "source_only") -> dict:
    p, pair = PROFILES[profile][row], PAIRS[row]
    name, at_init = method.removesuffix("@init"), method.endswith("@init")
    method, options = VARIANTS.get(name, (name, None))
    cfg = {"method": method, "task": "detection", "seed": seed, "select": "last",
           "device": "cpu" if profile != "gpu" else "auto", "source": pair["upper_source"] if upper else pair["source"],
           "target": pair["target"], "target_test": pair["test"], **p}
    if options:
        cfg["options"] = dict(options)
    if at_init:
        cfg["init"] = str(init_bundle(profile, row, seed))
    cfg["eval_every"] = cfg["iters"] if profile == "quick" else max(1, cfg["iters"] // 4)
    cfg["checkpoint_every"] = cfg["iters"]
    return cfg


def run_tag(row: str, method: str, seed: int, upper: bool = False) -> str:
    return f"{row}{'-upper' if upper else ''}{'' if method == 'source_only' else '-' + method}-s{seed}"


def run_one(profile: str, row: str, seed: int, upper: bool, method: str = "source_only") -> dict:
    import torch

    import edgeda
    from edgeda.utils import machine_info, sha256_file

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
    if cfg.get("init"):
        copy_once(Path(cfg["init"]), lambda: seed_bundle(profile, row, seed)[0])
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
    if cfg.get("init"):  # which starting bundle this run's gain is paired on
        rec["init_weights_sha256"] = {f.name: sha256_file(f) for f in sorted(Path(cfg["init"]).glob("*.safetensors"))}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{tag}: mAP@.5 {rec['target_test']['map50']}, mAP {rec['target_test']['map']} in {wall:.0f}s", flush=True)
    return rec


def _mean_std(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def same_start(run: dict, ref: dict) -> bool:
    """Whether two ``NAME@init`` runs started from the same bundle (the weights' hashes both record); runs
    without a start, or records older than the hash, pair by seed alone."""
    a, b = run.get("init_weights_sha256"), ref.get("init_weights_sha256")
    return a is None or b is None or a == b


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
        for key, runs in methods.items():
            # NAME@init against source_only@init (source-only training continued as long) on the same seed,
            # source_only@init against the source-only run it continued, the rest against source-only
            ref_key = "source_only@init" if key.endswith("@init") and key != "source_only@init" else "source_only"
            ref = {r["seed"]: r for r in methods.get(ref_key, [])}
            stats = {"reference": ref_key}
            for metric in ("map50", "map"):
                mean, std, n = _mean_std([r["target_test"][metric] for r in runs])
                gains = [r["target_test"][metric] - ref[r["seed"]]["target_test"][metric] for r in runs
                         if r["seed"] in ref and r["target_test"][metric] is not None
                         and ref[r["seed"]]["target_test"][metric] is not None and same_start(r, ref[r["seed"]])]
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
             "gain: paired with source-only on the same seed; NAME@init: started from the seed's source-only bundle, "
             "its gain paired with source_only@init, source-only training continued as long)", "",
             "| row | method | seeds | mAP@.5 | gain mAP@.5 | mAP@[.5:.95] | gain mAP | wall s |", "|---|---|---|---|---|---|---|---|"]
    for row, methods in summary.items():
        order = [m for m in (*METHODS, "upper") if m in methods] + sorted(
            set(methods) - set(METHODS) - {"upper"}, key=lambda m: (m != "source_only@init", m))
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


def latency(profile: str, rows: list[str], rounds: int = 12, batches=(1, 8)) -> dict:
    """ORT (NMS in the graph) vs PyTorch eager (model + postprocess) per detector, input size and batch;
    see the module docstring."""
    import tempfile

    import numpy as np
    import torch

    from edgeda.export.detection import export_detector_onnx
    from edgeda.models import build
    from edgeda.utils import machine_info

    torch.set_num_threads(1)
    post = {"score_thresh": 0.05, "max_det": 100, "pre_nms_topk": 1000}
    calls = {1: 5, 8: 2}  # calls per configuration and round (batch 8 takes ~8x longer)
    rng = np.random.default_rng(0)
    out: dict = {"models": {}, "rounds": rounds, "calls_per_round": {str(b): calls.get(b, 1) for b in batches},
                 "postprocess": post, "threads": 1, "machine": machine_info(), "date": dt.date.today().isoformat()}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for row in rows:
            size = tuple(PROFILES[profile][row]["image_size"])
            for name, kw in LATENCY_MODELS.items():
                kw = dict(kw)
                model = build("detector", num_classes=CLASSES[row], channels=3, image_size=list(size), **kw).eval()
                with torch.inference_mode(False):
                    rep = export_detector_onnx(model, Path(tmp) / "det.onnx", size, **post)
                from edgeda.export.onnx import ort_session

                sess = ort_session(rep["path"], threads=1)
                fns = {}
                for b in batches:
                    x = rng.standard_normal((b, 3, *size)).astype(np.float32)
                    xt = torch.from_numpy(x)
                    fns[(b, "eager")] = lambda xt=xt: model.postprocess(model(xt), **post)
                    fns[(b, "ort")] = lambda x=x: sess.run(None, {"image": x})
                    fns[(b, "forward")] = lambda xt=xt: model(xt)
                times = {k: [] for k in fns}
                for f in fns.values():  # warm-up
                    f(), f()
                for _ in range(rounds):
                    for (b, kind), f in fns.items():
                        for _ in range(calls.get(b, 1)):
                            t = time.perf_counter()
                            f()
                            times[(b, kind)].append(1000 * (time.perf_counter() - t))
                key = f"{name} {size[0]}x{size[1]}"
                rec = {"row": row, "num_classes": CLASSES[row], "image_size": list(size), "num_anchors": rep["num_anchors"],
                       "parity": rep["parity"], "batches": {}}
                for b in batches:
                    med = {k: statistics.median(times[(b, k)]) for k in ("eager", "ort", "forward")}
                    p90 = {k: float(np.percentile(times[(b, k)], 90)) for k in ("eager", "ort", "forward")}
                    rec["batches"][str(b)] = {"eager_median_ms": med["eager"], "ort_median_ms": med["ort"],
                                              "eager_forward_median_ms": med["forward"], "eager_p90_ms": p90["eager"],
                                              "ort_p90_ms": p90["ort"], "eager_forward_p90_ms": p90["forward"],
                                              "ratio_ort_vs_eager": med["ort"] / med["eager"],
                                              "ratio_ort_vs_eager_forward": med["ort"] / med["forward"],
                                              "samples": len(times[(b, "ort")])}
                    print(f"latency {key} batch {b}: eager {med['eager']:.2f} ms (forward {med['forward']:.2f}), "
                          f"ort {med['ort']:.2f} ms, ratio {med['ort'] / med['eager']:.2f}", flush=True)
                out["models"][key] = rec
    return out


def seed_bundle(profile: str, row: str, seed: int = 0) -> tuple[Path, str]:
    """The row's stored source-only bundle of ``seed`` when the one on this machine is that run's (its
    target test mAP equals the stored record's), else the same config trained here; (bundle, where it
    came from)."""
    import edgeda

    stored = RESULTS / "detection" / profile / f"{run_tag(row, 'source_only', seed)}.json"
    if stored.is_file():
        rec = json.loads(stored.read_text())
        man = Path(rec["bundle"]) / "manifest.json"
        if man.is_file() and rec["config"] == run_config(profile, row, seed, False):
            got = json.loads(man.read_text()).get("metrics", {}).get("target_test_map")
            if got is not None and rec["target_test"]["map"] is not None and abs(got - rec["target_test"]["map"]) < 1e-9:
                return Path(rec["bundle"]), f"the stored seed-{seed} run"
    local = scratch("edgeda-detection-bench") / profile / f"{run_tag(row, 'source_only', seed)}-here"
    if not (local / "model.edgeda" / "manifest.json").is_file():
        print(f"training the seed-{seed} source-only {row} bundle ...", flush=True)
        edgeda.train(out=str(local), progress=False, log=None, **run_config(profile, row, seed, False))
    return local / "model.edgeda", f"the seed-{seed} source-only config trained again here"


def init_bundle(profile: str, row: str, seed: int) -> Path:
    """Where ``NAME@init`` runs start from: a fixed path (it is part of the stored config) holding a
    copy of the seed's source-only bundle (:func:`seed_bundle`), made on first use."""
    return scratch("edgeda-detection-bench") / profile / "init" / f"{row}-s{seed}.edgeda"


def precisions(profile: str, rows: list[str], rounds: int = 10, calls: int = 5) -> dict:
    """Each row's seed-0 source-only bundle exported at fp16 and int8 (calibrated on the first 128 target
    adaptation images) beside fp32 by ``edgeda export``'s detection path, every precision scored with COCO
    mAP on the whole target test split and compared with the fp32 file; batch-1 ORT latency per precision
    (1 thread, interleaved rounds)."""
    import tempfile

    import numpy as np

    from edgeda.bundle import Bundle
    from edgeda.export.boxes_bundle import export_postprocessing_bundle
    from edgeda.export.onnx import ort_session
    from edgeda.utils import machine_info

    out: dict = {"rows": {}, "machine": machine_info(), "date": dt.date.today().isoformat(), "rounds": rounds, "calls": calls}
    for row in rows:
        bundle, origin = seed_bundle(profile, row)
        pair = PAIRS[row]
        r: dict = {"bundle": str(bundle), "origin": origin, "precisions": {}, "date": out["date"],
                   "machine": out["machine"].get("cpu")}
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for p in ("fp16", "int8"):
                rec = export_postprocessing_bundle(Bundle(bundle), Path(tmp) / f"{p}.edgeda", precision=p, data=pair["test"],
                                                   calib=pair["target"] if p == "int8" else None, n_check=10 ** 6,
                                                   log=lambda m: print(m, flush=True))
                entry = rec["deployables"]["model"]
                for q in ("fp32", p):
                    sc = rec["precisions"][q]
                    r["precisions"][q] = {"map": sc["target_map"], "map50": sc["target_scores"]["map50"], "n_images": sc["n"],
                                          "eager_fp32_map": sc["eager_map"]}
                    files[q] = Path(rec["bundle"]) / "onnx" / f"model.{q}.onnx"
                r["precisions"][p]["vs_fp32"] = entry[f"vs_fp32_{p}"]
                r["precisions"]["fp32"]["parity_real"] = entry["parity_fp32"]["real"]
                if "calib" in rec:
                    r["calib"] = rec["calib"]
            h, w = PROFILES[profile][row]["image_size"]
            x = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32)
            sess = {p: ort_session(f, threads=1) for p, f in files.items()}
            times = {p: [] for p in sess}
            for s_ in sess.values():
                s_.run(None, {"image": x})
            for _ in range(rounds):
                for p, s_ in sess.items():
                    for _ in range(calls):
                        t = time.perf_counter()
                        s_.run(None, {"image": x})
                        times[p].append(1000 * (time.perf_counter() - t))
            for p, v in times.items():
                r["precisions"][p]["ort_b1_median_ms"] = statistics.median(v)
        out["rows"][row] = r
    return out


def precision_table(prec: dict | None) -> str:
    if not prec or not prec.get("rows"):
        return ""
    m = prec["machine"]
    lines = [f"Each row's seed-0 source-only bundle at each precision (`edgeda export --precision`; int8: Q/DQ convolutions "
             f"calibrated on the first target adaptation images, decoding and NMS in float32), COCO mAP on the whole target "
             f"test split as ONNX Runtime computes it; agreement: share of the fp32 file's detections found at the "
             f"precision (same class, IoU >= 0.5; in brackets also within 0.01 in score); batch-1 ORT latency, 1 thread, "
             f"{prec['rounds']} interleaved rounds, median. Machine: {m.get('cpu')}, {prec['date']}.", "",
             "| pair | precision | mAP@.5 % | mAP % | agreement with fp32 | ORT batch 1 ms |", "|---|---|---|---|---|---|"]
    for row, r in prec["rows"].items():
        for p in ("fp32", "fp16", "int8"):
            q = r["precisions"].get(p)
            if q is None:
                continue
            a = q.get("vs_fp32")
            agree = "-" if a is None else f"{100 * a['matched_fraction']:.1f} % ({100 * a['matched_fraction_within_score_tol']:.1f} %)"
            lines.append(f"| {PAIRS[row]['source']} -> {PAIRS[row]['target']} | {p} | {100 * q['map50']:.1f} | "
                         f"{100 * q['map']:.1f} | {agree} | {q['ort_b1_median_ms']:.2f} |")
    origins = sorted({r["origin"] for r in prec["rows"].values()})
    lines += ["", f"Bundles: {'; '.join(origins)}."]
    older = [f"{PAIRS[row]['source']} -> {PAIRS[row]['target']}: {r['date']}, {r['machine']}" for row, r in prec["rows"].items()
             if r.get("date", prec["date"]) != prec["date"]]
    if older:
        lines[-1] += f" Rows measured in an earlier run: {'; '.join(older)}."
    return "\n".join(lines) + "\n"


def latency_table(lat: dict | None) -> str:
    if not lat or not lat.get("models"):
        return "Detection latency not measured yet (`python benchmarks/detection.py --latency`)."
    m = lat["machine"]
    rounds, calls = lat["rounds"], lat["calls_per_round"]
    lines = [f"Detectors exported with decoding and NMS in the graph, ONNX Runtime vs PyTorch eager (model + "
             f"postprocess: decoding and NMS; score > {lat['postprocess']['score_thresh']}, {lat['postprocess']['pre_nms_topk']} "
             f"candidates, max {lat['postprocess']['max_det']} detections), untrained weights (NMS sees all "
             f"{lat['postprocess']['pre_nms_topk']} candidates), 1 thread each, {rounds} interleaved rounds "
             f"({', '.join(f'{c} calls at batch {b}' for b, c in calls.items())} per round), median (p90) ms per call. "
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores, shared with other jobs), torch {m.get('torch')}, "
             f"onnxruntime {m.get('onnxruntime')}, {lat['date']}.", "",
             "| detector, input (classes) | batch | PyTorch eager (model + NMS) | eager forward only | ORT (NMS in graph) "
             "| ORT / eager (target <= 0.6 at batch 1) | ORT / eager forward |", "|---|---|---|---|---|---|---|"]
    for key, r in lat["models"].items():
        for b, t in r["batches"].items():
            lines.append(f"| {key} ({r['num_classes']}) | {b} | {t['eager_median_ms']:.2f} ({t['eager_p90_ms']:.2f}) | "
                         f"{t['eager_forward_median_ms']:.2f} ({t['eager_forward_p90_ms']:.2f}) | {t['ort_median_ms']:.2f} "
                         f"({t['ort_p90_ms']:.2f}) | {t['ratio_ort_vs_eager']:.2f} | {t['ratio_ort_vs_eager_forward']:.2f} |")
    b1 = [r["batches"]["1"]["ratio_ort_vs_eager"] for r in lat["models"].values() if "1" in r["batches"]]
    if b1:
        lines += ["", f"Batch 1: ORT / eager {min(b1):.2f} - {max(b1):.2f} over the {len(b1)} detector-size pairs "
                  f"(target <= 0.6: {'met' if max(b1) <= 0.6 else 'not met'} on every pair)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--rows", default=",".join(PAIRS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-upper", action="store_true", help="skip the target-trained upper bounds")
    ap.add_argument("--table-only", action="store_true", help="rebuild the summary and table from stored runs")
    ap.add_argument("--latency", action="store_true", help="also time each detector, ORT (NMS in graph) vs eager")
    ap.add_argument("--latency-only", action="store_true", help="time the detectors; no training runs")
    ap.add_argument("--no-train", action="store_true", help="no method runs (with --precisions or --latency)")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved latency rounds")
    ap.add_argument("--precisions", action="store_true",
                    help="export each row's seed-0 source-only bundle at fp16 and int8 and score every precision")
    a = ap.parse_args()
    rows = [r for r in a.rows.split(",") if r]
    unknown = [r for r in rows if r not in PAIRS]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; valid: {', '.join(PAIRS)}")
    ran = not (a.table_only or a.latency_only or a.no_train)  # method runs: the rows' date changes
    if ran:
        seeds = [int(s) for s in a.seeds.split(",") if s]
        for row in rows:
            for seed in seeds:
                for method in [m for m in a.methods.split(",") if m]:
                    run_one(a.profile, row, seed, False, method)
            if not a.no_upper:
                run_one(a.profile, row, 0, True)
    lat = latency(a.profile, rows, a.rounds) if (a.latency or a.latency_only) and not a.table_only else None
    prec = precisions(a.profile, rows) if a.precisions and not a.table_only else None
    summary = summarise(a.profile)
    path = RESULTS / "detection.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    old = stored.get(a.profile, {})
    if prec and old.get("precisions"):  # rows not measured now keep their earlier record, dated
        before = old["precisions"]
        kept = {row: {"date": before["date"], "machine": before["machine"].get("cpu"), **r}
                for row, r in before["rows"].items() if row not in prec["rows"]}
        prec["rows"] = {**kept, **prec["rows"]}
    stored[a.profile] = {"rows": summary, "date": dt.date.today().isoformat() if ran else old.get("date"),
                         **({"latency": lat or old["latency"]} if lat or old.get("latency") else {}),
                         **({"precisions": prec or old["precisions"]} if prec or old.get("precisions") else {})}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1) + "\n")
    md = RESULTS / f"detection-{a.profile}.md"
    lat_md = latency_table(stored[a.profile].get("latency"))
    prec_md = precision_table(stored[a.profile].get("precisions"))
    lat_md += ("\n" + prec_md) if prec_md else ""
    md.write_text(table(a.profile, summary) + "\n" + lat_md)
    if a.profile == "cpu":
        from readme_tables import replace_block

        replace_block("detection-table", table(a.profile, summary))
        replace_block("detection-latency-table", lat_md)
    print(md.read_text())


if __name__ == "__main__":
    main()
