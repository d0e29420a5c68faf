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

import numpy as np
import torch

from ..bundle import write_bundle
from ..config import TrainConfig
from ..errors import EdgedaError, TrainingDiverged
from ..tracking import BestState
from ..methods import METHODS, Engine, Method, OptimConfig
from ..methods.base import NonFiniteLoss
from ..tasks import task_of
from ..scores import probs_entropy
from ..utils import atomic_write_bytes, atomic_write_json, choose_device, machine_info, seed_everything
from . import distributed
from .averaging import WeightAverage
from .checkpoint import load_checkpoint, load_latest, save_checkpoint
from .domains import Domains, load_domains  # noqa: F401  (Domains re-exported)
from .evaluate import evaluate_model, evaluation_context
from .progress import _format_eval, _Progress
from .selection import score_all, selector_names


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


def _channels_last(batch):
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
    def __init__(self, cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = print,
                 reference: torch.nn.Module | None = None):
        self.cfg = cfg.validate()
        self.reference = reference  # a source-only model: the ``agreement`` validator's reference
        self._reference_rows = None
        if cfg.select not in selector_names():
            raise EdgedaError(f"unknown --select {cfg.select!r}; valid: {', '.join(selector_names())}")
        self.dist, device_name = distributed.init(cfg.device)
        self.device = choose_device(device_name)
        self.show_progress = progress and self.dist.is_main
        self.log = (log or (lambda s: None)) if self.dist.is_main else (lambda s: None)
        self.run_dir = Path(cfg.out)
        self.ckpt_dir = self.run_dir / "checkpoints"

    # -- set-up ---------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        method_cls = METHODS.get(cfg.method)
        seed_everything(cfg.seed)
        self.domains = load_domains(cfg, method_cls.uses_target)
        for line in self.domains.skip_lines():
            self.log(line)
        src = self.domains.source
        if self.domains.task not in method_cls.tasks:
            from ..methods.base import methods_for

            raise EdgedaError(f"method {cfg.method!r} adapts {', '.join(method_cls.tasks)} models, and this source is "
                              f"{self.domains.task} data; methods for {self.domains.task}: "
                              f"{', '.join(methods_for(self.domains.task))} (--method)")
        self.task_def = task_of(self.domains.task)
        cfg.task = self.domains.task
        cfg.backbone = cfg.backbone or self.task_def.default_backbone
        if cfg.task_loss is not None and cfg.task_loss not in self.task_def.losses:
            raise EdgedaError(f"--task-loss {cfg.task_loss!r} is not a {cfg.task} loss; valid: {', '.join(self.task_def.losses)}")
        self.task = self.task_def.make_spec(src, image_size=self.domains.image_size, channels=cfg.channels,
                                            mean=cfg.mean, std=cfg.std)
        self.target_val = self._load_target_val() if cfg.target_val else None
        if cfg.select == "target_val" and self.target_val is None:
            raise EdgedaError("--select target_val needs --target-val SPEC (a few labeled target images)")
        engine = Engine(self.device, amp=cfg.amp, world_size=self.dist.world_size)
        optim = OptimConfig(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        options = cfg.options
        if cfg.backbone_weights:  # a pre-trained encoder learns slower where the method offers encoder_lr
            from ..models.weights import pretrained_options

            options = pretrained_options(method_cls, cfg.options)
        self.method: Method = method_cls(
            self.task, backbone=cfg.backbone, backbone_kwargs=cfg.backbone_kwargs, options=options,
            optim=optim, engine=engine, task_loss=cfg.task_loss,
        )
        self.init_weights = None
        if cfg.backbone_weights:  # pre-trained weights (whole model or encoder), applied at build time, never a download
            from ..models.weights import describe, load_pretrained

            rep = load_pretrained(self.method.classifier, cfg.backbone_weights)
            for line in describe(rep):
                self.log(f"backbone weights {line}")
            self.init_weights = {"file": rep["file"], "sha256": rep["sha256"], "kind": rep["kind"], "head": rep["head"]}
            self.method.backbone_weights_loaded()
        if cfg.init and hasattr(self.method, "load_init"):
            self.method.load_init(cfg.init)
        if self.domains.target is not None and method_cls.uses_target:  # for methods that label the whole target set
            from .evaluate import eval_batches

            target, spec, device, bs = self.domains.target, self.task, self.device, 16 if self.task_def.dense else 256
            self.method.attach_target_images(lambda: (x for x, _, _ in eval_batches(target, spec, device, bs, labels=False)),
                                             seed=cfg.seed)
        if cfg.channels_last:  # opt-in: NHWC weights (and batches, in the loop) for the convolution kernels
            self.method.nets.to(memory_format=torch.channels_last)
        if self.dist.enabled:
            distributed.broadcast_module(self.method.nets)
            torch.manual_seed(cfg.seed * 7919 + self.dist.rank)  # per-rank noise (dropout, GAN z) after a shared init
        # --ema: what is evaluated, selected and shipped is the average of the deployables' weights
        self.average = WeightAverage(self.method.deployables(), cfg.ema) if cfg.ema else None
        self.display = self._display_batches()
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        self.source_stream = self._stream(src, cfg.seed * 1000 + 1, labeled=True, shard=shard,
                                          weights=self._source_weights(src))
        self.target_stream = None
        if self.domains.target is not None and method_cls.uses_target:
            self.target_stream = self._stream(self.domains.target, cfg.seed * 1000 + 2, labeled=False, shard=shard)

    def _source_weights(self, domain):
        """Per-image source sampling weights when the method asks for class-aware sampling, else None."""
        weigh = self.method.source_sampling()
        if weigh is None or not self.task.num_classes:
            return None
        from .sampling import class_counts

        return weigh(class_counts(domain, self.task.num_classes))

    def _stream(self, domain, seed: int, *, labeled: bool, shard: dict, weights=None):
        return self.task_def.stream(domain, self.task, self.cfg.batch_size, self.device, seed, labeled=labeled,
                                    cfg=self.cfg, weights=weights, **shard)

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

    def _restore(self, state: dict) -> int:
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

    def _load_target_val(self):
        from ..data import load_domain
        from ..data.domain import Domain

        dom = load_domain(self.cfg.target_val, labeled=True, size=self.task.image_size, channels=self.task.channels,
                          task=self.task.task)
        if isinstance(dom, Domain) != (not self.task_def.dense):
            raise EdgedaError(f"--target-val {self.cfg.target_val} is not {self.task.task} data")
        if isinstance(dom, Domain):
            dom.require_usable(labeled=True, num_classes=self.task.num_classes)
        else:
            dom.require_usable(task=self.task.task, num_classes=self.task.num_classes or None)
        return dom

    def _load_chosen(self, iteration: int) -> dict:
        """The checkpoint rank 0 chose, read by another rank (multi-node: ``--out`` must be shared)."""
        try:
            return load_checkpoint(self.ckpt_dir, iteration)
        except (OSError, ValueError) as e:
            raise EdgedaError(f"rank {self.dist.rank} cannot read checkpoint {iteration} in {self.ckpt_dir} ({e}); "
                              "with several machines, --out must be on a filesystem every rank can read") from None

    # -- evaluation -----------------------------------------------------------------------------
    def shipped(self) -> dict[str, torch.nn.Module]:
        """The modules evaluated, selected and written to the bundle: the weight averages under
        ``--ema``, else the method's live deployables."""
        return self.average.modules if self.average is not None else self.method.deployables()

    @property
    def primary(self) -> str:
        """The bundle name of the task network (``classifier``, or ``model`` for dense tasks)."""
        return self.task_def.deployable

    def evaluate(self, iteration: int, train_losses: dict) -> dict:
        d, task, dev, t = self.domains, self.task, self.device, self.task_def
        net = self.shipped()[self.primary]
        rec: dict = {"iteration": iteration, **{f"train/{k}": v for k, v in train_losses.items()}}
        if self.reference is not None and d.target is not None and self._reference_rows is None:
            # same seed: the same pixel sample for dense rows
            self._reference_rows = evaluate_model(self.reference.to(dev), d.target, task, dev, labels=False,
                                                  rows=True, seed=self.cfg.seed).rows
        ctx, val, out = evaluation_context(net, d, task, dev, seed=self.cfg.seed, reference_rows=self._reference_rows,
                                           hflip=self.cfg.augment_hflip)
        rec.update({f"source_val_{k}": val[v] for k, v in t.record_keys.items()})
        if out is not None and out.rows is not None and len(out.rows) and task.num_classes:
            p = out.rows.softmax(1)
            rec["target_entropy"] = float(probs_entropy(p, 1).mean())
            rec["target_confidence"] = float(p.max(1).values.mean())
        rec.update({f"score/{k}": v for k, v in score_all(ctx).items()})
        if self.target_val is not None:  # the user's few labeled target images: selection and report
            tv = evaluate_model(net, self.target_val, task, dev).scores
            rec.update({f"target_val_{k}": tv[v] for k, v in t.record_keys.items()})
            rec["score/target_val"] = t.selection_score(tv)
        if d.target_test is not None:  # for the report only; never used for selection
            test = evaluate_model(net, d.target_test, task, dev).scores
            self._test_scores[iteration] = test  # the bundle's full report, if this iteration ships
            rec.update({f"target_test_{k}": test[v] for k, v in t.record_keys.items()})
        if self.dist.is_main:
            was_training = net.training
            self.method.eval()
            with torch.no_grad():
                png = self.method.visualize(self.run_dir / "samples", iteration, *self.display)
                if png is None and t.dense:
                    png = self._dense_samples(net, iteration)
            self.method.train() if was_training else None
            if png is not None:
                rec["samples_png"] = str(png)
        return rec

    def _dense_samples(self, net, iteration: int):
        """image | truth | prediction | error for the first target test (else source val) images."""
        from .evaluate import eval_batches

        dom = self.domains.target_test or self.domains.source_val
        x, y, raw = next(eval_batches(dom, self.task, self.device, 4, labels=True))
        return self.task_def.sample_panels(self.task, net, x, y, raw, self.run_dir / "samples" / f"iter{iteration:06d}.png",
                                           f"{dom.name}, iteration {iteration}")

    def _display_batches(self):
        """Fixed, un-augmented batches for sample grids: up to 8 source images per class, 16 target images."""
        from ..data.transforms import to_float_nchw
        from ..methods.base import Batch

        if self.task_def.dense:
            from .evaluate import eval_batches

            def first(dom, n):
                if dom is None:
                    return None
                x, y, _ = next(eval_batches(dom, self.task, self.device, min(n, len(dom)), labels=dom is self.domains.source_val))
                return Batch(x, self.task_def.labels_to(y, self.device))

            return first(self.domains.source_val, 8), first(self.domains.target, 8)

        def batch(dom, idx):
            x = torch.from_numpy(np.ascontiguousarray(dom.images[idx])).to(self.device)
            y = torch.from_numpy(dom.labels[idx]).to(self.device) if dom.labels is not None else None
            m = None
            if dom.masks is not None:
                m = torch.from_numpy(dom.masks[idx]).to(self.device).unsqueeze(1).float() / 255
            return Batch(to_float_nchw(x, self.task.mean, self.task.std), y, m)

        sv = self.domains.source_val
        idx = np.concatenate([np.flatnonzero(sv.labels == c)[:8] for c in range(self.task.num_classes)])
        src = batch(sv, idx[:80])
        tgt = batch(self.domains.target, np.arange(min(16, len(self.domains.target)))) if self.domains.target is not None else None
        return src, tgt

    # -- main loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False, callback: Callable[[int], None] | None = None) -> TrainResult:
        """Train; ``callback(iteration)`` runs after every completed iteration (it may raise to stop)."""
        cfg = self.cfg
        t_start = time.perf_counter()
        self._build()
        self.history: list[dict] = []
        self._test_scores: dict[int, dict] = {}  # iteration -> full target test scores of this process's evaluations
        self.best = BestState()
        self.skipped_steps = 0
        start = 0
        if resume:
            latest = load_latest(self.ckpt_dir) if self.dist.is_main else None
            # every rank loads the checkpoint rank 0 chose (the newest intact one)
            chosen = distributed.broadcast_int(latest[0] if latest else -1, self.dist, self.device)
            if chosen < 0:
                self.log(f"no checkpoint in {self.ckpt_dir}; starting from scratch")
            else:
                start = self._restore(latest[1] if latest else self._load_chosen(chosen))
                if start > cfg.iters:
                    raise EdgedaError(f"cannot resume: the checkpoint in {self.ckpt_dir} is at iteration {start}, "
                                      f"beyond --iters {cfg.iters} (give --iters {start} or more)")
                self.log(f"resumed from iteration {start}")
        elif self.dist.is_main and self.ckpt_dir.exists():
            shutil.rmtree(self.ckpt_dir)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / "config.json", cfg.to_dict())
            self._rewrite_metrics()
        distributed.barrier(self.dist)

        self.method.train()
        sums: dict[str, float] = {}
        count = 0
        step_time = 0.0
        steps_timed = 0
        bar = _Progress(self.show_progress, cfg.iters, start, cfg.method)
        it = start
        try:
            for it in range(start, cfg.iters):
                progress = it / cfg.iters
                factor = lr_factor(cfg.lr_schedule, progress)
                for opt in self.method.optims.values():
                    for g in opt.param_groups:
                        g["lr"] = g["initial_lr"] * factor
                self.method.progress = progress
                t0 = time.perf_counter()
                source = self.source_stream.next()
                target = self.target_stream.next() if self.target_stream is not None else None
                if cfg.channels_last:
                    source, target = _channels_last(source), _channels_last(target)
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
                step_time += time.perf_counter() - t0
                steps_timed += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                done = it + 1
                bar.update(done, {k: v / count for k, v in sums.items() if k.startswith("loss")})
                is_eval = done % cfg.eval_every == 0 or done == cfg.iters
                is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.iters
                if is_eval or is_ckpt:  # what is evaluated, saved and shipped is the same on every rank
                    distributed.sync_buffers(self.method.nets, self.dist)
                if is_eval and self.dist.is_main:  # other ranks wait at the next collective
                    rec = self.evaluate(done, {k: v / max(count, 1) for k, v in sums.items()})
                    rec["lr"] = cfg.lr * factor
                    self.history.append(rec)
                    self._track_best(rec)
                    self._append_metrics(rec)
                    (bar.print if bar.enabled else self.log)(_format_eval(rec, self.task_def))
                if is_eval:
                    sums, count = {}, 0
                if is_ckpt:
                    state = self._state(done)  # a collective under torchrun
                    if self.dist.is_main:
                        save_checkpoint(self.ckpt_dir, done, state)
                    distributed.barrier(self.dist)  # no rank runs ahead of a checkpoint being written
                if callback is not None:
                    callback(done)
        finally:
            bar.close()
        distributed.barrier(self.dist)
        wall = time.perf_counter() - t_start
        result = TrainResult(self.run_dir, None, {}, cfg.iters, wall, step_time / max(steps_timed, 1),
                             self.history, self.skipped_steps, self.task.task)
        if self.dist.is_main:
            result.bundle, result.metrics = self._finish(wall)
        distributed.shutdown(self.dist)
        return result

    def _track_best(self, rec: dict) -> None:
        key = f"score/{self.cfg.select}"
        if self.cfg.select != "last" and key in rec:
            self.best.offer(rec[key], rec["iteration"],
                            lambda: {n: copy.deepcopy(m.state_dict()) for n, m in self.shipped().items()})

    def _finish(self, wall: float) -> tuple[Path, dict]:
        cfg = self.cfg
        modules = self.shipped()
        selected = self.history[-1]["iteration"] if self.history else cfg.iters
        if cfg.select != "last" and not self.best.empty:
            for n, m in modules.items():
                m.load_state_dict(self.best.state[n])
            selected = self.best.tag
        final = next((h for h in self.history if h["iteration"] == selected), self.history[-1] if self.history else {})
        metrics = {k: v for k, v in final.items() if not k.startswith("train/") and k != "lr"}
        if self.domains.target_test is not None:  # the shipped weights were scored at their evaluation
            full = self._test_scores.get(selected) or evaluate_model(modules[self.primary], self.domains.target_test,
                                                                     self.task, self.device).scores
            per_class = full.get("per_class", full.get("per_class_iou"))
            if per_class is not None:
                metrics["target_test_per_class"] = per_class
            metrics["target_test_scores"] = {k: v for k, v in full.items() if k not in ("confusion", "per_class", "per_class_iou")}
        metrics["selected_iteration"] = selected
        if self.reference is not None and self.domains.target is not None:  # may this be a negative transfer?
            from ..trust import disagreement, score_model, transfer_warning

            ref_scores, ref_rows = score_model(self.reference, self.domains, self.task, self.device, cfg.seed)
            scores, rows = score_model(modules[self.primary], self.domains, self.task, self.device, cfg.seed, ref_rows)
            metrics["transfer_warning"] = transfer_warning(scores, ref_scores, disagreement(rows, ref_rows))
            if metrics["transfer_warning"]:
                self.log(metrics["transfer_warning"])
        if self.target_val is not None:
            tv = evaluate_model(modules[self.primary], self.target_val, self.task, self.device).scores
            if "accuracy" in tv:
                from ..trust import confusion_interval

                metrics["target_val_interval"] = confusion_interval(tv["confusion"])
        grids = [h["samples_png"] for h in self.history if "samples_png" in h]
        if grids:  # the last sample grid, whichever evaluation was selected
            metrics["samples_png"] = grids[-1]
        bundle_path = self.run_dir / "model.edgeda"
        write_bundle(
            bundle_path, {n: m.to("cpu") for n, m in modules.items()}, self.task,
            method={"name": cfg.method, "options": self.method.opts, "uses_target": self.method.uses_target},
            training={
                "config": cfg.to_dict(), "domains": self.domains.summary(), "iterations": cfg.iters,
                "selection": {"selector": cfg.select, "iteration": selected}, "wall_time_s": round(wall, 2),
                "weight_average": {"kind": "ema", "decay": cfg.ema} if self.average is not None else None,
                "init_weights": self.init_weights,
                "skipped_steps": self.skipped_steps, "machine": machine_info(),
            },
            metrics=metrics,
        )
        for m in modules.values():
            m.to(self.device)
        atomic_write_json(self.run_dir / "summary.json", {"bundle": str(bundle_path), "metrics": metrics, "wall_time_s": wall})
        return bundle_path, metrics

    # -- metrics.jsonl --------------------------------------------------------------------------
    def _rewrite_metrics(self) -> None:
        lines = "".join(json.dumps(h) + "\n" for h in self.history)
        atomic_write_bytes(self.run_dir / "metrics.jsonl", lines.encode())

    def _append_metrics(self, rec: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
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
    from ..config import make_config, resume_config

    if resume and config is None and overrides.get("out"):  # the stored run's own settings
        cfg = resume_config(overrides["out"], overrides)
    else:
        cfg = make_config(config.to_dict() if config else None, overrides)
    return Trainer(cfg, progress=progress, log=log, reference=reference).run(resume=resume)
