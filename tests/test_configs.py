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
    unrecorded = {k: v for k, v in run.items() if k != "method_options"}
    assert "not recorded" in adaptation.staleness(unrecorded, "cpu")
    coral = METHODS.get("coral")
    monkeypatch.setattr(coral, "defaults", {**coral.defaults, "bn": "joint"})  # a default changes in the code
    assert "option defaults" in adaptation.staleness(run, "cpu")
    monkeypatch.undo()
    # an option added later: the stored run's resolved options lack it, so it is stale
    monkeypatch.setattr(coral, "defaults", {**coral.defaults, "newopt": 1})
    assert "option defaults" in adaptation.staleness(run, "cpu")
    fresh = {**run, "method_options": adaptation.method_options(cfg)}
    assert adaptation.staleness(fresh, "cpu") is None
    # ... unless the method declares it for another task only: a classification run did not use it
    monkeypatch.setattr(coral, "option_tasks", {"newopt": ("detection",)})
    assert adaptation.staleness(run, "cpu") is None
    monkeypatch.setattr(coral, "defaults", {**coral.defaults, "newopt": 2})
    assert adaptation.staleness(fresh, "cpu") is None  # its value does not matter here either
    monkeypatch.setattr(coral, "option_tasks", {"newopt": ("classification", "detection")})
    assert "option defaults" in adaptation.staleness(fresh, "cpu")


def test_candidate_settings_are_parsed_merged_and_judged_by_info_max_only():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import candidates
    import pytest

    change = candidates.parse_try(["ema=0.999", "options.bn=joint"])
    assert change == {"ema": 0.999, "options": {"bn": "joint"}}
    assert candidates.tag(change) == "options.bn=joint,ema=0.999"
    cfg = {"iters": 10, "options": {"bn": "separate", "adv": 1.0}}
    assert candidates.apply(cfg, change) == {"iters": 10, "ema": 0.999, "options": {"bn": "joint", "adv": 1.0}}
    assert cfg["options"]["bn"] == "separate"  # the profile's config is not modified
    for bad in (["ema"], ["foo.bar=1"], ["options.=1"]):
        with pytest.raises(SystemExit):
            candidates.parse_try(bad)

    def run(seed, im, acc, sel=2):  # the score at the shipped iteration counts, not the best one
        return {"seed": seed, "selected_iteration": sel, "target_test_acc": acc,
                "history": [{"iteration": 1, "score/info_max": 9.0}, {"iteration": 2, "score/info_max": im}]}

    current = [run(0, 1.0, 0.9), run(1, 1.2, 0.9), run(2, 5.0, 0.9)]
    better_but_less_accurate = [run(0, 1.3, 0.1), run(1, 1.3, 0.1)]  # seed 2 missing: judged on seeds 0, 1
    v = candidates.verdict(current, better_but_less_accurate)
    assert v["seeds"] == [0, 1] and v["adopt"] is True
    assert abs(v["candidate"]["info_max"] - 1.3) < 1e-12 and abs(v["current"]["info_max"] - 1.1) < 1e-12
    assert abs(v["gain"] - 0.2) < 1e-12 and abs(v["gain_se"] - 0.1) < 1e-12  # gains 0.3, 0.1: sd 0.141 / sqrt 2
    # a higher mean inside the seed spread is not enough: gains +0.3 and -0.2, mean 0.05 < its se 0.25
    assert candidates.verdict(current, [run(0, 1.3, 1.0), run(1, 1.0, 1.0)])["adopt"] is False
    assert candidates.verdict(current, [run(0, 0.9, 1.0), run(1, 1.1, 1.0)])["adopt"] is False  # accuracy decides nothing
    assert candidates.verdict(current, [run(0, 3.0, 1.0)])["adopt"] is None  # one seed: no spread to judge by
    assert candidates.verdict(current, [run(7, 3.0, 1.0)])["adopt"] is None
    # sequential seeds: only a 3-seed verdict with a positive gain inside its margin asks for seeds 3, 4
    inside = candidates.verdict(current, [run(0, 1.3, 1.0), run(1, 1.0, 1.0), run(2, 5.1, 1.0)])
    assert inside["adopt"] is False and inside["gain"] > 0 and candidates.needs_more_seeds(inside)
    below = candidates.verdict(current, [run(0, 0.7, 1.0), run(1, 1.4, 1.0), run(2, 4.9, 1.0)])
    assert below["adopt"] is False and below["gain"] < 0 and not candidates.needs_more_seeds(below)
    clear = candidates.verdict(current, [run(0, 1.2, 1.0), run(1, 1.4, 1.0), run(2, 5.2, 1.0)])
    assert clear["adopt"] is True and not candidates.needs_more_seeds(clear)
    five = [*current, run(3, 1.0, 0.9), run(4, 1.0, 0.9)]
    settled = candidates.verdict(five, [run(0, 1.3, 1.0), run(1, 1.0, 1.0), run(2, 5.1, 1.0), run(3, 1.1, 1.0),
                                        run(4, 1.0, 1.0)])
    assert settled["seeds"] == [0, 1, 2, 3, 4] and not candidates.needs_more_seeds(settled)  # 5 seeds: final


