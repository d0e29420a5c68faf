"""The shift suite: one synthetic source, ten real-image targets made from scikit-learn's handwritten
digits under capture conditions, every ``--method auto`` candidate and every validator.

    python benchmarks/shifts.py [--seeds 1] [--iters 400] [--only NAME ...]

Targets are generated deterministically (no download) from ``handwritten`` (1797 real scans):
clean, binarised thick strokes at low resolution (fax / old scanner), inverted polarity, ink on
crops of the real photographs scikit-learn ships, Gaussian blur, JPEG at quality 12, small
rotation and scale, and three combinations. The adaptation split (1000 images) is used unlabeled;
the test split (797) is labeled and read for this report only.

Per target and seed, :func:`edgeda.auto.train_auto` trains source-only, DANN and MMD and adapts the
source-only bundle with SHOT and TENT (source-free) on the same target images; every candidate is
scored by every validator. Reported: each method's target accuracy and gain vs source-only; for
each validator, the accuracy of its pick among the candidates, how often that pick is below
source-only (negative transfer missed), and its regret vs the oracle (the best candidate by target
labels). The validator with the lowest mean regret among those whose pick is below source-only on at
most 1 target in 10 is the default of ``--method auto`` (``edgeda.auto.DEFAULT_SELECTOR``); the script prints it and how
``--method auto`` with it compares to the best single method. Each candidate's per-image correctness
on the test split is stored so the few-labels selection (``--select target_val``) can be measured:
k labeled images per class drawn at random, the pick's regret on the images not drawn.
CPU budget (2 shared cores): ``dtn`` width 16, 3000 rendered source images, 400
iterations per method (the adaptation benchmark's cpu profile uses 6000 and 10000 images), SHOT/TENT
at 100 iterations. Each run is stored in ``benchmarks/results/shifts/<target>-s<seed>.json`` and
skipped when present (a rerun resumes); the summary goes to ``benchmarks/results/shifts.json`` and
the README block between the ``shifts-table`` markers.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_tables import replace_block  # noqa: E402
from scratch import scratch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "shifts"
SIDE = 32


# -- capture conditions (each: uint8 (32, 32, 3) image, rng -> image) --------------------------------
def _pil(a):
    return Image.fromarray(a)


def binarised(a, rng):
    g = _pil(a).convert("L").resize((12, 12), Image.BILINEAR)
    g = g.point(lambda v: 255 if v > 80 else 0).filter(ImageFilter.MaxFilter(3))
    return np.asarray(g.resize((SIDE, SIDE), Image.NEAREST).convert("RGB"))


def inverted(a, rng):
    return 255 - a


_PHOTOS = None


def photo_background(a, rng):
    global _PHOTOS
    if _PHOTOS is None:
        from sklearn.datasets import load_sample_images

        _PHOTOS = load_sample_images().images
    ph = _PHOTOS[rng.integers(len(_PHOTOS))]
    s = int(rng.integers(48, 160))
    y, x = rng.integers(0, ph.shape[0] - s), rng.integers(0, ph.shape[1] - s)
    bg = np.asarray(_pil(ph[y:y + s, x:x + s]).resize((SIDE, SIDE), Image.BILINEAR), np.float32)
    alpha = a[..., :1].astype(np.float32) / 255.0
    ink = np.where(bg.mean() > 110, rng.uniform(0, 60, 3), rng.uniform(190, 255, 3)).astype(np.float32)
    return np.clip(bg * (1 - alpha) + ink * alpha, 0, 255).astype(np.uint8)


def blur(a, rng):
    return np.asarray(_pil(a).filter(ImageFilter.GaussianBlur(1.4)))


def jpeg(a, rng):
    buf = io.BytesIO()
    _pil(a).save(buf, format="JPEG", quality=12)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def rotate_scale(a, rng):
    img = _pil(a).rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    s = float(rng.uniform(0.75, 1.1))
    n = max(8, int(round(SIDE * s)))
    small = img.resize((n, n), Image.BILINEAR)
    canvas = Image.new("RGB", (max(n, SIDE), max(n, SIDE)))
    off = (max(n, SIDE) - n) // 2
    canvas.paste(small, (off, off))
    c = (canvas.size[0] - SIDE) // 2
    return np.asarray(canvas.crop((c, c, c + SIDE, c + SIDE)))


def chain(*fs):
    def f(a, rng):
        for g in fs:
            a = g(a, rng)
        return a
    return f


TARGETS = {
    "clean": lambda a, rng: a,
    "binarised": binarised,
    "inverted": inverted,
    "photo": photo_background,
    "blur": blur,
    "jpeg": jpeg,
    "rot_scale": rotate_scale,
    "inverted+blur": chain(inverted, blur),
    "photo+jpeg": chain(photo_background, jpeg),
    "binarised+rot": chain(rotate_scale, binarised),
}


def make_target(name: str, folder: Path) -> tuple[Path, Path]:
    """``<name>-adapt.npz`` (x only) and ``<name>-test.npz`` (x, y), generated deterministically."""
    from edgeda.data.builtin import handwritten

    folder.mkdir(parents=True, exist_ok=True)
    adapt_p, test_p = folder / f"{name}-adapt.npz", folder / f"{name}-test.npz"
    if adapt_p.exists() and test_p.exists():
        return adapt_p, test_p
    f = TARGETS[name]
    for split, path in (("adapt", adapt_p), ("test", test_p)):
        d = handwritten(split, size=(SIDE, SIDE), channels=3)
        rng = np.random.default_rng([sorted(TARGETS).index(name), 0 if split == "adapt" else 1])
        x = np.stack([f(np.ascontiguousarray(img), rng) for img in d.images]).astype(np.uint8)
        arrays = {"x": x} if split == "adapt" else {"x": x, "y": d.labels}
        np.savez(path, **arrays)
    return adapt_p, test_p


def run_one(name: str, seed: int, iters: int, adapt_iters: int) -> dict:
    from edgeda.config import make_config
    from edgeda.auto import train_auto
    from edgeda.utils import machine_info

    path = RUNS / f"{name}-s{seed}.json"
    if path.exists():
        old = json.loads(path.read_text())
        if all("test_correct" in c for c in old["candidates"].values()):
            return old
    import os

    cache = Path(os.environ.get("EDGEDA_CACHE") or scratch("ecache")) / "shift-targets"
    adapt_p, test_p = make_target(name, cache)
    cfg = make_config(None, dict(method="source_only", source="syndigits", target=str(adapt_p), target_test=str(test_p),
                                 iters=iters, batch_size=32, lr=0.01, backbone="dtn",
                                 backbone_kwargs={"width": 16, "out_dim": 128}, source_n=3000, eval_every=iters,
                                 checkpoint_every=100000, device="cpu", seed=seed, select="source_val",
                                 out=str(scratch("edgeda-shifts") / f"{name}-s{seed}")))
    t0 = time.perf_counter()
    rec = train_auto(cfg, adapt_iters=adapt_iters, log=None)
    correct = _test_correct(rec, cfg)
    out = {"target": name, "seed": seed, "iters": iters, "adapt_iters": adapt_iters, "wall_s": round(time.perf_counter() - t0, 1),
           "candidates": {k: {"scores": v["scores"], "target_test": v.get("target_test"),
                              "disagreement_with_source_only": v.get("disagreement_with_source_only"),
                              "test_correct": correct[k]}
                          for k, v in rec["candidates"].items()},
           "machine": machine_info(), "date": dt.date.today().isoformat()}
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def _test_correct(rec: dict, cfg) -> dict[str, str]:
    """Per candidate, one '0'/'1' per target test image (is its prediction right): what the few-labels
    selection below draws from."""
    from edgeda.bundle import load_bundle
    from edgeda.training.model_eval import evaluate_model
    from edgeda.training.domains import load_domains

    test = load_domains(cfg, True).target_test
    y = np.asarray(test.labels)
    out = {}
    for k, v in rec["candidates"].items():
        b = load_bundle(v["bundle"])
        rows = evaluate_model(b.module(b.primary), test, b.task, "cpu", labels=False, rows=True).rows
        out[k] = "".join("1" if c else "0" for c in (rows.argmax(1).numpy() == y))
    return out


def labels_needed(runs: list[dict], labels, per_class=(1, 2, 3, 5, 10, 20), draws: int = 300, seed: int = 0) -> dict:
    """Selection by accuracy on ``k`` labeled target images per class (what ``--select target_val``
    does), per run and random draw: the regret of the pick vs the best candidate, both measured on the
    test images not drawn; reported per k as the fraction of draws within 1 point of the best and the
    mean regret."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    out = {}
    for k in per_class:
        within, regrets = [], []
        for r in runs:
            names = list(r["candidates"])
            bits = np.array([[c == "1" for c in r["candidates"][n]["test_correct"]] for n in names])
            for _ in range(draws):
                pick = np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in classes])
                rest = np.ones(labels.size, bool)
                rest[pick] = False
                val, held = bits[:, pick].mean(1), bits[:, rest].mean(1)
                best_val = val.max()
                chosen = next(i for i, n in sorted(enumerate(names), key=lambda t: t[1] != "source_only")
                              if val[i] == best_val)  # ties: source-only
                reg = float(held.max() - held[chosen])
                regrets.append(reg)
                within.append(reg <= 0.01)
        out[str(k)] = {"within_1_point": float(np.mean(within)), "mean_regret": float(np.mean(regrets)),
                       "draws": len(within)}
    return out


