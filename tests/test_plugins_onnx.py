"""The plugin graph rewrites run in ONNX Runtime (CPU ops) and match the original graphs."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")

from edgeda.export import plugins  # noqa: E402
from edgeda.export.plugins_ort import confidence_numpy, ort_session_options  # noqa: E402
from edgeda.kernels import preprocess_reference  # noqa: E402

TOL = 1e-5


class TinyNet(nn.Module):
    """Conv -> IN -> ReLU -> Conv -> IN -> LeakyReLU -> pool -> linear, plus a softmax head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.in1 = nn.InstanceNorm2d(8, affine=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.in2 = nn.InstanceNorm2d(8, affine=True)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for norm in (self.in1, self.in2):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = F.relu(self.in1(self.conv1(x)))
        x = F.leaky_relu(self.in2(self.conv2(x)), 0.2)
        logits = self.fc(x.mean(dim=(2, 3)))
        p = logits.softmax(dim=1)
        return logits, p.argmax(dim=1), p.amax(dim=1)


class SegHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        logits = 3.0 * self.conv(x)
        return logits, logits.argmax(dim=1, keepdim=True)


def export(model: nn.Module, shape, names) -> onnx.ModelProto:
    torch.manual_seed(1)
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.randn(*shape),), buf, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=names,
                      dynamic_axes={"image": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


def run(model: onnx.ModelProto, feeds: dict, custom: bool):
    options = ort_session_options() if custom else ort.SessionOptions()
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def op_types(model):
    return [n.op_type for n in model.graph.node]


@pytest.fixture(scope="module")
def tinynet():
    torch.manual_seed(0)
    return export(TinyNet(), (2, 3, 16, 16), ["logits", "cls", "prob"])


def test_instnorm_act_fusion_matches_original(tinynet):
    fused, count = plugins.fuse_instnorm_act(tinynet)
    assert count == 2
    types = op_types(fused)
    assert "InstanceNormalization" not in types and "Relu" not in types and "LeakyRelu" not in types
    node = next(n for n in fused.graph.node if n.op_type == "EdgedaInstanceNormAct"
                and onnx.helper.get_attribute_value(
                    next(a for a in n.attribute if a.name == "activation")) == 2)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
    assert attrs["alpha"] == pytest.approx(0.2) and attrs["epsilon"] == pytest.approx(1e-5)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref, got = run(tinynet, {"image": x}, False), run(fused, {"image": x}, True)
    assert rel_err(got["logits"], ref["logits"]) <= TOL
    assert rel_err(got["prob"], ref["prob"]) <= TOL
    np.testing.assert_array_equal(got["cls"], ref["cls"])


def test_instnorm_not_fused_when_norm_output_is_shared(tinynet):
    model = onnx.ModelProto.FromString(tinynet.SerializeToString())
    norm = next(n for n in model.graph.node if n.op_type == "InstanceNormalization")
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        norm.output[0], onnx.TensorProto.FLOAT, [None] * 4))
    _, count = plugins.fuse_instnorm_act(model)
    assert count == 1


def test_confidence_epilogue_replaces_argmax_and_reducemax(tinynet):
    fused = plugins.fuse_confidence_epilogue(tinynet)
    types = op_types(fused)
    assert types.count("EdgedaConfidence") == 1
    assert "ArgMax" not in types and "ReduceMax" not in types and "Softmax" not in types
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ref, got = run(tinynet, {"image": x}, False), run(fused, {"image": x}, True)
    np.testing.assert_array_equal(got["cls"], ref["cls"])
    assert got["cls"].dtype == np.int64
    assert np.abs(got["prob"] - ref["prob"]).max() <= TOL
    cls, prob, ent = confidence_numpy(ref["logits"])
    np.testing.assert_array_equal(got["class"], cls)
    assert got["class"].dtype == np.int32
    assert np.abs(got["confidence"] - prob).max() <= TOL
    assert np.abs(got["entropy"] - ent).max() <= TOL


def test_confidence_epilogue_on_segmentation_logits():
    torch.manual_seed(0)
    model = export(SegHead(), (1, 3, 9, 7), ["logits", "label"])
    fused = plugins.fuse_confidence_epilogue(model)
    assert "ArgMax" not in op_types(fused)
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 7)).astype(np.float32)
    ref, got = run(model, {"image": x}, False), run(fused, {"image": x}, True)
    np.testing.assert_array_equal(got["label"], ref["label"])
    assert got["label"].shape == (2, 1, 9, 7)
    cls, prob, ent = confidence_numpy(ref["logits"])
    assert got["class"].shape == (2, 9, 7)
    np.testing.assert_array_equal(got["class"], cls)
    assert np.abs(got["confidence"] - prob).max() <= TOL
    assert np.abs(got["entropy"] - ent).max() <= TOL


@pytest.mark.parametrize("frame_hw", [(47, 61), (16, 16), (9, 13), (128, 96)])
def test_preprocess_prologue_matches_reference_preprocessing(tinynet, frame_hw):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = plugins.add_preprocess_prologue(tinynet, mean, std, frame_dtype="float32")
    assert model.graph.input[0].name == "frame"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert op_types(model)[:2] == ["Cast", "EdgedaPreprocess"]
    frame = np.random.default_rng(3).integers(0, 256, (2, *frame_hw, 3), dtype=np.uint8)
    image = preprocess_reference(torch.from_numpy(frame), mean, std, (16, 16),
                                 compute_dtype=torch.float64).numpy()
    ref, got = run(tinynet, {"image": image}, False), run(model, {"frame": frame}, True)
    assert rel_err(got["logits"], ref["logits"]) <= TOL
    np.testing.assert_array_equal(got["cls"], ref["cls"])


def test_apply_plugins_all_rewrites(tinynet):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    model = plugins.apply_plugins(tinynet, mean=mean, std=std, frame_dtype="float32")
    assert model.ir_version <= 10
    types = op_types(model)
    for op in ("EdgedaPreprocess", "EdgedaConfidence", "EdgedaInstanceNormAct"):
        assert op in types
    frame = np.random.default_rng(4).integers(0, 256, (1, 30, 40, 3), dtype=np.uint8)
    image = preprocess_reference(torch.from_numpy(frame), mean, std, (16, 16),
                                 compute_dtype=torch.float64).numpy()
    ref, got = run(tinynet, {"image": image}, False), run(model, {"frame": frame}, True)
    assert rel_err(got["logits"], ref["logits"]) <= TOL
    cls, prob, ent = confidence_numpy(ref["logits"])
    np.testing.assert_array_equal(got["class"], cls)
    assert np.abs(got["entropy"] - ent).max() <= TOL


def test_preprocess_prologue_for_tensorrt_casts_to_float16(tinynet):
    model = plugins.add_preprocess_prologue(tinynet, (0.5,) * 3, (0.5,) * 3)
    cast, pre = model.graph.node[0], model.graph.node[1]
    assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT16
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pre.attribute}
    assert (attrs["out_height"], attrs["out_width"], attrs["fp16_output"]) == (16, 16, 0)
    assert pre.domain == plugins.PLUGIN_DOMAIN and attrs["plugin_version"] == b"1"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", "frame_height", "frame_width", 3]


def test_preprocess_prologue_rejects_bad_input(tinynet):
    from edgeda.errors import EdgedaError

    with pytest.raises(EdgedaError):
        plugins.add_preprocess_prologue(tinynet, (0.5,), (0.5,))
    with pytest.raises(EdgedaError):
        plugins.add_preprocess_prologue(tinynet, (0.5,) * 3, (0.5,) * 3, input_name="nope")
