"""The on-device adaptation run: bundle + unlabeled target images in, a new bundle out.

Reads only the bundle and the target images (there is no parameter through which source data
could enter), never modifies the input bundle (its files are hashed before and after), runs the
chosen method under the time and memory budget with collapse monitoring and rollback, and writes
the new bundle atomically with before/after statistics in its manifest.

A run is planned first (:mod:`edgeda.adapt.plan`: data, method, batch, crop, precision,
iteration cap, check cadence), then stepped with the collapse monitor and the selection, then
finished (the selected state restored, recorded and written).

What differs between tasks comes from the task object (:mod:`edgeda.tasks`) and the method's
``tasks``: a classification bundle adapts on the target images at its input size; a segmentation
bundle reads the target frames at its (H, W), may train on random crops when ``--memory-mb``
asks for it (:func:`~edgeda.adapt.budget.plan_dense`), and is monitored, selected and evaluated
per pixel on full frames. What adaptation itself does differently per task (statistics, collapse
monitor, selection score, whether frames may be cropped, the methods' per-row objectives) comes
from the task's :class:`~edgeda.adapt.tasks.TaskAdaptation`: a detection bundle (8 frames per step,
never cropped: its anchors belong to the full frame) is monitored by its detections per image and
selected by ``confidence_minus_drift`` (:mod:`edgeda.adapt.detection`). A task no registered
method adapts (depth today) is one error.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..bundle import write_bundle
from ..errors import BundleError
from ..methods.base import NonFiniteLoss
from ..tasks import task_of
from ..tracking import BestState
from ..utils import machine_info
from .budget import TimeBudget, peak_rss_mb
from .export import reexport
from .plan import SELECT_RULES, AdaptOptions, AdaptPlan, bundle_hashes, headline_score, plan_adaptation  # noqa: F401


@dataclass
class AdaptResult:
    bundle: Path
    method: str
    iterations: int
    stopped_because: str  # "iterations" | "time budget" | "collapse"
    collapsed: bool
    message: str
    before: dict
    after: dict
    wall_time_s: float
    peak_rss_mb: float
    peak_cuda_mb: float | None = None
    accuracy: dict | None = None  # {"data", "metric" (accuracy | miou), "before", "after", "n"} with --labels
    export: dict | None = None
    manifest: dict = field(default_factory=dict)  # the "adaptation" record written into the bundle


def adapt(bundle: str | Path, target_dir: str | Path, out: str | Path, *, log: Callable[[str], None] | None = None,
          started_at: float | None = None, on_check: Callable[[int, dict, torch.nn.Module], None] | None = None,
          **settings) -> AdaptResult:
    """Adapt a shipped bundle to the unlabeled images in ``target_dir``; write the result to ``out``.

    ``settings`` are the fields of :class:`~edgeda.adapt.plan.AdaptOptions`: ``method`` (default: the
    bundle task's ``default_adapt_method``: ``shot`` for classification, ``tent`` for segmentation and detection); ``iters``: iterations (default: the method's ``default_iters``; ``0``: until the
    ``minutes`` budget ends); ``minutes``: wall-clock ceiling for the whole call (it ends the
    iterations early, never adds any); ``memory_mb``: peak-memory budget (picks the batch size /
    precision, and for dense frames the training crop); ``batch``: images per step (default 64, or
    8 frames for a dense bundle; an upper bound under ``memory_mb``); ``device``; ``export``:
    re-export ONNX (and TensorRT where installed) into the new bundle; ``labels``: a labeled domain
    spec used only to report the task's headline score (accuracy, mIoU) before and after;
    ``options``: the method's options; ``seed``; ``check_every``: iterations between collapse
    checks; ``monitor_n``: images the collapse monitor and the selection score (default 512, 64
    dense frames); ``threads``: CPU threads for torch (default: torch's, one per core; on a busy
    device 1 avoids OpenMP threads waiting on each other); ``select``: which healthy state is
    written — ``"info_max"`` (default) the one whose predictions on the monitor images score
    highest on information maximisation (confident per image, diverse over the set; no labels; for
    dense outputs diverse relative to the shipped model's pixel-class marginal, see
    :mod:`edgeda.adapt.safety`), ``"last"`` the last one; the shipped state is always a candidate
    (written when every adapted state is unhealthy or, under ``info_max``, scores lower than it).

    ``started_at``: a ``time.perf_counter()`` value to count the budget from (the CLI passes its own
    start, so imports count too); ``on_check(iteration, stats, model)``: called after every
    check (progress reporting, diagnostics; ``model`` is the method's ``deployed`` network, the
    one written). Returns an :class:`AdaptResult`; the adaptation record is also in the new
    bundle's manifest under ``"adaptation"``.

    >>> r = edgeda.adapt("model.edgeda", "camera_frames/", "adapted.edgeda", method="shot", minutes=5)
    >>> r.before["mean_entropy"], r.after["mean_entropy"], r.iterations
    """
    opts = AdaptOptions(**settings)
    budget = TimeBudget(opts.minutes, started_at)
    log = log or (lambda s: None)
    opts.validate()
    plan = plan_adaptation(Path(bundle), Path(target_dir), Path(out), opts, log)
    run = AdaptationLoop(plan, opts, budget, log, on_check)
    run.loop()
    return run.finish()


class AdaptationLoop:
    """Steps a planned run with the collapse monitor and the selection (:meth:`loop`), then restores
    the selected state, records and writes (:meth:`finish`)."""

    def __init__(self, plan: AdaptPlan, opts: AdaptOptions, budget: TimeBudget, log: Callable[[str], None],
                 on_check: Callable[[int, dict, torch.nn.Module], None] | None):
        self.plan, self.opts, self.budget, self.log, self.on_check = plan, opts, budget, log, on_check
        self.scores: list[tuple[int, float]] = []  # (iteration, selection score) of every healthy check
        self.prior = None  # the selection's reference (dense: the shipped pixel-class marginal)
        self.shipped_score = 0.0
        self.best: BestState | None = None
        self.snapshot_name = "the shipped model"  # what the best state is, in words
        self.good_iter = 0  # the last healthy check's iteration
        self.checks = 0
        self.setup_s = 0.0
        self.it, self.stopped, self.message = 0, "iterations", ""

    def check(self, it: int) -> str | None:
        p = self.plan
        model = p.method.deployed  # the network that will be written (CoTTA: its teacher), not necessarily the trained one
        stats = p.adaptation.stats(p.monitor_set, model, p.monitor_ref, p.task, self.prior)
        verdict = p.monitor.check(stats, model)
        if self.on_check is not None:
            self.on_check(it, stats, model)
        if verdict is None:
            self.scores.append((it, round(p.adaptation.selection_score(stats), 5)))
        self.checks += 1
        return verdict

    def keep(self, it: int, name: str) -> None:
        """A healthy check: remember this state when the selection rule prefers it (the shipped state
        keeps a tie)."""
        score = self.scores[-1][1] if self.opts.select == "info_max" else float(it)
        if self.best.offer(score, it, self.plan.method.state_snapshot, ties=self.best.tag != "shipped"):
            self.snapshot_name = name
        self.good_iter = it

    def loop(self) -> None:
        p, opts, budget, log = self.plan, self.opts, self.budget, self.log
        m, ta = p.method, p.adaptation
        batch, crop, frame, n_images = p.batch, p.crop, p.frame, p.n_images
        iters_cap, reserve = p.iters_cap, p.reserve_s
        # the shipped state is always a candidate: written when every adapted state is unhealthy or scores lower
        # dense outputs: the selection's diversity term is relative to the shipped model's pixel-class
        # marginal on the monitor frames (see edgeda.adapt.safety), so the shipped state scores -mean H(p);
        # the task's adaptation says what the reference is (detection: the shipped anchor-score histogram)
        shipped_stats, self.prior = ta.shipped_selection(p.monitor_set, m.deployed, p.monitor_ref, p.task)
        self.shipped_score = round(ta.selection_score(shipped_stats), 5)
        self.best = BestState(self.shipped_score if opts.select == "info_max" else -float("inf"), "shipped",
                              m.state_snapshot())
        it = 0
        collapse, stopped = None, "iterations"
        self.setup_s = budget.elapsed()
        if budget.should_stop(reserve):
            stopped = "time budget"
        else:
            m.prepare(p.target)
            collapse = self.check(0)
            if collapse is None:
                self.keep(0, "iteration 0 (after the method's preparation)")
            crop_note = "" if crop == frame else f", {crop[0]}x{crop[1]} crops of the {frame[0]}x{frame[1]} frames"
            log(f"{opts.method}: batch {batch} ({p.precision}){crop_note}, checks every {p.check_every} iterations, "
                f"{'until the time budget' if iters_cap is None else f'{iters_cap} iterations'}"
                f"{f' or {opts.minutes:g} min' if opts.minutes else ''}")
        gen = torch.Generator().manual_seed(opts.seed)
        order, pos = torch.randperm(n_images, generator=gen), 0
        while collapse is None and stopped == "iterations" and (iters_cap is None or it < iters_cap):
            if budget.should_stop(reserve):
                stopped = "time budget"
                break
            t = time.perf_counter()
            if pos + batch > n_images:
                order, pos = torch.randperm(n_images, generator=gen), 0
            idx = order[pos : pos + batch]
            pos += batch
            m.progress = max(it / iters_cap if iters_cap else 0.0, budget.fraction())
            m.window = None
            if crop != frame:  # one random crop of the frames per step (the memory plan asked for it)
                top = int(torch.randint(0, frame[0] - crop[0] + 1, (1,), generator=gen))
                left = int(torch.randint(0, frame[1] - crop[1] + 1, (1,), generator=gen))
                m.window = (top, left, crop[0], crop[1])
            try:
                losses = m.step(p.target.tensor(idx.numpy(), m.window), idx)
            except NonFiniteLoss:
                collapse = "a loss became NaN/inf"
                break
            it += 1
            if m.refresh_due(it, p.epoch_iters):
                m.prepare(p.target)
            if it % p.check_every == 0 or it == iters_cap:
                collapse = self.check(it)
                if collapse is None:
                    self.keep(it, f"iteration {it}")
                    log(f"  iter {it}: " + " ".join(f"{k}={v:.3f}" for k, v in losses.items())
                        + f" | {ta.score_name}={self.scores[-1][1]:.3f}")
            budget.record_step(time.perf_counter() - t)
        if collapse is None and it > self.good_iter:  # the steps since the last check are checked too
            collapse = self.check(it)
            if collapse is None:
                self.keep(it, f"iteration {it}")
        if collapse is not None:
            stopped = "collapse"
            message = (f"collapse detected after iteration {it}: {collapse}; rolled back to the "
                       f"{'best' if opts.select == 'info_max' else 'last'} healthy state ({self.snapshot_name}) and stopped")
            log("WARNING: " + message)
        else:
            message = (f"adapted for {it} iterations; stopped by the "
                       f"{'time budget' if stopped == 'time budget' else 'iteration count'}; wrote {self.snapshot_name}"
                       f"{f' (highest {ta.score_name} on the monitor images)' if opts.select == 'info_max' else ''}")
        self.it, self.stopped, self.message = it, stopped, message

    def finish(self) -> AdaptResult:
        p, opts, budget = self.plan, self.opts, self.budget
        m, ta, task, lab, dev, b = p.method, p.adaptation, p.task, p.labels, p.device, p.bundle
        tk = task_of(task)
        it, stopped, message = self.it, self.stopped, self.message
        m.restore(self.best.state)
        clf = m.deployed  # what was monitored and selected is what is written
        clf.eval()

        after = ta.stats(p.target, clf, p.ref_pred, task, ta.prior(p.before, task))
        acc_after = headline_score(clf, lab, task, dev) if lab is not None else None
        accuracy = None if lab is None else {"data": opts.labels, "metric": tk.headline, "before": p.score_before,
                                             "after": acc_after, "n": len(lab)}
        peak_cuda = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        record = {
            "method": opts.method, "summary": m.describe(), "options": dict(m.opts), "source_free": True, "seed": opts.seed,
            "task": task.task,
            "parent": {"path": str(p.bundle_path), "manifest_sha256": p.hashes_before.get("manifest.json"),
                       "method": b.manifest.get("method", {}).get("name"), "metrics": b.manifest.get("metrics", {})},
            "budget": {"minutes": opts.minutes, "memory_mb": opts.memory_mb, "iterations_requested": opts.iters,
                       "iterations_cap": p.iters_cap, "batch_requested": p.batch_requested,
                       "batch": p.batch, "precision": p.precision, "estimated_peak_mb": round(p.est_mb, 1),
                       "frame": list(p.frame), "train_crop": list(p.crop)},
            "iterations_done": it, "stopped_because": stopped, "last_good_iteration": self.good_iter,
            "selection": {"rule": opts.select, "selected_iteration": self.best.tag, "written": self.snapshot_name,
                          "info_max_per_check": self.scores,
                          "shipped_info_max": self.shipped_score, **ta.selection_record()},
            "setup_s": round(self.setup_s, 2),
            "target": {"dir": str(p.target_dir), "images_used": p.n_images, **_skips(p.report)},
            "safety": {"status": "rolled_back" if stopped == "collapse" else "ok", "message": message, "checks": self.checks,
                       "check_every": p.check_every, "monitor_images": len(p.monitor_idx), "limits": p.monitor.limits(),
                       "per": ta.per(task)},
            "before": p.before, "after": after, "accuracy": accuracy,
            "device": str(dev), "torch_threads": torch.get_num_threads(), "machine": machine_info(),
        }
        record["memory"] = {"peak_rss_mb": round(peak_rss_mb(), 1),
                            "peak_cuda_mb": None if peak_cuda is None else round(peak_cuda, 1)}
        record["wall_time_s"] = round(budget.elapsed(), 2)
        record["cpu_time_s"] = round(_cpu_seconds(), 1)
        metrics = {} if accuracy is None else {"labels_data": opts.labels, f"labels_{tk.headline}": acc_after,
                                               f"labels_{tk.headline}_before": p.score_before}
        write_bundle(p.out, {tk.deployable: clf.to("cpu")}, task, method=b.manifest.get("method", {}),
                     training=b.manifest.get("training", {}), metrics=metrics, extra={"adaptation": record})
        export_report = reexport(p.out, log=self.log) if opts.export else None
        if bundle_hashes(p.bundle_path) != p.hashes_before:
            raise BundleError(f"the input bundle {p.bundle_path} changed during adaptation; this is a bug, please report it")
        record["wall_time_s"] = round(budget.elapsed(), 2)
        record["cpu_time_s"] = round(_cpu_seconds(), 1)  # CPU time this process got: wall time under contention is longer
        record["memory"]["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return AdaptResult(bundle=p.out, method=opts.method, iterations=it, stopped_because=stopped,
                           collapsed=stopped == "collapse", message=message, before=p.before, after=after,
                           wall_time_s=record["wall_time_s"], peak_rss_mb=record["memory"]["peak_rss_mb"],
                           peak_cuda_mb=record["memory"]["peak_cuda_mb"], accuracy=accuracy, export=export_report,
                           manifest=record)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _skips(report) -> dict:
    d = report.to_dict()
    return {"files_skipped": d["skipped"], "skipped_files": d["skipped_files"]}
