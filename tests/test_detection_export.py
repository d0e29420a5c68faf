"""Detector export: decoding and ONNX NonMaxSuppression in the graph, parity with PyTorch, the EfficientNMS_TRT rewrite."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeda.errors import EdgedaError
from edgeda.export.detection import OUTPUTS, _nms_nodes, export_detector_onnx, run_detector_ort, to_efficient_nms
from edgeda.export.onnx import ort_session
from edgeda.models import build
from edgeda.models.detection.boxes import batched_nms

TINY = {
    "ssdlite": dict(width=0.25),
    "fcos": dict(backbone="resnet18", width=8, fpn_channels=64, num_convs=1),
}


def _model(arch):
    torch.manual_seed(0)
    m = build("detector", arch=arch, num_classes=3, image_size=(64, 64), **TINY[arch])
    # an untrained model scores many anchors exactly alike (its activations vanish in eval mode with the initial
    # BatchNorm statistics), and NMS breaks such ties by position in a sort: give it the statistics of a batch and
    # spread biases, as a trained model has
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.bias is not None:
            torch.nn.init.normal_(mod.bias, 0.0, 0.5)
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    with torch.no_grad():
        m.train()(torch.randn(4, 3, 64, 64))
    return m.eval()


def _nms_only(num_anchors, k, **kw):
    """The NMS part of the exported graph alone, fed ``decoded`` (B, A, 4 + K)."""
    nodes, inits, outputs = _nms_nodes(num_anchors, k, **kw)
    graph = helper.make_graph(nodes, "nms", [helper.make_tensor_value_info("decoded", TensorProto.FLOAT,
                                                                           ["batch", num_anchors, 4 + k])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnx_nms_hand_worked_example():
    # the greedy chain of the NMS test: b1 (IoU 0.43 with b0) goes, b2 (0.43 with b1 only) stays; a box of another
    # class on top of b0 stays; a box scoring below the threshold never appears
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10], [0, 0, 10, 10], [30, 30, 40, 40]], np.float32)
    scores = np.zeros((5, 2), np.float32)
    scores[[0, 1, 2, 4], 0] = [0.9, 0.8, 0.7, 0.01]
    scores[3, 1] = 0.85
    decoded = np.concatenate([boxes, scores], 1)[None]
    sess = _nms_only(5, 2, score_thresh=0.05, iou_thresh=0.4, max_det=4, pre_nms_topk=1000)
    out_boxes, out_scores, out_classes, num = sess.run(list(OUTPUTS), {"decoded": np.concatenate([decoded, decoded])})
    assert num.tolist() == [3, 3] and num.dtype == np.int32 and out_classes.dtype == np.int32
    assert np.allclose(out_scores[0], [0.9, 0.85, 0.7, 0.0])
    assert out_classes[0].tolist() == [0, 1, 0, 0]
    assert np.array_equal(out_boxes[0, :3], boxes[[0, 3, 2]]) and not out_boxes[0, 3].any()
    # the PyTorch NMS keeps the same boxes
    keep = batched_nms(torch.from_numpy(boxes[[0, 1, 2, 3]]), torch.tensor([0.9, 0.8, 0.7, 0.85]),
                       torch.tensor([0, 0, 0, 1]), 0.4)
    assert keep.tolist() == [0, 3, 2]
    # IoU exactly at 0.43 does not suppress at threshold 0.45; max_det cuts the list per image
    sess = _nms_only(5, 2, score_thresh=0.05, iou_thresh=0.45, max_det=2, pre_nms_topk=1000)
    _, out_scores, _, num = sess.run(list(OUTPUTS), {"decoded": decoded})
    assert num.tolist() == [2] and np.allclose(out_scores[0], [0.9, 0.85])


@pytest.mark.parametrize("arch", sorted(TINY))
def test_export_matches_postprocess(arch, tmp_path):
    m = _model(arch)
    report = export_detector_onnx(m, tmp_path / "det.onnx", score_thresh=0.05, max_det=20)
    par = report["parity"]
    assert par["detections"] > 0 and par["matched_fraction"] == 1.0 and par["counts_equal"] == par["images"]
    assert par["max_score_diff"] <= 1e-4
    assert report["iou_thresh"] == m.nms_iou
    # dynamic batch, fixed-size padded outputs
    sess = ort_session(tmp_path / "det.onnx")
    images = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)
    boxes, scores, classes, num = sess.run(list(OUTPUTS), {"image": images})
    assert boxes.shape == (4, 20, 4) and scores.shape == (4, 20) and classes.shape == (4, 20) and num.shape == (4,)
    assert classes.dtype == np.int32 and num.dtype == np.int32 and int(classes.max()) < 3
    for i, n in enumerate(num):
        assert not boxes[i, n:].any() and not scores[i, n:].any()
        assert (np.diff(scores[i, :n]) <= 0).all()
    with torch.no_grad():
        ref = m.postprocess(m(torch.from_numpy(images)), score_thresh=0.05, max_det=20)
    got = run_detector_ort(sess, images)
    for r, g in zip(ref, got):
        assert len(r["scores"]) == len(g["scores"])
        assert np.allclose(r["scores"].numpy(), g["scores"], atol=1e-4)
        assert np.array_equal(r["labels"].numpy(), g["labels"])
        assert np.allclose(r["boxes"].numpy(), g["boxes"], atol=1e-3)


def test_efficient_nms_rewrite_structure(tmp_path):
    m = _model("fcos")
    export_detector_onnx(m, tmp_path / "det.onnx", score_thresh=0.1, iou_thresh=0.5, max_det=15, pre_nms_topk=200,
                         check=False)
    out = to_efficient_nms(tmp_path / "det.onnx", tmp_path / "det_trt.onnx")
    g = onnx.load(str(out)).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("EfficientNMS_TRT") == 1 and "NonMaxSuppression" not in ops
    node = next(n for n in g.node if n.op_type == "EfficientNMS_TRT")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": b"1", "plugin_namespace": b"", "background_class": -1, "box_coding": 0,
                     "iou_threshold": pytest.approx(0.5), "score_threshold": pytest.approx(0.1),
                     "max_output_boxes": 15, "score_activation": 0, "class_agnostic": 0}
    kinds = {a.name: a.type for a in node.attribute}
    assert kinds["max_output_boxes"] == onnx.AttributeProto.INT and kinds["iou_threshold"] == onnx.AttributeProto.FLOAT
    # inputs: candidate boxes (B, P, 4) and the candidates' class scores transposed to (B, P, K)
    producers = {o: n for n in g.node for o in n.output}
    assert producers[node.input[0]].op_type == "GatherND"
    transpose = producers[node.input[1]]
    assert transpose.op_type == "Transpose" and helper.get_attribute_value(transpose.attribute[0]) == [0, 2, 1]
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.output}
    types = {v.name: v.type.tensor_type.elem_type for v in g.output}
    assert shapes == {"boxes": ["batch", 15, 4], "scores": ["batch", 15], "classes": ["batch", 15], "num_detections": ["batch"]}
    assert types["classes"] == types["num_detections"] == TensorProto.INT32 and types["boxes"] == TensorProto.FLOAT
    assert node.output[1:] == ["boxes", "scores", "classes"]
    assert producers["num_detections"].op_type == "Reshape" and producers["num_detections"].input[0] == node.output[0]
    # everything feeding the plugin is still there, in order; the decoded image path is unchanged
    seen = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    for n in g.node:
        assert all(t in seen for t in n.input), n.name
        seen.update(n.output)
    assert [i.name for i in g.input] == ["image"]


def test_efficient_nms_rewrite_refusals(tmp_path):
    m = _model("ssdlite")
    export_detector_onnx(m, tmp_path / "low.onnx", score_thresh=0.001, max_det=5, check=False)
    with pytest.raises(EdgedaError, match="0.007"):
        to_efficient_nms(tmp_path / "low.onnx", tmp_path / "z.onnx")
    model = onnx.load(str(tmp_path / "low.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["edgeda_pre_nms_topk"] == str(144 * 3)  # all 144 anchors x 3 classes
    helper.set_model_props(model, {**props, "edgeda_pre_nms_topk": "5000", "edgeda_score_thresh": "0.05"})
    onnx.save(model, str(tmp_path / "big.onnx"))
    with pytest.raises(EdgedaError, match="3840"):
        to_efficient_nms(tmp_path / "big.onnx", tmp_path / "x.onnx")
    plain = helper.make_model(helper.make_graph([], "g", [], []))
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(EdgedaError, match="export_detector_onnx"):
        to_efficient_nms(tmp_path / "plain.onnx", tmp_path / "y.onnx")


def test_parity_counts_ties_at_the_max_det_cut_apart_from_misses():
    from edgeda.export.detection import match_detections

    def det(boxes, scores, labels):
        return {"boxes": np.asarray(boxes, np.float32), "scores": np.asarray(scores, np.float32), "labels": np.asarray(labels)}

    ref = [det([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.3, 0.3], [0, 0, 0])]
    tied = [det([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]], [0.9, 0.3, 0.3], [0, 0, 0])]  # other box at the cut
    full = match_detections(ref, tied, max_det=3)
    assert full["matched"] == 2 and full["at_cut"] == 1 and full["matched_fraction"] == 1.0
    assert match_detections(ref, tied)["matched_fraction"] == pytest.approx(2 / 3)  # no max_det: a miss
    assert match_detections(ref, tied, max_det=4)["at_cut"] == 0  # the list was not cut
    wrong = [det([[0, 0, 10, 10], [60, 60, 70, 70], [40, 40, 50, 50]], [0.9, 0.3, 0.3], [1, 0, 0])]
    r = match_detections(ref, wrong, max_det=3)  # the top detection's class differs: a miss whatever the cut
    assert r["detections"] == 2 and r["matched"] == 1 and r["at_cut"] == 1
