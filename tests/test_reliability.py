"""Interruption (kill -9), non-finite losses through the CLI, and bundles from elsewhere."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeda.bundle import Bundle
from edgeda.cli import main
from edgeda.errors import BundleError

ROOT = Path(__file__).resolve().parent.parent


def _bundle(tmp_path, name="m.edgeda"):
    from edgeda.bundle import write_bundle
    from edgeda.models import build
    from edgeda.tasks.spec import TaskSpec

    clf = build("classifier", backbone="dtn", num_classes=3, channels=3, image_size=32,
                backbone_kwargs={"width": 8, "out_dim": 32})
    return write_bundle(tmp_path / name, {"classifier": clf}, TaskSpec(num_classes=3, classes=["a", "b", "c"]))


def _edit_manifest(bundle, edit, seal=True):
    """Edit the manifest; with ``seal`` also rewrite its checksum, as a hostile writer could, so that
    the checks behind the checksum are what is tested."""
    from edgeda.bundle import manifest_checksum

    mf = bundle / "manifest.json"
    m = json.loads(mf.read_text())
    edit(m)
    if seal:
        m["manifest_sha256"] = manifest_checksum(m)
    mf.write_text(json.dumps(m))


def test_an_edited_manifest_is_refused_like_an_edited_weight_file(tmp_path):
    b = _bundle(tmp_path)
    assert Bundle(b).manifest["format_version"] == 2 and len(Bundle(b).manifest["manifest_sha256"]) == 64
    _edit_manifest(b, lambda m: m["task"]["classes"].__setitem__(1, "renamed"), seal=False)
    res = CliRunner().invoke(main, ["eval", str(b), "--data", "x.npz"])
    assert res.exit_code == 2 and "manifest.json does not match its checksum" in res.output
    _edit_manifest(b, lambda m: m.pop("manifest_sha256"), seal=False)  # removing the checksum does not help
    with pytest.raises(BundleError, match="does not match its checksum"):
        Bundle(b)


def test_a_bundle_from_before_manifest_checksums_loads_with_a_warning(tmp_path):
    from edgeda.bundle import BundleWarning

    b = _bundle(tmp_path)
    weights = Bundle(b).module("classifier").state_dict()
    _edit_manifest(b, lambda m: (m.pop("manifest_sha256"), m.__setitem__("format_version", 1)), seal=False)
    with pytest.warns(BundleWarning, match="before manifests were checksummed"):
        loaded = Bundle(b).module("classifier").state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    res = CliRunner().invoke(main, ["predict", str(b), "--input", str(tmp_path / "none")])
    assert "warning: bundle" in res.output and "Traceback" not in res.output


# -- bundles from elsewhere ---------------------------------------------------------------------------
def test_manifest_with_hostile_architecture_is_refused_before_allocating(tmp_path):
    """A manifest whose architecture asks for a huge model (~10^12 weights) next to a small weights
    file is refused from shapes alone, without allocating the model."""
    import resource

    b = _bundle(tmp_path)
    Bundle(b).module("classifier")  # the honest record loads

    def grow(m):
        kw = m["deployables"]["classifier"]["arch"]["kwargs"]
        kw["backbone_kwargs"] = {**kw.get("backbone_kwargs", {}), "width": 200_000}

    _edit_manifest(b, grow)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BundleError, match="asks for .* weights"):
        Bundle(b).module("classifier")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: nothing huge was allocated


def test_checksum_mismatch_is_refused_by_the_cli(tmp_path):
    b = _bundle(tmp_path)
    f = b / "classifier.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1
    f.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["eval", str(b), "--data", "x.npz"])
    assert res.exit_code == 2 and "checksum" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "a/../../x", "~/x", "a\\..\\x", ""])
def test_manifest_paths_outside_the_bundle_are_refused(tmp_path, bad):
    b = _bundle(tmp_path)
    _edit_manifest(b, lambda m: m["files"].__setitem__(bad, {"sha256": "0" * 64}))
    with pytest.raises(BundleError, match="path"):
        Bundle(b)


def test_deployable_file_outside_the_bundle_is_refused(tmp_path):
    b = _bundle(tmp_path)
    _edit_manifest(b, lambda m: m["deployables"]["classifier"].__setitem__("file", "../m2/classifier.safetensors"))
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle(b, verify=False)


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    b = _bundle(tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    (b / "classifier.safetensors").rename(outside)
    (b / "classifier.safetensors").symlink_to(outside)  # same bytes, same checksum, but not inside
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle(b)


def test_newer_format_version_is_refused_with_the_version_named(tmp_path):
    b = _bundle(tmp_path)
    _edit_manifest(b, lambda m: m.__setitem__("format_version", 7))
    with pytest.raises(BundleError, match="format version 7 is newer"):
        Bundle(b)
    res = CliRunner().invoke(main, ["eval", str(b), "--data", "x.npz"])
    assert res.exit_code == 2 and "version 7" in res.output


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.__setitem__("task", {"num_classes": "x", "classes": 5, "task": "poetry"}), "task"),
    (lambda m: m["deployables"]["classifier"].__setitem__("arch", {"name": "no_such_arch"}), "no_such_arch"),
    (lambda m: m["deployables"]["classifier"]["arch"].__setitem__("kwargs", {"bogus": 1}), "rebuild"),
    (lambda m: m["deployables"]["classifier"]["arch"]["kwargs"].__setitem__("num_classes", 5), "do not load"),
])
def test_malformed_records_are_bundle_errors(tmp_path, edit, message):
    b = _bundle(tmp_path)
    _edit_manifest(b, edit)
    with pytest.raises(BundleError, match=message):
        Bundle(b).module("classifier")


def test_manifest_that_is_not_json(tmp_path):
    b = _bundle(tmp_path)
    (b / "manifest.json").write_bytes(b"\xff\xfe{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle(b)


# -- atomic writes under kill -9 ---------------------------------------------------------------------
_WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from edgeda.bundle import write_bundle
from edgeda.models import build
from edgeda.tasks.spec import TaskSpec
torch.manual_seed(0)
clf = build("classifier", backbone="dtn", num_classes=3, channels=3, image_size=32, backbone_kwargs={{"width": 16, "out_dim": 64}})
task = TaskSpec(num_classes=3, classes=["a", "b", "c"])
print("ready", flush=True)
while True:
    write_bundle({path!r}, {{"classifier": clf}}, task)
"""


