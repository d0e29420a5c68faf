"""What an ``edgeda adapt`` run will do, decided before its first step.

:class:`AdaptOptions` holds what a caller may set; :func:`plan_adaptation` validates them, reads
the bundle and the target images, measures the shipped model and plans the batch, training crop,
precision, iteration cap and check cadence into an :class:`AdaptPlan` that the loop
(:mod:`edgeda.adapt.runner`) follows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bundle import Bundle
from ..data import load_domain
from ..data.domain import Domain
from ..errors import BundleError, DataError, EdgedaError
from ..methods.base import Engine
from ..tasks.spec import TaskSpec
from ..tasks import load_for_task, task_of
from ..training.model_eval import eval_batches, evaluate_model
from ..utils import choose_device, seed_everything, sha256_file
from .base import ADAPT_METHODS, AdaptMethod, TargetSet
from .budget import activation_bytes_per_sample, current_rss_mb, param_bytes, plan_batch, plan_dense
from .tasks import TaskAdaptation, adaptation_of

SELECT_RULES = ("info_max", "last")


@dataclass
class AdaptOptions:
    """The settings of one ``adapt`` call besides its three paths; see :func:`edgeda.adapt.adapt`."""
    method: str | None = None  # None: the bundle task's default_adapt_method
    iters: int | None = None  # None: the method's default_iters; 0: until the minutes budget ends
    minutes: float | None = None
    memory_mb: float | None = None
    batch: int | None = None  # None: 64 images, 8 dense frames
    device: str = "auto"
    export: bool = False
    labels: str | None = None  # a labeled domain spec, for the before/after report only
    options: dict | None = None  # the method's options
    seed: int = 0
    check_every: int | None = None
    monitor_n: int | None = None  # None: 512 images, 64 dense frames
    threads: int | None = None
    select: str = "info_max"

    def validate(self) -> "AdaptOptions":
        if self.iters is not None and self.iters < 0:
            raise EdgedaError("--iters must be >= 0")
        if self.iters == 0 and self.minutes is None:
            raise EdgedaError("--iters 0 means 'until the time budget ends' and needs --minutes")
        if self.minutes is not None and self.minutes <= 0:
            raise EdgedaError("--minutes must be positive")
        if self.select not in SELECT_RULES:
            raise EdgedaError(f"--select must be one of {', '.join(SELECT_RULES)}; got {self.select!r}")
        if self.batch is not None and self.batch < 2:
            raise EdgedaError("--batch must be at least 2 (BatchNorm needs batch statistics)")
        return self


@dataclass
class AdaptPlan:
    """Everything the adaptation loop and the written record need, fixed before the first step."""
    bundle_path: Path
    target_dir: Path
    out: Path
    bundle: Bundle
    hashes_before: dict[str, str]  # of the input bundle's files, checked again at the end
    task: TaskSpec
    adaptation: TaskAdaptation  # what adaptation does differently for this task
    device: torch.device
    method: AdaptMethod
    report: object  # the target's load report
    target: TargetSet  # every target image
    labels: object | None  # the --labels domain
    before: dict  # the shipped model's statistics on the target
    ref_pred: torch.Tensor  # the shipped model's predictions on the target
    stats_s: float  # seconds one pass of statistics took
    monitor: object  # the task's collapse monitor (check, limits)
    monitor_idx: np.ndarray
    monitor_set: TargetSet
    monitor_ref: torch.Tensor
    score_before: float | None  # the headline score on --labels
    batch_requested: int
    batch: int
    frame: tuple[int, int]
    crop: tuple[int, int]  # the training window (the frame unless the memory plan asks for crops)
    precision: str
    est_mb: float
    iters_cap: int | None  # None: until the time budget ends
    epoch_iters: int
    check_every: int
    reserve_s: float  # seconds kept back for the final statistics, scoring and export
    n_images: int


def _method_for(opts: AdaptOptions, task: str, log) -> type[AdaptMethod]:
    """The method class that adapts ``task`` bundles: ``opts.method``, or where it is None the task's
    ``default_adapt_method`` (filled into ``opts``); one error naming the task's methods otherwise."""
    methods = ", ".join(adapt_methods_for(task)) or "none yet"
    if opts.method is None:
        if task_of(task).default_adapt_method is None:
            raise EdgedaError(f"{task} bundles are not adapted on the device; methods for {task} bundles: {methods}")
        opts.method = task_of(task).default_adapt_method
        log(f"method {opts.method}: the default for {task} bundles (--method picks another)")
    method_cls = ADAPT_METHODS.get(opts.method)
    if task not in method_cls.tasks:
        raise EdgedaError(f"adapt method {opts.method!r} adapts {', '.join(method_cls.tasks)} bundles, not {task}; "
                          f"methods for {task} bundles: {methods}")
    return method_cls


