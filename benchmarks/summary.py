"""The results summary heading benchmarks/README.md: one short table per task, from the benchmark JSONs.

    python benchmarks/summary.py

Reads ``benchmarks/results/adaptation.json`` (classification, source-using methods),
``adapt.json`` (on-device, source-free), ``dense.json`` (segmentation and depth) and
``detection.json`` (detection), and writes the block between the ``results-summary`` markers of
``benchmarks/README.md`` (the top-level README links to it): per task, source-only (with the target-trained upper bound where one is stored) and the few
best rows by the task's headline metric. Every row, the machines, budgets and how each number is
produced are in the sections below it; how the benchmark settings were chosen, in
``benchmarks/DECISIONS.md``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_tables import METRIC_LABELS, replace_block  # noqa: E402
from edgeda.tasks import task_of  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BEST = 2  # trained rows shown per pair next to source-only (classification: BEST + 2 over both kinds)
HEAD = ["| pair | method | target {metric} | vs source-only | target-trained upper bound | seeds |",
        "|---|---|---|---|---|---|"]
# Row names of the on-device (adapt.json) and detection (detection.json) benchmarks
DENSE_PAIRS = {"digits_seg": "digitscenes -> handwritten-scenes", "syn_seg": "synscenes -> synscenes:photo"}
DET_PAIRS = {"digits_det": "digitscenes -> handwritten-scenes", "syn_det": "synscenes -> synscenes:photo"}


def _load(name: str) -> dict:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else {}


def _head(metric: str) -> list[str]:
    return [HEAD[0].format(metric=metric), HEAD[1]]


def _row(pair: str, method: str, value: str, gain: str = "", upper: str = "", seeds: int | str = "") -> str:
    return f"| {pair} | {method} | {value} | {gain} | {upper} | {seeds} |"


def _is_source_only(method: str) -> bool:
    return method.split("@")[0] == "source_only"


def classification() -> list[str]:
    a, d = _load("adaptation.json"), _load("adapt.json")
    rows = a.get("rows", {})
    if "source_only" not in rows:
        return []
    pair = f"{a['pair']['source']} -> {a['pair']['target']}"
    so = rows["source_only"]
    base = so["target_test_acc"]["mean"]
    cands = [(r["target_test_acc"]["mean"], m, r["target_test_acc"]["mean"] - base, len(r["seeds"]), "")
             for m, r in rows.items() if m != "source_only"]
    cands += [(r["accuracy_after"]["mean"], f"{m} (`edgeda adapt`)",
               r["accuracy_after"]["mean"] - r["accuracy_before"]["mean"], len(r["seeds"]), " vs shipped")
              for m, r in d.get("rows", {}).items() if "accuracy_after" in r]
    lines = [f"**Classification** (profile `{a['profile']}`, target accuracy %; `edgeda adapt` rows: source-free, "
             "from the source-only bundle, gain against it):", "", *_head("acc %"),
             _row(pair, "source_only", f"{100 * base:.1f}", seeds=len(so["seeds"]))]
    for acc, m, gain, n, vs in sorted(cands, reverse=True)[:BEST + 2]:
        lines.append(_row(pair, m, f"{100 * acc:.1f}", f"{100 * gain:+.1f}{vs}", seeds=n))
    return lines


def _pair_name(r: dict, rows: dict, task: str) -> str:
    shared = [x["pair"] for x in rows.values() if x["task"] == task and len(x["methods"]) > 1]
    if shared.count(r["pair"]) == 1:
        return r["pair"]
    kw = r["config"].get("backbone_kwargs", {})  # two models on one pair: name the model
    return f"{r['pair']} ({r['config']['backbone']}{' ' + str(kw['variant']) if 'variant' in kw else ''})"


def dense(task: str) -> list[str]:
    rows = _load("dense.json").get("profiles", {}).get("cpu", {})
    device = _load("adapt.json").get("dense", {}) if task == "segmentation" else {}
    out, head = [], None
    for key, r in rows.items():
        if r["task"] != task or len(r["methods"]) < 2:  # a source-only row alone shows no adaptation
            continue
        pair = _pair_name(r, rows, task)
        head = next(iter(r["methods"]["source_only"]["target"]))
        lower = not task_of(task).higher_is_better  # an error (abs rel): printed as is, lower is better
        pct = not lower

        def fmt(v, signed=False):
            return (f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}") if pct else (f"{v:+.3f}" if signed else f"{v:.3f}")

        so = r["methods"]["source_only"]
        up = r["upper"][head][0] if r.get("upper") else None
        out.append(_row(pair, "source_only", fmt(so["target"][head][0]), upper="" if up is None else fmt(up),
                        seeds=len(so["seeds"])))
        if "source_only@init" in r["methods"]:
            s = r["methods"]["source_only@init"]
            out.append(_row(pair, "source_only@init", fmt(s["target"][head][0]), seeds=len(s["seeds"])))
        most = max(len(s["seeds"]) for s in r["methods"].values())
        cands = [(s["target"][head][0], m, s) for m, s in r["methods"].items()
                 if not _is_source_only(m) and len(s["seeds"]) >= min(3, most)]
        for v, m, s in sorted(cands, reverse=not lower)[:BEST]:
            g = s["gain_vs_source_only"][0]
            # a row without source_only@init pairs its @init runs with plain source_only: say so
            vs = " vs source_only" if m.endswith("@init") and "source_only@init" not in r["methods"] else ""
            out.append(_row(pair, m, fmt(v), "" if g is None else fmt(g, True) + vs, seeds=len(s["seeds"])))
        dev = [(s["miou_after"]["mean"], m, s) for m, s in device.get(key, {}).get("methods", {}).items()]
        if dev:  # the best source-free adaptation of the seed's source-only bundle, on the device
            v, m, s = max(dev)
            out.append(_row(pair, f"{m} (`edgeda adapt`)", fmt(v), f"{s['gain_points']['mean']:+.1f} vs shipped",
                            seeds=len(s["seeds"])))
    if not out:
        return []
    name = METRIC_LABELS[head]
    return [f"**{task.capitalize()}** (profile `cpu`, {name}; `NAME@init`: started from the seed's source-only "
            "bundle, gain against `source_only@init`, source-only training continued as long"
            + ("; `edgeda adapt` rows: source-free, gain against the shipped source-only bundle" if device else "")
            + "):", "", *_head(name), *out]


def detection() -> list[str]:
    rows = _load("detection.json").get("cpu", {}).get("rows", {})
    out = []
    for key, r in rows.items():
        if "source_only" not in r:
            continue
        pair, so = DET_PAIRS.get(key, key), r["source_only"]
        up = r.get("upper", {}).get("map50", {}).get("mean")
        out.append(_row(pair, "source_only", f"{100 * so['map50']['mean']:.1f}",
                        upper="" if up is None else f"{100 * up:.1f}", seeds=len(so["seeds"])))
        cont = [(s["map50"]["mean"], m, s) for m, s in r.items() if m == "source_only@init"]
        cands = [(s["map50"]["mean"], m, s) for m, s in r.items() if m not in ("source_only", "upper", "source_only@init")]
        for v, m, s in cont + sorted(cands, reverse=True)[:BEST]:
            g = s["map50"]["gain_over_source_only"]
            out.append(_row(pair, m, f"{100 * v:.1f}", "" if g is None else f"{100 * g:+.1f}", seeds=len(s["seeds"])))
    if not out:
        return []
    at_init = any(m.endswith("@init") for r in rows.values() for m in r)
    return ["**Detection** (profile `cpu`, COCO mAP@.5 % on the target test split"
            + ("; `NAME@init`: started from the seed's source-only bundle, gain against `source_only@init`" if at_init else "")
            + "):", "", *_head("mAP@.5 %"), *out]


def main() -> None:
    blocks = [b for b in (classification(), dense("segmentation"), dense("depth"), detection()) if b]
    md = "\n\n".join("\n".join(b) for b in blocks) if blocks else "No benchmark results stored yet."
    md += ("\n\nEvery row, the budgets, the machines and how each number is produced: the sections below; how "
           "the benchmark settings were chosen: [DECISIONS.md](DECISIONS.md).")
    print(md)
    replace_block("results-summary", md)


if __name__ == "__main__":
    main()
