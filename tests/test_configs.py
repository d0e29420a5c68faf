import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_is_the_benchmarked_cpu_profile():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from adaptation import PROFILES

    demo = yaml.safe_load((ROOT / "configs" / "digits-cpu.yaml").read_text())
    common = dict(PROFILES["cpu"]["common"])
    common.pop("checkpoint_every")  # the benchmark skips checkpoints; the demo keeps them
    demo.pop("checkpoint_every")
    for k in ("source", "target"):
        assert demo.pop(k) == {"source": "syndigits", "target": "handwritten"}[k]
    assert demo == common


def test_stored_benchmark_runs_go_stale_when_renderer_profile_or_method_defaults_change(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adaptation
    from edgeda.methods import METHODS

    cfg = adaptation.run_config("cpu", "coral", 0)
    run = {"method": "coral", "seed": 0, "config": cfg, "data_version": adaptation.data_version(),
           "method_options": adaptation.method_options(cfg)}
    assert adaptation.staleness(run, "cpu") is None
    assert "profile setting" in adaptation.staleness({**run, "config": {**cfg, "iters": 1}}, "cpu")
    assert "syndigits-v0" in adaptation.staleness({**run, "data_version": "syndigits-v0"}, "cpu")
    legacy = {k: v for k, v in run.items() if k != "method_options"}  # stored before options were recorded
    assert adaptation.is_current(legacy, "cpu")
    coral = METHODS.get("coral")
    monkeypatch.setattr(coral, "defaults", {**coral.defaults, "bn": "joint"})  # a default changes in the code
    assert "option defaults" in adaptation.staleness(run, "cpu")
    assert adaptation.is_current(legacy, "cpu")
    monkeypatch.undo()
    # an option added later: a run stored without it ran with its old-behaviour value
    monkeypatch.setitem(adaptation.ADDED_OPTIONS, "coral", {"newopt": 1})
    monkeypatch.setattr(coral, "defaults", {**coral.defaults, "newopt": 1})
    assert adaptation.staleness(run, "cpu") is None
    monkeypatch.setattr(coral, "defaults", {**coral.defaults, "newopt": 2})  # the new default changes behaviour
    assert "option defaults" in adaptation.staleness(run, "cpu")
