"""Kill -9 trials, bad-input cases and fuzz examples -> ``benchmarks/results/reliability.json``.

Kill trials: a real ``edgeda train`` subprocess is killed with SIGKILL at a random moment (some
trials wait for a checkpoint or the bundle to be mid-write: checkpoints are written every few
iterations). Then every checkpoint left on disk must load, any bundle must verify, and the same
command with ``--resume`` must finish with a verified bundle and final metrics ("resumed
cleanly"). Targets are pluggable: ``TARGETS`` maps a name to a class with ``start``/``resume``/
``check``; ``adapt`` is the second (``edgeda adapt``: no resume, the same command is run again),
``adapt_dense`` the same on a segmentation bundle.

Bad input: the cases in ``tests/test_bad_input.py`` (and the tampered-bundle cases in
``tests/test_reliability.py``) are run with pytest and counted. Fuzz: the hypothesis properties in
``tests/test_fuzz.py`` are run and their examples counted.

    python benchmarks/reliability.py [--trials 10] [--targets train] [--table-only]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_tables import replace_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


class TrainTarget:
    """``edgeda train`` (DANN, tiny DTN) with a checkpoint every few iterations."""

    name = "train"
    config = {"method": "dann", "source": "syndigits", "target": "handwritten", "source_n": 1000, "iters": 300,
              "batch_size": 16, "backbone_kwargs": {"width": 8, "out_dim": 32}, "checkpoint_every": 7,
              "eval_every": 100, "device": "cpu", "seed": 0}

    def __init__(self, work: Path):
        import yaml

        self.cfg_file = work / "train.yaml"
        self.cfg_file.parent.mkdir(parents=True, exist_ok=True)
        self.cfg_file.write_text(yaml.safe_dump(self.config))

    def command(self, run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "edgeda", "train", "--config", str(self.cfg_file), "--out", str(run_dir)]

    def start(self, run_dir: Path) -> subprocess.Popen:
        return subprocess.Popen(self.command(run_dir), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def writes_in_progress(self, run_dir: Path, what: str) -> set[str]:
        """Temporary files of a checkpoint (``what="checkpoint"``) or bundle being written right now."""
        if what == "checkpoint":
            folder, pattern = run_dir / "checkpoints", ".ckpt-"
        else:
            folder, pattern = run_dir, ".model.edgeda."
        try:
            return {n for n in os.listdir(folder) if n.startswith(pattern)}
        except OSError:
            return set()

    def training_started(self, run_dir: Path) -> bool:
        return (run_dir / "config.json").exists()  # written after data loading, just before the loop

    def check_left_behind(self, run_dir: Path) -> dict:
        """After the kill: every checkpoint on disk loads, a bundle (if any) verifies."""
        from edgeda.bundle import Bundle
        from edgeda.training.checkpoint import list_checkpoints, load_checkpoint

        its = list_checkpoints(run_dir / "checkpoints")
        for it in its:
            load_checkpoint(run_dir / "checkpoints", it)  # raises if torn or corrupt
        bundle = run_dir / "model.edgeda"
        if bundle.exists():
            Bundle(bundle)
        return {"checkpoints_left": its, "bundle_left": bundle.exists()}

    def resume(self, run_dir: Path) -> dict:
        from edgeda.bundle import Bundle

        res = subprocess.run([*self.command(run_dir), "--resume"], env=ENV, capture_output=True, text=True, timeout=1800)
        m = re.search(r"resumed from iteration (\d+)", res.stdout)
        out = {"exit_code": res.returncode, "resumed_from": int(m.group(1)) if m else 0}
        if res.returncode != 0:
            out["error"] = res.stderr[-1000:]
            return out
        summary = json.loads((run_dir / "summary.json").read_text())
        bundle = Bundle(summary["bundle"])
        out["bundle_verified"] = bundle.manifest["training"]["iterations"] == self.config["iters"]
        out["final_metrics"] = "target_test_acc" in summary["metrics"] and "source_val_acc" in summary["metrics"]
        out["target_test_acc"] = summary["metrics"].get("target_test_acc")
        return out


class AdaptTarget:
    """``edgeda adapt`` (TENT on 300 handwritten images, tiny DTN bundle). There is no checkpoint to
    resume from: after a kill, the input bundle must be unchanged, the output either absent or a
    complete verified bundle, and the same command run again must write a verified bundle."""

    name = "adapt"
    kill_modes = ("bundle",)
    config = {"method": "tent", "iters": 400, "batch": 16, "threads": 1, "seed": 0, "target_images": 300}

    def __init__(self, work: Path):
        from edgeda.data import load_domain
        from edgeda.models import build
        from edgeda.bundle import write_bundle
        from edgeda.tasks.spec import TaskSpec
        from edgeda.utils import sha256_file

        work.mkdir(parents=True, exist_ok=True)
        import torch

        torch.manual_seed(0)
        clf = build("classifier", backbone="dtn", num_classes=10, backbone_kwargs={"width": 8, "out_dim": 32})
        self.bundle = write_bundle(work / "adapt-shipped.edgeda", {"classifier": clf},
                                   TaskSpec(num_classes=10, classes=[str(i) for i in range(10)]))
        dom = load_domain("handwritten:adapt", labeled=False, size=(8, 8), channels=1, n=self.config["target_images"])
        self.target = work / "adapt-target.npz"
        np.savez(self.target, x=dom.images[..., 0])
        self.hashes = {f.name: sha256_file(f) for f in sorted(self.bundle.iterdir())}

    def command(self, run_dir: Path) -> list[str]:
        c = self.config
        return [sys.executable, "-m", "edgeda", "adapt", str(self.bundle), "--target-dir", str(self.target),
                "--out", str(run_dir / "adapted.edgeda"), "--method", c["method"], "--iters", str(c["iters"]),
                "--batch", str(c["batch"]), "--threads", str(c["threads"]), "--seed", str(c["seed"])]

    def start(self, run_dir: Path) -> subprocess.Popen:
        run_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(self.command(run_dir), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def writes_in_progress(self, run_dir: Path, what: str) -> set[str]:
        try:
            return {n for n in os.listdir(run_dir) if n.startswith(".adapted.edgeda.")}
        except OSError:
            return set()

    def training_started(self, run_dir: Path) -> bool:
        return run_dir.is_dir()  # adapt writes nothing before its bundle: the window is the whole process

    def check_left_behind(self, run_dir: Path) -> dict:
        from edgeda.bundle import Bundle
        from edgeda.utils import sha256_file

        if {f.name: sha256_file(f) for f in sorted(self.bundle.iterdir())} != self.hashes:
            raise RuntimeError("the input bundle changed")
        out = run_dir / "adapted.edgeda"
        if out.exists():
            Bundle(out)
        return {"checkpoints_left": [], "bundle_left": out.exists()}

    def resume(self, run_dir: Path) -> dict:
        from edgeda.bundle import Bundle

        res = subprocess.run(self.command(run_dir), env=ENV, capture_output=True, text=True, timeout=1800)
        out = {"exit_code": res.returncode, "resumed_from": 0}
        if res.returncode != 0:
            out["error"] = res.stderr[-1000:]
            return out
        a = Bundle(run_dir / "adapted.edgeda").manifest["adaptation"]
        out["bundle_verified"] = a["iterations_done"] == self.config["iters"]
        out["final_metrics"] = "after" in a and "mean_entropy" in a["after"]
        return out


class DenseAdaptTarget(AdaptTarget):
    """``edgeda adapt`` of a segmentation bundle (TENT on 64 frames of 32x32 px; a tiny LR-ASPP
    trained source-only for 40 iterations on generated scenes): the same checks as ``adapt``."""

    name = "adapt_dense"
    title = "`edgeda adapt` of a segmentation bundle"
    config = {"method": "tent", "iters": 60, "batch": 4, "threads": 1, "seed": 0, "target_images": 64}

    def __init__(self, work: Path):
        import edgeda
        from edgeda.utils import sha256_file

        work.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)

        def scenes(n):  # a bright square (class 1) on a noisy background (class 0)
            x = rng.integers(60, 140, (n, 32, 32, 3)).astype(np.uint8)
            y = np.zeros((n, 32, 32), np.uint8)
            for i in range(n):
                r, c = rng.integers(0, 20, 2)
                y[i, r:r + 10, c:c + 10] = 1
            x[y == 1] = 220
            return x, y

        x, y = scenes(32)
        np.savez(work / "dense-source.npz", x=x, y=y, classes=np.array(["bg", "square"]))
        self.target = work / "dense-target.npz"
        np.savez(self.target, x=scenes(self.config["target_images"])[0])
        res = edgeda.train(method="source_only", task="segmentation", source=str(work / "dense-source.npz"),
                           target=str(self.target), iters=40, eval_every=40, batch_size=8, image_size=[32, 32],
                           backbone="lraspp", backbone_kwargs={"width": 0.25}, out=str(work / "dense-shipped"),
                           device="cpu", progress=False, log=None)
        self.bundle = res.bundle
        self.hashes = {f.name: sha256_file(f) for f in sorted(self.bundle.iterdir())}


TrainTarget.kill_modes = ("checkpoint", "bundle")
TARGETS = {"train": TrainTarget, "adapt": AdaptTarget, "adapt_dense": DenseAdaptTarget}


def kill_trial(target, run_dir: Path, mode: str, delay: float, skip_writes: int = 0) -> dict:
    """Kill ``delay`` s after training has started (mode "random": after start-up, so the moment falls
    in the training loop) or in the middle of the (skip_writes+1)-th temporary file of a checkpoint /
    bundle write (modes "checkpoint" / "bundle")."""
    shutil.rmtree(run_dir, ignore_errors=True)
    proc = target.start(run_dir)
    t0 = time.perf_counter()
    killed = False
    seen: set[str] = set()
    started = None
    while proc.poll() is None:
        if started is None and target.training_started(run_dir):
            started = time.perf_counter()
        elapsed = time.perf_counter() - started if started is not None else -1.0
        if mode != "random":
            now = target.writes_in_progress(run_dir, mode)
            seen |= now
        if mode == "random" and elapsed >= delay or mode != "random" and now and len(seen) > skip_writes:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.0005 if mode != "random" else 0.01)
    proc.wait()
    rec = {"mode": mode, "killed": killed, "killed_after_s": round(time.perf_counter() - t0, 2),
           "killed_after_training_start_s": None if started is None else round(time.perf_counter() - started, 2)}
    if mode != "random":
        rec["killed_during"] = sorted(now) if killed else []
    if not killed:
        rec["note"] = f"the run ended (exit {proc.returncode}) before the kill"
    try:
        rec.update(target.check_left_behind(run_dir))
        rec["left_intact"] = True
    except Exception as e:  # noqa: BLE001 - this is what the trial looks for
        rec.update(left_intact=False, damage=f"{type(e).__name__}: {e}")
    rec["resume"] = target.resume(run_dir)
    r = rec["resume"]
    rec["resumed_cleanly"] = bool(rec["left_intact"] and r["exit_code"] == 0 and r.get("bundle_verified")
                                  and r.get("final_metrics"))
    return rec


def calibrate(target, run_dir: Path) -> float:
    """Seconds from training start to the end of an uninterrupted run (random kills fall inside it)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    proc = target.start(run_dir)
    started = None
    while proc.poll() is None:
        if started is None and target.training_started(run_dir):
            started = time.perf_counter()
        time.sleep(0.01)
    if proc.returncode != 0 or started is None:
        raise SystemExit(f"calibration run failed: {proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - started


def pytest_counts(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, env=ENV,
                         capture_output=True, text=True)
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0),
            "skipped": counts.get("skipped", 0), "summary": tail}


