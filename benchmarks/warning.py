"""Calibrating the transfer warning of ``--method auto`` on the stored shift-suite runs.

    python benchmarks/warning.py [--records PATH ...]

Reads runs as records ``{target, seed, candidates: {name: {scores: {validator: value}, target: float}}}``
(the classification shift suite stores ``target_test`` where this says ``target``; both are read): by
default every ``benchmarks/results/shifts/*.json`` and, where present, the dense shift suite's
``benchmarks/results/dense_shifts/*.json`` (or a ``dense_shifts.json`` holding a list of records). In
each run the reference is ``source_only@init`` where present, else ``source_only``.

Every other candidate of a run is a pick some selector could ship. For each rule of
:data:`edgeda.trust.WARNING_RULES` (label-free: it reads only the pick's and the reference's validator
scores and their disagreement), this counts how often it fires on picks below the reference by more
than 1 point of the target score, within 1 point, and above it by more than 1 point (and by more than
5 points), over all candidates and over the picks of each validator. Target scores are read to measure
the rules, never by a rule. The recommended rule has the largest gap between its fire rate below and
above (Youden's J), among rules that fire on picks below more often than on picks above; ties go to
the rule with more checks that fire on these runs (a check that adds no fire here still covers failures
they lack, such as a class swap, which only ``agreement`` can see), then to fewer checks that never fire. Results go to
``benchmarks/results/warning.json`` and the README block between the ``warning-table`` markers;
each task's ``Task.warning_rule`` is set by hand from its own suite's recommendation (``per_suite``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_tables import replace_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SOURCES = (RESULTS / "shifts", RESULTS / "dense_shifts", RESULTS / "dense_shifts.json")
REFERENCES = ("source_only@init", "source_only")
NEUTRAL = 0.01  # gains within 1 point count as neither below nor above
CLEAR = 0.05
SUITE_TASKS = {"shifts": "classification", "dense_shifts": "segmentation"}  # the task of each suite's runs


def _records_of(obj) -> list[dict]:
    if isinstance(obj, list):
        return [r for r in obj if isinstance(r, dict) and "candidates" in r]
    if isinstance(obj, dict):
        if "candidates" in obj:
            return [obj]
        for key in ("records", "runs"):
            if isinstance(obj.get(key), list):
                return _records_of(obj[key])
    return []


def load_records(paths) -> list[dict]:
    """Records from files (one record, a list, or a dict with ``records``/``runs``) and folders of them;
    ``suite`` is set to the file or folder name, and each candidate's ``target`` from ``target_test``
    where the suite stores that name."""
    out = []
    for p in map(Path, paths):
        files = sorted(p.glob("*.json")) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            for r in _records_of(json.loads(f.read_text())):
                cands = {}
                for name, c in r["candidates"].items():
                    t = c.get("target", c.get("target_test"))
                    if t is not None and isinstance(c.get("scores"), dict):
                        cands[name] = {**c, "target": float(t)}
                out.append({**r, "candidates": cands, "suite": p.stem})
    return out


def reference_of(record: dict) -> str | None:
    return next((n for n in REFERENCES if n in record["candidates"]), None)


def pick_pairs(records: list[dict], selector: str | None = None) -> list[dict]:
    """(pick, reference) pairs: every non-reference candidate, or with ``selector`` the candidate it ranks
    best in each run (ties: the reference; runs where it picks the reference give no pair)."""
    pairs = []
    for r in records:
        ref = reference_of(r)
        if ref is None:
            continue
        c = r["candidates"]
        if selector is None:
            names = [n for n in c if n != ref]
        else:
            have = [n for n in c if selector in c[n]["scores"]]
            if not have:
                continue
            best = max(have, key=lambda n: (c[n]["scores"][selector], n == ref))
            names = [] if best == ref else [best]
        for n in names:
            dis = c[n].get("disagreement_with_source_only", c[n].get(f"disagreement_with_{ref}"))
            pairs.append({"suite": r.get("suite"), "target": r.get("target"), "seed": r.get("seed"), "pick": n,
                          "reference": ref, "gain": c[n]["target"] - c[ref]["target"],
                          "pick_scores": c[n]["scores"], "reference_scores": c[ref]["scores"], "disagreement": dis})
    return pairs


# what each check of edgeda.trust.WARNING_CHECKS reads: a rule is applicable to a pick where one of its
# checks has its scores for both models (a rule that is nowhere applicable is not measured, only listed)
CHECK_NEEDS = {"disagreement": ("<disagreement>",), "split": (), "agreement": ("agreement",),
               "confidence": ("entropy", "info_max", "bnm", "info_max_prior"), "majority": ("majority",),
               "consistency": ("aug_consistency",)}


def applicable(pair: dict, rule: str) -> bool:
    from edgeda.trust import WARNING_RULES

    for check in WARNING_RULES[rule]:
        needs = CHECK_NEEDS.get(check, ())
        if not needs:
            return True
        for n in needs:
            if n == "<disagreement>" and pair["disagreement"] is not None:
                return True
            if n in pair["pick_scores"] and n in pair["reference_scores"]:
                return True
    return False


def fire_rates(pairs: list[dict], rule: str) -> dict:
    from edgeda.trust import warning_reasons

    bins = {"below": [], "neutral": [], "above": [], "clearly_above": []}
    for p in pairs:
        fired = bool(warning_reasons(p["pick_scores"], p["reference_scores"], p["disagreement"], rule))
        g = p["gain"]
        bins["below" if g < -NEUTRAL else "above" if g > NEUTRAL else "neutral"].append(fired)
        if g > CLEAR:
            bins["clearly_above"].append(fired)
    out = {}
    for k, v in bins.items():
        out[k] = {"n": len(v), "fired": sum(v), "rate": (sum(v) / len(v)) if v else None}
    n_fired = sum(out[k]["fired"] for k in ("below", "neutral", "above"))
    out["applicable"] = sum(applicable(p, rule) for p in pairs)
    out["precision_below"] = out["below"]["fired"] / n_fired if n_fired else None
    rb, ra = out["below"]["rate"], out["above"]["rate"]
    out["youden_j"] = (rb or 0.0) - (ra or 0.0) if rb is not None or ra is not None else None
    return out


def recommend(rates: dict, pairs: list[dict]) -> str:
    """Largest J among rules with J > 0; ties: more checks that fire on at least one pick here, then
    fewer checks that never do (a check these runs cannot exercise is not recommended by them)."""
    from edgeda.trust import WARNING_RULES

    fired = {c for c in {c for cs in WARNING_RULES.values() for c in cs}
             if any(_fires(p, c) for p in pairs)}
    ok = [r for r, v in rates.items() if v["youden_j"] is not None and v["youden_j"] > 0 and v["applicable"]]
    if not ok:
        return "none"
    return max(ok, key=lambda r: (round(rates[r]["youden_j"], 9), len(set(WARNING_RULES[r]) & fired),
                                  -len(set(WARNING_RULES[r]) - fired), r))


def _fires(pair: dict, check: str) -> bool:
    from edgeda.trust import WARNING_CHECKS, bare_scores

    return bool(WARNING_CHECKS[check](bare_scores(pair["pick_scores"]), bare_scores(pair["reference_scores"]), pair["disagreement"]))


def calibrate(records: list[dict]) -> dict:
    from edgeda.trust import WARNING_RULE, WARNING_RULES

    all_pairs = pick_pairs(records)
    rates = {rule: fire_rates(all_pairs, rule) for rule in WARNING_RULES}
    validators = sorted({v for r in records for c in r["candidates"].values() for v in c["scores"]})
    by_selector = {}
    for v in validators:
        pairs = pick_pairs(records, v)
        by_selector[v] = {"picks": len(pairs), "rules": {rule: fire_rates(pairs, rule) for rule in WARNING_RULES}}
    return {"runs": len(records), "suites": sorted({r.get("suite", "?") for r in records}), "pairs": len(all_pairs),
            "neutral_band": NEUTRAL, "clear_gain": CLEAR, "rules": rates, "by_selector": by_selector,
            "recommended_rule": recommend(rates, all_pairs), "current_rule": WARNING_RULE,
            "per_suite": per_suite(records), "rule_checks": {k: list(v) for k, v in WARNING_RULES.items()}}


def per_suite(records: list[dict]) -> dict:
    """Each suite's own rates, recommendation and the rule its task uses (``Task.warning_rule``): a rule
    that separates losses from gains on one task's runs may fire on the other task's gains."""
    from edgeda.tasks import task_of
    from edgeda.trust import WARNING_RULES

    out = {}
    for suite in sorted({r.get("suite", "?") for r in records}):
        pairs = pick_pairs([r for r in records if r.get("suite") == suite])
        rates = {rule: fire_rates(pairs, rule) for rule in WARNING_RULES}
        task = SUITE_TASKS.get(suite)
        out[suite] = {"task": task, "pairs": len(pairs), "rules": rates, "recommended_rule": recommend(rates, pairs),
                      "current_rule": task_of(task).warning_rule if task else None}
    return out


def _pct(r: dict) -> str:
    return "-" if r["rate"] is None else f"{100 * r['rate']:.0f}% ({r['fired']}/{r['n']})"


def report(res: dict) -> str:
    lines = [f"{res['runs']} runs ({', '.join(res['suites'])}), {res['pairs']} candidate picks vs the source-only reference",
             "", "| rule | fires below (gain < -1 pt) | within 1 pt | above (> +1 pt) | above by > 5 pts | precision | J |",
             "|---|---|---|---|---|---|---|"]
    unscored = []
    for rule, v in sorted(res["rules"].items(), key=lambda kv: -(kv[1]["youden_j"] or -9)):
        if not v["applicable"]:
            unscored.append(rule)
            continue
        prec = "-" if v["precision_below"] is None else f"{100 * v['precision_below']:.0f}%"
        j = "-" if v["youden_j"] is None else f"{v['youden_j']:+.2f}"
        lines.append(f"| {rule} | {_pct(v['below'])} | {_pct(v['neutral'])} | {_pct(v['above'])} | "
                     f"{_pct(v['clearly_above'])} | {prec} | {j} |")
    if unscored:
        lines += ["", "Not measurable on these runs (the validators they read are not stored): "
                  + ", ".join(f"`{r}`" for r in unscored) + "."]
    cur = res["current_rule"]
    lines += ["", f"On each validator's own picks, rule `{cur}`:", "",
              "| selector | picks | fires below | within 1 pt | above |", "|---|---|---|---|---|"]
    for v, s in res["by_selector"].items():
        r = s["rules"][cur]
        lines.append(f"| {v} | {s['picks']} | {_pct(r['below'])} | {_pct(r['neutral'])} | {_pct(r['above'])} |")
    lines += ["", f"recommended rule over all runs: `{res['recommended_rule']}`; edgeda.trust.WARNING_RULE (a caller naming "
              f"no rule): `{cur}`", "", "Per suite (each task uses its own rule, `Task.warning_rule`):", "",
              "| suite (task) | picks | rule | fires below | within 1 pt | above | above by > 5 pts | J |", "|---|---|---|---|---|---|---|---|"]
    for suite, ps in res.get("per_suite", {}).items():
        for rule, tag in ((ps["current_rule"], "in use"), (ps["recommended_rule"], "recommended")):
            v = ps["rules"].get(rule)
            if v is None or (tag == "recommended" and rule == ps["current_rule"]):
                continue
            j = "-" if v["youden_j"] is None else f"{v['youden_j']:+.2f}"
            lines.append(f"| {suite} ({ps['task']}) | {ps['pairs']} | `{rule}` ({tag}) | {_pct(v['below'])} | "
                         f"{_pct(v['neutral'])} | {_pct(v['above'])} | {_pct(v['clearly_above'])} | {j} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", nargs="*", help="record files or folders (default: the stored shift suites)")
    ap.add_argument("--out", default=str(RESULTS / "warning.json"))
    args = ap.parse_args()
    records = load_records(args.records or [p for p in DEFAULT_SOURCES if p.exists()])
    if not records:
        raise SystemExit("no shift-suite records found")
    res = calibrate(records)
    res["date"] = dt.date.today().isoformat()
    Path(args.out).write_text(json.dumps(res, indent=1))
    md = report(res)
    print(md)
    replace_block("warning-table", md)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
