"""The one training loop every method runs in.

The trainer owns the iteration budget, the LR schedule, AMP, torchrun, periodic evaluation,
checkpoint/resume, ``metrics.jsonl``, the progress bar and the final bundle. A method only
implements ``step``. Model selection never reads target labels: target test scores are computed
for the report and stored, but selection (``--select``) reads only the label-free ``score/*``
validators (source validation and scores of the unlabeled target outputs), or, with
``--select target_val``, the few labeled target images the user set aside with ``--target-val``
(never the test split). What differs between
classification, segmentation and depth comes from the task object (:mod:`edgeda.tasks`).
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import distributed
from ..config import TrainConfig, make_config, resume_config
from ..errors import EdgedaError, TrainingDiverged
from ..tracking import BestState
from ..methods import METHODS, Method
from ..methods.base import NonFiniteLoss, scheduled_lr
from ..tasks import task_of
from ..utils import atomic_write_bytes, atomic_write_json, choose_device, seed_everything
from ..models.averaging import WeightAverage
from .checkpoint import load_checkpoint, load_latest, save_checkpoint
from .domains import Domains, load_domains  # noqa: F401  (Domains re-exported)
from .evaluator import Evaluator
from .progress import Progress, format_eval
from .selection import selector_names
from .setup import build_method, check_method_fits, load_target_val, source_weights
from .shipping import report_metrics, restore_selected, write_run_bundle


@dataclass
class TrainResult:
    run_dir: Path
    bundle: Path | None
    metrics: dict
    iterations: int
    wall_time: float
    step_time: float  # mean seconds per iteration spent drawing batches and in method.step
    history: list = field(default_factory=list)
    skipped_steps: int = 0
    task: str = "classification"


def lr_factor(schedule: str, progress: float) -> float:
    if schedule == "dann":  # Ganin et al. 2016: mu_p = mu_0 / (1 + 10 p)^0.75
        return (1.0 + 10.0 * progress) ** -0.75
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def channels_last(batch):
    """``batch`` with its 4-D images in channels-last (NHWC) memory order (``--channels-last``)."""
    if batch is not None and batch.x.dim() == 4:
        batch.x = batch.x.contiguous(memory_format=torch.channels_last)
    return batch


def select_checkpoint(selector: str, history: list[dict]) -> int | None:
    """Iteration to ship under ``selector`` (None: the last); reads only ``score/*``, never target labels."""
    evals = [h for h in history if f"score/{selector}" in h]
    if selector == "last" or not evals:
        return None
    return max(evals, key=lambda h: (h[f"score/{selector}"], h["iteration"]))["iteration"]


class Trainer:
    """One training run: ``setup()`` builds the data streams and the method, ``run()`` trains,
    evaluates, checkpoints and ships the bundle.

    The config given is copied: the task and backbone chosen at set-up are filled in on
    ``trainer.cfg``, never on the caller's object."""

    def __init__(self, cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = print,
                 reference: torch.nn.Module | None = None):
        self.cfg = copy.deepcopy(cfg).validate()
        self.reference = reference  # a source-only model: the ``agreement`` validator's reference
        if self.cfg.select not in selector_names():
            raise EdgedaError(f"unknown --select {self.cfg.select!r}; valid: {', '.join(selector_names())}")
        self.dist, device_name = distributed.init(self.cfg.device)
        self.device = choose_device(device_name)
        self.show_progress = progress and self.dist.is_main
        self.log = (log or (lambda s: None)) if self.dist.is_main else (lambda s: None)
        self.run_dir = Path(self.cfg.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        # filled by setup()
        self.domains: Domains | None = None
        self.task_def = None  # the task object (edgeda.tasks)
        self.task = None  # the run's TaskSpec
        self.target_val = None
        self.method: Method | None = None
        self.init_weights: dict | None = None
        self.average: WeightAverage | None = None
        self.evaluator: Evaluator | None = None
        self.source_stream = self.target_stream = None
        self.source_fit: dict = {}
        # filled by run()
        self.history: list[dict] = []
        self.best = BestState()
        self.skipped_steps = 0

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the domains, build the method and the data streams (``run()`` does this first)."""
        cfg = self.cfg
        method_cls = METHODS.get(cfg.method)
        if cfg.threads is not None:  # on a machine other jobs share, fewer threads than cores wait on each other less
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.domains = load_domains(cfg, method_cls.uses_target)
        for line in self.domains.skip_lines():
            self.log(line)
        src = self.domains.source
        check_method_fits(method_cls, cfg.method, self.domains.task)
        self.task_def = task_of(self.domains.task)
        cfg.task = self.domains.task
        cfg.backbone = cfg.backbone or self.task_def.default_backbone
        if cfg.task_loss is not None and cfg.task_loss not in self.task_def.losses:
            raise EdgedaError(f"--task-loss {cfg.task_loss!r} is not a {cfg.task} loss; valid: {', '.join(self.task_def.losses)}")
        self.task = self.task_def.make_spec(src, image_size=self.domains.image_size, channels=cfg.channels,
                                            mean=cfg.mean, std=cfg.std)
        self.target_val = load_target_val(cfg.target_val, self.task) if cfg.target_val else None
        if cfg.select == "target_val" and self.target_val is None:
            raise EdgedaError("--select target_val needs --target-val SPEC (a few labeled target images)")
        self.method, self.init_weights = build_method(cfg, method_cls, self.task, self.domains, device=self.device,
                                                      dist=self.dist, log=self.log)
        # whether the model can learn the source's labels at this size (detection: its box assignment)
        self.source_fit, lines = self.task_def.fit_report(self.method.deployables()[self.primary], src, self.task)
        for line in lines:
            self.log(f"warning: {line}")
            src.report.warn(line)
        # --ema: what is evaluated, selected and shipped is the average of the deployables' weights
        self.average = WeightAverage(self.method.deployables(), cfg.ema) if cfg.ema else None
        self.evaluator = Evaluator(self.domains, self.task_def, self.task, self.device, seed=cfg.seed,
                                   hflip=cfg.augment_hflip, target_val=self.target_val, reference=self.reference,
                                   samples_dir=self.run_dir / "samples" if self.dist.is_main else None)
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        self.source_stream = self.task_def.stream(src, self.task, cfg.batch_size, self.device, cfg.seed * 1000 + 1,
                                                  labeled=True, cfg=cfg, weights=source_weights(self.method, src, self.task),
                                                  **shard)
        self.target_stream = None
        if self.domains.target is not None and method_cls.uses_target:
            self.target_stream = self.task_def.stream(self.domains.target, self.task, cfg.batch_size, self.device,
                                                      cfg.seed * 1000 + 2, labeled=False, cfg=cfg, **shard)

    def shipped(self) -> dict[str, torch.nn.Module]:
        """The modules evaluated, selected and written to the bundle: the weight averages under
        ``--ema``, else the method's live deployables."""
        return self.average.modules if self.average is not None else self.method.deployables()

    @property
    def primary(self) -> str:
        """The bundle name of the task network (``classifier``, or ``model`` for dense tasks)."""
        return self.task_def.deployable

    # -- checkpoints ----------------------------------------------------------------------------
    def _start(self, resume: bool) -> int:
        """The first iteration: 0, or the newest intact checkpoint's under ``resume`` (every rank
        loads the one rank 0 chose; multi-node: ``--out`` must be shared)."""
        if not resume:
            if self.dist.is_main and self.ckpt_dir.exists():
                shutil.rmtree(self.ckpt_dir)
            return 0
        latest = load_latest(self.ckpt_dir) if self.dist.is_main else None
        chosen = distributed.broadcast_int(latest[0] if latest else -1, self.dist, self.device)
        if chosen < 0:
            self.log(f"no checkpoint in {self.ckpt_dir}; starting from scratch")
            return 0
        if latest:
            state = latest[1]
        else:
            try:
                state = load_checkpoint(self.ckpt_dir, chosen)
            except (OSError, ValueError) as e:
                raise EdgedaError(f"rank {self.dist.rank} cannot read checkpoint {chosen} in {self.ckpt_dir} ({e}); "
                                  "with several machines, --out must be on a filesystem every rank can read") from None
        start = self.restore(state)
        if start > self.cfg.iters:
            raise EdgedaError(f"cannot resume: the checkpoint in {self.ckpt_dir} is at iteration {start}, "
                              f"beyond --iters {self.cfg.iters} (give --iters {start} or more)")
        self.log(f"resumed from iteration {start}")
        return start

    def _rank_states(self) -> dict:
        """Data-stream and RNG states; under torchrun, every rank's (a collective), so rank 0's
        checkpoint restores each rank's own shard position."""
        own = {"torch_rng": torch.get_rng_state()}
        for name in ("source_stream", "target_stream"):
            stream = getattr(self, name)
            if stream is not None:
                own.update({f"{name}.{k}": v for k, v in stream.state_dict().items()})
        if not self.dist.enabled:
            return own
        return {"world_size": self.dist.world_size, "ranks": distributed.gather_state(own, self.dist, self.device)}

    def _state(self, iteration: int) -> dict:
        return {
            "iteration": iteration,
            "config": self.cfg.to_dict(),
            "method": self.method.state_dict(),
            "rank_states": self._rank_states(),
            "best": self.best.as_dict(),
            "history": json.dumps(self.history),
            "skipped_steps": self.skipped_steps,
            "average": self.average.state_dict() if self.average is not None else None,
        }

    def restore(self, state: dict) -> int:
        """Load a checkpoint ``state`` (after :meth:`setup`; the run's settings must match the saved
        ones); the iteration it continues from."""
        saved = state["config"]
        for key in ("method", "task", "backbone", "source", "target", "batch_size", "seed", "image_size", "channels"):
            if saved.get(key) != getattr(self.cfg, key):
                raise EdgedaError(
                    f"cannot resume: the checkpoint in {self.ckpt_dir} was made with {key}={saved.get(key)!r}, "
                    f"not {getattr(self.cfg, key)!r}"
                )
        self.method.load_state_dict(state["method"])
        rs = state.get("rank_states") or {  # checkpoints written before per-rank states existed
            "torch_rng": state["torch_rng"],
            **{f"{n}.{k}": v for n in ("source_stream", "target_stream") for k, v in (state.get(n) or {}).items()},
        }
        saved_world = int(rs.get("world_size", 1))
        if saved_world == self.dist.world_size:
            own = rs["ranks"][self.dist.rank] if "ranks" in rs else rs
            for name in ("source_stream", "target_stream"):
                stream = getattr(self, name)
                if stream is not None and f"{name}.pos" in own:
                    prefix = f"{name}."
                    stream.load_state_dict({k[len(prefix):]: v for k, v in own.items() if k.startswith(prefix)})
            torch.set_rng_state(own["torch_rng"])
        else:
            self.log(f"the checkpoint was written by {saved_world} process(es), this run has {self.dist.world_size}: "
                     "model and optimizer state are restored, data order starts afresh")
        if self.average is not None:
            if state.get("average"):
                self.average.load_state_dict(state["average"])
            else:  # the checkpoint was written without --ema: average from the restored weights on
                self.average = WeightAverage(self.method.deployables(), self.cfg.ema)
        self.best = BestState.from_dict(state.get("best"))
        self.history = json.loads(state["history"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        return int(state["iteration"])

    # -- main loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False, callback: Callable[[int], None] | None = None) -> TrainResult:
        """Set up afresh and train; ``callback(iteration)`` runs after every completed iteration
        (it may raise to stop)."""
        cfg = self.cfg
        t_start = time.perf_counter()
        self.setup()
        self.history, self.best, self.skipped_steps = [], BestState(), 0
        start = self._start(resume)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / "config.json", cfg.to_dict())
            write_metrics_file(self.run_dir, self.history)
        distributed.barrier(self.dist)

        self.method.train()
        sums: dict[str, float] = {}
        count, step_time = 0, 0.0
        bar = Progress(self.show_progress, cfg.iters, start, cfg.method)
        try:
            for it in range(start, cfg.iters):
                losses, seconds = self._step(it)
                step_time += seconds
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                done = it + 1
                bar.update(done, {k: v / count for k, v in sums.items() if k.startswith("loss")})
                if self._evaluate_and_save(done, {k: v / max(count, 1) for k, v in sums.items()}, bar):
                    sums, count = {}, 0
                if callback is not None:
                    callback(done)
        finally:
            bar.close()
        distributed.barrier(self.dist)
        wall = time.perf_counter() - t_start
        result = TrainResult(self.run_dir, None, {}, cfg.iters, wall, step_time / max(cfg.iters - start, 1),
                             self.history, self.skipped_steps, self.task.task)
        if self.dist.is_main:
            result.bundle, result.metrics = self._ship(wall)
        distributed.shutdown(self.dist)
        return result

    def _step(self, it: int) -> tuple[dict, float]:
        """One iteration: the LR schedule, a batch from each stream, ``method.step`` (a non-finite
        step is undone under ``--skip-nonfinite``: no losses) and the weight average; (losses,
        seconds spent drawing the batches and stepping)."""
        cfg = self.cfg
        progress = it / cfg.iters
        factor = lr_factor(cfg.lr_schedule, progress)
        for name, opt in self.method.optims.items():
            scheduled_lr(name, opt, factor, f"method {self.method.name!r}")
        self.method.progress = progress
        t0 = time.perf_counter()
        source = self.source_stream.next()
        target = self.target_stream.next() if self.target_stream is not None else None
        if cfg.channels_last:
            source, target = channels_last(source), channels_last(target)
        buffers = [b.clone() for b in self.method.nets.buffers()] if cfg.skip_nonfinite else None
        try:
            losses = self.method.step(source, target)
        except NonFiniteLoss as e:
            if not cfg.skip_nonfinite:
                raise TrainingDiverged(
                    f"loss became non-finite or exploded ({e}) at iteration {it + 1}; the last good checkpoint is kept in "
                    f"{self.ckpt_dir} (resume with --resume, or pass --skip-nonfinite to skip such steps)"
                ) from None
            with torch.no_grad():  # the forward pass already fed the bad batch to BatchNorm statistics
                for b, saved in zip(self.method.nets.buffers(), buffers):
                    b.copy_(saved)
            self.skipped_steps += 1
            losses = {}
        if losses and self.average is not None:
            self.average.update(self.method.deployables())
        return losses, time.perf_counter() - t0

    def _evaluate_and_save(self, done: int, train_losses: dict, bar: Progress) -> bool:
        """The periodic evaluation (rank 0) and checkpoint after iteration ``done``; whether it evaluated."""
        cfg = self.cfg
        is_eval = done % cfg.eval_every == 0 or done == cfg.iters
        is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.iters
        if is_eval or is_ckpt:  # what is evaluated, saved and shipped is the same on every rank
            distributed.sync_buffers(self.method.nets, self.dist)
        if is_eval and self.dist.is_main:  # other ranks wait at the next collective
            rec = self.evaluator(done, self.shipped()[self.primary], self.method, train_losses)
            rec["lr"] = cfg.lr * lr_factor(cfg.lr_schedule, (done - 1) / cfg.iters)
            self.history.append(rec)
            if cfg.select != "last" and f"score/{cfg.select}" in rec:
                self.best.offer(rec[f"score/{cfg.select}"], rec["iteration"],
                                lambda: {n: copy.deepcopy(m.state_dict()) for n, m in self.shipped().items()})
            append_metrics(self.run_dir, rec)
            (bar.print if bar.enabled else self.log)(format_eval(rec, self.task_def))
        if is_ckpt:
            state = self._state(done)  # a collective under torchrun
            if self.dist.is_main:
                save_checkpoint(self.ckpt_dir, done, state)
            distributed.barrier(self.dist)  # no rank runs ahead of a checkpoint being written
        return is_eval

    def _ship(self, wall: float) -> tuple[Path, dict]:
        """The selected weights into a bundle with the report's metrics: (bundle path, metrics)."""
        cfg = self.cfg
        modules = self.shipped()
        selected = restore_selected(modules, cfg.select, self.best, self.history, cfg.iters)
        metrics = report_metrics(modules[self.primary], selected, self.history, self.domains, self.task, self.device,
                                 test_scores=self.evaluator.test_scores, task_def=self.task_def,
                                 target_val=self.target_val,
                                 reference=self.reference, seed=cfg.seed, log=self.log)
        if self.source_fit:
            metrics["source_fit"] = self.source_fit
        bundle = write_run_bundle(
            self.run_dir, modules, self.task,
            method={"name": cfg.method, "options": dict(self.method.opts), "uses_target": self.method.uses_target},
            training={
                "config": cfg.to_dict(), "domains": self.domains.summary(), "iterations": cfg.iters,
                "selection": {"selector": cfg.select, "iteration": selected}, "wall_time_s": round(wall, 2),
                "weight_average": {"kind": "ema", "decay": cfg.ema} if self.average is not None else None,
                "init_weights": self.init_weights, "skipped_steps": self.skipped_steps,
                "source_fit": self.source_fit or None,
            },
            metrics=metrics, wall=wall, device=self.device)
        return bundle, metrics


def write_metrics_file(run_dir: Path, history: list[dict]) -> None:
    """``run_dir/metrics.jsonl``: one evaluation record a line."""
    lines = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write_bytes(run_dir / "metrics.jsonl", lines.encode())


def append_metrics(run_dir: Path, rec: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()



def train(config: TrainConfig | None = None, *, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] | None = print, reference: torch.nn.Module | None = None,
          **overrides) -> TrainResult:
    """Train ``config.method`` and write a bundle. ``overrides`` are TrainConfig fields;
    ``reference``: a source-only model for the ``agreement`` validator.

    >>> result = edgeda.train(method="dann", source="syndigits", target="handwritten", iters=2000, out="runs/dann")
    >>> result.bundle, result.metrics["target_test_acc"]
    """
    if resume and config is None and overrides.get("out"):  # the stored run's own settings
        cfg = resume_config(overrides["out"], overrides)
    else:
        cfg = make_config(config.to_dict() if config else None, overrides)
    return Trainer(cfg, progress=progress, log=log, reference=reference).run(resume=resume)
