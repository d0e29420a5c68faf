"""On-device source-free adaptation: `edgeda adapt` and the library call behind it."""
import inspect

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import tiny_config
from edgeda.adapt import ADAPT_METHODS, AdaptMethod, adapt
from edgeda.adapt.budget import plan_batch
from edgeda.adapt.safety import CollapseMonitor, prediction_stats
from edgeda.bundle import Bundle
from edgeda.errors import DataError, EdgedaError
from edgeda.utils import sha256_file

N_TARGET = 40


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny source-only bundle and a target folder of PNGs with two corrupt files."""
    from edgeda.data import load_domain
    from edgeda.training import Trainer

    root = tmp_path_factory.mktemp("adapt")
    # 30 iterations: enough that the shipped model does not already predict a single class
    res = Trainer(tiny_config(root, method="source_only", iters=30, eval_every=30, checkpoint_every=30),
                  progress=False, log=None).run()
    target = root / "camera"
    dom = load_domain("handwritten:adapt", labeled=False, size=(8, 8), channels=1, n=N_TARGET)
    for i, img in enumerate(dom.images):
        sub = target / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[:, :, 0]).save(sub / f"{i:03d}.png")
    (target / "empty.png").write_bytes(b"")
    (target / "b" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return res.bundle, target


def _hashes(path):
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def _state(bundle_path):
    return Bundle(bundle_path).module("classifier").state_dict()


def test_no_option_lets_source_data_in():
    from edgeda.adapt.cli import adapt as cmd

    names = {n for p in cmd.params for n in (p.name, *getattr(p, "opts", []))}
    assert "--target-dir" in names and "--out" in names
    assert not [n for n in names if "source" in n.lower() or n.lower().lstrip("-") in ("src", "s")]
    params = inspect.signature(adapt).parameters
    assert not [n for n in params if "source" in n or n == "src"]


def test_tent_adapts_skips_corrupt_files_keeps_input_and_exports(shipped, tmp_path):
    bundle, target = shipped
    before = _hashes(bundle)
    out = tmp_path / "adapted.edgeda"
    r = adapt(bundle, target, out, method="tent", iters=4, batch=8, export=True, labels="handwritten:test")
    assert _hashes(bundle) == before  # the input bundle is untouched
    assert r.iterations == 4 and r.stopped_because == "iterations" and not r.collapsed
    m = Bundle(out).manifest  # loads and verifies checksums
    a = m["adaptation"]
    assert a["method"] == "tent" and a["source_free"] and a["iterations_done"] == 4
    assert a["target"]["images_used"] == N_TARGET
    assert a["target"]["files_skipped"] == 2
    assert {s["path"].rsplit("/", 1)[-1] for s in a["target"]["skipped_files"]} == {"empty.png", "truncated.jpg"}
    assert {"class_histogram", "mean_entropy", "mean_confidence"} <= set(a["before"]) <= set(a["after"])
    assert a["before"]["agreement_with_shipped"] == 1.0
    assert set(r.accuracy) >= {"before", "after"} and 0 <= r.accuracy["after"] <= 1
    assert a["memory"]["peak_rss_mb"] > 0
    assert "onnx/classifier.fp32.onnx" in m["files"]
    assert m["export"]["deployables"]["classifier"]["parity_fp32"]["random"]["max_abs_diff"] <= 1e-4
    # TENT changed only BatchNorm parameters/statistics; the adapted bundle evaluates
    old, new = _state(bundle), _state(out)
    assert torch.equal(old["head.weight"], new["head.weight"])
    assert not all(torch.equal(old[k], new[k]) for k in old if "running_mean" in k)
    from edgeda.bundle_eval import evaluate_bundle

    ev = evaluate_bundle(out, "handwritten:test", device="cpu")
    assert ev["n"] == 797 and abs(ev["accuracy"] - r.accuracy["after"]) < 1e-9
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "onnx" / "classifier.fp32.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    got = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, Bundle(out).module("classifier")(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("method", ["shot", "3cgan"])
def test_methods_run_and_write_bundle(shipped, tmp_path, method):
    bundle, target = shipped
    r = adapt(bundle, target, tmp_path / "o.edgeda", method=method, iters=3, batch=8, select="last",
              options={"g_width": 8, "d_width": 8} if method == "3cgan" else None)
    assert r.iterations == 3 and not r.collapsed
    assert Bundle(r.bundle).manifest["adaptation"]["method"] == method
    assert not all(torch.equal(a, b) for a, b in zip(_state(bundle).values(), _state(r.bundle).values()))


class _Collapser(AdaptMethod):
    """Test method: harmless for two steps, then forces every prediction into class 0 (or NaN)."""

    name = "collapse_probe"
    defaults = {"mode": "one_class"}

    def build(self):
        self.steps = 0

    def step(self, x, idx=None):
        self.steps += 1
        if self.steps >= 3:
            with torch.no_grad():
                if self.opts["mode"] == "nan":
                    self.model.head.weight.fill_(float("nan"))
                else:
                    self.model.head.bias[0] = 1e4
        return {}


@pytest.fixture
def collapser():
    with ADAPT_METHODS.registered("collapse_probe", _Collapser):
        yield


@pytest.mark.parametrize("mode", ["one_class", "nan"])
def test_collapse_rolls_back_to_last_good_snapshot(shipped, tmp_path, collapser, mode):
    bundle, target = shipped
    r = adapt(bundle, target, tmp_path / "o.edgeda", method="collapse_probe", iters=20, batch=8, check_every=2,
              options={"mode": mode})
    assert r.collapsed and r.stopped_because == "collapse"
    assert r.iterations == 4  # collapsed at step 3, detected at the check after step 4
    a = Bundle(r.bundle).manifest["adaptation"]
    assert a["safety"]["status"] == "rolled_back" and a["last_good_iteration"] == 2
    assert ("one class" in r.message) if mode == "one_class" else ("NaN" in r.message)
    shipped_state, out_state = _state(bundle), _state(r.bundle)
    for k in shipped_state:  # the probe changed nothing before collapsing: the rollback is the shipped model
        assert torch.equal(shipped_state[k], out_state[k]), k


class _Sharpener(AdaptMethod):
    """Test method: sharpens the predictions (scales the logits up) for two steps, then flattens them."""

    name = "sharpen_probe"
    defaults = {}

    def build(self):
        self.steps = 0

    def step(self, x, idx=None):
        self.steps += 1
        with torch.no_grad():
            for p in self.model.head.parameters():
                p.mul_(2.0 if self.steps <= 2 else 0.9)
        return {}


@pytest.mark.parametrize("select", ["info_max", "last"])
def test_selection_writes_the_highest_info_max_state(shipped, tmp_path, select):
    bundle, target = shipped
    ADAPT_METHODS.register("sharpen_probe")(_Sharpener)
    try:
        r = adapt(bundle, target, tmp_path / "o.edgeda", method="sharpen_probe", iters=6, batch=8, check_every=1,
                  select=select)
    finally:
        ADAPT_METHODS.unregister("sharpen_probe")
    sel = Bundle(r.bundle).manifest["adaptation"]["selection"]
    its, scores = zip(*sel["info_max_per_check"])
    assert its == (0, 1, 2, 3, 4, 5, 6) and not r.collapsed
    assert scores[2] > scores[1] > scores[0] and scores[2] > scores[6]  # the probe peaks at step 2
    want = 2 if select == "info_max" else 6
    assert sel["rule"] == select and sel["selected_iteration"] == want
    factor = 4.0 * 0.9 ** (want - 2)
    np.testing.assert_allclose(_state(r.bundle)["head.weight"], factor * _state(bundle)["head.weight"], rtol=1e-5)
    # the monitor images are all the target images here: the written model's statistics are the selected state's
    assert r.after["info_max"] == pytest.approx(scores[want], abs=1e-4)


def test_cli_reports_collapse_with_exit_code(shipped, tmp_path, collapser):
    from edgeda.cli import main

    bundle, target = shipped
    res = CliRunner().invoke(main, ["adapt", str(bundle), "--target-dir", str(target), "--out", str(tmp_path / "o.edgeda"),
                                    "--method", "collapse_probe", "--iters", "30", "--batch", "8"])
    assert res.exit_code == 3, res.output
    assert "collapse detected" in res.output and "rolled back" in res.output


class _Idler(AdaptMethod):
    """Test method: each step takes 20 ms and changes nothing (so no collapse can end the run first)."""

    name = "idle_probe"
    defaults = {}

    def build(self):
        pass

    def step(self, x, idx=None):
        import time

        time.sleep(0.02)
        return {}


def test_minutes_budget_stops_early(shipped, tmp_path):
    # A real method (3C-GAN) on a barely trained bundle may collapse within the budget on a fast machine,
    # which ends the run for another reason; the idle probe isolates the time budget. The budget covers set-up
    # too (reading and decoding the images), so it leaves room for some steps after it on a slow machine.
    bundle, target = shipped
    ADAPT_METHODS.register("idle_probe")(_Idler)
    try:
        r = adapt(bundle, target, tmp_path / "o.edgeda", method="idle_probe", iters=100000, minutes=0.1, batch=8)
    finally:
        ADAPT_METHODS.unregister("idle_probe")
    assert r.stopped_because == "time budget" and 0 < r.iterations < 100000 and not r.collapsed
    assert Bundle(r.bundle).manifest["adaptation"]["iterations_done"] == r.iterations


def test_bad_inputs_are_one_clear_error(shipped, tmp_path):
    bundle, target = shipped
    with pytest.raises(EdgedaError, match="outside the input bundle"):
        adapt(bundle, target, bundle, method="tent")
    with pytest.raises(EdgedaError, match="unknown source-free adaptation method"):
        adapt(bundle, target, tmp_path / "o.edgeda", method="dann")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no usable images"):
        adapt(bundle, bad, tmp_path / "o.edgeda", method="tent")
    assert not (tmp_path / "o.edgeda").exists()


def test_memory_plan_halves_batch_and_refuses_too_little():
    assert plan_batch(64, None, fixed_mb=500, per_sample_mb=1.0) == (64, "fp32", 500 + 64 * 3.0)
    b, precision, est = plan_batch(64, 600, fixed_mb=500, per_sample_mb=1.0)
    assert b == 32 and precision == "fp32" and est <= 600
    assert plan_batch(64, 600, fixed_mb=500, per_sample_mb=1.0, cuda=True)[:2] == (64, "fp16/bf16 autocast")
    with pytest.raises(EdgedaError, match="too small"):
        plan_batch(64, 505, fixed_mb=500, per_sample_mb=1.0)


def test_monitor_flags_each_kind_of_collapse():
    torch.manual_seed(0)
    healthy = torch.randn(200, 10) * 3
    mon = CollapseMonitor(prediction_stats(healthy), 10)
    assert mon.check(prediction_stats(healthy)) is None
    one = healthy.clone()
    one[:, 0] += 100
    assert "one class" in mon.check(prediction_stats(one))
    assert "exploded" in mon.check(prediction_stats(healthy * 0.01))
    assert "NaN" in mon.check(prediction_stats(torch.full((5, 10), float("nan"))))


def test_minutes_is_a_ceiling_not_an_iteration_count(shipped, tmp_path):
    bundle, target = shipped
    ADAPT_METHODS.register("idle_probe")(_Idler)
    _Idler.default_iters = 3
    try:
        r = adapt(bundle, target, tmp_path / "a.edgeda", method="idle_probe", minutes=5, batch=8)
        assert r.iterations == 3 and r.stopped_because == "iterations"  # the method's count, not the budget's
        r = adapt(bundle, target, tmp_path / "b.edgeda", method="idle_probe", iters=0, minutes=0.1, batch=8)
        assert r.stopped_because == "time budget" and r.iterations > 3  # --iters 0: until the budget ends
        with pytest.raises(EdgedaError, match="needs --minutes"):
            adapt(bundle, target, tmp_path / "c.edgeda", method="idle_probe", iters=0, batch=8)
    finally:
        del _Idler.default_iters
        ADAPT_METHODS.unregister("idle_probe")
    from edgeda.adapt.cli import adapt as cmd

    helps = {p.name: getattr(p, "help", None) or "" for p in cmd.params}
    assert "0 = until" in helps["iters"] and "ceiling" in helps["minutes"]


def test_cli_json_reports_collapse_with_exit_code(shipped, tmp_path, collapser):
    import json

    from edgeda.cli import main

    bundle, target = shipped
    res = CliRunner().invoke(main, ["adapt", str(bundle), "--target-dir", str(target), "--out", str(tmp_path / "o.edgeda"),
                                    "--method", "collapse_probe", "--iters", "30", "--batch", "8", "--json"])
    assert res.exit_code == 3, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["collapsed"] and out["stopped_because"] == "collapse"


class _Worsener(AdaptMethod):
    """Test method: its preparation and every step flatten the predictions (info_max falls below the shipped)."""

    name = "worsen_probe"
    defaults = {}

    def build(self):
        pass

    def prepare(self, target):
        self._flatten()

    def _flatten(self):
        with torch.no_grad():
            for p in self.model.head.parameters():
                p.mul_(0.8)

    def step(self, x, idx=None):
        self._flatten()
        return {}


@pytest.mark.parametrize("collapse", [False, True])
def test_shipped_state_is_a_candidate(shipped, tmp_path, collapser, collapse):
    bundle, target = shipped
    ADAPT_METHODS.register("worsen_probe")(_Worsener)
    try:
        if collapse:  # harmless steps, then a collapse: nothing adapted beats the shipped model
            r = adapt(bundle, target, tmp_path / "o.edgeda", method="collapse_probe", iters=20, batch=8, check_every=1)
            assert r.collapsed
        else:  # every adapted state (the one after preparation included) scores lower than the shipped one
            r = adapt(bundle, target, tmp_path / "o.edgeda", method="worsen_probe", iters=4, batch=8, check_every=1)
    finally:
        ADAPT_METHODS.unregister("worsen_probe")
    sel = Bundle(r.bundle).manifest["adaptation"]["selection"]
    if not collapse:
        assert all(s < sel["shipped_info_max"] for _, s in sel["info_max_per_check"])
    assert sel["selected_iteration"] == "shipped" and sel["written"] == "the shipped model"
    for k, v in _state(bundle).items():
        assert torch.equal(v, _state(r.bundle)[k]), k