def recommended_validator(per_validator: dict, max_below: float = 0.1) -> str:
    """The validator the defaults use: the lowest mean regret among those whose pick is below
    source-only on at most ``max_below`` of the runs (a validator that always keeps source-only is
    never below it and never helps); exact ties go to ``info_max`` (the adaptation runner's rule),
    then by name. When none qualifies: fewest picks below source-only, then lowest regret."""
    def key(v):
        r = per_validator[v]
        return round(r["regret"], 6), round(r["max_regret"], 6), v != "info_max", v

    ok = [v for v, r in per_validator.items() if r["below_source_only"] <= max_below * r["runs"]]
    if ok:
        return min(ok, key=key)
    return min(per_validator, key=lambda v: (per_validator[v]["below_source_only"], *key(v)))


def auto_rows(runs: list[dict], validator: str) -> dict:
    """``--method auto`` with ``validator``: per run its gain vs source-only and its gap to the best
    single method (the method with the highest mean accuracy over the suite)."""
    methods = sorted({m for r in runs for m in r["candidates"]})
    mean_acc = {m: statistics.mean(r["candidates"][m]["target_test"] for r in runs if m in r["candidates"]) for m in methods}
    best = max(mean_acc, key=mean_acc.get)
    per = []
    for r in runs:
        c = r["candidates"]
        have = {m: x for m, x in c.items() if validator in x["scores"]}
        pick = max(have, key=lambda m: (have[m]["scores"][validator], m == "source_only"))
        per.append({"target": r["target"], "seed": r["seed"], "pick": pick, "acc": c[pick]["target_test"],
                    "gain_vs_source_only": c[pick]["target_test"] - c["source_only"]["target_test"]})
    return {"validator": validator, "best_single_method": best, "best_single_acc": mean_acc[best],
            "acc": statistics.mean(p["acc"] for p in per), "per_run": per,
            "worst_gain_vs_source_only": min(p["gain_vs_source_only"] for p in per)}


