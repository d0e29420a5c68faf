"""The dense shift suite: controlled segmentation targets made by the embedded generators, every
candidate started from the seed's source-only bundle, every label-free validator, and few labels.

    python benchmarks/dense_shifts.py [--targets fog,night,...] [--candidates source_only@init,source_only+tent,...]
                                      [--seeds 0] [--quick] [--summary-only | --no-summary] [--results DIR]

Targets (no download, deterministic, cached like every built-in domain; ``NAME`` is the unlabeled
adaptation split, ``NAME-test`` the labelled test split read for this report only):

| target | spec | the shift from the row's own target | row (source, model) |
|---|---|---|---|
| fog, night, rain | synscenes:fog ... | the photo look's worlds in fog, at night, in rain | syn_seg |
| high-cam, wide | synscenes:high-cam, synscenes:wide | the same worlds through a camera 3.5-5 m up pitched down / a 100-115 degree lens | syn_seg |
| suburb | synscenes:suburb | another layout: houses behind gardens, more vegetation, fewer cars | syn_seg |
| paper, board, noisy | handwritten-scenes:paper ... | the real scans on ruled paper, on a chalkboard, in low light with JPEG | digits_seg |

Each candidate (``NAME@init`` of ``benchmarks/dense.py``: the method started from the seed's source-only
bundle of the row's profile, trained for its usual iterations with that row's settings and
``METHOD_SETTINGS``) adapts to each target's adaptation split; the run config, starting bundle and
per-method settings are ``benchmarks/dense.py``'s (:func:`dense.run_config`, :func:`dense.ensure_init_bundle`),
only the target changes. A source-free candidate (``source_only+METHOD``, what ``--method auto`` adds for dense
tasks) is that source-only bundle adapted by ``edgeda adapt --method METHOD`` on the target's adaptation frames
(written as PNG files), with :data:`ADAPT_SETTINGS`; its scores are taken on the same data as the others'. Per run (``results/dense_shifts/<target>-<candidate>-s<seed>.json``, skipped when
present with the same config; a lock beside it lets several processes share a target list): the test mIoU
over the classes labelled in the test split, every label-free validator's score of the shipped model
(``agreement`` against the starting bundle; ``majority`` needs every candidate and is computed in the
summary from the stored class maps), its disagreement with the starting bundle, and in a compressed
``.npz`` beside it (plain arrays, no pickles) the per-frame intersection, union and truth counts per class
on the test split and the predicted class maps of a fixed sample of adaptation frames.

The summary (``results/dense_shifts.json``, the README block between the ``dense-shifts-table``
markers): per target each candidate's mIoU and gain vs ``source_only@init``; per validator its pick's
mIoU, how often the pick is below ``source_only@init`` and its regret vs the oracle; the default-validator
rule (lowest mean regret among the validators whose pick is below source-only on at most 1 target in 8),
which ``edgeda.auto`` takes as its dense default; ``--method auto`` with it vs the best single
candidate; few labels: k = 1, 2, 5, 10 labelled test frames drawn at random (20 draws), the pick by mIoU on
them, its regret on the frames not drawn. ``records`` lists ``{target, seed, candidates: {name: {scores,
target}}}`` for ``benchmarks/warning.py``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import dense  # noqa: E402
from readme_tables import replace_block  # noqa: E402
from scratch import scratch  # noqa: E402
from shifts import recommended_validator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# target -> (row of benchmarks/dense.py whose source-only bundle it starts from, adaptation spec, test spec)
TARGETS = {
    **{c: ("syn_seg", f"synscenes:{c}", f"synscenes:{c}-test") for c in ("fog", "night", "rain", "high-cam", "wide",
                                                                         "suburb")},
    **{c: ("digits_seg", f"handwritten-scenes:{c}", f"handwritten-scenes:{c}-test") for c in ("paper", "board", "noisy")},
}
# the rows' own targets, runnable by name (not in the default list: benchmarks/dense.py reports them)
EXTRA_TARGETS = {"photo": ("syn_seg", "synscenes:photo", "synscenes:photo-test"),
                 "handwritten": ("digits_seg", "handwritten-scenes:adapt", "handwritten-scenes:test")}
CANDIDATES = ("source_only@init", "dacs@init", "cbst@init", "dann@init", "suit@init", "source_only+tent")
REFERENCE = "source_only@init"
# ``source_only+METHOD`` candidates: the seed's source-only bundle adapted source-free by ``edgeda adapt --method
# METHOD`` on the target's adaptation frames, with benchmarks/adapt.py's budget (10 minutes, 2048 MB, 1 thread;
# the method's default iterations: the budget does not end them on this machine)
ADAPT_SETTINGS = {"minutes": 10.0, "memory_mb": 2048, "threads": 1}
MAP_FRAMES = 32  # adaptation frames whose predicted class maps are stored (what ``majority`` votes on)
MAX_BELOW = 1 / 8  # the default validator's pick may be below source-only on at most this share of targets
FEW_LABELS = (1, 2, 5, 10)
QUICK = {"targets": ("fog", "paper"), "candidates": ("source_only@init", "dann@init", "source_only+tent"), "adapt_n": 12,
         "test_n": 6, "adapt_iters": 4}


def results_dir(results: Path | None, quick: bool) -> Path:
    if results is not None:
        return Path(results)
    return scratch("edgeda-dense-shifts") / "quick" / "results" if quick else RESULTS / "dense_shifts"


def target_specs(name: str, profile: str) -> tuple[str, str, str]:
    """(row, adaptation spec, test spec); the quick profile writes a few frames of each to .npz files."""
    row, adapt, test = {**TARGETS, **EXTRA_TARGETS}[name]
    if profile != "quick":
        return row, adapt, test
    from edgeda.data import load_domain

    size = tuple(dense.PROFILES[profile][row]["image_size"])
    folder = scratch("edgeda-dense-shifts") / "quick" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for spec, n, labelled in ((adapt, QUICK["adapt_n"], False), (test, QUICK["test_n"], True)):
        path = folder / f"{spec.replace(':', '_')}-n{n}-{size[0]}x{size[1]}.npz"
        if not path.is_file():
            d = load_domain(spec, labeled=True, n=n, size=size)
            arrays = {"x": d.images} if not labelled else {"x": d.images, "y": d.masks, "classes": np.array(d.classes),
                                                           "palette": d.palette}
            with _atomic(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
        out.append(str(path))
    return row, out[0], out[1]


def source_free(candidate: str) -> str | None:
    """The on-device method of a ``source_only+METHOD`` candidate (None for a ``NAME@init`` one)."""
    start, plus, method = candidate.partition("+")
    if plus and start != "source_only":
        raise SystemExit(f"{candidate}: a source-free candidate starts from the source-only bundle (source_only+METHOD)")
    return method or None


def run_config(profile: str, name: str, candidate: str, seed: int) -> dict:
    """benchmarks/dense.py's config of ``candidate`` on the target's row, with this target; for a
    source-free candidate, its ``edgeda adapt`` settings and the bundle it starts from."""
    row, adapt, test = target_specs(name, profile)
    if (method := source_free(candidate)) is not None:
        cfg = {"adapt_method": method, "init": str(dense.init_bundle(profile, row, seed)), "seed": seed, **ADAPT_SETTINGS}
        if profile == "quick":
            cfg["iters"] = QUICK["adapt_iters"]
    else:
        cfg = dense.run_config(profile, row, seed, False, candidate)
    cfg.update(target=adapt, target_test=test)
    return cfg


def write_frames(spec: str, folder: Path, size) -> int:
    """A domain's images as a folder of PNG frames at ``size`` (what ``edgeda adapt --target-dir`` reads)."""
    from edgeda.data import load_domain, save_images

    return save_images(load_domain(spec, labeled=False, size=tuple(size), channels=3), folder)


