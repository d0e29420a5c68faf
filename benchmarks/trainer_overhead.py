"""Trainer overhead: time per iteration of `edgeda train` vs a bare PyTorch loop, side by side.

The bare loop runs the same DANN forward/backward/optimizer step on the same batches, which are
drawn beforehand from the same seeded streams the trainer uses (so it pays nothing for data).
The trainer pays for everything it does: drawing and augmenting batches, the LR schedule, loss
bookkeeping, the progress machinery and the non-finite guard. Evaluation and checkpoint
iterations are excluded from both (they are separate work, reported by the trainer itself).
Rounds alternate bare / trainer to share the machine's noise; medians of per-iteration times.

    python benchmarks/trainer_overhead.py [--iters 200] [--rounds 3]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adaptation import run_config  # noqa: E402
from readme_tables import replace_block  # noqa: E402


def make_trainer(iters: int, out: Path):
    from edgeda.config import make_config
    from edgeda.training.trainer import Trainer

    cfg = run_config("cpu", "dann", 0)
    cfg.update(iters=iters, eval_every=iters, checkpoint_every=10**9, out=str(out))
    return Trainer(make_config(None, cfg), progress=False, log=None)


def bare_loop(trainer, iters: int) -> list[float]:
    """Plain PyTorch: the DANN step written by hand, on batches drawn in advance."""
    from edgeda.models import dann_coefficient, gradient_reversal

    trainer.setup()
    m = trainer.method
    clf, disc, opt = m.nets["model"], m.nets["domain"], m.optims["main"]
    batches = [(trainer.source_stream.next(), trainer.target_stream.next()) for _ in range(iters)]
    m.train()
    times = []
    for it, (s, t) in enumerate(batches):
        t0 = time.perf_counter()
        p = it / iters
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * (1 + 10 * p) ** -0.75
        feats, logits = clf.features_and_logits(torch.cat([s.x, t.x]))
        cls = F.cross_entropy(logits[: len(s)], s.y)
        d = disc(gradient_reversal(feats, dann_coefficient(p)))
        lab = torch.cat([torch.ones(len(s)), torch.zeros(len(t))])
        loss = cls + F.binary_cross_entropy_with_logits(d, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    return times


def trainer_loop(trainer, iters: int) -> list[float]:
    stamps: list[float] = []
    trainer.run(callback=lambda it: stamps.append(time.perf_counter()))
    diffs = [b - a for a, b in zip(stamps, stamps[1:])]
    return diffs[:-1]  # the last interval contains the final evaluation


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from edgeda.utils import machine_info

    bare_all, trainer_all = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare_all += bare_loop(make_trainer(args.iters, Path(tmp) / f"b{r}"), args.iters)[5:]
            trainer_all += trainer_loop(make_trainer(args.iters, Path(tmp) / f"t{r}"), args.iters)[5:]
    bare_med, tr_med = statistics.median(bare_all), statistics.median(trainer_all)
    result = {
        "method": "dann", "profile": "cpu", "iters_per_round": args.iters, "rounds": args.rounds,
        "bare_ms_per_iter": {"median": 1000 * bare_med, "mean": 1000 * statistics.fmean(bare_all)},
        "trainer_ms_per_iter": {"median": 1000 * tr_med, "mean": 1000 * statistics.fmean(trainer_all)},
        "ratio_median": tr_med / bare_med, "ratio_mean": statistics.fmean(trainer_all) / statistics.fmean(bare_all),
        "target_ratio": 1.15, "machine": machine_info(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = ROOT / "benchmarks" / "results" / "trainer_overhead.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    md = (f"DANN, cpu profile, {args.rounds} interleaved rounds x {args.iters} iterations on {m['cpu']} "
          f"({m['cores']} cores, torch {m['torch']}).\n\n"
          "| loop | median ms / iteration | mean ms / iteration |\n|---|---|---|\n"
          f"| bare PyTorch (batches drawn in advance) | {result['bare_ms_per_iter']['median']:.2f} | {result['bare_ms_per_iter']['mean']:.2f} |\n"
          f"| `edgeda train` | {result['trainer_ms_per_iter']['median']:.2f} | {result['trainer_ms_per_iter']['mean']:.2f} |\n"
          f"| ratio (target <= 1.15) | {result['ratio_median']:.3f} | {result['ratio_mean']:.3f} |")
    replace_block("overhead-table", md)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
