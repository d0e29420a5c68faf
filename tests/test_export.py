import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgeda.bundle import Bundle, write_bundle
from edgeda.cli import main
from edgeda.errors import EdgedaError
from conftest import fake_tensorrt
from edgeda.bundle_eval import evaluate_bundle
from edgeda.export import api
from edgeda.export.onnx import ort_session, run_torch, signature_of
from edgeda.export.quantize import to_float16
from edgeda.export.trt import check_engine_metadata
from edgeda.models import build
from edgeda.models.registry import ARCHITECTURES
from edgeda.tasks.spec import TaskSpec

DOMAINS = {"target": "handwritten:adapt", "target_test": "handwritten:test"}


class TinyRefiner(nn.Module):
    """Image -> image residual refiner, standing in for a pixel-level method's deployable."""

    def __init__(self, channels: int = 3, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1), nn.InstanceNorm2d(width, affine=True),
                                  nn.ReLU(), nn.Conv2d(width, channels, 3, 1, 1))

    def forward(self, x):
        return x + torch.tanh(self.body(x))


if "test_tiny_refiner" not in ARCHITECTURES:
    ARCHITECTURES.register("test_tiny_refiner")(lambda **kw: TinyRefiner(**kw))


def tiny_bundle(path, refiner=False, generator=False, seed=0):
    """A bundle with an untrained width-8 DTN classifier (+ refiner / conditional generator)."""
    torch.manual_seed(seed)
    task = TaskSpec(num_classes=10, classes=[str(i) for i in range(10)], mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    mods = {"classifier": build("classifier", backbone="dtn", num_classes=10, backbone_kwargs={"width": 8, "out_dim": 32})}
    if refiner:
        mods["refiner"] = build("test_tiny_refiner", channels=3)
    if generator:
        mods["generator"] = build("conditional_generator", num_classes=10, z_dim=8, width=8)
    for m in mods.values():  # non-trivial BatchNorm statistics so eval-mode folding is exercised
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return write_bundle(path, {k: v.eval() for k, v in mods.items()}, task, training={"domains": DOMAINS})


def test_export_parity_for_classifier_refiner_and_generator(tmp_path):
    src = tiny_bundle(tmp_path / "m.edgeda", refiner=True, generator=True)
    res = api.export_bundle(src, tmp_path / "out.edgeda", n_check=64, log=None)
    b = Bundle(tmp_path / "out.edgeda")  # verifies every checksum, including the new files
    exp = b.manifest["export"]
    assert set(exp["deployables"]) == {"classifier", "refiner", "generator"}
    assert exp["deployables"]["generator"]["inputs"] == ["label", "noise"]
    for name, entry in exp["deployables"].items():
        for kind in ("random", "real"):
            assert entry["parity_fp32"][kind]["max_abs_diff"] <= 1e-4, (name, kind)
        assert (b.path / entry["files"]["fp32"]).is_file()
    assert exp["deployables"]["classifier"]["parity_fp32"]["real"]["top1_agreement"] == 1.0
    assert exp["deployables"]["classifier"]["parity_fp32"]["real"]["n"] == 64
    assert "fp32" in exp["precisions"] and 0 <= exp["precisions"]["fp32"]["target_accuracy"] <= 1
    assert res["files"] and "onnx" not in Bundle(src).manifest.get("export", {})  # source bundle untouched

    # dynamic batch axis: the same graphs run at batch 1, 3 and 17 and match PyTorch
    rng = np.random.default_rng(0)
    for name in b.names:
        module = b.module(name)
        sig = signature_of(module, b.task)
        sess = ort_session(b.file(exp["deployables"][name]["files"]["fp32"]))
        for n in (1, 3, 17):
            inputs = [spec.random(n, rng) for spec in sig.inputs]
            out = sess.run(None, {s.name: a for s, a in zip(sig.inputs, inputs)})[0]
            assert out.shape[0] == n
            np.testing.assert_allclose(out, run_torch(module, inputs), atol=1e-4, rtol=0)


def test_int8_and_fp16_exports_agree_with_fp32(tmp_path):
    src = tiny_bundle(tmp_path / "m.edgeda")
    api.export_bundle(src, precision="int8", n_check=200, log=None)
    api.export_bundle(src, precision="fp16", n_check=200, log=None)
    b = Bundle(src)
    exp = b.manifest["export"]
    assert set(exp["deployables"]["classifier"]["files"]) == {"fp32", "int8", "fp16"}  # merged, not replaced
    q = onnx.load(str(b.file("onnx/classifier.int8.onnx")))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = [i for i in q.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric (TensorRT)
    assert exp["calib"]["data"] == "handwritten:adapt"
    assert exp["precisions"]["int8"]["top1_agreement_with_fp32"] >= 0.8
    assert exp["precisions"]["fp16"]["top1_agreement_with_fp32"] >= 0.95
    assert exp["deployables"]["classifier"]["vs_fp32_fp16"]["max_abs_diff"] < 1e-2
    half = onnx.load(str(b.file("onnx/classifier.fp16.onnx")))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same feed for every runner
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)


def test_fp16_keeps_softmax_and_reductions_in_fp32(tmp_path):
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            h = self.conv(x)
            return torch.softmax(h.mean((2, 3)) * 3.0, 1)

    path = tmp_path / "h.onnx"
    torch.onnx.export(Head().eval(), (torch.randn(2, 3, 8, 8),), str(path), input_names=["image"], output_names=["p"],
                      dynamic_axes={"image": {0: "b"}, "p": {0: "b"}}, opset_version=17, dynamo=False)
    half = to_float16(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.value_info) + list(half.graph.output)}
    by_op = {n.op_type: n for n in half.graph.node}
    assert types[by_op["Softmax"].input[0]] == onnx.TensorProto.FLOAT
    assert types[by_op["ReduceMean"].input[0]] == onnx.TensorProto.FLOAT
    assert types[by_op["Conv"].input[0]] == onnx.TensorProto.FLOAT16
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    ref = ort_session(path).run(None, {"image": x})[0]
    out = ort_session_bytes(half).run(None, {"image": x})[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=5e-3)


