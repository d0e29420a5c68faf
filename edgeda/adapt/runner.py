"""The on-device adaptation run: bundle + unlabeled target images in, a new bundle out.

Reads only the bundle and the target images (there is no parameter through which source data
could enter), never modifies the input bundle (its files are hashed before and after), runs the
chosen method under the time and memory budget with collapse monitoring and rollback, and writes
the new bundle atomically with before/after statistics in its manifest.

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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..bundle import Bundle, write_bundle
from ..data import load_domain
from ..data.domain import Domain
from ..errors import BundleError, DataError, EdgedaError
from ..methods.base import Engine, NonFiniteLoss
from ..task import TaskSpec
from ..tasks import task_of
from ..tracking import BestState
from ..utils import choose_device, machine_info, seed_everything, sha256_file
from .base import ADAPT_METHODS, AdaptMethod, TargetSet
from .budget import (TimeBudget, activation_bytes_per_sample, current_rss_mb, param_bytes, peak_rss_mb, plan_batch,
                     plan_dense)
from .tasks import adaptation_of

SELECT_RULES = ("info_max", "last")


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


def _bundle_hashes(path: Path) -> dict[str, str]:
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def _check_paths(bundle: Path, target_dir: Path, out: Path) -> None:
    b, o = bundle.resolve(), out.resolve()
    if o == b or b in o.parents:
        raise EdgedaError("--out must be a new path outside the input bundle (the input bundle is never modified)")
    if not (target_dir.is_dir() or (target_dir.is_file() and target_dir.suffix.lower() == ".npz")):
        raise DataError(f"--target-dir {target_dir}: not a folder of images (or an .npz of images)")


def methods_for(task: str) -> list[str]:
    """Names of the registered adaptation methods that adapt ``task`` bundles."""
    return [n for n, cls in ADAPT_METHODS.items() if task in cls.tasks]


def _load_target(target_dir: Path, spec: TaskSpec):
    """(uint8 (N, H, W, C) images at the task's size, load report) of the unlabeled target."""
    from ..training.evaluate import eval_batches

    # a task with its own data loader (detection) reads the folder with it: a COCO / YOLO tree's images
    dom = load_domain(str(target_dir), labeled=False, size=spec.image_size, channels=spec.channels, task=spec.task)
    if isinstance(dom, Domain):  # a plain tree of images (or an images-only .npz), read at the task's size
        dom.require_usable(labeled=False)
        return dom.images, dom.report
    if not task_of(spec).dense:
        raise DataError(f"{target_dir} is dense data (images/ with masks or depth); this bundle is a classifier")
    dom.require_usable()
    chunks = [raw for _, _, raw in eval_batches(dom, spec, "cpu", 16, labels=False, workers=0)]
    if not chunks:
        raise DataError(f"{target_dir} has no decodable images")
    return np.concatenate(chunks), dom.report


def _load_labels(labels: str, spec: TaskSpec):
    """The labeled domain ``--labels`` names, checked against the bundle's task (reports only)."""
    lab = load_domain(labels, labeled=True, size=spec.image_size, channels=spec.channels, split="test", task=spec.task)
    if task_of(spec).dense:
        if isinstance(lab, Domain):
            raise DataError(f"--labels {labels} has one label per image; this {spec.task} bundle needs per-pixel labels")
        lab.require_usable(task=spec.task, num_classes=spec.num_classes or None)
        if lab.classes and spec.classes and list(lab.classes) != list(spec.classes):
            raise DataError(f"--labels {labels} names the classes {', '.join(lab.classes)}, the bundle "
                            f"{', '.join(spec.classes)}")
    else:
        if not isinstance(lab, Domain):
            raise DataError(f"--labels {labels} is dense data; this bundle is a classifier")
        lab.require_usable(labeled=True, num_classes=spec.num_classes)
    return lab


def adapt(bundle: str | Path, target_dir: str | Path, out: str | Path, *, method: str = "shot",
          iters: int | None = None, minutes: float | None = None, memory_mb: float | None = None,
          batch: int | None = None, device: str = "auto", export: bool = False, labels: str | None = None,
          options: dict | None = None, seed: int = 0, check_every: int | None = None, monitor_n: int | None = None,
          threads: int | None = None, log: Callable[[str], None] | None = None,
          started_at: float | None = None, select: str = "info_max",
          on_check: Callable[[int, dict, torch.nn.Module], None] | None = None) -> AdaptResult:
    """Adapt a shipped bundle to the unlabeled images in ``target_dir``; write the result to ``out``.

    ``iters``: iterations (default: the method's ``default_iters``; ``0``: until the ``minutes`` budget ends);
    ``minutes``: wall-clock ceiling for the whole call (it ends the iterations early, never adds any); ``memory_mb``: peak-memory budget (picks the
    batch size / precision, and for dense frames the training crop); ``batch``: images per step
    (default 64, or 8 frames for a dense bundle; an upper bound under ``memory_mb``); ``labels``: a
    labeled domain spec used only to report the task's headline score (accuracy, mIoU) before and
    after; ``monitor_n``: images the collapse monitor and the selection score (default 512, 64 dense frames); ``threads``: CPU threads for torch (default: torch's, one per core; on a busy device 1
    avoids OpenMP threads waiting on each other); ``started_at``: a ``time.perf_counter()`` value to count the budget from (the CLI
    passes its own start, so imports count too); ``select``: which healthy state is written —
    ``"info_max"`` (default) the one whose predictions on the monitor images score highest on
    information maximisation (confident per image, diverse over the set; no labels; for dense
    outputs diverse relative to the shipped model's pixel-class marginal, see
    :mod:`edgeda.adapt.safety`), ``"last"``
    the last one; the shipped state is always a candidate (written when every adapted state is
    unhealthy or, under ``info_max``, scores lower than it); ``on_check(iteration, stats, classifier)``: called after every check (progress
    reporting, diagnostics; ``classifier`` is the method's ``deployed`` network, the one written). Returns an :class:`AdaptResult`; the adaptation record is also in the new bundle's
    manifest under ``"adaptation"``.

    >>> r = edgeda.adapt("model.edgeda", "camera_frames/", "adapted.edgeda", method="shot", minutes=5)
    >>> r.before["mean_entropy"], r.after["mean_entropy"], r.iterations
    """
    run = _AdaptRun(bundle, target_dir, out, method=method, iters=iters, minutes=minutes, memory_mb=memory_mb,
                    batch=batch, device=device, export=export, labels=labels, options=options, seed=seed,
                    check_every=check_every, monitor_n=monitor_n, threads=threads, log=log, started_at=started_at,
                    select=select, on_check=on_check)
    run.loop()
    return run.finish()


class _AdaptRun:
    """One ``adapt`` call in three steps: ``__init__`` validates and plans (data, method, batch,
    crop, precision, iteration cap, check cadence), :meth:`loop` steps with the collapse monitor
    and the selection, :meth:`finish` restores the selected state, records and writes."""

    def __init__(self, bundle, target_dir, out, *, method, iters, minutes, memory_mb, batch, device, export, labels,
                 options, seed, check_every, monitor_n, threads, log, started_at, select, on_check):
        budget = TimeBudget(minutes, started_at)
        log = log or (lambda s: None)
        bundle, target_dir, out = Path(bundle), Path(target_dir), Path(out)
        if iters is not None and iters < 0:
            raise EdgedaError("--iters must be >= 0")
        if iters == 0 and minutes is None:
            raise EdgedaError("--iters 0 means 'until the time budget ends' and needs --minutes")
        if minutes is not None and minutes <= 0:
            raise EdgedaError("--minutes must be positive")
        if select not in SELECT_RULES:
            raise EdgedaError(f"--select must be one of {', '.join(SELECT_RULES)}; got {select!r}")
        if batch is not None and batch < 2:
            raise EdgedaError("--batch must be at least 2 (BatchNorm needs batch statistics)")
        method_cls = ADAPT_METHODS.get(method)
        if not bundle.exists():
            raise BundleError(f"{bundle} does not exist (a bundle is the model.edgeda folder a training run writes)")
        if not (bundle / "manifest.json").is_file():
            raise BundleError(f"{bundle} is not an edgeda bundle (no manifest.json)")
        _check_paths(bundle, target_dir, out)
        hashes_before = _bundle_hashes(bundle)
        b = Bundle(bundle)
        task = b.task
        tk = task_of(task)
        if task.task not in method_cls.tasks:
            raise EdgedaError(f"adapt method {method!r} adapts {', '.join(method_cls.tasks)} bundles, not {task.task}; "
                              f"methods for {task.task} bundles: {', '.join(methods_for(task.task)) or 'none yet'}")
        ta = adaptation_of(task)  # what adaptation does differently for this task (monitor, selection, crops)
        images, report = _load_target(target_dir, task)
        if len(images) < 2:
            raise DataError(f"{target_dir} has only {len(images)} usable image; adaptation needs at least 2")
        lab = _load_labels(labels, task) if labels else None
        log(f"target: {report.summary()} from {target_dir}")
        batch = batch or (8 if tk.dense else 64)
        monitor_n = monitor_n or (64 if tk.dense else 512)

        if threads is not None:
            if threads < 1:
                raise EdgedaError("--threads must be at least 1")
            torch.set_num_threads(threads)
        seed_everything(seed)
        dev = choose_device(device)
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        clf = b.module(b.primary, str(dev))
        target = TargetSet(images, task, dev)
        n_images = len(images)

        t = time.perf_counter()
        before, ref_pred = ta.shipped_stats(target, clf, task)
        stats_s = time.perf_counter() - t
        monitor = ta.monitor(before, task)
        rng = np.random.default_rng(seed)
        mon_idx = np.sort(rng.permutation(n_images)[:monitor_n])
        monitor_set = TargetSet(images[mon_idx], task, dev)
        mon_ref = ref_pred[torch.from_numpy(mon_idx)]
        acc_before = _score(clf, lab, task, dev) if lab is not None else None

        m: AdaptMethod = method_cls(clf, task, options=options, engine=Engine(dev), seed=seed,
                                    training=b.manifest.get("training", {}))
        batch_requested = batch
        batch = min(batch, n_images)
        fixed = current_rss_mb() + 4 * param_bytes([clf, *m.extra_modules().values()]) / 2**20
        if cuda:
            fixed += torch.cuda.memory_allocated(dev) / 2**20
        per_sample = _per_sample_mb(m, target.tensor(slice(0, 2)))
        frame = tuple(images.shape[1:3])
        if tk.dense and ta.crops:
            batch, crop, precision, est_mb = plan_dense(batch, memory_mb, fixed_mb=fixed, per_sample_mb=per_sample,
                                                        size=frame, cuda=cuda)
        else:
            crop = frame
            batch, precision, est_mb = plan_batch(batch, memory_mb, fixed_mb=fixed, per_sample_mb=per_sample, cuda=cuda)
        if precision != "fp32":
            m.engine = Engine(dev, amp=True)
        # a budget is a ceiling: the method's iteration count unless --iters says otherwise; 0 = until the budget ends
        iters_cap = m.default_iters if iters is None else (None if iters == 0 else iters)
        epoch_iters = max(1, n_images // batch)
        check_every = check_every or max(5, min(50, epoch_iters))
        reserve = 2.0 * stats_s * (1 + (len(lab) / n_images if lab is not None else 0)) + 1.0 + (5.0 if export else 0.0)


        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})

    def check(self, it: int) -> str | None:
        model = self.m.deployed  # the network that will be written (CoTTA: its teacher), not necessarily the trained one
        stats = self.ta.stats(self.monitor_set, model, self.mon_ref, self.task, self.prior)
        verdict = self.monitor.check(stats, model)
        if self.on_check is not None:
            self.on_check(it, stats, model)
        if verdict is None:
            self.scores.append((it, round(self.ta.selection_score(stats), 5)))
        self.checks += 1
        return verdict

    def keep(self, it: int, name: str) -> None:
        """A healthy check: remember this state when the selection rule prefers it (the shipped state
        keeps a tie)."""
        score = self.scores[-1][1] if self.select == "info_max" else float(it)
        if self.best.offer(score, it, self.m.state_snapshot, ties=self.best.tag != "shipped"):
            self.snapshot_name = name
        self.good_iter = it

    def loop(self) -> None:
        m, budget, log = self.m, self.budget, self.log
        batch, crop, frame, n_images = self.batch, self.crop, self.frame, self.n_images
        iters_cap, reserve = self.iters_cap, self.reserve
        self.scores: list[tuple[int, float]] = []  # (iteration, selection score) of every healthy check
        # the shipped state is always a candidate: written when every adapted state is unhealthy or scores lower
        # dense outputs: the selection's diversity term is relative to the shipped model's pixel-class
        # marginal on the monitor frames (see edgeda.adapt.safety), so the shipped state scores -mean H(p);
        # the task's adaptation says what the reference is (detection: the shipped anchor-score histogram)
        shipped_stats, self.prior = self.ta.shipped_selection(self.monitor_set, m.deployed, self.mon_ref, self.task)
        self.shipped_score = round(self.ta.selection_score(shipped_stats), 5)
        self.best = BestState(self.shipped_score if self.select == "info_max" else -float("inf"), "shipped",
                              m.state_snapshot())
        self.snapshot_name, self.good_iter, self.checks, it = "the shipped model", 0, 0, 0
        collapse, stopped = None, "iterations"
        self.setup_s = budget.elapsed()
        if budget.should_stop(reserve):
            stopped = "time budget"
        else:
            m.prepare(self.target)
            collapse = self.check(0)
            if collapse is None:
                self.keep(0, "iteration 0 (after the method's preparation)")
            crop_note = "" if crop == frame else f", {crop[0]}x{crop[1]} crops of the {frame[0]}x{frame[1]} frames"
            log(f"{self.method}: batch {batch} ({self.precision}){crop_note}, checks every {self.check_every} iterations, "
                f"{'until the time budget' if iters_cap is None else f'{iters_cap} iterations'}"
                f"{f' or {self.minutes:g} min' if self.minutes else ''}")
        gen = torch.Generator().manual_seed(self.seed)
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
                losses = m.step(self.target.tensor(idx.numpy(), m.window), idx)
            except NonFiniteLoss:
                collapse = "a loss became NaN/inf"
                break
            it += 1
            if m.refresh_due(it, self.epoch_iters):
                m.prepare(self.target)
            if it % self.check_every == 0 or it == iters_cap:
                collapse = self.check(it)
                if collapse is None:
                    self.keep(it, f"iteration {it}")
                    log(f"  iter {it}: " + " ".join(f"{k}={v:.3f}" for k, v in losses.items())
                        + f" | {self.ta.score_name}={self.scores[-1][1]:.3f}")
            budget.record_step(time.perf_counter() - t)
        if collapse is None and it > self.good_iter:  # the steps since the last check are checked too
            collapse = self.check(it)
            if collapse is None:
                self.keep(it, f"iteration {it}")
        if collapse is not None:
            stopped = "collapse"
            message = (f"collapse detected after iteration {it}: {collapse}; rolled back to the "
                       f"{'best' if self.select == 'info_max' else 'last'} healthy state ({self.snapshot_name}) and stopped")
            log("WARNING: " + message)
        else:
            message = (f"adapted for {it} iterations; stopped by the "
                       f"{'time budget' if stopped == 'time budget' else 'iteration count'}; wrote {self.snapshot_name}"
                       f"{f' (highest {self.ta.score_name} on the monitor images)' if self.select == 'info_max' else ''}")
        self.it, self.stopped, self.message = it, stopped, message

    def finish(self) -> AdaptResult:
        m, budget, tk, task, lab, dev = self.m, self.budget, self.tk, self.task, self.lab, self.dev
        it, stopped, message = self.it, self.stopped, self.message
        bundle, b, out, labels = self.bundle, self.b, self.out, self.labels
        m.restore(self.best.state)
        clf = m.deployed  # what was monitored and selected is what is written
        clf.eval()

        after = self.ta.stats(self.target, clf, self.ref_pred, task, self.ta.prior(self.before, task))
        acc_after = _score(clf, lab, task, dev) if lab is not None else None
        accuracy = None if lab is None else {"data": labels, "metric": tk.headline, "before": self.acc_before,
                                             "after": acc_after, "n": len(lab)}
        peak_cuda = torch.cuda.max_memory_allocated(dev) / 2**20 if self.cuda else None
        record = {
            "method": self.method, "summary": m.describe(), "options": m.opts, "source_free": True, "seed": self.seed,
            "task": task.task,
            "parent": {"path": str(bundle), "manifest_sha256": self.hashes_before.get("manifest.json"),
                       "method": b.manifest.get("method", {}).get("name"), "metrics": b.manifest.get("metrics", {})},
            "budget": {"minutes": self.minutes, "memory_mb": self.memory_mb, "iterations_requested": self.iters,
                       "iterations_cap": self.iters_cap, "batch_requested": self.batch_requested,
                       "batch": self.batch, "precision": self.precision, "estimated_peak_mb": round(self.est_mb, 1),
                       "frame": list(self.frame), "train_crop": list(self.crop)},
            "iterations_done": it, "stopped_because": stopped, "last_good_iteration": self.good_iter,
            "selection": {"rule": self.select, "selected_iteration": self.best.tag, "written": self.snapshot_name,
                          "info_max_per_check": self.scores,
                          "shipped_info_max": self.shipped_score, **self.ta.selection_record()},
            "setup_s": round(self.setup_s, 2),
            "target": {"dir": str(self.target_dir), "images_used": self.n_images, **_skips(self.report)},
            "safety": {"status": "rolled_back" if stopped == "collapse" else "ok", "message": message, "checks": self.checks,
                       "check_every": self.check_every, "monitor_images": len(self.mon_idx), "limits": self.monitor.limits(),
                       "per": self.ta.per(task)},
            "before": self.before, "after": after, "accuracy": accuracy,
            "device": str(dev), "torch_threads": torch.get_num_threads(), "machine": machine_info(),
        }
        record["memory"] = {"peak_rss_mb": round(peak_rss_mb(), 1),
                            "peak_cuda_mb": None if peak_cuda is None else round(peak_cuda, 1)}
        record["wall_time_s"] = round(budget.elapsed(), 2)
        record["cpu_time_s"] = round(_cpu_seconds(), 1)
        metrics = {} if accuracy is None else {"labels_data": labels, f"labels_{tk.headline}": acc_after,
                                               f"labels_{tk.headline}_before": self.acc_before}
        write_bundle(out, {tk.deployable: clf.to("cpu")}, task, method=b.manifest.get("method", {}),
                     training=b.manifest.get("training", {}), metrics=metrics, extra={"adaptation": record})
        export_report = None
        if self.export:
            from .export import reexport

            export_report = reexport(out, log=self.log)
        if _bundle_hashes(bundle) != self.hashes_before:
            raise BundleError(f"the input bundle {bundle} changed during adaptation; this is a bug, please report it")
        record["wall_time_s"] = round(budget.elapsed(), 2)
        record["cpu_time_s"] = round(_cpu_seconds(), 1)  # CPU time this process got: wall time under contention is longer
        record["memory"]["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return AdaptResult(bundle=out, method=self.method, iterations=it, stopped_because=stopped,
                           collapsed=stopped == "collapse", message=message, before=self.before, after=after,
                           wall_time_s=record["wall_time_s"], peak_rss_mb=record["memory"]["peak_rss_mb"],
                           peak_cuda_mb=record["memory"]["peak_cuda_mb"], accuracy=accuracy, export=export_report,
                           manifest=record)




def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _skips(report) -> dict:
    d = report.to_dict()
    return {"files_skipped": d["skipped"], "skipped_files": d["skipped_files"]}


def _per_sample_mb(m: AdaptMethod, x2: torch.Tensor) -> float:
    per = activation_bytes_per_sample(m.classifier, x2) * m.classifier_passes
    for mod in m.extra_modules().values():
        if hasattr(mod, "sample"):
            y = torch.zeros(len(x2), dtype=torch.long, device=x2.device)
            per += 2 * activation_bytes_per_sample(mod, y, torch.zeros(len(x2), mod.z_dim, device=x2.device))
        else:
            per += 2 * activation_bytes_per_sample(mod, x2)
    return per / 2**20


def _score(model, lab, spec: TaskSpec, dev) -> float:
    """The task's headline score (accuracy, mIoU) of ``model`` on the labeled ``lab`` (full frames)."""
    from ..training.evaluate import evaluate_model

    return float(evaluate_model(model, lab, spec, dev).scores[task_of(spec).headline])

