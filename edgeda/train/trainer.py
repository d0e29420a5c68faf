"""The one training loop every method runs in.

The trainer owns the iteration budget, the LR schedule, AMP, torchrun, periodic evaluation,
checkpoint/resume, ``metrics.jsonl``, the progress bar and the final bundle. A method only
implements ``step``. Model selection never reads target labels: target test accuracy is computed
for the report and stored, but :func:`select_checkpoint` looks at source validation only.
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
from ..data import Domain, load_domain, split_builtin
from ..errors import DataError, EdgedaError, TrainingDiverged
from ..methods import METHODS, Engine, Method, OptimConfig
from ..methods.base import NonFiniteLoss
from ..task import TaskSpec
from ..utils import atomic_write_bytes, atomic_write_json, choose_device, machine_info, seed_everything
from . import distributed
from .checkpoint import load_latest, save_checkpoint
from .evaluate import evaluate_classifier, predict_features
from .selection import EvalContext, score_all
from .streams import BatchStream


@dataclass
class Domains:
    source: Domain
    source_val: Domain
    target: Domain | None
    target_test: Domain | None

    def summary(self) -> dict:
        d = {"source": self.source.name, "source_n": len(self.source), "source_val_n": len(self.source_val)}
        for k in ("target", "target_test"):
            dom = getattr(self, k)
            if dom is not None:
                d[k], d[f"{k}_n"] = dom.name, len(dom)
                if dom.report.skipped:
                    d[f"{k}_skipped"] = len(dom.report.skipped)
        if self.source.report.skipped:
            d["source_skipped"] = len(self.source.report.skipped)
        return d


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


def load_domains(cfg: TrainConfig, needs_target: bool) -> Domains:
    """Load and check every domain before any training starts (one clear error otherwise)."""
    size = (cfg.image_size, cfg.image_size)
    kw = {"size": size, "channels": cfg.channels, "seed": cfg.seed}
    src_builtin = split_builtin(cfg.source)
    source = load_domain(cfg.source, labeled=True, split="train", n=cfg.source_n, **kw)
    source.require_usable(labeled=True)
    if src_builtin and src_builtin[1] is None and _has_split(src_builtin[0], "val"):
        val_n = max(200, min(2000, cfg.source_n // 5))
        source_val = load_domain(f"{src_builtin[0]}:val", labeled=True, n=val_n, **kw)
    else:
        order = np.random.default_rng(cfg.seed).permutation(len(source))
        n_val = max(1, int(round(cfg.val_fraction * len(source))))
        if len(source) < 2:
            raise DataError(f"source domain {source.name!r} needs at least 2 images (train + validation)")
        source_val = source.subset(order[:n_val], f"{source.name} (val)")
        source = source.subset(order[n_val:])
    num_classes = source.num_classes or int(source.labels.max()) + 1
    source.require_usable(labeled=True, num_classes=num_classes)

    target = target_test = None
    if cfg.target:
        target = load_domain(cfg.target, labeled=False, split="adapt" if _has_split(cfg.target, "adapt") else None, **kw)
        if needs_target:
            target.require_usable(labeled=False)
    test_spec = cfg.target_test
    if test_spec is None and cfg.target:
        tb = split_builtin(cfg.target)
        if tb and tb[1] is None and _has_split(tb[0], "test"):
            test_spec = f"{tb[0]}:test"
    if test_spec:
        target_test = load_domain(test_spec, labeled=True, **kw)
        target_test.require_usable(labeled=True, num_classes=num_classes)
        if source.classes and target_test.classes and source.classes != target_test.classes:
            raise DataError(
                f"classes differ between source ({', '.join(source.classes)}) and target test "
                f"({', '.join(target_test.classes)}); use the same class folders in both"
            )
    elif needs_target and target is None:
        raise DataError(f"method {cfg.method!r} needs a target domain (--target)")
    return Domains(source, source_val, target, target_test)


def _has_split(spec: str, split: str) -> bool:
    b = split_builtin(spec)
    if not b:
        return False
    return split in {"syndigits": ("train", "val", "test"), "handwritten": ("adapt", "test", "all")}.get(b[0], ())


def lr_factor(schedule: str, progress: float) -> float:
    if schedule == "dann":  # Ganin et al. 2016: mu_p = mu_0 / (1 + 10 p)^0.75
        return (1.0 + 10.0 * progress) ** -0.75
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def select_checkpoint(selector: str, history: list[dict]) -> int | None:
    """Iteration to ship under ``selector`` (None: the last); reads only ``score/*``, never target labels."""
    evals = [h for h in history if f"score/{selector}" in h]
    if selector == "last" or not evals:
        return None
    return max(evals, key=lambda h: (h[f"score/{selector}"], h["iteration"]))["iteration"]


class Trainer:
    def __init__(self, cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = print):
        self.cfg = cfg.validate()
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
        src = self.domains.source
        self.task = TaskSpec(
            num_classes=src.num_classes or int(src.labels.max()) + 1,
            classes=src.classes or [str(i) for i in range(int(src.labels.max()) + 1)],
            image_size=(cfg.image_size, cfg.image_size),
            channels=cfg.channels,
        )
        engine = Engine(self.device, amp=cfg.amp, world_size=self.dist.world_size)
        optim = OptimConfig(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.method: Method = method_cls(
            self.task, backbone=cfg.backbone, backbone_kwargs=cfg.backbone_kwargs, options=cfg.options,
            optim=optim, engine=engine,
        )
        if cfg.init and hasattr(self.method, "load_init"):
            self.method.load_init(cfg.init)
        if self.dist.enabled:
            distributed.broadcast_module(self.method.nets)
        self.display = self._display_batches()
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        aug = {"shift": cfg.augment_shift, "contrast": cfg.augment_contrast}
        self.source_stream = BatchStream(src, self.task, cfg.batch_size, self.device, cfg.seed * 1000 + 1, labeled=True, **aug, **shard)
        self.target_stream = None
        if self.domains.target is not None and method_cls.uses_target:
            self.target_stream = BatchStream(self.domains.target, self.task, cfg.batch_size, self.device, cfg.seed * 1000 + 2,
                                             labeled=False, **aug, **shard)

    def _state(self, iteration: int) -> dict:
        return {
            "iteration": iteration,
            "config": self.cfg.to_dict(),
            "method": self.method.state_dict(),
            "source_stream": self.source_stream.state_dict(),
            "target_stream": self.target_stream.state_dict() if self.target_stream else None,
            "torch_rng": torch.get_rng_state(),
            "best": self.best,
            "history": json.dumps(self.history),
            "skipped_steps": self.skipped_steps,
        }

    def _restore(self, state: dict) -> int:
        saved = state["config"]
        for key in ("method", "backbone", "source", "target", "batch_size", "seed", "image_size", "channels"):
            if saved.get(key) != getattr(self.cfg, key):
                raise EdgedaError(
                    f"cannot resume: the checkpoint in {self.ckpt_dir} was made with {key}={saved.get(key)!r}, "
                    f"not {getattr(self.cfg, key)!r}"
                )
        self.method.load_state_dict(state["method"])
        self.source_stream.load_state_dict(state["source_stream"])
        if self.target_stream is not None and state.get("target_stream"):
            self.target_stream.load_state_dict(state["target_stream"])
        torch.set_rng_state(state["torch_rng"])
        self.best = state.get("best")
        self.history = json.loads(state["history"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        return int(state["iteration"])

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, iteration: int, train_losses: dict) -> dict:
        d, task, dev = self.domains, self.task, self.device
        clf = self.method.classifier
        rec: dict = {"iteration": iteration, **{f"train/{k}": v for k, v in train_losses.items()}}
        rec["source_val_acc"] = evaluate_classifier(clf, d.source_val, task, dev)["accuracy"]
        ctx = EvalContext(rec["source_val_acc"])
        if d.target is not None:
            feats, logits = predict_features(clf, d.target.images, task, dev)
            ctx.target_logits, ctx.target_features = logits, feats
            p = logits.softmax(1)
            rec["target_entropy"] = float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())
            rec["target_confidence"] = float(p.max(1).values.mean())
        rec.update({f"score/{k}": v for k, v in score_all(ctx).items()})
        if d.target_test is not None:  # for the report only; never used for selection
            rec["target_test_acc"] = evaluate_classifier(clf, d.target_test, task, dev)["accuracy"]
        if self.dist.is_main:
            was_training = clf.training
            self.method.eval()
            with torch.no_grad():
                png = self.method.visualize(self.run_dir / "samples", iteration, *self.display)
            self.method.train() if was_training else None
            if png is not None:
                rec["samples_png"] = str(png)
        return rec

    def _display_batches(self):
        """Fixed, un-augmented batches for sample grids: up to 8 source images per class, 16 target images."""
        from ..data.transforms import to_float_nchw
        from ..methods.base import Batch

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
        self.best: dict | None = None
        self.skipped_steps = 0
        start = 0
        if resume:
            latest = load_latest(self.ckpt_dir)
            if latest is None:
                self.log(f"no checkpoint in {self.ckpt_dir}; starting from scratch")
            else:
                start = self._restore(latest[1])
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
                step_time += time.perf_counter() - t0
                steps_timed += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                done = it + 1
                bar.update(done, {k: v / count for k, v in sums.items() if k.startswith("loss")})
                if done % cfg.eval_every == 0 or done == cfg.iters:
                    rec = self.evaluate(done, {k: v / max(count, 1) for k, v in sums.items()})
                    rec["lr"] = cfg.lr * factor
                    self.history.append(rec)
                    sums, count = {}, 0
                    self._track_best(rec)
                    if self.dist.is_main:
                        self._append_metrics(rec)
                        (bar.print if bar.enabled else self.log)(_format_eval(rec))
                if (done % cfg.checkpoint_every == 0 or done == cfg.iters) and self.dist.is_main:
                    save_checkpoint(self.ckpt_dir, done, self._state(done))
                if callback is not None:
                    callback(done)
        finally:
            bar.close()
        distributed.barrier(self.dist)
        wall = time.perf_counter() - t_start
        result = TrainResult(self.run_dir, None, {}, cfg.iters, wall, step_time / max(steps_timed, 1),
                             self.history, self.skipped_steps)
        if self.dist.is_main:
            result.bundle, result.metrics = self._finish(wall)
        return result

    def _track_best(self, rec: dict) -> None:
        key = f"score/{self.cfg.select}"
        if self.cfg.select != "last" and key in rec:
            if self.best is None or rec[key] >= self.best["score"]:
                self.best = {
                    "iteration": rec["iteration"],
                    "score": rec[key],
                    "weights": {n: copy.deepcopy(m.state_dict()) for n, m in self.method.deployables().items()},
                }

    def _finish(self, wall: float) -> tuple[Path, dict]:
        cfg = self.cfg
        modules = self.method.deployables()
        selected = self.history[-1]["iteration"] if self.history else cfg.iters
        if cfg.select != "last" and self.best is not None:
            for n, m in modules.items():
                m.load_state_dict(self.best["weights"][n])
            selected = self.best["iteration"]
        final = next((h for h in self.history if h["iteration"] == selected), self.history[-1] if self.history else {})
        metrics = {k: v for k, v in final.items() if not k.startswith("train/") and k != "lr"}
        if self.domains.target_test is not None:
            full = evaluate_classifier(self.method.classifier, self.domains.target_test, self.task, self.device)
            metrics["target_test_per_class"] = full["per_class"]
        metrics["selected_iteration"] = selected
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


def _format_eval(rec: dict) -> str:
    parts = [f"iter {rec['iteration']}", f"source val {rec['source_val_acc']:.1%}"]
    if "target_test_acc" in rec:
        parts.append(f"target test {rec['target_test_acc']:.1%} (report only)")
    if "target_entropy" in rec:
        parts.append(f"target entropy {rec['target_entropy']:.3f}")
    return " | ".join(parts)


class _Progress:
    """A rich progress bar with the running losses and ETA; silent when disabled."""

    def __init__(self, enabled: bool, total: int, start: int, title: str):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
        )
        self.task = self.progress.add_task(title, total=total, completed=start, losses="")
        self.progress.start()
        self._last = 0.0

    def update(self, done: int, losses: dict) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last > 0.2:
            text = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in losses.items())
            self.progress.update(self.task, completed=done, losses=text)
            self._last = now

    def print(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


def train(config: TrainConfig | None = None, *, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] | None = print, **overrides) -> TrainResult:
    """Train ``config.method`` and write a bundle. ``overrides`` are TrainConfig fields.

    >>> result = edgeda.train(method="dann", source="syndigits", target="handwritten", iters=2000, out="runs/dann")
    >>> result.bundle, result.metrics["target_test_acc"]
    """
    from ..config import make_config

    cfg = make_config(config.to_dict() if config else None, overrides)
    return Trainer(cfg, progress=progress, log=log).run(resume=resume)
