"""The README's results summary: one small table per task, from the benchmark JSONs.

    python benchmarks/summary.py

Reads ``benchmarks/results/adaptation.json`` (classification, source-using methods),
``adapt.json`` (on-device, source-free), ``shifts.json`` (the shift suite) and ``dense.json``
(segmentation and depth) and writes the block between the ``results-summary`` markers of the
README. The full tables, how each number is produced and the selection rule are in
``benchmarks/README.md``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_tables import METRIC_LABELS, replace_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else {}


def classification() -> list[str]:
    a, d = _load("adaptation.json"), _load("adapt.json")
    rows = a.get("rows", {})
    if "source_only" not in rows:
        return []
    base = rows["source_only"]["target_test_acc"]["mean"]
    best = sorted((r["target_test_acc"]["mean"], m) for m, r in rows.items() if m != "source_only")[::-1]
    lines = [f"**Classification**, {a['pair']['source']} -> {a['pair']['target']} (real handwritten digits), "
             f"profile `{a['profile']}`, mean of {len(rows['source_only']['seeds'])} seeds, target accuracy %:", "",
             "| | target acc % | vs source-only |", "|---|---|---|",
             f"| source-only | {100 * base:.1f} | |"]
    for acc, m in best[:3]:
        lines.append(f"| {m} (training, source + target) | {100 * acc:.1f} | {100 * (acc - base):+.1f} |")
    for m, r in sorted(d.get("rows", {}).items()):
        if "accuracy_after" in r:
            lines.append(f"| {m} (on the device, from the source-only bundle) | {100 * r['accuracy_after']['mean']:.1f} | "
                         f"{100 * (r['accuracy_after']['mean'] - r['accuracy_before']['mean']):+.1f} vs the shipped model |")
    s = _load("shifts.json").get("summary")
    if s:
        a = s["auto"]
        lines += ["", f"Shift suite ({s['runs']} real-digit targets under capture conditions): `--method auto` with "
                  f"`{s['recommended_validator']}` {100 * a['acc']:.1f} % on average vs source-only "
                  f"{100 * s['methods']['source_only']['acc']:.1f} %, worst target "
                  f"{100 * a['worst_gain_vs_source_only']:+.1f} points vs source-only."]
    return lines


def dense(task: str) -> list[str]:
    rows = _load("dense.json").get("profiles", {}).get("cpu", {})
    out, head = [], None
    shared = [r["pair"] for r in rows.values() if r["task"] == task]
    for r in rows.values():
        if r["task"] != task:
            continue
        kw = r["config"].get("backbone_kwargs", {})
        pair = r["pair"] if shared.count(r["pair"]) == 1 else (  # two models on one pair: name the model
            f"{r['pair']} ({r['config']['backbone']}{' ' + str(kw['variant']) if 'variant' in kw else ''})")
        for m, s in r["methods"].items():
            head = next(iter(s["target"]))
            v, g = s["target"][head], s["gain_vs_source_only"]
            pct = head != "abs_rel"
            val = f"{100 * v[0]:.1f}" if pct else f"{v[0]:.3f}"
            gain = "" if m == "source_only" or g[0] is None else (f"{100 * g[0]:+.1f}" if pct else f"{g[0]:+.3f}")
            up = r["upper"][head][0] if r.get("upper") and m == "source_only" else None
            upper = "" if up is None else (f"{100 * up:.1f}" if pct else f"{up:.3f}")
            out.append(f"| {pair} | {m} | {val} | {gain} | {upper} | {len(s['seeds'])} |")
    if not out:
        return []
    name = METRIC_LABELS[head]  # the task's headline metric
    init = any(m.endswith("@init") for r in rows.values() if r["task"] == task for m in r["methods"])
    return [f"**{task.capitalize()}**, profile `cpu` (small models and images on 2 CPU cores), {name}"
            + (" (`NAME@init`: started from the seed's source-only bundle, compared with `source_only@init`, "
               "source-only training continued as long, on the same machine and seed)" if init else "") + ":", "",
            f"| pair | method | target {name} | vs source-only | target-trained upper bound | seeds |",
            "|---|---|---|---|---|---|", *out]


def dense_adapt() -> list[str]:
    """On-device, source-free adaptation of the seed's source-only segmentation bundle (``adapt.json``)."""
    pairs = {"digits_seg": "digitscenes -> handwritten-scenes", "syn_seg": "synscenes -> synscenes:photo"}
    out = []
    for row, r in _load("adapt.json").get("dense", {}).items():
        if not isinstance(r, dict):
            continue
        for m, s in r.get("methods", {}).items():
            out.append(f"| {pairs.get(row, row)} | {m} | {100 * s['miou_before']['mean']:.1f} | {100 * s['miou_after']['mean']:.1f} | "
                       f"{s['gain_points']['mean']:+.1f} | {len(s['seeds'])} |")
    if not out:
        return []
    return ["**Segmentation on the device** (`edgeda adapt`, no source data, from the source-only bundle; "
            "`--minutes 10 --memory-mb 2048`, 1 thread), mIoU %:", "",
            "| pair | method | shipped | adapted | gain | seeds |", "|---|---|---|---|---|---|", *out]


def main() -> None:
    blocks = [b for b in (classification(), dense("segmentation"), dense_adapt(), dense("depth")) if b]
    md = "\n\n".join("\n".join(b) for b in blocks) if blocks else "No benchmark results stored yet."
    md += "\n\nFull tables, the machines, how each number is produced and the selection rule: [benchmarks/README.md](benchmarks/README.md)."
    print(md)
    replace_block("results-summary", md)


if __name__ == "__main__":
    main()
