"""Label-free selection among detectors: what ``edgeda train --method auto --task detection`` ships.

For each detection row and seed of ``benchmarks/detection.py`` (cpu profile), the candidates that
``--method auto`` trains for detection (``edgeda.tasks.Task.auto_methods``): ``source_only@init``
(source-only training continued as long, the reference), ``mean_teacher@init`` and ``dann@init``, each
the stored benchmark run (its bundle on this machine, checked against the stored record's target test
mAP; ``--train`` trains the missing ones with ``detection.py``'s config). Every candidate is scored by
every validator on the same target adaptation images (:func:`edgeda.auto.score_candidates_on`: for
detectors ``majority`` and ``agreement`` compare boxes, see :func:`edgeda.training.validators.box_agreement`;
``source_val`` is the source validation mAP), and each validator's pick is reported with its target
test mAP@.5 (from the stored run), its gain over ``source_only@init`` and its regret against the best
candidate. ``auto`` is the pick ``--method auto`` makes: the detection task's ``auto_selector``, or its
fallback where a row has too few candidates; per row, auto's mean over the seeds is set against its best
single candidate's. Target labels are read for this report only.

    python benchmarks/detection_selection.py [--rows syn_det,digits_det] [--seeds 0,1,2] [--train] [--table-only]

A call scores the rows and seeds it is given whose candidates' bundles are on this machine; every other
(row, seed) keeps its stored record.
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

import detection  # noqa: E402
from readme_tables import replace_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "detection_selection.json"
PROFILE = "cpu"
REFERENCE = "source_only@init"
VALIDATORS = ("majority", "agreement", "source_val")


def candidates() -> list[str]:
    from edgeda.tasks import task_of

    return [REFERENCE, *(f"{m}@init" for m in task_of("detection").auto_methods)]


def stored_run(row: str, cand: str, seed: int, train: bool) -> dict | None:
    """The stored run of ``cand`` whose bundle is on this machine (the same weights: its manifest's target
    test mAP is the record's), training it first with ``train``; None when there is none."""
    path = RESULTS / "detection" / PROFILE / f"{detection.run_tag(row, cand, seed)}.json"
    if not path.is_file() and not train:
        return None
    rec = json.loads(path.read_text()) if path.is_file() else detection.run_one(PROFILE, row, seed, False, cand)
    man = Path(rec["bundle"]) / "manifest.json"
    if not man.is_file():
        return None
    got = json.loads(man.read_text()).get("metrics", {}).get("target_test_map")
    if got is None or rec["target_test"]["map"] is None or abs(got - rec["target_test"]["map"]) > 1e-9:
        return None
    return rec


def score_row(row: str, seed: int, train: bool) -> dict | None:
    import torch

    from edgeda.auto import score_candidates_on
    from edgeda.config import make_config
    from edgeda.training.domains import load_domains

    runs = {c: stored_run(row, c, seed, train) for c in candidates()}
    missing = [c for c, r in runs.items() if r is None]
    runs = {c: r for c, r in runs.items() if r is not None}
    if REFERENCE not in runs or len(runs) < 2:
        print(f"{row} seed {seed}: too few candidates here (missing {', '.join(missing)}); skipped", flush=True)
        return None
    torch.set_num_threads(1)
    cfg = {**detection.run_config(PROFILE, row, seed, False), "out": str(ROOT / "unused")}
    domains = load_domains(make_config(None, cfg), True)
    rec = score_candidates_on({c: r["bundle"] for c, r in runs.items()}, domains, REFERENCE, "cpu", seed,
                              target_test=False, hflip=cfg.get("augment_hflip", True))
    map50 = {c: r["target_test"]["map50"] for c, r in runs.items()}
    scores = {c: rec[c]["scores"] for c in runs}
    picks = {}
    for v in VALIDATORS:
        if not any(v in s for s in scores.values()):
            continue
        pick = max(runs, key=lambda c: (scores[c].get(v, float("-inf")), c == REFERENCE))
        picks[v] = {"validator": v, "pick": pick, "map50": map50[pick]}
    rec = with_auto({"row": row, "seed": seed, "candidates": list(runs), "missing": missing, "target_map50": map50,
                     "scores": scores, "picks": picks})
    print(f"{row} seed {seed}: " + ", ".join(f"{v} -> {p['pick']}" for v, p in rec["picks"].items()), flush=True)
    return rec


def with_auto(record: dict) -> dict:
    """``record`` with its ``auto`` pick made again by the current default (the task's ``auto_selector`` or
    its fallback): stored records keep every validator's pick, so a changed default needs no rescoring."""
    from edgeda.auto import SELECTOR_FALLBACK
    from edgeda.tasks import task_of

    name = task_of("detection").auto_selector
    while name not in record["picks"] and name in SELECTOR_FALLBACK:
        name = SELECTOR_FALLBACK[name]
    if name in record["picks"]:
        record["picks"]["auto"] = dict(record["picks"][name])
    return record


def summarise(records: list[dict]) -> dict:
    out = {}
    for v in (*VALIDATORS, "auto"):
        gains, regrets, below = [], [], 0
        for r in records:
            if v not in r["picks"]:
                continue
            got, ref, best = r["picks"][v]["map50"], r["target_map50"][REFERENCE], max(r["target_map50"].values())
            gains.append(100 * (got - ref))
            regrets.append(100 * (best - got))
            below += got < ref - 0.005  # more than half a point below continued source-only training
        if gains:
            out[v] = {"runs": len(gains), "mean_gain": statistics.fmean(gains), "mean_regret": statistics.fmean(regrets),
                      "below_source_only": below}
    return out


def best_single(records: list[dict]) -> dict:
    """Per row, each candidate's mean target mAP@.5 over the seeds and ``auto``'s, in points: what ``--method auto``
    is judged against (the dense suite's target: within 1 point of its best single candidate on average)."""
    out = {}
    for row in dict.fromkeys(r["row"] for r in records):
        recs = [r for r in records if r["row"] == row]
        cands = {c: statistics.fmean(100 * r["target_map50"][c] for r in recs) for c in recs[0]["target_map50"]
                 if all(c in r["target_map50"] for r in recs)}
        best = max(cands, key=cands.get)
        auto = statistics.fmean(100 * r["picks"]["auto"]["map50"] for r in recs)
        out[row] = {"candidates": cands, "best_single": best, "auto": auto, "auto_minus_best": auto - cands[best]}
    return out


def markdown(res: dict) -> str:
    lines = [
        "Label-free selection among the detectors `--method auto` trains (`source_only@init`, "
        "`mean_teacher@init`, `dann@init`; the stored cpu-profile runs of the detection table), scored on "
        "the first 256 target adaptation images; target test mAP@.5 % of each validator's pick (labels read "
        f"for this report only). Machine: {res['machine']}, {res['date']}.",
        "",
        "| row | seed | candidates (mAP@.5 %) | majority | agreement | source_val | auto |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["records"]:
        cands = ", ".join(f"{c} {100 * m:.1f}" for c, m in r["target_map50"].items())
        cells = []
        for v in (*VALIDATORS, "auto"):
            p = r["picks"].get(v)
            cells.append("–" if p is None else f"{p['pick']}" + (f" ({p['validator']})" if v == "auto" else ""))
        lines.append(f"| {r['row']} | {r['seed']} | {cands} | " + " | ".join(cells) + " |")
    lines += ["", "| validator | runs | mean gain vs source_only@init (mAP@.5 points) | mean regret | picks > 0.5 point below source_only@init |",
              "|---|---|---|---|---|"]
    for v, s in res["summary"].items():
        lines.append(f"| {v} | {s['runs']} | {s['mean_gain']:+.2f} | {s['mean_regret']:.2f} | {s['below_source_only']} |")
    for row, b in res.get("best_single", {}).items():
        lines += ["", f"{row}: auto {b['auto']:.1f} % mAP@.5 on average over the seeds vs {b['candidates'][b['best_single']]:.1f} % "
                  f"for its best single candidate (`{b['best_single']}`; " + ", ".join(
                      f"{c} {m:.1f}" for c, m in b["candidates"].items()) + f"): {b['auto_minus_best']:+.1f} points."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="syn_det,digits_det")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", action="store_true", help="train candidates whose stored run is missing here")
    ap.add_argument("--table-only", action="store_true", help="rewrite the README table from the stored JSON")
    args = ap.parse_args(argv)
    if args.table_only:  # the summaries again from the stored records
        res = json.loads(OUT.read_text())
        res["records"] = [with_auto(r) for r in res["records"]]
        res.update(summary=summarise(res["records"]), best_single=best_single(res["records"]))
        OUT.write_text(json.dumps(res, indent=1) + "\n")
    else:
        from edgeda.utils import machine_info

        new = {(r["row"], r["seed"]): r for row in args.rows.split(",") for s in args.seeds.split(",")
               if (r := score_row(row, int(s), args.train)) is not None}
        # a (row, seed) not scored this time (not asked, or its bundles are not on this machine) keeps its stored record
        old = json.loads(OUT.read_text())["records"] if OUT.is_file() else []
        records = [with_auto(new.pop((r["row"], r["seed"]), r)) for r in old] + list(new.values())
        res = {"date": dt.date.today().isoformat(), "machine": machine_info()["cpu"], "records": records,
               "summary": summarise(records), "best_single": best_single(records)}
        OUT.write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    replace_block("detection-selection-table", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