def ort_session_bytes(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    src = tiny_bundle(tmp_path / "m.edgeda")
    before = (src / "manifest.json").read_text()
    monkeypatch.setattr(api, "FP32_TOLERANCE", -1.0)
    with pytest.raises(EdgedaError, match="parity failed"):
        api.export_bundle(src, tmp_path / "out.edgeda", n_check=16, log=None)
    assert not (tmp_path / "out.edgeda").exists()
    assert (src / "manifest.json").read_text() == before


def test_trt_without_tensorrt_fails_at_once_with_exit_code_2(tmp_path):
    try:
        import tensorrt  # noqa: F401
        import torch as _t

        if _t.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present: the missing-dependency path cannot be exercised")
    except ImportError:
        pass
    src = tiny_bundle(tmp_path / "m.edgeda")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = CliRunner().invoke(main, ["export", str(src), "--trt", "--out", str(tmp_path / "out.edgeda")])
    assert r.exit_code == 2, r.output
    assert "TensorRT" in r.output or "GPU" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing half-written


def test_engine_metadata_mismatch_is_refused():
    meta = {"format": "edgeda-trt-engine", "tensorrt": "10.3.0.30", "cuda": "12.6", "gpu": "Orin", "sm": "8.7",
            "options": {"precision": "fp16"}}
    check_engine_metadata(meta, {"tensorrt": "10.3.0.26", "cuda": "12.6.68", "gpu": "Orin", "sm": "8.7"})  # same build line
    for key, other in (("tensorrt", "11.1.0"), ("cuda", "13.0"), ("gpu", "NVIDIA H100"), ("sm", "9.0")):
        current = {"tensorrt": "10.3.0", "cuda": "12.6", "gpu": "Orin", "sm": "8.7", key: other}
        with pytest.raises(EdgedaError, match="rebuild"):
            check_engine_metadata(meta, current, "model.plan")
    with pytest.raises(EdgedaError, match="no edgeda engine metadata"):
        check_engine_metadata({"tensorrt": "10.3.0"}, {"tensorrt": "10.3.0"})


def test_export_cli_json_reports_precision_summary(tmp_path):
    src = tiny_bundle(tmp_path / "m.edgeda")
    r = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "o.edgeda"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    eager = evaluate_bundle(src, device="cpu")  # PyTorch on the same test split
    assert abs(out["precisions"]["fp32"]["target_accuracy"] - eager["accuracy"]) <= 2 / 797
    assert "onnx/classifier.fp32.onnx" in out["files"]
    assert out["scored_images"] == 797  # every image of handwritten:test (fewer than the 2000 checked)
    r = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "p.edgeda")])
    assert r.exit_code == 0, r.output
    assert f"ONNX classifier fp32: {tmp_path / 'p.edgeda' / 'onnx' / 'classifier.fp32.onnx'} (" in r.output
    assert " exporter, opset " in r.output and "scored on 797 images of handwritten:test:" in r.output
    r = CliRunner().invoke(main, ["export", str(src), "--plugins", "x.so"])
    assert r.exit_code == 2 and "--trt" in r.output


