"""How well each label-free validator picks checkpoints, judged against the hidden target accuracy.

    python benchmarks/selection.py [--profile cpu]

Reads every run in ``benchmarks/results/adaptation/<profile>/*.json`` (written by
``benchmarks/adaptation.py``; each run's ``history`` holds ``score/<validator>`` and
``target_test_acc`` at every evaluation) and, per validator:

* **within a run**: the checkpoint it picks (the trainer's own ``select_checkpoint``: highest
  score, later iteration on ties) versus the best checkpoint of that run in target accuracy
  (the oracle, which needs target labels): mean target accuracy of the pick, mean regret in
  points, how often it picks the best one, and the Spearman rank correlation between score and
  target accuracy over the run's checkpoints;
* **across runs**: per seed, the pick among every checkpoint of every method (choosing method
  and checkpoint at once), versus the oracle over the same pool.

``last`` (always ship the end of training) is the reference row. Writes
``benchmarks/results/selection.json`` and the README block between the ``selection-table`` markers.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_tables import replace_block  # noqa: E402

from edgeda.training.trainer import select_checkpoint  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def ranks(xs: list[float]) -> list[float]:
    """Ranks 1..n, ties get their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def evaluated(history: list[dict]) -> list[dict]:
    return [h for h in history if "target_test_acc" in h]


def pick(selector: str, history: list[dict]) -> dict:
    """The evaluation record the trainer would ship under ``selector``."""
    it = select_checkpoint(selector, history)
    return history[-1] if it is None else next(h for h in history if h["iteration"] == it)


def within_runs(runs: list[dict], selector: str) -> dict | None:
    picked, oracle, rhos, hits, n = [], [], [], 0, 0
    for r in runs:
        hist = evaluated(r["history"])
        if not hist or (selector != "last" and not any(f"score/{selector}" in h for h in hist)):
            continue
        hist = [h for h in hist if selector == "last" or f"score/{selector}" in h]
        chosen = pick(selector, hist)
        best = max(h["target_test_acc"] for h in hist)
        picked.append(chosen["target_test_acc"])
        oracle.append(best)
        hits += chosen["target_test_acc"] == best
        n += 1
        if selector != "last":
            rho = spearman([h[f"score/{selector}"] for h in hist], [h["target_test_acc"] for h in hist])
            if rho is not None:
                rhos.append(rho)
    if not n:
        return None
    return {
        "runs": n,
        "picked_target_acc": statistics.fmean(picked),
        "oracle_target_acc": statistics.fmean(oracle),
        "regret_points": round(100 * (statistics.fmean(oracle) - statistics.fmean(picked)), 2),
        "picks_best_fraction": hits / n,
        "spearman_mean": statistics.fmean(rhos) if rhos else None,
        "spearman_runs": len(rhos),
    }


def across_runs(runs: list[dict], selector: str) -> dict | None:
    """Per seed, pick among all checkpoints of all methods (method + checkpoint selection)."""
    by_seed: dict[int, list[dict]] = {}
    for r in runs:
        for h in evaluated(r["history"]):
            if selector == "last":
                if h is r["history"][-1]:
                    by_seed.setdefault(r["seed"], []).append({**h, "score/last": 0.0, "method": r["method"]})
            elif f"score/{selector}" in h:
                by_seed.setdefault(r["seed"], []).append({**h, "method": r["method"]})
    if not by_seed:
        return None
    picked, oracle, methods = [], [], []
    for seed, pool in sorted(by_seed.items()):
        if selector == "last":  # no label-free way to choose among methods: report their mean
            picked.append(statistics.fmean(h["target_test_acc"] for h in pool))
        else:
            chosen = max(pool, key=lambda h: h[f"score/{selector}"])
            picked.append(chosen["target_test_acc"])
            methods.append(f"{chosen['method']}@{chosen['iteration']}")
        oracle.append(max(h["target_test_acc"] for h in pool))
    return {"seeds": sorted(by_seed), "picked_target_acc": statistics.fmean(picked),
            "oracle_target_acc": statistics.fmean(oracle), "picks": methods}


def summarise(profile: str) -> dict:
    from adaptation import is_current
    from candidates import TABLE_SEEDS

    runs = [r for f in sorted((RESULTS / "adaptation" / profile).glob("*.json"))
            if (r := json.loads(f.read_text()))["seed"] in TABLE_SEEDS and is_current(r, profile)]  # the table's runs
    names = sorted({k[len("score/"):] for r in runs for h in r["history"] for k in h if k.startswith("score/")})
    rows = {}
    for sel in ["last", *names]:
        w = within_runs(runs, sel)
        if w is not None:
            rows[sel] = {"within_run": w, "across_runs": across_runs(runs, sel)}
    return {"profile": profile, "runs": len(runs), "methods": sorted({r["method"] for r in runs}),
            "evaluations_per_run": statistics.fmean(len(evaluated(r["history"])) for r in runs) if runs else 0,
            "validators": rows, "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def markdown(summary: dict) -> str:
    rows = summary["validators"]
    if not rows:
        return "_no runs yet_"
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"{summary['runs']} runs ({', '.join(summary['methods'])}), profile `{summary['profile']}`, "
        f"{summary['evaluations_per_run']:.0f} evaluations per run. Within a run: target accuracy of the "
        "checkpoint each validator picks vs the best checkpoint (oracle, needs target labels), and the "
        "Spearman correlation of score with target accuracy over checkpoints. Across runs: per seed, "
        "the pick among all checkpoints of all methods (`last`: mean over methods).",
        "",
        "| validator | picked target acc % | oracle % | regret (points) | picks best | Spearman ρ | across runs: picked % | across runs: oracle % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        w, a = r["within_run"], r["across_runs"] or {}
        rho = "–" if w["spearman_mean"] is None else f"{w['spearman_mean']:+.2f}"
        lines.append(
            f"| {name} | {pct(w['picked_target_acc'])} | {pct(w['oracle_target_acc'])} | {w['regret_points']:.1f} | "
            f"{w['picks_best_fraction']:.0%} | {rho} | {pct(a.get('picked_target_acc'))} | {pct(a.get('oracle_target_acc'))} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args(argv)
    summary = summarise(args.profile)
    (RESULTS / "selection.json").write_text(json.dumps(summary, indent=1) + "\n")
    replace_block("selection-table", markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
