"""fp16 and int8 (calibrated on target images) exports of detectors: the network and decoding at the
precision, the NMS in float32 unchanged, and COCO mAP per precision from ``edgeda export``."""
import numpy as np
import pytest
import torch

import edgeda
from edgeda.bundle import Bundle
from conftest import box_scenes_coco, fake_tensorrt

S = 64
FCOS = {"arch": "fcos", "backbone": "resnet18", "width": 8, "fpn_channels": 64, "num_convs": 1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An FCOS detector (distinct scores even untrained) exported at each precision, and random images."""
    from edgeda.export.detection import export_detector_onnx
    from edgeda.models import build

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("prec")
    model = build("detector", num_classes=3, channels=3, image_size=[S, S], **FCOS).eval()
    x = np.random.default_rng(0).standard_normal((6, 3, S, S)).astype(np.float32)
    reps = {p: export_detector_onnx(model, tmp / f"{p}.onnx", precision=p, calib_images=x[:4]) for p in ("fp32", "fp16", "int8")}
    return model, x, reps


def _graph(path):
    import onnx

    return onnx.load(str(path)).graph


def test_fp16_graph_computes_the_network_in_half_and_keeps_the_nms_in_float32(exported):
    from onnx import TensorProto

    _, _, reps = exported
    g = _graph(reps["fp16"]["path"])
    inits = {i.name: i.data_type for i in g.initializer}
    conv_weights = [inits[n.input[1]] for n in g.node if n.op_type == "Conv"]
    assert conv_weights and all(t == TensorProto.FLOAT16 for t in conv_weights)
    assert inits["nms/iou_threshold"] == TensorProto.FLOAT and inits["nms/score_threshold"] == TensorProto.FLOAT
    assert [n.op_type for n in g.node].count("NonMaxSuppression") == 1
    assert [o.name for o in g.output] == ["boxes", "scores", "classes", "num_detections"]
    assert {o.name: o.type.tensor_type.elem_type for o in g.output}["boxes"] == TensorProto.FLOAT
    assert "parity" not in reps["fp16"] and reps["fp16"]["precision"] == "fp16"


def test_int8_graph_quantizes_the_network_and_leaves_decoding_and_nms_float(exported):
    _, _, reps = exported
    g = _graph(reps["int8"]["path"])
    dq_outputs = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    # everything computed from the class probabilities on (the decoding and the NMS) stays float: no
    # QuantizeLinear reads a tensor downstream of FCOS's Sigmoid
    downstream = {o for n in g.node if n.op_type == "Sigmoid" for o in n.output}
    for n in g.node:  # nodes are in topological order
        if any(i in downstream for i in n.input):
            downstream.update(n.output)
    assert "decoded" in downstream and "scores" in downstream
    assert not [n.name for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in downstream]
    convs = [n for n in g.node if n.op_type == "Conv"]
    quantized = [n for n in convs if n.input[0] in dq_outputs]
    assert len(quantized) == len(convs) - 1  # all but the first, on the raw image (kept float as for every model)


@pytest.mark.parametrize("precision,score_tol", [("fp16", 2e-3), ("int8", 5e-2)])
def test_reduced_precision_detections_follow_fp32_at_any_batch(exported, precision, score_tol):
    from edgeda.export.detection import match_detections, run_detector_ort
    from edgeda.export.onnx import ort_session

    _, x, reps = exported
    ref = run_detector_ort(ort_session(reps["fp32"]["path"]), x)
    for batch in (x[:1], x):  # dynamic batch
        out = run_detector_ort(ort_session(reps[precision]["path"]), batch)
        assert len(out) == len(batch) and all(len(o["scores"]) == len(r["scores"]) for o, r in zip(out, ref))
    out = run_detector_ort(ort_session(reps[precision]["path"]), x)
    m = match_detections(ref, out, iou_min=0.5, score_tol=1.0)
    assert m["max_score_diff"] < score_tol
    best = [abs(float(o["scores"][0]) - float(r["scores"][0])) for o, r in zip(out, ref)]
    assert max(best) < score_tol  # each image's top score survives the precision


def test_int8_export_needs_calibration_images():
    from edgeda.export.detection import export_detector_onnx
    from edgeda.models import build

    model = build("detector", num_classes=2, channels=3, image_size=[S, S], arch="ssdlite", width=0.25)
    with pytest.raises(edgeda.errors.EdgedaError, match="calibration"):
        export_detector_onnx(model, "/nonexistent/x.onnx", precision="int8")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precbundle")
    src = box_scenes_coco(tmp / "src", 12, 0, S)
    tgt = box_scenes_coco(tmp / "tgt", 8, 1, S, shift=60)
    res = edgeda.train(method="source_only", task="detection", source=src, target=tgt, target_test=tgt, image_size=[S, S],
                       backbone="ssdlite", backbone_kwargs={"width": 0.25}, batch_size=4, iters=2, eval_every=2,
                       checkpoint_every=2, device="cpu", workers=0, out=str(tmp / "run"), progress=False, log=None)
    return res.bundle, tgt, tmp


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_export_scores_every_precision_and_keeps_the_fp32_parity(bundle, precision):
    from edgeda.export.api import export_bundle
    from edgeda.export.prediction import predict

    path, tgt, tmp = bundle
    lines = []
    rec = export_bundle(path, tmp / f"{precision}.edgeda", precision=precision, data=tgt,
                        calib=tgt if precision == "int8" else None, log=lines.append)
    e = Bundle(rec["bundle"])
    assert {"onnx/model.fp32.onnx", f"onnx/model.{precision}.onnx"} <= set(e.manifest["files"])
    ex = e.manifest["export"]
    parity = ex["deployables"]["model"]["parity_fp32"]
    assert parity["real"]["images"] == 8 and parity["real"]["matched_fraction"] == 1.0  # fp32 as before
    assert ex["precisions"]["fp32"]["target_map"] == pytest.approx(ex["precisions"]["fp32"]["eager_map"], abs=1e-3)
    p = ex["precisions"][precision]
    assert 0.0 <= p["target_map"] <= 1.0 and p["n"] == 8 and "map50" in p["target_scores"]
    agree = ex["deployables"]["model"][f"vs_fp32_{precision}"]
    assert agree["n"] == 8 and 0.0 <= agree["matched_fraction_within_score_tol"] <= agree["matched_fraction"] <= 1.0
    assert p["detection_agreement_with_fp32"] == agree["matched_fraction"]
    assert (precision == "int8") == ("calib" in ex) and (precision != "int8" or ex["calib"]["n"] == 8)
    assert any(line.lstrip().startswith(f"{precision}: mAP") for line in lines)

    frames = tgt.rsplit("/", 1)[0]
    out = predict(rec["bundle"], frames, backend="ort", precision=precision, out=tmp / f"{precision}.csv")
    assert out["n"] == 8


def test_an_unexported_bundle_runs_in_onnx_runtime_at_fp16(bundle):
    from edgeda.export.runtime import make_runner

    path, _, _ = bundle
    images = np.random.default_rng(0).integers(0, 255, (2, S, S, 3)).astype(np.uint8)
    got = make_runner("ort", path, "fp16").predict(images)
    ref = make_runner("ort", path, "fp32").predict(images)
    assert len(got) == len(ref) == 2 and all(len(g["scores"]) == len(r["scores"]) for g, r in zip(got, ref))


@pytest.mark.parametrize("version,precision,source,flags", [("10.3.0.30", "fp16", "fp32", ["FP16"]),
                                                           ("11.1.0", "int8", "int8", [])])
def test_trt_export_builds_from_the_efficient_nms_graph_with_a_stand_in_tensorrt(bundle, monkeypatch, version, precision,
                                                                                  source, flags):
    """Control flow only (no TensorRT here): ``--trt`` on a detector hands TensorRT's parser the graph with its NMS
    rewritten for EfficientNMS_TRT (the fp32 graph plus builder flags on 10.x, the precision's own on 11.x), with
    TensorRT's plugins registered first, and the engine and the rewritten graph land in the bundle."""
    import io
    import sys

    import onnx

    from edgeda.export import trt as T
    from edgeda.export.api import export_bundle

    path, tgt, tmp = bundle
    log = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, log, (-1, 3, S, S),
                                                               ("boxes", "scores", "classes", "num_detections")))
    monkeypatch.setattr(T, "gpu_info", lambda: {"gpu": "Stand-in GPU", "sm": "8.7", "cuda": "12.6"})
    rec = export_bundle(path, tmp / f"trt-{version}-{precision}.edgeda", precision=precision, data=tgt, trt=True,
                        batch=(1, 2, 4), calib=tgt if precision == "int8" else None, log=None)
    e = Bundle(rec["bundle"])
    entry = e.manifest["export"]["deployables"]["model"]["trt"]
    assert entry["plan"] == f"trt/model.{precision}.plan" and entry["onnx"] == f"onnx/model.{source}.efficientnms.onnx"
    assert {entry["plan"], entry["onnx"], f"trt/model.{precision}.plan.json"} <= set(e.manifest["files"])
    assert entry["metadata"]["options"]["builder_flags"] == flags
    parsed = [a for name, a in log if name == "parse"]
    assert len(parsed) == 1
    g = onnx.load_model(io.BytesIO(parsed[0])).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("EfficientNMS_TRT") == 1 and "NonMaxSuppression" not in ops
    assert [o.name for o in g.output] == ["boxes", "scores", "classes", "num_detections"]
    meta = {p.key: p.value for p in onnx.load_model(io.BytesIO(parsed[0])).metadata_props}
    assert meta["edgeda_precision"] == source
    names = [name for name, _ in log]
    assert names.index("init_libnvinfer_plugins") < names.index("parse")
    assert [a for name, a in log if name == "profile.set_shape"] == [("image", (1, 3, S, S), (2, 3, S, S), (4, 3, S, S))]


