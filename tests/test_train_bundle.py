"""Training end to end on tiny digits: the bundle it writes (manifest, scores, tampering), resume,
non-finite losses and gradients, mismatched classes, the CLI's train and eval, and the library calls."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_config
from edgeda.bundle import Bundle, load_bundle
from edgeda.cli import main
from edgeda.errors import BundleError, DataError, TrainingDiverged
from edgeda.bundle_eval import evaluate_bundle
from edgeda.training import Trainer

DIGITS = [str(i) for i in range(10)]


class Stop(Exception):
    pass


def _params(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_train_writes_bundle_that_round_trips(tmp_path):
    cfg = tiny_config(tmp_path, method="dann")
    res = Trainer(cfg, progress=False, log=None).run()
    b = load_bundle(res.bundle)
    assert b.manifest["task"]["task"] == "classification" and b.manifest["task"]["classes"] == DIGITS
    assert b.manifest["method"]["name"] == "dann" and b.manifest["training"]["init_weights"] is None
    assert set(b.manifest["deployables"]) == {"classifier"}  # the domain classifier stays behind
    recorded = b.manifest["metrics"]["target_test_acc"]
    assert recorded == res.metrics["target_test_acc"]
    assert evaluate_bundle(b, device="cpu")["accuracy"] == pytest.approx(recorded, abs=1e-9)
    lines = (res.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [3, 6]


def test_bundle_outputs_match_trained_model(tmp_path):
    cfg = tiny_config(tmp_path, method="source_only")
    tr = Trainer(cfg, progress=False, log=None)
    res = tr.run()
    model = tr.method.model.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_bundle(res.bundle).model(x), model(x), rtol=0, atol=0)


def test_tampered_bundle_is_refused(tmp_path):
    res = Trainer(tiny_config(tmp_path, method="source_only"), progress=False, log=None).run()
    f = res.bundle / "classifier.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        Bundle(res.bundle)


def test_resume_continues_from_checkpoint_and_matches_uninterrupted_run(tmp_path):
    full = Trainer(tiny_config(tmp_path / "a", method="dann", iters=8, checkpoint_every=4, eval_every=4), progress=False, log=None)
    full.run()

    def stop_at_6(it):
        if it == 6:
            raise Stop

    cfg = tiny_config(tmp_path / "b", method="dann", iters=8, checkpoint_every=4, eval_every=4)
    with pytest.raises(Stop):
        Trainer(cfg, progress=False, log=None).run(callback=stop_at_6)
    logs = []
    resumed = Trainer(cfg, progress=False, log=logs.append)
    seen = []
    resumed.run(resume=True, callback=seen.append)
    assert "resumed from iteration 4" in logs
    assert seen[0] == 5  # continued after the iteration-4 checkpoint, not from 0
    a, b = _params(full.method.nets), _params(resumed.method.nets)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_nonfinite_loss_stops_with_iteration_and_keeps_checkpoint(tmp_path, monkeypatch):
    from edgeda.methods.source_only import SourceOnly

    orig = SourceOnly.step
    calls = {"n": 0}

    def poisoned(self, s, t):
        calls["n"] += 1
        if calls["n"] == 5:
            s.x = s.x * float("nan")
        return orig(self, s, t)

    monkeypatch.setattr(SourceOnly, "step", poisoned)
    cfg = tiny_config(tmp_path, method="source_only", iters=6, checkpoint_every=3)
    with pytest.raises(TrainingDiverged, match="iteration 5"):
        Trainer(cfg, progress=False, log=None).run()
    assert (tmp_path / "run" / "checkpoints" / "ckpt-0000003.json").exists()
    calls["n"] = 0
    res = Trainer(tiny_config(tmp_path / "skip", method="source_only", iters=6, skip_nonfinite=True), progress=False, log=None).run()
    assert res.skipped_steps == 1
    assert all(torch.isfinite(v.float()).all() for v in load_bundle(res.bundle).model.state_dict().values())


def test_finite_loss_with_nonfinite_gradient_is_refused_before_the_update(tmp_path, monkeypatch):
    """sqrt at 0: the loss is finite (0) but its gradient is infinite; the step must not land."""
    from edgeda.methods.source_only import SourceOnly

    orig = SourceOnly.step
    calls = {"n": 0}

    def poisoned(self, s, t):
        calls["n"] += 1
        if calls["n"] != 4:
            return orig(self, s, t)
        w = self.model.head.weight
        before = w.detach().clone()
        self.update((w - w.detach()).abs().sum().sqrt())  # value 0, d/dw = inf * sign(0) -> NaN/inf
        assert torch.equal(w, before)  # not reached when the update is refused
        return {}

    monkeypatch.setattr(SourceOnly, "step", poisoned)
    with pytest.raises(TrainingDiverged, match="iteration 4"):
        Trainer(tiny_config(tmp_path, method="source_only", iters=6), progress=False, log=None).run()
    calls["n"] = 0
    res = Trainer(tiny_config(tmp_path / "skip", method="source_only", iters=6, skip_nonfinite=True),
                  progress=False, log=None).run()
    assert res.skipped_steps == 1
    assert all(torch.isfinite(v.float()).all() for v in load_bundle(res.bundle).model.state_dict().values())


def test_mismatched_classes_between_source_and_target_is_a_clear_error(tmp_path, write_png):
    for c in ("a", "b"):
        write_png(tmp_path / "src" / c / "1.png")
    for c in ("a", "c"):
        write_png(tmp_path / "tgt" / c / "1.png")
    cfg = tiny_config(tmp_path, method="dann", source=str(tmp_path / "src"), target=str(tmp_path / "tgt"),
                      target_test=str(tmp_path / "tgt"))
    with pytest.raises(DataError, match="classes differ"):
        Trainer(cfg, progress=False, log=None).run()


def test_cli_train_then_eval(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(main, ["train", "--method", "dann", "--iters", "4", "--batch-size", "8", "--eval-every", "2",
                               "--device", "cpu", "--out", str(out), "--json",
                               "--config", str(_tiny_yaml(tmp_path))])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["metrics"]["selected_iteration"] == 4
    res = runner.invoke(main, ["eval", info["bundle"], "--json", "--confusion", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["n"] == 797 and m["accuracy"] == pytest.approx(info["metrics"]["target_test_acc"], abs=1e-9)
    assert np.array(m["confusion"]).sum() == 797
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--method", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "valid: " in res.output and "dann" in res.output.split("valid: ")[1]  # more methods sort before dann
    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["train", "--method", "dann", "--target", str(tmp_path / "empty"),
                               "--out", str(tmp_path / "r"), "--config", str(_tiny_yaml(tmp_path))])
    assert res.exit_code == 2 and "no usable images" in res.output


def _tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("source_n: 200\nbackbone_kwargs: {width: 8, out_dim: 32}\n")
    return p


def test_edgeda_train_is_callable_twice_in_one_process(tmp_path):
    import edgeda

    kw = dict(method="source_only", iters=2, batch_size=4, eval_every=2, source_n=60, device="cpu",
              backbone_kwargs={"width": 4, "out_dim": 8}, progress=False, log=None)
    first = edgeda.train(out=str(tmp_path / "a"), **kw)
    second = edgeda.train(out=str(tmp_path / "b"), **kw)  # edgeda.train is now the subpackage: still callable
    for res in (first, second):
        b = load_bundle(res.bundle)
        assert b.manifest["method"]["name"] == "source_only" and b.manifest["task"]["classes"] == DIGITS
        assert b.manifest["training"]["init_weights"] is None and b.manifest["training"]["iterations"] == 2
        assert evaluate_bundle(b, device="cpu")["accuracy"] == pytest.approx(res.metrics["target_test_acc"], abs=1e-9)
    wa, wb = (load_bundle(r.bundle).model.state_dict() for r in (first, second))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights


def test_top_level_functions_survive_their_subpackages_being_imported():
    import importlib

    import edgeda

    for name, sub in (("export", "edgeda.export.api"), ("bench", "edgeda.bench.harness"),
                      ("adapt", "edgeda.adapt.runner"), ("train", "edgeda.training.trainer")):
        importlib.import_module(sub)  # binds edgeda.<name> to the subpackage
        assert callable(getattr(edgeda, name)), name


def test_the_shipped_iteration_is_scored_on_the_test_split_once(tmp_path, monkeypatch):
    """The bundle's full test report reuses the scores of the evaluation that ships, rather than a
    second pass over the test split; a selected earlier iteration is scored from its own evaluation."""
    import edgeda.training.evaluator as evaluator_module
    import edgeda.training.shipping as shipping_module

    calls = []
    real = evaluator_module.evaluate_model

    def counting(model, domain, *a, **k):
        calls.append(domain.name)
        return real(model, domain, *a, **k)

    monkeypatch.setattr(evaluator_module, "evaluate_model", counting)  # the periodic evaluations
    monkeypatch.setattr(shipping_module, "evaluate_model", counting)  # the bundle's report
    tr = Trainer(tiny_config(tmp_path, method="source_only", iters=4, eval_every=2), progress=False, log=None)
    res = tr.run()
    test_name = tr.domains.target_test.name
    assert calls.count(test_name) == 2  # one per evaluation, none more at the end
    assert res.metrics["target_test_acc"] == res.history[-1]["target_test_acc"]
    assert res.metrics["target_test_scores"]["accuracy"] == res.history[-1]["target_test_acc"]
