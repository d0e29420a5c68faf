import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeda.bundle import Bundle
from edgeda.cli import main
from edgeda.data.transforms import prepare_image, to_float_nchw
from edgeda.errors import EdgedaError, MissingDependency
from edgeda.export.runtime import RUNNERS, make_runner, prepare_batch, softmax_stats
from test_export import tiny_bundle


def test_input_spec_is_applied_like_training(tmp_path):
    b = Bundle(tiny_bundle(tmp_path / "m.edgeda"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 13, 1), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    x = prepare_batch(images, b.task)
    ref = to_float_nchw(torch.from_numpy(np.stack([prepare_image(i, (32, 32), 3) for i in images])), b.task.mean, b.task.std)
    np.testing.assert_allclose(x, ref.numpy(), atol=1e-6)


def test_torch_and_ort_runners_agree(tmp_path, monkeypatch):
    import tempfile

    b = Bundle(tiny_bundle(tmp_path / "m.edgeda"))
    assert {"torch", "ort", "trt"} <= set(RUNNERS)
    images = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    a = make_runner("torch", b).predict(images)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    o = make_runner("ort", b)  # the bundle has no ONNX yet: exported on first use, into a temporary folder
    assert list(tmp.iterdir()) == []  # removed as soon as the session holds the graph
    np.testing.assert_allclose(o.predict(images), a, atol=1e-4)
    assert o.describe()["providers"] == ["CPUExecutionProvider"]
    cls, conf, ent = softmax_stats(a)
    assert (cls == a.argmax(1)).all() and ((conf > 0) & (conf <= 1)).all() and (ent >= 0).all()
    assert (ent <= np.log(10) + 1e-9).all()


def test_a_temporary_onnx_export_is_removed_when_its_block_ends(tmp_path, monkeypatch):
    import tempfile

    from edgeda.export.runtime import onnx_file

    b = Bundle(tiny_bundle(tmp_path / "m.edgeda"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with onnx_file(b, "fp32") as path:
        assert path.is_file() and [p.name[:12] for p in tmp_path.glob("edgeda-onnx-*")] == ["edgeda-onnx-"]
    assert not path.exists() and not list(tmp_path.glob("edgeda-onnx-*"))


def test_runner_errors_are_one_sentence(tmp_path):
    b = Bundle(tiny_bundle(tmp_path / "m.edgeda"))
    with pytest.raises(EdgedaError, match="unknown backend"):
        make_runner("tflite", b)
    with pytest.raises(EdgedaError, match="no int8 path"):
        make_runner("torch", b, "int8")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependency, match="TensorRT"):
            make_runner("trt", b)


def test_predict_cli_writes_csv_and_json_and_lists_bad_files(tmp_path, write_png):
    src = tiny_bundle(tmp_path / "m.edgeda")
    d = tmp_path / "imgs"
    for i in range(5):
        write_png(d / f"sub/{i}.png", size=(20 + i, 18), value=40 * i)
    write_png(d / "grey.png", mode="L", value=200)
    (d / "broken.png").write_bytes(b"not a png")
    (d / "empty.jpg").write_bytes(b"")
    r = CliRunner().invoke(main, ["predict", str(src), "--input", str(d), "--backend", "ort", "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "path,class,class_name,confidence,entropy" and len(lines) == 1 + 6
    assert "skipped 2 unreadable files" in r.output and "broken.png" in r.output
    r = CliRunner().invoke(main, ["predict", str(src), "--input", str(d), "--backend", "torch", "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["n"] == 6 and len(data["skipped"]) == 2
    row = data["predictions"][0]
    assert set(row) == {"path", "class", "class_name", "confidence", "entropy"} and row["class_name"] == str(row["class"])
    ort_rows = [line.split(",") for line in lines[1:]]
    assert [int(x[1]) for x in ort_rows] == [p["class"] for p in data["predictions"]]  # same classes on both backends
    r = CliRunner().invoke(main, ["predict", str(src), "--input", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such file" in r.output


def test_engine_built_with_plugins_needs_the_library(tmp_path, monkeypatch):
    """An engine built with --plugins cannot load without libedgeda_plugins.so: one clear error
    (before TensorRT is even asked), and the library is found from --plugins or the environment."""
    from edgeda.export.trt import resolve_plugin_library

    monkeypatch.delenv("EDGEDA_PLUGIN_LIBRARY", raising=False)
    assert resolve_plugin_library({"plugin_library": None}, None) is None
    with pytest.raises(EdgedaError, match="--plugins .*libedgeda_plugins.so"):
        resolve_plugin_library({"plugin_library": "libedgeda_plugins.so"}, None, "m.plan")
    with pytest.raises(EdgedaError, match="does not exist"):
        resolve_plugin_library({}, tmp_path / "missing.so")
    lib = tmp_path / "libedgeda_plugins.so"
    lib.write_bytes(b"\x7fELF")
    assert resolve_plugin_library({"plugin_library": lib.name}, str(lib)) == lib
    monkeypatch.setenv("EDGEDA_PLUGIN_LIBRARY", str(lib))
    assert resolve_plugin_library({"plugin_library": lib.name}, None) == lib


def test_predict_and_bench_take_a_plugin_library():
    from edgeda.bench.cli import bench
    from edgeda.export.cli import predict

    for cmd in (predict, bench):
        assert "--plugins" in {o for p in cmd.params for o in getattr(p, "opts", [])}