def run_fuzz() -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("edgeda_test_fuzz", ROOT / "tests" / "test_fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    failures = {}
    for name in dir(mod):
        if name.startswith("test_"):
            try:
                getattr(mod, name)()
            except Exception as e:  # noqa: BLE001
                failures[name] = f"{type(e).__name__}: {str(e)[:300]}"
    return {"examples": dict(mod.EXAMPLES), "total_examples": sum(mod.EXAMPLES.values()), "failures": failures}


def markdown(r: dict) -> str:
    lines = ["| check | result |", "|---|---|"]
    for name, k in r["kill_trials"].items():
        modes = ", ".join(f"{n} {m}" for m, n in k["modes"].items())
        again = "`--resume`" if name == "train" else "the same command again"
        title = getattr(TARGETS.get(name), "title", f"`edgeda {name}`")
        lines.append(f"| `kill -9` of {title} at random moments ({modes}), then {again} | "
                     f"{k['resumed_cleanly']}/{k['trials']} {'resumed' if name == 'train' else 'completed'} cleanly; "
                     f"{k['killed']}/{k['trials']} killed before the "
                     f"run ended; {k['left_intact']}/{k['trials']} left only intact checkpoints/bundles |")
    b = r["bad_input"]
    lines.append(f"| bad-input cases (`tests/test_bad_input.py`) | {b['passed']} handled, {b['failed']} failed, "
                 f"{b['skipped']} skipped |")
    t = r["tampered_bundles"]
    lines.append(f"| tampered/foreign bundle cases (`tests/test_reliability.py`) | {t['passed']} refused as expected, "
                 f"{t['failed']} failed |")
    f = r["fuzz"]
    lines.append(f"| hypothesis examples (`tests/test_fuzz.py`) | {f['total_examples']} run "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(f['examples'].items()))}), {len(f['failures'])} failing |")
    m = r["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {r['date']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--targets", default="train", help=f"comma-separated: {', '.join(TARGETS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=None,
                    help="random kills fall in [0, this] s after training starts (default: 0.95 x a measured uninterrupted run)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--runs-dir", default=os.environ.get("EDGEDA_BENCH_RUNS", "runs/bench-reliability"))
    args = ap.parse_args(argv)
    out = RESULTS / "reliability.json"
    if not args.table_only:
        from edgeda.utils import machine_info

        rng = np.random.default_rng(args.seed)
        work = Path(args.runs_dir)
        previous = json.loads(out.read_text()) if out.exists() else {}
        result = {"kill_trials": dict(previous.get("kill_trials", {}))}  # targets not run this time are kept
        for name in args.targets.split(","):
            target = TARGETS[name](work)
            max_delay = args.max_delay or 0.95 * calibrate(target, work / f"{name}-calibration")
            # most kills at a random moment; some while a checkpoint, one while the bundle, is mid-write
            modes = (["checkpoint"] * max(1, args.trials * 3 // 10) if "checkpoint" in target.kill_modes else []) + ["bundle"]
            modes = ["random"] * (args.trials - len(modes)) + modes
            trials = []
            for i, mode in enumerate(modes):
                delay = float(rng.uniform(0.0, max_delay))
                skip = int(rng.integers(0, 12)) if mode == "checkpoint" else 0
                rec = kill_trial(target, work / f"{name}-{i}", mode, delay, skip)
                print(f"{name} trial {i} ({mode}): killed {rec['killed']} at {rec['killed_after_training_start_s']}s "
                      f"into training, "
                      f"resumed from {rec['resume'].get('resumed_from')}, clean={rec['resumed_cleanly']}", flush=True)
                trials.append(rec)
            result["kill_trials"][name] = {
                "trials": len(trials), "resumed_cleanly": sum(t["resumed_cleanly"] for t in trials),
                "left_intact": sum(t["left_intact"] for t in trials), "killed": sum(t["killed"] for t in trials),
                "modes": {m: modes.count(m) for m in dict.fromkeys(modes)}, "random_kill_window_s": round(max_delay, 2), "config": target.config, "runs": trials,
            }
        result["bad_input"] = pytest_counts(["tests/test_bad_input.py"])
        result["tampered_bundles"] = pytest_counts(["tests/test_reliability.py", "-k", "bundle or manifest or version"])
        result["fuzz"] = run_fuzz()
        result["machine"] = machine_info()
        result["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    result = json.loads(out.read_text())
    replace_block("reliability-table", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