def summarise(runs: list[dict]) -> dict:
    methods = sorted({m for r in runs for m in r["candidates"]}, key=lambda m: (m != "source_only", m))
    validators = sorted({v for r in runs for c in r["candidates"].values() for v in c["scores"]})
    per_method = {}
    for m in methods:
        accs = [r["candidates"][m]["target_test"] for r in runs if m in r["candidates"]]
        gains = [r["candidates"][m]["target_test"] - r["candidates"]["source_only"]["target_test"] for r in runs if m in r["candidates"]]
        per_method[m] = {"acc": statistics.mean(accs), "gain": statistics.mean(gains),
                         "below_source_only": sum(g < 0 for g in gains), "runs": len(gains)}
    per_validator = {}
    for v in validators:
        picks, below, regret = [], 0, []
        for r in runs:
            c = r["candidates"]
            have = {m: x for m, x in c.items() if v in x["scores"]}
            if not have:
                continue
            pick = max(have, key=lambda m: (have[m]["scores"][v], m == "source_only"))
            acc = c[pick]["target_test"]
            picks.append(acc)
            below += acc < c["source_only"]["target_test"]
            regret.append(max(x["target_test"] for x in c.values()) - acc)
        if picks:
            per_validator[v] = {"acc": statistics.mean(picks), "below_source_only": below, "regret": statistics.mean(regret),
                                "max_regret": max(regret), "runs": len(picks)}
    oracle = statistics.mean(max(x["target_test"] for x in r["candidates"].values()) for r in runs)
    rec = recommended_validator(per_validator)
    return {"methods": per_method, "validators": per_validator, "oracle_acc": oracle, "runs": len(runs),
            "targets": sorted({r["target"] for r in runs}), "recommended_validator": rec, "auto": auto_rows(runs, rec)}