def test_kill_during_bundle_rewrites_never_leaves_a_missing_or_corrupt_bundle(tmp_path):
    path = tmp_path / "m.edgeda"
    _bundle(tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(root=str(ROOT), path=str(path))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        Bundle(path).module("classifier")  # the old or the new bundle, complete and verified


def _npz_domains(folder):
    rng = np.random.default_rng(0)
    for name, n in (("src", 80), ("tgt", 40)):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8) + (y * 60).astype(np.uint8)[:, None, None, None]
        np.savez(folder / f"{name}.npz", x=x, y=y)
    return ["--source", str(folder / "src.npz"), "--target", str(folder / "tgt.npz"),
            "--target-test", str(folder / "tgt.npz")]


def test_kill_9_then_resume_with_out_alone_continues_the_run_as_stored(tmp_path):
    """A real non-default `edgeda train` (method, iterations, checkpoint interval, seed from a config
    file) killed with SIGKILL resumes with `--resume --out DIR` alone: the run's own settings, the same
    weights as the uninterrupted run, and a changed learning setting is refused."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone_kwargs: {width: 8, out_dim: 32}\nbatch_size: 8\neval_every: 1000\nlr: 0.02\n"
                   "iters: 300\nseed: 3\ndevice: cpu\n")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "edgeda", "train", "--method", "source_only", "--config", str(cfg), "--checkpoint-every", "5",
            "--out", str(out), *_npz_domains(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "ckpt-0000010.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.edgeda").exists()
    from edgeda.training.checkpoint import load_latest

    killed_at = load_latest(out / "checkpoints")[0]
    assert 10 <= killed_at < 300
    res = CliRunner().invoke(main, ["train", "--resume", "--out", str(out), "--lr", "0.05"])
    assert res.exit_code == 2 and "lr=0.05 (run: 0.02)" in res.output and "Traceback" not in res.output
    # the resumed and the uninterrupted run as the killed one ran: their own processes, one thread
    res = subprocess.run([sys.executable, "-m", "edgeda", "train", "--resume", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resumed from iteration {killed_at}" in res.stdout
    info = json.loads((out / "summary.json").read_text())
    training = Bundle(info["bundle"]).manifest["training"]
    assert training["iterations"] == 300 and training["config"]["method"] == "source_only"
    assert training["config"]["checkpoint_every"] == 5 and training["config"]["lr"] == 0.02
    assert "target_test_acc" in info["metrics"]
    straight = subprocess.run([*args, "--out", str(tmp_path / "straight")], env=env, capture_output=True, text=True,
                              timeout=300)  # the last --out counts
    assert straight.returncode == 0, straight.stderr
    from safetensors.torch import load_file

    a = load_file(str(out / "model.edgeda" / "classifier.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model.edgeda" / "classifier.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_resume_may_extend_iterations_but_needs_a_run(tmp_path):
    res = CliRunner().invoke(main, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "holds no run to continue" in res.output
    base = ["train", "--method", "source_only", "--backbone-option", "width=8", "--backbone-option", "out_dim=32",
            "--batch-size", "8", "--iters", "4", "--checkpoint-every", "2", "--device", "cpu", *_npz_domains(tmp_path),
            "--out", str(tmp_path / "r")]
    assert CliRunner().invoke(main, base).exit_code == 0
    res = CliRunner().invoke(main, ["train", "--resume", "--out", str(tmp_path / "r"), "--iters", "6", "--json"])
    assert res.exit_code == 0, res.output
    assert Bundle(json.loads(res.output)["bundle"]).manifest["training"]["iterations"] == 6
    res = CliRunner().invoke(main, ["train", "--resume", "--out", str(tmp_path / "r"), "--iters", "3"])
    assert res.exit_code == 2 and "beyond --iters 3" in res.output


def test_threads_set_torch_threads_may_change_on_resume_and_must_be_positive(tmp_path):
    import torch

    was = torch.get_num_threads()
    try:
        base = ["train", "--method", "source_only", "--backbone-option", "width=8", "--backbone-option", "out_dim=32",
                "--batch-size", "8", "--iters", "2", "--checkpoint-every", "2", "--device", "cpu", *_npz_domains(tmp_path),
                "--out", str(tmp_path / "r")]
        torch.set_num_threads(2)
        assert CliRunner().invoke(main, [*base, "--threads", "1"]).exit_code == 0
        assert torch.get_num_threads() == 1
        assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 1
        res = CliRunner().invoke(main, ["train", "--resume", "--out", str(tmp_path / "r"), "--iters", "4", "--threads", "2"])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 2
        res = CliRunner().invoke(main, [*base[:-1], str(tmp_path / "z"), "--threads", "0"])
        assert res.exit_code == 2 and "--threads must be at least 1" in res.output
    finally:
        torch.set_num_threads(was)


# -- non-finite losses through the CLI ------------------------------------------------------------
def test_nonfinite_loss_via_cli_stops_with_iteration_or_skips(tmp_path, monkeypatch):
    from edgeda.methods.source_only import SourceOnly

    orig = SourceOnly.step
    calls = {"n": 0}

    def poisoned(self, s, t):
        calls["n"] += 1
        if calls["n"] == 3:
            s.x = s.x * float("inf")
        return orig(self, s, t)

    monkeypatch.setattr(SourceOnly, "step", poisoned)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone_kwargs: {width: 8, out_dim: 32}\nbatch_size: 8\ncheckpoint_every: 2\neval_every: 2\n"
                   "iters: 4\ndevice: cpu\n")
    base = ["train", "--method", "source_only", "--config", str(cfg), *_npz_domains(tmp_path)]
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "non-finite" in res.output and "at iteration 3;" in res.output
    assert (tmp_path / "a" / "checkpoints" / "ckpt-0000002.json").exists()
    assert not (tmp_path / "a" / "model.edgeda").exists()
    calls["n"] = 0
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b"), "--skip-nonfinite", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["skipped_steps"] == 1


def test_checkpoint_writes_clean_up_temporaries_of_killed_writes(tmp_path):
    import torch

    from edgeda.training.checkpoint import list_checkpoints, load_latest, save_checkpoint

    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 1, {"w": torch.ones(3)})
    (folder / ".ckpt-0000002.safetensors.abc123.tmp").write_bytes(b"half a tensor file")  # a kill mid-write
    (folder / "ckpt-0000002.safetensors").write_bytes(b"torn")  # tensors renamed, JSON never written
    assert load_latest(folder)[0] == 1
    (folder / "ckpt-0000003.json").write_text("{not json")  # torn JSON
    assert load_latest(folder)[0] == 1
    save_checkpoint(folder, 4, {"w": torch.zeros(3)}, keep=2)
    assert not list(folder.glob(".ckpt-*.tmp"))
    assert not (folder / "ckpt-0000002.safetensors").exists()
    it, state = load_latest(folder)
    assert it == 4 and torch.equal(state["w"], torch.zeros(3))
    assert list_checkpoints(folder)[-1] == 4
