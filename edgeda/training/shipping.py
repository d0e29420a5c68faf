"""The end of a training run: the selected weights, the report's metrics and the bundle.

Selection reads only ``score/*`` (never target labels); target test scores are the report of the
weights that ship, scored at their own evaluation.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..bundle import write_bundle
from ..tracking import BestState
from ..trust import disagreement, transfer_warning
from ..utils import atomic_write_json, machine_info
from .model_eval import evaluate_model
from .selection import score_model


def restore_selected(modules: dict[str, torch.nn.Module], select: str, best: BestState, history: list[dict],
                     iters: int) -> int:
    """Load the weights ``select`` chose into ``modules`` (the last ones stay under ``last``); the
    iteration that ships."""
    selected = history[-1]["iteration"] if history else iters
    if select != "last" and not best.empty:
        for n, m in modules.items():
            m.load_state_dict(best.state[n])
        selected = best.tag
    return selected


def report_metrics(net: torch.nn.Module, selected: int, history: list[dict], domains, spec, device, *,
                   test_scores: dict[int, dict], task_def, target_val=None, reference: torch.nn.Module | None = None,
                   seed: int = 0, log=lambda s: None) -> dict:
    """The bundle's metrics for the shipped ``net``: its evaluation record, its full target test
    scores, a negative-transfer warning against ``reference`` and the interval of its
    ``--target-val`` accuracy."""
    final = next((h for h in history if h["iteration"] == selected), history[-1] if history else {})
    metrics = {k: v for k, v in final.items() if not k.startswith("train/") and k != "lr"}
    if domains.target_test is not None:  # the shipped weights were scored at their evaluation
        full = test_scores.get(selected) or evaluate_model(net, domains.target_test, spec, device).scores
        key = task_def.per_class_key
        if key in full:
            metrics["target_test_per_class"] = full[key]
        metrics["target_test_scores"] = {k: v for k, v in full.items() if k not in ("confusion", key)}
    metrics["selected_iteration"] = selected
    if reference is not None and domains.target is not None:  # may this be a negative transfer?
        ref_scores, ref_rows = score_model(reference, domains, spec, device, seed)
        scores, rows = score_model(net, domains, spec, device, seed, ref_rows)
        metrics["transfer_warning"] = transfer_warning(scores, ref_scores, disagreement(rows, ref_rows),
                                                       rule=task_def.warning_rule)
        if metrics["transfer_warning"]:
            log(metrics["transfer_warning"])
    if target_val is not None:
        interval = task_def.interval(evaluate_model(net, target_val, spec, device).scores)
        if interval is not None:
            metrics["target_val_interval"] = interval
    grids = [h["samples_png"] for h in history if "samples_png" in h]
    if grids:  # the last sample grid, whichever evaluation was selected
        metrics["samples_png"] = grids[-1]
    return metrics


def write_run_bundle(run_dir: Path, modules: dict[str, torch.nn.Module], spec, *, method: dict, training: dict,
                     metrics: dict, wall: float, device) -> Path:
    """``run_dir/model.edgeda`` from ``modules`` (moved to the CPU to write, then back to ``device``)
    and ``run_dir/summary.json``."""
    bundle_path = run_dir / "model.edgeda"
    training = {**training, "machine": machine_info()}
    write_bundle(bundle_path, {n: m.to("cpu") for n, m in modules.items()}, spec, method=method, training=training,
                 metrics=metrics)
    for m in modules.values():
        m.to(device)
    atomic_write_json(run_dir / "summary.json", {"bundle": str(bundle_path), "metrics": metrics, "wall_time_s": wall})
    return bundle_path