def plan_adaptation(bundle: Path, target_dir: Path, out: Path, opts: AdaptOptions, log) -> AdaptPlan:
    """Validate ``opts`` against the bundle and the target images and plan the run (see the module docstring)."""
    if opts.method is not None:
        ADAPT_METHODS.get(opts.method)  # an unknown name is the first error
    if not bundle.exists():
        raise BundleError(f"{bundle} does not exist (a bundle is the model.edgeda folder a training run writes)")
    if not (bundle / "manifest.json").is_file():
        raise BundleError(f"{bundle} is not an edgeda bundle (no manifest.json)")
    check_paths(bundle, target_dir, out)
    hashes_before = bundle_hashes(bundle)
    b = Bundle(bundle)
    task = b.task
    tk = task_of(task)
    method_cls = _method_for(opts, task.task, log)
    ta = adaptation_of(task)
    images, report = load_target(target_dir, task)
    if len(images) < 2:
        raise DataError(f"{target_dir} has only {len(images)} usable image; adaptation needs at least 2")
    lab = load_labels(opts.labels, task) if opts.labels else None
    log(f"target: {report.summary()} from {target_dir}")
    batch = opts.batch or tk.adapt_batch_size
    monitor_n = opts.monitor_n or tk.monitor_images

    if opts.threads is not None:
        if opts.threads < 1:
            raise EdgedaError("--threads must be at least 1")
        torch.set_num_threads(opts.threads)
    seed_everything(opts.seed)
    dev = choose_device(opts.device)
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
    rng = np.random.default_rng(opts.seed)
    mon_idx = np.sort(rng.permutation(n_images)[:monitor_n])
    monitor_set = TargetSet(images[mon_idx], task, dev)
    mon_ref = ref_pred[torch.from_numpy(mon_idx)]
    score_before = headline_score(clf, lab, task, dev) if lab is not None else None

    m: AdaptMethod = method_cls(clf, task, options=opts.options, engine=Engine(dev), seed=opts.seed,
                                training=b.manifest.get("training", {}))
    batch_requested = batch
    batch = min(batch, n_images)
    fixed = current_rss_mb() + 4 * param_bytes([clf, *m.extra_modules().values()]) / 2**20
    if cuda:
        fixed += torch.cuda.memory_allocated(dev) / 2**20
    per_sample = per_sample_mb(m, target.tensor(slice(0, 2)))
    frame = tuple(images.shape[1:3])
    if tk.spatial_output and ta.crops:
        batch, crop, precision, est_mb = plan_dense(batch, opts.memory_mb, fixed_mb=fixed, per_sample_mb=per_sample,
                                                    size=frame, cuda=cuda)
    else:
        crop = frame
        batch, precision, est_mb = plan_batch(batch, opts.memory_mb, fixed_mb=fixed, per_sample_mb=per_sample, cuda=cuda)
    if precision != "fp32":
        m.engine = Engine(dev, amp=True)
    # a budget is a ceiling: the method's iteration count unless --iters says otherwise; 0 = until the budget ends
    iters_cap = m.default_iters if opts.iters is None else (None if opts.iters == 0 else opts.iters)
    epoch_iters = max(1, n_images // batch)
    check_every = opts.check_every or max(5, min(50, epoch_iters))
    reserve = 2.0 * stats_s * (1 + (len(lab) / n_images if lab is not None else 0)) + 1.0 + (5.0 if opts.export else 0.0)
    return AdaptPlan(bundle_path=bundle, target_dir=target_dir, out=out, bundle=b, hashes_before=hashes_before,
                     task=task, adaptation=ta, device=dev, method=m, report=report, target=target, labels=lab,
                     before=before, ref_pred=ref_pred, stats_s=stats_s, monitor=monitor, monitor_idx=mon_idx,
                     monitor_set=monitor_set, monitor_ref=mon_ref, score_before=score_before,
                     batch_requested=batch_requested, batch=batch, frame=frame, crop=crop, precision=precision,
                     est_mb=est_mb, iters_cap=iters_cap, epoch_iters=epoch_iters, check_every=check_every,
                     reserve_s=reserve, n_images=n_images)


def bundle_hashes(path: Path) -> dict[str, str]:
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def check_paths(bundle: Path, target_dir: Path, out: Path) -> None:
    b, o = bundle.resolve(), out.resolve()
    if o == b or b in o.parents:
        raise EdgedaError("--out must be a new path outside the input bundle (the input bundle is never modified)")
    if not (target_dir.is_dir() or (target_dir.is_file() and target_dir.suffix.lower() == ".npz")):
        raise DataError(f"--target-dir {target_dir}: not a folder of images (or an .npz of images)")


def adapt_methods_for(task: str) -> list[str]:
    """Names of the registered adaptation methods that adapt ``task`` bundles."""
    return [n for n, cls in ADAPT_METHODS.items() if task in cls.tasks]


def load_target(target_dir: Path, spec: TaskSpec):
    """(uint8 (N, H, W, C) images at the task's size, load report) of the unlabeled target."""
    # a task with its own data loader (detection) reads the folder with it: a COCO / YOLO tree's images
    dom = load_domain(str(target_dir), labeled=False, size=spec.image_size, channels=spec.channels, task=spec.task)
    if isinstance(dom, Domain):  # a plain tree of images (or an images-only .npz), read at the task's size
        dom.require_usable()
        return dom.images, dom.report
    if not task_of(spec).reads(dom):
        raise DataError(f"{target_dir} is dense data (images/ with masks or depth); this bundle is a classifier")
    dom.require_usable()
    chunks = [raw for _, _, raw in eval_batches(dom, spec, "cpu", 16, labels=False, workers=0)]
    if not chunks:
        raise DataError(f"{target_dir} has no decodable images")
    return np.concatenate(chunks), dom.report


def load_labels(labels: str, spec: TaskSpec):
    """The labeled domain ``--labels`` names, checked against the bundle's task (reports only)."""
    return load_for_task(labels, spec, labeled=True, what=f"--labels {labels}", split="test")


def per_sample_mb(m: AdaptMethod, x2: torch.Tensor) -> float:
    """Activation memory of one image through the method's networks (a two-image probe), MiB."""
    per = activation_bytes_per_sample(m.model, x2) * m.model_passes
    for mod in m.extra_modules().values():
        if hasattr(mod, "sample"):
            y = torch.zeros(len(x2), dtype=torch.long, device=x2.device)
            per += 2 * activation_bytes_per_sample(mod, y, torch.zeros(len(x2), mod.z_dim, device=x2.device))
        else:
            per += 2 * activation_bytes_per_sample(mod, x2)
    return per / 2**20


def headline_score(model, lab, spec: TaskSpec, dev) -> float:
    """The task's headline score (accuracy, mIoU) of ``model`` on the labeled ``lab`` (full frames)."""
    return float(evaluate_model(model, lab, spec, dev).scores[task_of(spec).headline])