def train_candidate(profile: str, name: str, candidate: str, cfg: dict, out: Path) -> tuple[Path, dict]:
    """Run one candidate; (its bundle, the training config whose data its scores are taken on)."""
    import edgeda

    if (method := source_free(candidate)) is None:
        return Path(edgeda.train(out=str(out), progress=False, log=None, **cfg).bundle), cfg
    from edgeda.adapt.runner import adapt

    row = TARGETS.get(name, EXTRA_TARGETS.get(name))[0]
    data = dense.run_config(profile, row, cfg["seed"], False, "source_only@init")  # the source and the row's settings
    data.update(target=cfg["target"], target_test=cfg["target_test"])
    frames = out / "frames"
    if frames.exists():
        import shutil

        shutil.rmtree(frames)
    write_frames(cfg["target"], frames, data["image_size"])
    settings = {k: cfg[k] for k in ("minutes", "memory_mb", "threads", "seed", "iters") if k in cfg}
    res = adapt(cfg["init"], frames, out / "model.edgeda", method=method, **settings)
    return Path(res.bundle), data


@contextmanager
def _atomic(path: Path):
    """Write ``path`` whole or not at all (readable by all, like the other results)."""
    from edgeda.utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        yield tmp
        os.chmod(tmp, 0o644)


def _lock_path(results: Path, name: str) -> Path:
    """Lock files live in the scratch folder (processes sharing a results folder run on one machine), not among the results."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in str(results.resolve()))
    return scratch("edgeda-dense-shifts") / "locks" / slug / f"{name}.lock"


@contextmanager
def _lock(path: Path, wait: bool):
    """An exclusive lock file (another process holding it: yields False unless ``wait``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stored(path: Path, cfg: dict) -> dict | None:
    if path.is_file() and path.with_suffix(".npz").is_file():
        old = json.loads(path.read_text())
        if old.get("config") == cfg:
            return old
    return None


def frame_counts(net, domain, spec) -> dict[str, np.ndarray]:
    """Per test frame and class: intersection, union and truth pixels (each (N, K) int64)."""
    import torch

    from edgeda.tasks import task_of
    from edgeda.training.model_eval import eval_batches

    k, task = spec.num_classes, task_of(spec)
    inter, union, support = [], [], []
    net.eval()
    with torch.no_grad():
        for x, y, _ in eval_batches(domain, spec, "cpu", 16, labels=True):
            pred = task.decide(net(x).float()).cpu().long()
            y = y.long()
            valid = (y >= 0) & (y < k)
            for p, t, v in zip(pred, y, valid):
                p, t = p[v], t[v]
                i = torch.bincount(t[p == t], minlength=k)
                pc, tc = torch.bincount(p.clamp(0, k - 1), minlength=k), torch.bincount(t, minlength=k)
                inter.append(i), union.append(pc + tc - i), support.append(tc)
    return {name: torch.stack(v).numpy().astype(np.int64) for name, v in
            (("inter", inter), ("union", union), ("support", support))}


def miou(counts: dict, frames=None) -> float:
    """mIoU over the classes labelled in ``frames`` (default: all) from per-frame counts."""
    sel = slice(None) if frames is None else frames
    i, u, s = (counts[k][sel].sum(0) for k in ("inter", "union", "support"))
    have = s > 0
    return float((i[have] / u[have]).mean()) if have.any() else float("nan")


def class_maps(net, domain, spec, n: int = MAP_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices, predicted class maps (n, H, W) uint8) on a fixed sample of the adaptation split."""
    import torch

    from edgeda.training.model_eval import eval_batches

    idx = np.sort(np.random.default_rng(20251205).choice(len(domain), min(n, len(domain)), replace=False))
    maps = []
    net.eval()
    with torch.no_grad():
        for x, _, _ in eval_batches(domain.subset(idx), spec, "cpu", 16, labels=False, workers=0):
            maps.append(net(x).float().argmax(1).to(torch.uint8).numpy())
    return idx, np.concatenate(maps)


def run_one(profile: str, name: str, candidate: str, seed: int, results: Path) -> dict | None:
    import torch

    from edgeda.bundle import load_bundle
    from edgeda.config import make_config
    from edgeda.training.domains import load_domains
    from edgeda.training.selection import score_model
    from edgeda.trust import disagreement
    from edgeda.utils import machine_info, sha256_file

    tag = f"{name}-{candidate}-s{seed}"
    path = results / f"{tag}.json"
    cfg = run_config(profile, name, candidate, seed)
    if (old := _stored(path, cfg)) is not None:
        print(f"{tag}: stored", flush=True)
        return old
    with _lock(_lock_path(results, tag), wait=False) as mine:
        if not mine:
            print(f"{tag}: running in another process, skipped here", flush=True)
            return None
        if (old := _stored(path, cfg)) is not None:  # written by another process meanwhile
            return old
        torch.set_num_threads(1)
        row = TARGETS.get(name, EXTRA_TARGETS.get(name))[0]
        if cfg.get("init"):
            dense.ensure_init_bundle(profile, row, seed)
        out = scratch("edgeda-dense-shifts") / profile / tag
        print(f"{tag}: training ...", flush=True)
        t0 = time.perf_counter()
        bundle, data = train_candidate(profile, name, candidate, cfg, out)
        wall = time.perf_counter() - t0
        b = load_bundle(bundle)
        net, spec = b.module(b.primary), b.task
        domains = load_domains(make_config(None, {**data, "out": str(out)}), True)
        start = load_bundle(cfg["init"]) if cfg.get("init") else None
        ref_rows = None
        hflip = bool(data.get("augment_hflip", True))  # aug_consistency checks flips only where training used them
        if start is not None:  # the seed's source-only bundle: agreement's and the disagreement's reference
            _, ref_rows = score_model(start.module(start.primary), domains, spec, "cpu", seed, hflip=hflip)
        scores, rows = score_model(net, domains, spec, "cpu", seed, reference_rows=ref_rows, hflip=hflip)
        counts = frame_counts(net, domains.target_test, spec)
        idx, maps = class_maps(net, domains.target, spec)
        rec = {"target": name, "row": row, "candidate": candidate, "seed": seed, "profile": profile, "config": cfg,
               "target_miou": miou(counts),
               "scores": scores, "disagreement_with_source_only": (disagreement(rows, ref_rows)
                                                                   if ref_rows is not None and rows is not None else None),
               "test_frames": int(len(counts["inter"])), "map_frames": idx.tolist(), "counts_npz": f"{tag}.npz",
               "wall_s": round(wall, 1), "bundle": str(bundle), "machine": machine_info(),
               "date": dt.date.today().isoformat()}
        if start is not None:
            rec["init_weights_sha256"] = {f.name: sha256_file(f) for f in sorted(Path(cfg["init"]).glob("*.safetensors"))}
        with _atomic(path.with_suffix(".npz")) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, maps=maps, map_frames=idx, **counts)
        with _atomic(path) as tmp:
            Path(tmp).write_text(json.dumps(rec, indent=1) + "\n")
        print(f"{tag}: mIoU {100 * rec['target_miou']:.1f} in {wall:.0f}s", flush=True)
        return rec


# -- summary -------------------------------------------------------------------------------------------
def load_runs(results: Path, profile: str) -> list[dict]:
    """Stored runs whose config is the current one for their (target, candidate, seed), with their arrays."""
    runs = []
    for p in sorted(results.glob("*.json")):
        r = json.loads(p.read_text())
        if r.get("profile") != profile or r.get("target") not in {**TARGETS, **EXTRA_TARGETS}:
            continue
        if r["config"] != run_config(profile, r["target"], r["candidate"], r["seed"]) or not (results / r["counts_npz"]).is_file():
            continue
        with np.load(results / r["counts_npz"], allow_pickle=False) as z:
            r["_arrays"] = {k: z[k] for k in z.files}
        runs.append(r)
    return runs


def majority_scores(cands: dict[str, dict]) -> dict[str, float]:
    """``majority`` of each candidate from the stored class maps of the same adaptation frames (the
    validator of ``edgeda.training.selection`` on one-hot rows); empty where it is not available."""
    import torch

    try:
        from edgeda.training.selection import VALIDATORS, EvalContext

        fn = VALIDATORS.get("majority")
    except (ImportError, KeyError, ValueError):
        return {}
    first = next(iter(cands.values()))
    k = int(first["_arrays"]["inter"].shape[1])  # the task's classes
    rows = {n: torch.nn.functional.one_hot(torch.from_numpy(c["_arrays"]["maps"].astype(np.int64)).flatten(), k).float() * 10
            for n, c in cands.items() if c["map_frames"] == first["map_frames"]}
    out = {}
    for n, z in rows.items():
        try:
            ctx = EvalContext(0.0, target_logits=z, dense=True, peer_logits={o: v for o, v in rows.items() if o != n})
            out[n] = float(fn(ctx))
        except (TypeError, ValueError):
            continue
    return out


def records(runs: list[dict]) -> list[dict]:
    """One record per (target, seed): ``{target, seed, candidates: {name: {scores, target, ...}}}``."""
    by = {}
    for r in runs:
        by.setdefault((r["target"], r["seed"]), {})[r["candidate"]] = r
    out = []
    for (t, s), cands in sorted(by.items()):
        maj = majority_scores(cands) if len(cands) >= 3 else {}
        out.append({"target": t, "seed": s, "row": next(iter(cands.values()))["row"], "candidates": {
            n: {"scores": {**c["scores"], **({"majority": maj[n]} if n in maj else {})}, "target": c["target_miou"],
                "disagreement_with_source_only": c.get("disagreement_with_source_only")}
            for n, c in sorted(cands.items())}})
    return out


def _pick(cands: dict, validator: str) -> str | None:
    have = {n: c for n, c in cands.items() if validator in c["scores"]}
    return max(have, key=lambda n: (have[n]["scores"][validator], n == REFERENCE)) if have else None


def few_labels(runs: list[dict], ks=FEW_LABELS, draws: int = 20, seed: int = 0) -> dict:
    """Selection by mIoU on k labelled test frames drawn at random (ties: source-only), its regret vs
    the best candidate, both measured on the test frames not drawn."""
    by = {}
    for r in runs:
        by.setdefault((r["target"], r["seed"]), {})[r["candidate"]] = r["_arrays"]
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        regrets = []
        for (_, _), cands in sorted(by.items()):
            names = sorted(cands, key=lambda n: (n != REFERENCE, n))
            n = len(cands[names[0]]["inter"])
            if k >= n:
                continue
            for _ in range(draws):
                drawn = np.zeros(n, bool)
                drawn[rng.choice(n, k, replace=False)] = True
                val = [miou(cands[m], drawn) for m in names]
                held = [miou(cands[m], ~drawn) for m in names]
                val = [-1.0 if np.isnan(v) else v for v in val]
                chosen = int(np.argmax(val))  # the first maximum: source-only wins ties
                regrets.append(max(held) - held[chosen])
        if regrets:
            out[str(k)] = {"mean_regret": float(np.mean(regrets)), "within_1_point": float(np.mean(np.array(regrets) <= 0.01)),
                           "draws": len(regrets)}
    return out


def summarise(recs: list[dict], runs: list[dict]) -> dict:
    recs = [r for r in recs if REFERENCE in r["candidates"]]
    if not recs:
        return {"runs": 0}
    methods = sorted({m for r in recs for m in r["candidates"]}, key=lambda m: (m != REFERENCE, m))
    per_target = {f"{r['target']} s{r['seed']}": {m: {"miou": c["target"], "gain": c["target"] - r["candidates"][REFERENCE]["target"]}
                                                  for m, c in r["candidates"].items()} for r in recs}
    per_method = {}
    for m in methods:
        g = [r["candidates"][m]["target"] - r["candidates"][REFERENCE]["target"] for r in recs if m in r["candidates"]]
        per_method[m] = {"miou": statistics.fmean(r["candidates"][m]["target"] for r in recs if m in r["candidates"]),
                         "gain": statistics.fmean(g), "below_source_only": sum(x < 0 for x in g), "runs": len(g)}
    validators = sorted({v for r in recs for c in r["candidates"].values() for v in c["scores"]})
    per_validator = {}
    for v in validators:
        picks, below, regret = [], 0, []
        for r in recs:
            c = r["candidates"]
            p = _pick(c, v)
            if p is None:
                continue
            picks.append(c[p]["target"])
            below += c[p]["target"] < c[REFERENCE]["target"]
            regret.append(max(x["target"] for x in c.values()) - c[p]["target"])
        if picks:
            per_validator[v] = {"miou": statistics.fmean(picks), "below_source_only": below, "regret": statistics.fmean(regret),
                                "max_regret": max(regret), "runs": len(picks)}
    rec = recommended_validator(per_validator, MAX_BELOW) if per_validator else None
    auto = None
    if rec:
        best = max(per_method, key=lambda m: per_method[m]["miou"])
        per = []
        for r in recs:
            p = _pick(r["candidates"], rec)
            c = r["candidates"]
            per.append({"target": r["target"], "seed": r["seed"], "pick": p, "miou": c[p]["target"],
                        "gain_vs_source_only": c[p]["target"] - c[REFERENCE]["target"]})
        auto = {"validator": rec, "miou": statistics.fmean(p["miou"] for p in per), "best_single_candidate": best,
                "best_single_miou": per_method[best]["miou"], "per_run": per,
                "worst_gain_vs_source_only": min(p["gain_vs_source_only"] for p in per)}
    return {"runs": len(recs), "targets": sorted({r["target"] for r in recs}), "per_target": per_target,
            "methods": per_method, "validators": per_validator,
            "oracle_miou": statistics.fmean(max(c["target"] for c in r["candidates"].values()) for r in recs),
            "recommended_validator": rec, "max_below_share": MAX_BELOW, "auto": auto, "few_labels": few_labels(runs)}


def table(s: dict, profile: str = "cpu") -> str:
    if not s.get("runs"):
        return "No dense shift runs stored yet (`python benchmarks/dense_shifts.py`)."
    methods = list(s["methods"])
    lines = [f"{s['runs']} runs ({len(s['targets'])} targets), each candidate started from the seed's source-only bundle "
             f"of its row (`benchmarks/dense.py`, profile {profile}); target test mIoU % over the classes labelled in the test "
             "split (labels read for this report only), gain vs `source_only@init` in points.", "",
             "| target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for t, row in s["per_target"].items():
        cells = [("–" if m not in row else f"{100 * row[m]['miou']:.1f}" + ("" if m == REFERENCE else f" ({100 * row[m]['gain']:+.1f})"))
                 for m in methods]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("| mean | " + " | ".join(f"{100 * s['methods'][m]['miou']:.1f}" + ("" if m == REFERENCE else
                 f" ({100 * s['methods'][m]['gain']:+.1f}, below on {s['methods'][m]['below_source_only']}/{s['methods'][m]['runs']})")
                 for m in methods) + " |")
    lines += ["", f"Picking one candidate per target by each validator (oracle: {100 * s['oracle_miou']:.1f} %):", "",
              "| validator | picked mIoU % | picks below source-only | mean regret (points) | worst regret |", "|---|---|---|---|---|"]
    for v, r in sorted(s["validators"].items(), key=lambda kv: kv[1]["regret"]):
        lines.append(f"| {v} | {100 * r['miou']:.1f} | {r['below_source_only']}/{r['runs']} | {100 * r['regret']:.1f} | "
                     f"{100 * r['max_regret']:.1f} |")
    a = s.get("auto")
    if a:
        lines += ["", f"Default validator for dense tasks (lowest mean regret among those whose pick is below source-only on "
                  f"at most 1 target in 8): `{a['validator']}`. With it, `--method auto` averages {100 * a['miou']:.1f} % vs "
                  f"{100 * a['best_single_miou']:.1f} % for the best single candidate (`{a['best_single_candidate']}`); worst "
                  f"target vs source-only: {100 * a['worst_gain_vs_source_only']:+.1f} points."]
        if a.get("without"):
            lines += ["", "Each candidate's worth in `--method auto` (left out, the default validator re-chosen by the same rule): "
                      + "; ".join(f"without `{m}` auto averages {100 * w['miou']:.1f} % ({100 * w['change']:+.1f}, `{w['validator']}`)"
                                  for m, w in a["without"].items()) + "."]
    sh = s.get("as_shipped")
    if sh:
        lines += ["", f"`edgeda train --method auto` as shipped (its own candidates: {', '.join(f'`{m}`' for m in sh['candidates'])}; "
                  f"ranked by `{sh['validator']}`): {100 * sh['miou']:.1f} % on average vs {100 * sh['best_single_miou']:.1f} % for "
                  f"its best single candidate (`{sh['best_single_candidate']}`) and {100 * sh['oracle_miou']:.1f} % for the best pick "
                  f"per target; below `{REFERENCE}` on {sh['below_source_only']} of {sh['runs']} targets. The default-validator "
                  f"rule applied to these candidates only picks `{sh['recommended_validator']}`."]
    if s.get("few_labels"):
        lines += ["", "Selection by mIoU on k labelled target test frames (`--target-val`; random draws, regret measured on "
                  "the test frames not drawn):", "", "| labelled frames | draws within 1 point of the best | mean regret (points) |",
                  "|---|---|---|"]
        for k, r in s["few_labels"].items():
            lines.append(f"| {k} | {100 * r['within_1_point']:.0f}% | {100 * r['mean_regret']:.1f} |")
    if s.get("left_out"):
        lines += ["", "Left out of this summary until run on every target (their stored runs are kept): " + ", ".join(
            f"`{c}` ({n} of {len(s['targets'])} targets)" for c, n in s["left_out"].items()) + "."]
    return "\n".join(lines)


def as_shipped(runs: list[dict]) -> dict | None:
    """What ``edgeda train --method auto`` ships on these targets: its own candidates only (``edgeda.auto``'s
    lists; ``majority`` recomputed over them), ranked by its default dense validator (its fallback where that
    cannot rank them), against the best of those candidates and against ``source_only@init``."""
    from edgeda import auto

    names = {auto.DENSE_REFERENCE, *(f"{m}@init" for m in auto.DENSE_AUTO_METHODS),
             *(f"source_only+{m}" for m in auto.DENSE_AUTO_ADAPT)}
    mine = [r for r in runs if r["candidate"] in names]
    recs = [r for r in records(mine) if REFERENCE in r["candidates"]]
    per = []
    for r in recs:
        c, v = r["candidates"], auto.DEFAULT_DENSE_SELECTOR
        if _pick(c, v) is None:
            v = auto.SELECTOR_FALLBACK.get(v, v)
        if (p := _pick(c, v)) is not None:
            per.append({"target": r["target"], "seed": r["seed"], "validator": v, "pick": p, "miou": c[p]["target"],
                        "gain_vs_source_only": c[p]["target"] - c[REFERENCE]["target"],
                        "best": max(x["target"] for x in c.values())})
    if not per:
        return None
    present = sorted({m for r in recs for m in r["candidates"]})
    means = {m: statistics.fmean(r["candidates"][m]["target"] for r in recs if m in r["candidates"]) for m in present}
    best = max(means, key=means.get)
    # the suite's rule applied to the candidates auto ranks: what its default validator should be
    rule = summarise(recs, mine).get("recommended_validator")
    return {"candidates": present, "validator": auto.DEFAULT_DENSE_SELECTOR, "recommended_validator": rule,
            "miou": statistics.fmean(p["miou"] for p in per),
            "best_single_candidate": best, "best_single_miou": means[best], "oracle_miou": statistics.fmean(p["best"] for p in per),
            "below_source_only": sum(p["gain_vs_source_only"] < 0 for p in per), "runs": len(per), "per_run": per}


def complete_candidates(runs: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """The runs of the candidates stored on every (target, seed) the reference is, and ``{candidate: number
    of targets}`` of those left out (a candidate still being run would otherwise change the pool target by
    target: the validators' picks and ``majority``'s vote compare candidates on each target)."""
    cells = {(r["target"], r["seed"]) for r in runs if r["candidate"] == REFERENCE}
    have = {}
    for r in runs:
        have.setdefault(r["candidate"], set()).add((r["target"], r["seed"]))
    partial = {c: len({t for t, _ in got}) for c, got in have.items() if not cells <= got}
    return [r for r in runs if r["candidate"] not in partial], partial


def summarise_suite(runs: list[dict]) -> tuple[dict, list[dict]]:
    """:func:`summarise` over every candidate run on every target (:func:`complete_candidates`; the others
    are named under ``left_out``), plus whether each candidate is worth its cost in ``--method
    auto``: ``without[m]`` re-runs the summary with ``m`` left out (``majority`` recomputed over the
    remaining class maps, the default validator re-chosen by the same rule) and records what auto then
    averages. A candidate earns its training run when leaving it out lowers auto's mean mIoU."""
    runs, partial = complete_candidates(runs)
    recs = records(runs)
    s = summarise(recs, runs)
    if partial:
        s["left_out"] = dict(sorted(partial.items()))
    if s.get("auto"):
        without = {}
        for m in s["methods"]:
            if m == REFERENCE or len(s["methods"]) < 3:
                continue
            rest = [r for r in runs if r["candidate"] != m]
            a = summarise(records(rest), rest).get("auto")
            if a:
                without[m] = {"validator": a["validator"], "miou": a["miou"], "change": a["miou"] - s["auto"]["miou"]}
        s["auto"]["without"] = without
    s["as_shipped"] = as_shipped(runs)
    return s, recs


def write_summary(results: Path, profile: str, summary_path: Path, readme: bool) -> dict:
    with _lock(_lock_path(results, "summary"), wait=True):
        runs = load_runs(results, profile)
        s, recs = summarise_suite(runs)
        md = table(s, profile)
        with _atomic(summary_path) as tmp:
            Path(tmp).write_text(json.dumps({"summary": s, "records": recs, "profile": profile, "table": md,
                                             "date": dt.date.today().isoformat()}, indent=1) + "\n")
        if readme:
            replace_block("dense-shifts-table", md)
    return {"summary": s, "records": recs, "table": md}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", help=f"comma-separated (default: all of {', '.join(TARGETS)})")
    ap.add_argument("--candidates", help=f"comma-separated NAME@init or source_only+NAME (default: {','.join(CANDIDATES)})")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 targets, 2 candidates (a smoke test)")
    ap.add_argument("--results", type=Path, help="where runs are stored (default benchmarks/results/dense_shifts)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--no-summary", action="store_true",
                    help="store the runs only (several processes sharing a target list: let the last one summarise)")
    args = ap.parse_args(argv)
    profile = "quick" if args.quick else "cpu"
    results = results_dir(args.results, args.quick)
    targets = args.targets.split(",") if args.targets else list(QUICK["targets"] if args.quick else TARGETS)
    cands = args.candidates.split(",") if args.candidates else list(QUICK["candidates"] if args.quick else CANDIDATES)
    unknown = [t for t in targets if t not in {**TARGETS, **EXTRA_TARGETS}]
    if unknown:
        raise SystemExit(f"unknown targets {', '.join(unknown)}; known: {', '.join({**TARGETS, **EXTRA_TARGETS})}")
    if not args.summary_only:
        from edgeda.adapt import ADAPT_METHODS
        from edgeda.methods.registry import METHODS

        missing = [c for c in cands if (c.partition("@")[0] not in METHODS if source_free(c) is None
                                        else source_free(c) not in ADAPT_METHODS)]
        if missing:
            raise SystemExit(f"no method {', '.join(missing)} here; training methods: {', '.join(METHODS)} "
                             f"(as NAME@init); on-device methods: {', '.join(ADAPT_METHODS)} (as source_only+NAME)")
        todo = [(t, c, int(s)) for s in args.seeds.split(",") for t in targets for c in cands]
        t0 = time.perf_counter()
        for i, (t, c, s) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}, {time.perf_counter() - t0:.0f}s] {t} {c} seed {s}", flush=True)
            run_one(profile, t, c, s, results)
    if args.no_summary:
        print("runs stored; summary left to `--summary-only`", flush=True)
        return {}
    summary_path = results.parent / "dense_shifts.json"
    out = write_summary(results, profile, summary_path, readme=not args.quick and args.results is None)
    print(out["table"])
    if out["summary"].get("recommended_validator"):
        print(f"default dense validator: {out['summary']['recommended_validator']}")
    print(f"summary written to {summary_path}")
    return out


if __name__ == "__main__":
    main()
