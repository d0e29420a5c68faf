"""What the trainer records at each periodic evaluation of the network it would ship.

Source validation, the label-free ``score/*`` validators, the user's few labeled target images
(``--target-val``: selection and report), the target test split (report only, never selection)
and a sample grid. What differs between tasks comes from the task object.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.transforms import to_float_nchw
from ..methods.base import Batch
from ..scores import probs_entropy
from .model_eval import eval_batches, evaluate_model, evaluation_context
from .selection import score_all


class Evaluator:
    """Scores one run's shipped network at an iteration; keeps the full target test scores of each
    evaluation (``test_scores``) for the bundle's report of the iteration that ships."""

    def __init__(self, domains, task_def, spec, device, *, seed: int, hflip: bool, target_val=None,
                 reference: torch.nn.Module | None = None, samples_dir: Path | None = None):
        self.domains, self.task_def, self.spec, self.device = domains, task_def, spec, device
        self.seed, self.hflip, self.target_val, self.reference = seed, hflip, target_val, reference
        self.samples_dir = samples_dir  # None: no sample grids (ranks other than 0)
        self.test_scores: dict[int, dict] = {}  # iteration -> full target test scores
        self.reference_rows = None  # the reference model's target rows, computed at the first evaluation
        self.display = display_batches(domains, task_def, spec, device)

    def __call__(self, iteration: int, net: torch.nn.Module, method, train_losses: dict) -> dict:
        d, spec, dev, t = self.domains, self.spec, self.device, self.task_def
        rec: dict = {"iteration": iteration, **{f"train/{k}": v for k, v in train_losses.items()}}
        if self.reference is not None and d.target is not None and self.reference_rows is None:
            # same seed: the same pixel sample for dense rows
            self.reference_rows = evaluate_model(self.reference.to(dev), d.target, spec, dev, labels=False,
                                                 rows=True, seed=self.seed).rows
        ctx, val, out = evaluation_context(net, d, spec, dev, seed=self.seed, reference_rows=self.reference_rows,
                                           hflip=self.hflip)
        rec.update({f"source_val_{k}": val[v] for k, v in t.record_keys.items()})
        if out is not None and out.rows is not None and len(out.rows) and spec.num_classes:
            p = out.rows.softmax(1)
            rec["target_entropy"] = float(probs_entropy(p, 1).mean())
            rec["target_confidence"] = float(p.max(1).values.mean())
        rec.update({f"score/{k}": v for k, v in score_all(ctx).items()})
        if self.target_val is not None:  # the user's few labeled target images: selection and report
            tv = evaluate_model(net, self.target_val, spec, dev).scores
            rec.update({f"target_val_{k}": tv[v] for k, v in t.record_keys.items()})
            rec["score/target_val"] = t.selection_score(tv)
        if d.target_test is not None:  # for the report only; never used for selection
            test = evaluate_model(net, d.target_test, spec, dev).scores
            self.test_scores[iteration] = test  # the bundle's full report, if this iteration ships
            rec.update({f"target_test_{k}": test[v] for k, v in t.record_keys.items()})
        if self.samples_dir is not None:
            png = self.draw_samples(iteration, net, method)
            if png is not None:
                rec["samples_png"] = str(png)
        return rec

    def draw_samples(self, iteration: int, net: torch.nn.Module, method):
        """The method's own sample grid, else (where the task draws samples: the dense tasks) image | truth |
        prediction | error for the first target test (else source validation) images; the path written, or None."""
        was_training = net.training
        method.eval()
        with torch.no_grad():
            png = method.visualize(self.samples_dir, iteration, *self.display)
            if png is None and self.task_def.draws_samples:
                dom = self.domains.target_test or self.domains.source_val
                x, y, raw = next(eval_batches(dom, self.spec, self.device, 4, labels=True))
                png = self.task_def.sample_panels(self.spec, net, x, y, raw, self.samples_dir / f"iter{iteration:06d}.png",
                                                  f"{dom.name}, iteration {iteration}")
        method.train() if was_training else None
        return png


def display_batches(domains, task_def, spec, device) -> tuple[Batch | None, Batch | None]:
    """Fixed, un-augmented (source, target) batches for sample grids: up to 8 source images per
    class, 16 target images (dense tasks: 8 of each)."""
    if not task_def.display_per_class:
        def first(dom, n):
            if dom is None:
                return None
            x, y, _ = next(eval_batches(dom, spec, device, min(n, len(dom)), labels=dom is domains.source_val))
            return Batch(x, task_def.labels_to(y, device))

        return first(domains.source_val, 8), first(domains.target, 8)

    def batch(dom, idx):
        x = torch.from_numpy(np.ascontiguousarray(dom.images[idx])).to(device)
        y = torch.from_numpy(dom.labels[idx]).to(device) if dom.labels is not None else None
        m = None
        if dom.foreground is not None:
            m = torch.from_numpy(dom.foreground[idx]).to(device).unsqueeze(1).float() / 255
        return Batch(to_float_nchw(x, spec.mean, spec.std), y, m)

    sv = domains.source_val
    idx = np.concatenate([np.flatnonzero(sv.labels == c)[:8] for c in range(spec.num_classes)])
    src = batch(sv, idx[:80])
    tgt = batch(domains.target, np.arange(min(16, len(domains.target)))) if domains.target is not None else None
    return src, tgt