def test_trt_runner_reads_a_detector_engine_as_detections(bundle, monkeypatch):
    """The runner of a detector's engine gives the same per-image records as ONNX Runtime's, from EfficientNMS_TRT's
    padded outputs (its num_detections is (B, 1)). The engine is stood in for by the exported ONNX graph."""
    import onnxruntime as ort

    from edgeda.export import runtime as R
    from edgeda.export.api import export_bundle
    from edgeda.export.detection import OUTPUTS

    path, tgt, tmp = bundle
    rec = export_bundle(path, tmp / "for-trt-runner.edgeda", data=tgt, log=None)
    fp32 = Bundle(rec["bundle"]).file("onnx/model.fp32.onnx")

    class StandInEngine:
        inputs, outputs = ["image"], list(OUTPUTS)
        timings = {"h2d_ms": 0.0}

        def __init__(self, plan, plugin_library=None):
            self.session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])

        def run(self, feeds):
            out = dict(zip(OUTPUTS, self.session.run(list(OUTPUTS), feeds)))
            out["num_detections"] = out["num_detections"].reshape(-1, 1)
            return out

    monkeypatch.setattr(R, "require_tensorrt", lambda: None)
    monkeypatch.setattr(R, "TrtEngine", StandInEngine)
    b = Bundle(rec["bundle"])
    b.manifest["files"]["trt/model.fp32.plan"] = "0" * 64  # the runner looks the plan up by name only
    images = np.random.default_rng(1).integers(0, 255, (3, S, S, 3)).astype(np.uint8)
    got = R.make_runner("trt", b, "fp32").predict(images)
    ref = R.make_runner("ort", b, "fp32").predict(images)
    assert len(got) == 3
    for g, r in zip(got, ref):
        assert g["labels"].dtype == np.int64 and g["boxes"].shape == r["boxes"].shape
        np.testing.assert_array_equal(g["boxes"], r["boxes"])
        np.testing.assert_array_equal(g["labels"], r["labels"])
