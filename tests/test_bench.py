import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeda.bench import STATS, bench, latency_stats
from edgeda.cli import main
from test_export import tiny_bundle


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.001, 1e4, allow_nan=False), min_size=1, max_size=300))
def test_latency_stats_are_ordered(samples):
    s = latency_stats(samples)
    assert s["min"] <= s["median"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
    assert s["min"] <= s["mean"] * (1 + 1e-12) and s["mean"] <= s["max"] * (1 + 1e-12)
    assert s["n"] == len(samples)


def test_bench_reports_every_statistic_and_skips_unsupported(tmp_path):
    src = tiny_bundle(tmp_path / "m.edgeda")
    res = bench(src, ["torch", "ort"], [1, 3], ["fp32", "fp16"], warmup=1, iters=6, threads=1, rounds=2)
    got = {(r["backend"], r["precision"], r["batch"]) for r in res["results"]}
    assert {("torch", "fp32", 1), ("torch", "fp32", 3), ("ort", "fp32", 1), ("ort", "fp16", 3)} <= got
    assert [s["backend"] for s in res["skipped"]] == ["torch"]  # fp16 eager on CPU
    for r in res["results"]:
        s = r["latency_ms"]
        assert set(STATS) <= set(s) and s["n"] == 6 == len(r["samples_ms"])
        assert 0 < s["min"] <= s["median"] <= s["p99"] <= s["max"]
        assert np.isclose(r["throughput_ips"], r["batch"] / (s["mean"] / 1e3))
        assert r["peak_rss_increase_mb"] >= 0
    assert res["machine"]["cpu"] and res["settings"]["threads"] == 1 and res["settings"]["rounds"] == 2


def test_bench_cli_writes_json_and_plot(tmp_path):
    src = tiny_bundle(tmp_path / "m.edgeda")
    r = CliRunner().invoke(main, ["bench", str(src), "--backend", "ort", "--batch", "2", "--iters", "4", "--warmup", "1",
                                  "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["results"][0]["latency_ms"]["n"] == 4 and (tmp_path / "b.png").stat().st_size > 1000
    assert "median" in r.output and "input 3x32x32 (CxHxW)" in r.output
    assert data["input"] == {"channels": 3, "height": 32, "width": 32}
    r = CliRunner().invoke(main, ["bench", str(src), "--backend", "torch", "--precision", "int8", "--iters", "2"])
    assert r.exit_code == 2 and "no configuration could run" in r.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA event timing needs a CUDA GPU")
def test_cuda_event_times_are_one_positive_time_per_call():
    from edgeda.bench.harness import cuda_event_times_ms

    x = torch.randn(512, 512, device="cuda")
    times = cuda_event_times_ms(lambda: x @ x, 5)
    assert len(times) == 5 and all(t > 0 for t in times)