def test_a_null_setting_removes_it_and_a_run_stored_with_it_stays_current():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adaptation
    import candidates

    cfg = adaptation.run_config("cpu", "pixelda", 0)
    change = candidates.parse_try(["init_from=null"])
    scratch = candidates.apply(cfg, change)
    assert "init_from" not in scratch and cfg["init_from"] == "source_only"  # the profile's config is left alone
    assert candidates.settled({**scratch, "init_from": None}) == scratch
    run = {"method": "pixelda", "seed": 0, "config": {**cfg, "ema": None}, "data_version": adaptation.data_version(),
           "method_options": adaptation.method_options(cfg), "init_config": adaptation.expected_init("cpu", cfg, 0)}
    assert adaptation.staleness({**run, "config": cfg}, "cpu") is None
    # pixelda's ema 0.999 stored as null is another setting
    assert adaptation.staleness(run, "cpu") == "made with another cpu profile setting"


def test_a_run_goes_stale_when_the_run_it_started_from_changes(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adaptation

    cfg = adaptation.run_config("cpu", "pixelda", 0)
    assert cfg["init_from"] == "source_only"
    init = adaptation.run_config("cpu", "source_only", 0)
    run = {"method": "pixelda", "seed": 0, "config": cfg, "data_version": adaptation.data_version(),
           "method_options": adaptation.method_options(cfg), "init_config": init}
    assert adaptation.staleness(run, "cpu") is None
    assert "source_only run with other settings" in adaptation.staleness({**run, "init_config": {**init, "iters": 5}}, "cpu")
    # the run it started from moves to another setting: the stored init_config no longer matches
    monkeypatch.setitem(adaptation.PROFILES["cpu"]["methods"], "source_only", {})
    assert "other settings" in adaptation.staleness(run, "cpu")


def test_init_bundle_is_refused_when_trained_with_other_settings(tmp_path):
    import json

    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adaptation

    with pytest.raises(SystemExit, match="run source_only seed 0 first"):
        adaptation.init_bundle("cpu", "source_only", 0, tmp_path)
    bundle = tmp_path / "source_only-s0" / "model.edgeda"
    bundle.mkdir(parents=True)
    want = adaptation.run_config("cpu", "source_only", 0)
    manifest = {"training": {"config": {**want, "options": {}, "out": "x", "init": None}}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert adaptation.init_bundle("cpu", "source_only", 0, tmp_path) == (bundle, want)
    manifest["training"]["config"]["ema"] = 0.0
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="other ema"):
        adaptation.init_bundle("cpu", "source_only", 0, tmp_path)


def test_promote_copies_only_candidate_runs_that_match_the_current_profile(tmp_path, monkeypatch):
    import argparse
    import json

    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adaptation

    monkeypatch.setattr(adaptation, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(adaptation, "replace_block", lambda *a: None)
    (tmp_path / "results" / "adaptation" / "cpu").mkdir(parents=True)
    try_dir = tmp_path / "results" / "adaptation" / "cpu-try"
    try_dir.mkdir(parents=True)
    cfg = adaptation.run_config("cpu", "dann", 0)
    run = {"method": "dann", "seed": 0, "config": cfg, "data_version": adaptation.data_version(),
           "method_options": adaptation.method_options(cfg), "init_config": None, "candidate": {"ema": 0.5},
           "source_val_acc": 0.9, "target_test_acc": 0.8, "history": [], "wall_time_s": 1.0,
           "machine": {"cpu": "x", "cores": 2, "torch": "t"}}
    (try_dir / "dann@ema=0.5-s0.json").write_text(json.dumps(run))
    bundle = tmp_path / "runs" / "cpu" / "try" / "dann@ema=0.5-s0" / "model.edgeda"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    args = argparse.Namespace(methods="dann", seeds="0", profile="cpu", promote="ema=0.5", runs_dir=str(tmp_path / "runs"))
    assert adaptation.promote(args) == 0
    table_run = json.loads((tmp_path / "results" / "adaptation" / "cpu" / "dann-s0.json").read_text())
    assert "candidate" not in table_run and table_run["target_test_acc"] == 0.8
    assert (tmp_path / "runs" / "cpu" / "dann-s0" / "model.edgeda" / "manifest.json").is_file()
    # a candidate the profile does not run (yet) is refused
    (try_dir / "dann@ema=0.5-s0.json").write_text(json.dumps({**run, "config": {**cfg, "ema": 0.5}}))
    with pytest.raises(SystemExit, match="change the profile first"):
        adaptation.promote(args)


def test_dense_init_gains_pair_on_the_machine_and_seed_of_the_starting_bundle(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import json

    import dense

    monkeypatch.setattr(dense, "RESULTS", tmp_path)
    folder = tmp_path / "dense" / "cpu"

    def store(method, seed, miou, cpu):
        sub = folder / "init" / dense.machine_slug(cpu) if method.endswith("@init") else folder
        sub.mkdir(parents=True, exist_ok=True)
        rec = {"row": "syn_seg", "method": method, "upper_bound": False, "seed": seed, "wall_s": 1.0,
               "config": dense.run_config("cpu", "syn_seg", seed, False, method), "machine": {"cpu": cpu},
               "source_val": {"miou": 0.3, "pixel_acc": 0.6}, "target_test": {"miou": miou, "pixel_acc": 0.6}}
        (sub / f"{dense.run_tag('syn_seg', method, seed)}.json").write_text(json.dumps(rec))

    store("source_only", 0, 0.15, "Intel(R) Xeon(R) Processor")
    store("source_only@init", 0, 0.10, "Intel(R) Xeon(R) Processor")  # the same seed from another machine's bundle
    store("source_only@init", 0, 0.20, "AMD EPYC")
    store("fda@init", 0, 0.13, "Intel(R) Xeon(R) Processor")  # +3 points on its own machine's reference
    store("fda@init", 0, 0.19, "AMD EPYC")  # -1 point on its own
    s = dense.summarise("cpu")["syn_seg"]["methods"]
    assert dense.machine_slug("Intel(R) Xeon(R) Processor") == "intel-xeon-processor"
    assert s["fda@init"]["seeds"] == [0, 0]
    assert abs(s["fda@init"]["gain_vs_source_only"][0] - 0.01) < 1e-9  # mean of +0.03 and -0.01, not vs 0.15
    assert abs(s["source_only@init"]["target"]["miou"][0] - 0.15) < 1e-9
    # continued source-only training is compared with the source-only run of its own machine only
    assert abs(s["source_only@init"]["gain_vs_source_only"][0] - (0.10 - 0.15)) < 1e-9
    # from-scratch runs pair on the machine too: a method run where no source-only run of its seed was made has no gain
    store("dann", 0, 0.18, "Intel(R) Xeon(R) Processor")
    store("fda", 0, 0.12, "AMD EPYC")
    s = dense.summarise("cpu")["syn_seg"]["methods"]
    assert abs(s["dann"]["gain_vs_source_only"][0] - 0.03) < 1e-9
    assert s["fda"]["gain_vs_source_only"] == (None, None)
    assert "not paired: no source-only run on its machine" in dense.table("cpu", dense.summarise("cpu"))