@pytest.mark.parametrize("version,flags", [("10.3.0.30", ["FP16"]), ("11.1.0", [])])
def test_build_engine_call_sequence_for_10_and_11_with_a_stand_in_module(tmp_path, monkeypatch, version, flags):
    """Only the control flow is checked here (no TensorRT on CI): 10.x sets the FP16 builder flag,
    11.x (strongly typed) sets none; both use create_network(0) and write string-only metadata."""
    import sys

    from edgeda.export import trt as T

    log = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, log))
    monkeypatch.setattr(T, "gpu_info", lambda: {"gpu": "Stand-in GPU", "sm": "8.7", "cuda": "12.6"})
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    meta = T.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", precision="fp16", batch=(1, 4, 16),
                          timing_cache=tmp_path / "timing.cache")
    assert ("create_network", (0,)) in log
    assert meta["options"]["builder_flags"] == flags and meta["options"]["strongly_typed"] == (version[:2] == "11")
    assert any(name == "config.set_flag" for name, _ in log) == bool(flags)
    shapes = [a for name, a in log if name == "profile.set_shape"]
    assert shapes == [("image", (1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))]
    saved = json.loads((tmp_path / "m.plan.json").read_text())
    assert saved["tensorrt"] == version and (tmp_path / "m.plan").read_bytes() == b"PLAN"
    assert saved["options"]["precision"] == "fp16"  # names, never TensorRT enum integers
    assert all(isinstance(f, str) for f in saved["options"]["builder_flags"])
    T.check_engine_metadata(saved, T.runtime_identity())


def test_exporter_choice_is_automatic_recorded_and_parity_checked(tmp_path, monkeypatch):
    """auto takes the torch.export-based exporter where this torch has it (and onnxscript), else the
    TorchScript one; the bundle records which, and the fp32 parity check ran on it either way."""
    from edgeda.export.onnx import _dynamo_available

    monkeypatch.setenv("EDGEDA_ONNX_EXPORTER", "auto")
    src = tiny_bundle(tmp_path / "b.edgeda")
    rec = api.export_bundle(src, tmp_path / "o.edgeda", data="handwritten:test", n_check=64, log=None)
    entry = rec["deployables"]["classifier"]
    assert entry["exporter"] == ("dynamo" if _dynamo_available() else "torchscript")
    assert entry["opset"] >= 17 and entry["parity_fp32"]["real"]["max_abs_diff"] <= 1e-4
    monkeypatch.setenv("EDGEDA_ONNX_EXPORTER", "torchscript")
    rec = api.export_bundle(src, tmp_path / "t.edgeda", data="handwritten:test", n_check=64, log=None)
    assert rec["deployables"]["classifier"]["exporter"] == "torchscript"
    monkeypatch.setenv("EDGEDA_ONNX_EXPORTER", "nope")
    with pytest.raises(EdgedaError, match="valid: auto, dynamo, torchscript"):
        api.export_bundle(src, tmp_path / "n.edgeda", log=None)