def table(s: dict, runs: list[dict]) -> str:
    it = runs[0]["iters"] if runs else "?"
    lines = [f"{s['runs']} runs ({len(s['targets'])} targets: {', '.join(s['targets'])}), source `syndigits`, "
             f"{it} iterations per method, SHOT/TENT {runs[0]['adapt_iters'] if runs else '?'} iterations on the source-only bundle. "
             "Target accuracy from labels used for this report only.", "",
             "| method | target acc % | gain vs source-only (points) | targets below source-only |", "|---|---|---|---|"]
    for m, r in s["methods"].items():
        lines.append(f"| {m} | {100 * r['acc']:.1f} | {100 * r['gain']:+.1f} | {r['below_source_only']}/{r['runs']} |")
    lines += ["", f"Picking one candidate per target by each validator (oracle: {100 * s['oracle_acc']:.1f} %):", "",
              "| validator | picked acc % | picks below source-only | mean regret (points) | worst regret |", "|---|---|---|---|---|"]
    for v, r in sorted(s["validators"].items(), key=lambda kv: kv[1]["regret"]):
        lines.append(f"| {v} | {100 * r['acc']:.1f} | {r['below_source_only']}/{r['runs']} | {100 * r['regret']:.1f} | {100 * r['max_regret']:.1f} |")
    a, v = s["auto"], s["recommended_validator"]
    below = [p for p in a["per_run"] if p["gain_vs_source_only"] < -0.01]
    lines += ["", f"Most reliable by this table (lowest mean regret among the validators whose pick is below source-only on at most 1 target in 10): `{v}`, the "
              f"default of `--method auto`. With it, `--method auto` averages {100 * a['acc']:.1f} % vs "
              f"{100 * a['best_single_acc']:.1f} % for the best single method (`{a['best_single_method']}`); worst "
              f"target vs source-only: {100 * a['worst_gain_vs_source_only']:+.1f} points"
              + (f" ({', '.join(p['target'] + ' ' + format(100 * p['gain_vs_source_only'], '+.1f') for p in below)})"
                 if below else "") + "."]
    if s.get("labels_needed"):
        lines += ["", "Selection by k labeled target images per class (`--select target_val`; random draws, regret "
                  "measured on the test images not drawn):", "",
                  "| labels per class | draws within 1 point of the best | mean regret (points) |", "|---|---|---|"]
        for k, r in s["labels_needed"].items():
            lines.append(f"| {k} | {100 * r['within_1_point']:.0f}% | {100 * r['mean_regret']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--adapt-iters", type=int, default=100)
    ap.add_argument("--only", nargs="*", help="targets to run (default: all)")
    args = ap.parse_args()
    names = args.only or list(TARGETS)
    runs = []
    for seed in range(args.seeds):
        for n in names:
            print(f"{n} seed {seed} ...", flush=True)
            r = run_one(n, seed, args.iters, args.adapt_iters)
            print(f"  {n}: " + ", ".join(f"{m} {100 * c['target_test']:.1f}" for m, c in r["candidates"].items())
                  + f" ({r['wall_s']}s)", flush=True)
            runs.append(r)
    all_runs = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    s = summarise(all_runs)
    with_bits = [r for r in all_runs if all("test_correct" in c for c in r["candidates"].values())]
    if with_bits:
        from edgeda.data.builtin import handwritten

        s["labels_needed"] = labels_needed(with_bits, handwritten("test", size=(SIDE, SIDE), channels=3).labels)
    (RESULTS / "shifts.json").write_text(json.dumps({"summary": s, "date": dt.date.today().isoformat()}, indent=1))
    md = table(s, all_runs)
    print(md)
    replace_block("shifts-table", md)


if __name__ == "__main__":
    main()
