"""scripts/gpu_check.sh --dry-run: every step of the GPU check runs end to end on the CPU at toy
sizes (CUDA-only steps say "skipped: no CUDA"), so the script cannot rot between GPU runs."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(os.environ.get("EDGEDA_SKIP_GPU_CHECK_DRY_RUN") == "1", reason="asked to skip")
def test_gpu_check_dry_run_runs_every_step_and_records_them(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work"),
           "OMP_NUM_THREADS": "1", "EDGEDA_ONNX_EXPORTER": "torchscript"}
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "skipped: no CUDA" in out and "TensorRT is not installable" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dry_run"] is True
    status = {s["step"]: s["status"] for s in summary["steps"]}
    for name in ("kernels-build", "kernels-tests", "kernels-bench", "torchrun", "ort-gpu"):
        assert status[name] == "skipped", (name, status)
    for name in ("setup", "env", "train", "bench", "step-efficiency"):
        assert status[name] == "ok", (name, status, out[-4000:])
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert {r["run"] for r in train["rows"]} == {"dann", "source_only_seg", "source_only_det", "pixelda"}
    assert all(r["cpu"]["iters_per_s"] > 0 and r["cuda"] == {"skipped": "no CUDA"} for r in train["rows"])
    bench = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert set(bench["results"]) == {"classification", "segmentation", "detection"}
    assert "GPU check summary (DRY RUN" in out
    # everything that comes back from a GPU machine fits its limit of 8 files in $OUT
    assert len(list((tmp_path / "out").iterdir())) <= 8
