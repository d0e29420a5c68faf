"""ONNX export of a detector with box decoding and non-maximum suppression inside the graph, its parity
check in ONNX Runtime, and the rewrite of the NMS for TensorRT's ``EfficientNMS_TRT`` plugin.

Graph (:func:`export_detector_onnx`)
------------------------------------
``image`` (B, C, H, W), the normalised batch, dynamic ``batch`` axis, then

1. the detector and its ``decode`` (exported by :func:`edgeda.export.onnx.export_onnx`, so with the
   exporter, opset and checks of every other edgeda model): ``decoded`` (B, A, 4 + K), boxes in pixels
   and per-class scores side by side;
2. written here with ``onnx.helper`` (the ``nms/`` nodes): ``TopK`` of the ``pre_nms_topk`` best
   (anchor, class) pairs of each image, their boxes gathered to ``nms/candidate_boxes`` (B, P, 4) and
   their scores spread to ``nms/candidate_scores`` (B, K, P) (a candidate scores -1 under the classes
   it is not), ONNX ``NonMaxSuppression`` (per class, IoU above ``iou_thresh`` suppresses, scores above
   ``score_thresh``, at most ``max_det`` per class), then the ``max_det`` best of each image.

Outputs, fixed size and padded: ``boxes`` (B, M, 4) float32 pixels ``x1 y1 x2 y2``, ``scores`` (B, M)
float32, ``classes`` (B, M) int32 in ``0 .. K-1``, ``num_detections`` (B,) int32; entry ``j`` of image ``i``
is a detection when ``j < num_detections[i]`` (by decreasing score), and zeros otherwise. This is what
:meth:`~edgeda.models.detection.base.Detector.postprocess` computes in PyTorch with the same arguments.

TensorRT (:func:`to_efficient_nms`)
-----------------------------------
``onnx-graphsurgeon`` (``pip install onnx-graphsurgeon``, in the ``trt`` extra) replaces
``NonMaxSuppression`` and the padding after it with one ``EfficientNMS_TRT`` node (plugin version 1,
shipped in ``libnvinfer_plugin`` of TensorRT 10.3 and 11.x; TensorRT 11 removed other NMS plugins, not
this one) fed with the same candidates (scores transposed to (B, P, K)); its ``num_detections``
(B, 1) is reshaped to (B,), so both files have the same outputs. ``background_class`` -1,
``box_coding`` 0 (corners), ``score_activation`` 0, ``class_agnostic`` 0. The plugin keeps at most
4096 candidates and TensorRT's ``TopK`` takes ``k <= 3840``, so ``pre_nms_topk`` must not exceed 3840.
Two differences from ONNX ``NonMaxSuppression`` only show at exact ties: the plugin keeps scores ``>=`` the
threshold and suppresses at IoU ``>=`` the threshold (ONNX and the PyTorch NMS: ``>``). Below a score threshold
of 0.007 the plugin switches to a kernel that ranks below-threshold scores instead of dropping them, so the
rewrite needs ``score_thresh >= 0.007``. ``edgeda export --trt`` builds the engine from the rewritten graph
(:mod:`edgeda.export.boxes_bundle`); that needs TensorRT and a GPU, and has not run on one yet.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgedaError, MissingDependency
from ..models.detection.base import image_size_of
from ..models.detection.boxes import box_iou
from .onnx import MAX_IR_VERSION, OPSET, InputSpec, Signature, export_onnx, ort_session
from .quantize import quantize_int8, to_float16_file

OUTPUTS = ("boxes", "scores", "classes", "num_detections")
TRT_MAX_CANDIDATES = 3840  # TensorRT TopK: k <= 3840 (EfficientNMS_TRT itself keeps up to 4096)
TRT_MIN_SCORE_THRESH = 0.007  # below it EfficientNMS_TRT's dense kernel keeps below-threshold entries


class DecodedDetector(nn.Module):
    """``image -> cat(boxes, scores)`` (B, A, 4 + K): the detector and its decoding as one module."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.image_size = tuple(image_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        boxes, scores = self.model.decode(self.model(image), self.image_size)
        return torch.cat([boxes, scores], dim=-1)


def _in_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise EdgedaError(f"{type(model).__name__} has no convolution to tell its input channels")
    return conv.in_channels


def _nms_nodes(num_anchors: int, num_classes: int, *, score_thresh: float, iou_thresh: float, max_det: int,
               pre_nms_topk: int):
    """Nodes and initializers that turn ``decoded`` (B, A, 4 + K) into the four padded outputs."""
    from onnx import TensorProto, helper, numpy_helper

    k, m = num_classes, max_det
    p = min(pre_nms_topk, num_anchors * k)
    inits = {
        "nms/box_start": np.array([0], np.int64), "nms/box_end": np.array([4], np.int64),
        "nms/score_end": np.array([4 + k], np.int64), "nms/axis2": np.array([2], np.int64),
        "nms/flat_shape": np.array([0, -1], np.int64), "nms/topk": np.array([p], np.int64),
        "nms/num_classes": np.array(k, np.int64), "nms/class_range": np.arange(k, dtype=np.int64).reshape(1, k, 1),
        "nms/not_this_class": np.array(-1.0, np.float32), "nms/max_per_class": np.array([m], np.int64),
        "nms/iou_threshold": np.array([iou_thresh], np.float32),
        "nms/score_threshold": np.array([score_thresh], np.float32),
        "nms/ax0": np.array([0], np.int64), "nms/ax1": np.array([1], np.int64),
        "nms/col_batch": np.array(0, np.int64), "nms/col_class": np.array(1, np.int64),
        "nms/cols_batch_box": np.array([0, 2], np.int64), "nms/zero_i": np.array(0, np.int64),
        "nms/one_i": np.array(1, np.int64), "nms/max_det": np.array([m], np.int64),
        "nms/other_image": np.array(-1.0, np.float32), "nms/valid_above": np.array(-0.5, np.float32),
        "nms/zero_f": np.array(0.0, np.float32), "nms/box_padding": np.zeros((m, 4), np.float32),
        "nms/class_padding": np.zeros((m,), np.int64), "nms/zero_i32": np.array(0, np.int32),
    }
    nodes = _nms_select_nodes() + _nms_pad_nodes()
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", m, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", m]),
        helper.make_tensor_value_info("classes", TensorProto.INT32, ["batch", m]),
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, ["batch"]),
    ]
    return nodes, [numpy_helper.from_array(v, name) for name, v in inits.items()], outputs


def _nms_select_nodes() -> list:
    """``decoded`` -> the top candidates' boxes and per-class scores -> NonMaxSuppression -> each selection's
    image, class, score and box (``nms/sel_*``)."""
    from onnx import helper

    n = helper.make_node
    return [
        n("Slice", ["decoded", "nms/box_start", "nms/box_end", "nms/axis2"], ["nms/boxes"], name="nms/slice_boxes"),
        n("Slice", ["decoded", "nms/box_end", "nms/score_end", "nms/axis2"], ["nms/scores"], name="nms/slice_scores"),
        n("Reshape", ["nms/scores", "nms/flat_shape"], ["nms/flat_scores"], name="nms/flatten"),
        n("TopK", ["nms/flat_scores", "nms/topk"], ["nms/top_scores", "nms/top_index"], axis=-1, name="nms/pre_topk"),
        n("Div", ["nms/top_index", "nms/num_classes"], ["nms/top_anchor"], name="nms/anchor_of"),
        n("Mod", ["nms/top_index", "nms/num_classes"], ["nms/top_class"], name="nms/class_of"),
        n("Unsqueeze", ["nms/top_anchor", "nms/axis2"], ["nms/top_anchor_u"], name="nms/anchor_u"),
        n("GatherND", ["nms/boxes", "nms/top_anchor_u"], ["nms/candidate_boxes"], batch_dims=1, name="nms/gather_boxes"),
        n("Unsqueeze", ["nms/top_class", "nms/ax1"], ["nms/top_class_u"], name="nms/class_u"),
        n("Equal", ["nms/top_class_u", "nms/class_range"], ["nms/is_class"], name="nms/one_hot"),
        n("Unsqueeze", ["nms/top_scores", "nms/ax1"], ["nms/top_scores_u"], name="nms/scores_u"),
        n("Where", ["nms/is_class", "nms/top_scores_u", "nms/not_this_class"], ["nms/candidate_scores"],
          name="nms/spread_scores"),
        n("NonMaxSuppression", ["nms/candidate_boxes", "nms/candidate_scores", "nms/max_per_class",
                                "nms/iou_threshold", "nms/score_threshold"], ["nms/selected"],
          center_point_box=0, name="nms/NonMaxSuppression"),
        # selected (n, 3) = (image, class, candidate): gather each one's score, class and box
        n("GatherND", ["nms/candidate_scores", "nms/selected"], ["nms/sel_score"], name="nms/sel_score"),
        n("Gather", ["nms/selected", "nms/col_batch"], ["nms/sel_image"], axis=1, name="nms/sel_image"),
        n("Gather", ["nms/selected", "nms/col_class"], ["nms/sel_class"], axis=1, name="nms/sel_class"),
        n("Gather", ["nms/selected", "nms/cols_batch_box"], ["nms/sel_image_box"], axis=1, name="nms/sel_image_box"),
        n("GatherND", ["nms/candidate_boxes", "nms/sel_image_box"], ["nms/sel_boxes"], name="nms/sel_boxes"),
    ]


def _nms_pad_nodes() -> list:
    """The selections -> per image the ``max_det`` best, padded: the graph's four outputs."""
    from onnx import TensorProto, helper

    n = helper.make_node
    return [
        # per image: the max_det best of its selections (other images' entries -1, padding -2)
        n("Shape", ["decoded"], ["nms/decoded_shape"], name="nms/shape"),
        n("Gather", ["nms/decoded_shape", "nms/zero_i"], ["nms/batch"], axis=0, name="nms/batch"),
        n("Range", ["nms/zero_i", "nms/batch", "nms/one_i"], ["nms/images"], name="nms/images"),
        n("Unsqueeze", ["nms/images", "nms/ax1"], ["nms/images_col"], name="nms/images_col"),
        n("Unsqueeze", ["nms/sel_image", "nms/ax0"], ["nms/sel_image_row"], name="nms/sel_image_row"),
        n("Equal", ["nms/sel_image_row", "nms/images_col"], ["nms/of_image"], name="nms/of_image"),
        n("Unsqueeze", ["nms/sel_score", "nms/ax0"], ["nms/sel_score_row"], name="nms/sel_score_row"),
        n("Where", ["nms/of_image", "nms/sel_score_row", "nms/other_image"], ["nms/image_scores"], name="nms/image_scores"),
        n("Unsqueeze", ["nms/batch", "nms/ax0"], ["nms/batch_1d"], name="nms/batch_1d"),
        n("Concat", ["nms/batch_1d", "nms/max_det"], ["nms/pad_shape"], axis=0, name="nms/pad_shape"),
        n("ConstantOfShape", ["nms/pad_shape"], ["nms/score_padding"],
          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [-2.0]), name="nms/score_padding"),
        n("Concat", ["nms/image_scores", "nms/score_padding"], ["nms/padded_scores"], axis=1, name="nms/padded_scores"),
        n("TopK", ["nms/padded_scores", "nms/max_det"], ["nms/best_scores", "nms/best_index"], axis=1, name="nms/best"),
        n("Greater", ["nms/best_scores", "nms/valid_above"], ["nms/valid"], name="nms/valid"),
        n("Concat", ["nms/sel_boxes", "nms/box_padding"], ["nms/boxes_padded"], axis=0, name="nms/boxes_padded"),
        n("Gather", ["nms/boxes_padded", "nms/best_index"], ["nms/best_boxes"], axis=0, name="nms/best_boxes"),
        n("Unsqueeze", ["nms/valid", "nms/axis2"], ["nms/valid_u"], name="nms/valid_u"),
        n("Where", ["nms/valid_u", "nms/best_boxes", "nms/zero_f"], ["boxes"], name="nms/out_boxes"),
        n("Where", ["nms/valid", "nms/best_scores", "nms/zero_f"], ["scores"], name="nms/out_scores"),
        n("Concat", ["nms/sel_class", "nms/class_padding"], ["nms/classes_padded"], axis=0, name="nms/classes_padded"),
        n("Gather", ["nms/classes_padded", "nms/best_index"], ["nms/best_classes"], axis=0, name="nms/best_classes"),
        n("Cast", ["nms/best_classes"], ["nms/best_classes_i32"], to=TensorProto.INT32, name="nms/classes_i32"),
        n("Where", ["nms/valid", "nms/best_classes_i32", "nms/zero_i32"], ["classes"], name="nms/out_classes"),
        n("Cast", ["nms/valid"], ["nms/valid_i64"], to=TensorProto.INT64, name="nms/valid_i64"),
        n("ReduceSum", ["nms/valid_i64", "nms/ax1"], ["nms/count"], keepdims=0, name="nms/count"),
        n("Cast", ["nms/count"], ["num_detections"], to=TensorProto.INT32, name="nms/out_count"),
    ]


def export_detector_onnx(model: nn.Module, path: str | Path, image_size=None, *, score_thresh: float = 0.05,
                         iou_thresh: float | None = None, max_det: int = 100, pre_nms_topk: int = 1000,
                         opset: int = OPSET, exporter: str | None = None, check: bool = True,
                         precision: str = "fp32", calib_images: np.ndarray | None = None) -> dict:
    """Write ``path``: the detector with decoding and NMS in the graph (see the module docstring).

    ``image_size`` (H, W) defaults to the model's; ``iou_thresh`` to its ``nms_iou``. With ``check`` the
    file is compared with :meth:`postprocess` in ONNX Runtime on random images at batch 1 and 2 (the result
    of :func:`detection_parity`; fp32 only). Returns ``{"path", "num_anchors", "num_classes", "max_det",
    "pre_nms_topk", "score_thresh", "iou_thresh", "precision", "parity"}``.

    ``precision`` changes the network and its decoding, never the NMS (which reads float32 boxes and scores):
    ``fp16`` converts the decoded graph with :func:`edgeda.export.quantize.to_float16` (its output cast back to
    float32); ``int8`` quantizes its convolutions with :func:`edgeda.export.quantize.quantize_int8` (Q/DQ,
    calibrated on ``calib_images``, (N, C, H, W) normalised target images) and leaves the decoding in float32:
    int8 box coordinates in pixels, concatenated with scores in [0, 1] under one scale, would lose the scores."""
    import onnx
    from onnx import helper

    if precision not in ("fp32", "fp16", "int8"):
        raise EdgedaError(f"unknown precision {precision!r}; valid: fp32, fp16, int8")
    if precision == "int8" and calib_images is None:
        raise EdgedaError("an int8 detector export needs calibration images (target images)")
    size = model.image_size if image_size is None else image_size_of(image_size)
    iou = float(model.nms_iou if iou_thresh is None else iou_thresh)
    if not (isinstance(max_det, int) and max_det >= 1 and isinstance(pre_nms_topk, int) and pre_nms_topk >= 1):
        raise EdgedaError(f"max_det and pre_nms_topk must be positive integers, not {max_det!r} and {pre_nms_topk!r}")
    model = model.eval().to("cpu")
    channels = _in_channels(model)
    num_anchors, k = int(model.anchors(size).shape[0]), int(model.num_classes)
    path = Path(path)
    sig = Signature([InputSpec("image", (channels, *size), "image")], ["decoded"])
    with tempfile.TemporaryDirectory() as tmp:
        head = export_onnx(DecodedDetector(model, size), sig, Path(tmp) / "decoded.onnx", opset=opset, exporter=exporter)
        if precision == "fp16":
            head = to_float16_file(head, Path(tmp) / "decoded.fp16.onnx")
        elif precision == "int8":
            head = quantize_int8(head, Path(tmp) / "decoded.int8.onnx", calib_images, "image", op_types=("Conv",))
        graph_model = onnx.load(str(head))
    nodes, inits, outputs = _nms_nodes(num_anchors, k, score_thresh=float(score_thresh), iou_thresh=iou,
                                       max_det=max_det, pre_nms_topk=pre_nms_topk)
    g = graph_model.graph
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(outputs)
    props = {p.key: p.value for p in graph_model.metadata_props}
    props.update({"edgeda_detector": getattr(model, "arch", type(model).__name__), "edgeda_num_classes": str(k),
                  "edgeda_score_thresh": repr(float(score_thresh)), "edgeda_iou_thresh": repr(iou),
                  "edgeda_max_det": str(max_det), "edgeda_pre_nms_topk": str(min(pre_nms_topk, num_anchors * k)),
                  "edgeda_precision": precision})
    helper.set_model_props(graph_model, props)
    graph_model.ir_version = min(graph_model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))
    report = {"path": str(path), "num_anchors": num_anchors, "num_classes": k, "max_det": max_det,
              "pre_nms_topk": min(pre_nms_topk, num_anchors * k), "score_thresh": float(score_thresh), "iou_thresh": iou,
              "precision": precision}
    if check and precision == "fp32":
        rng = np.random.default_rng(0)
        images = rng.standard_normal((3, channels, *size)).astype(np.float32)
        sess = ort_session(path)
        parts = [detection_parity(model, sess, images[:1], score_thresh=score_thresh, iou_thresh=iou, max_det=max_det,
                                  pre_nms_topk=pre_nms_topk),
                 detection_parity(model, sess, images[1:], score_thresh=score_thresh, iou_thresh=iou, max_det=max_det,
                                  pre_nms_topk=pre_nms_topk)]
        report["parity"] = merge_parity(parts)
    return report


def run_detector_ort(session, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The padded outputs of an exported detector as one dict per image, cut to ``num_detections``."""
    return padded_detections(*session.run(list(OUTPUTS), {"image": np.ascontiguousarray(images, np.float32)}))


def padded_detections(boxes, scores, classes, num_detections) -> list[dict[str, np.ndarray]]:
    """The graph's padded :data:`OUTPUTS` (from ONNX Runtime or a TensorRT engine: ``num_detections`` (B,)
    or (B, 1)) as one dict per image, cut to its count; boxes and scores float32, labels int64."""
    num = np.asarray(num_detections).reshape(-1)
    boxes, scores, classes = np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(classes)
    return [{"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": classes[i, :n].astype(np.int64)}
            for i, n in enumerate(num)]


def require_graphsurgeon():
    """The ``onnx_graphsurgeon`` module, or one sentence saying how to install it."""
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        raise MissingDependency("the TensorRT NMS rewrite needs onnx-graphsurgeon (pip install onnx-graphsurgeon)") from None
    return gs


def match_detections(ref: list[dict], out: list[dict], iou_min: float = 0.99, score_tol: float = 1e-4,
                     max_det: int | None = None) -> dict:
    """Compare two detection lists: each reference detection must have one in ``out`` of the same class with
    IoU >= ``iou_min`` and score within ``score_tol`` (greedy, by decreasing score). With ``max_det``, an
    image whose reference list is full was cut at its ``max_det``-th score: detections scoring within
    ``score_tol`` of that cut may be exchanged with equally scored candidates by either implementation,
    so an unmatched one there is counted in ``at_cut``, not as a miss."""
    total = matched = count_equal = at_cut = 0
    worst_score = 0.0
    for r, o in zip(ref, out):
        rb, ob = torch.as_tensor(np.asarray(r["boxes"]), dtype=torch.float32), torch.as_tensor(np.asarray(o["boxes"]), dtype=torch.float32)
        rs, os_ = np.asarray(r["scores"], np.float64), np.asarray(o["scores"], np.float64)
        rl, ol = np.asarray(r["labels"]), np.asarray(o["labels"])
        total += len(rs)
        count_equal += int(len(rs) == len(os_))
        used = np.zeros(len(os_), bool)
        iou = box_iou(rb, ob).numpy() if len(rs) and len(os_) else np.zeros((len(rs), len(os_)))
        # zero-area boxes (clipped at a border) have no IoU: identical coordinates count as a match
        same = (np.abs(np.asarray(rb)[:, None] - np.asarray(ob)[None]).max(-1) <= 1e-4) if len(rs) and len(os_) else iou > 1
        for i in range(len(rs)):
            ok = ((iou[i] >= iou_min) | same[i]) & (ol == rl[i]) & (np.abs(os_ - rs[i]) <= score_tol) & ~used
            if ok.any():
                j = int(np.argmax(np.where(ok, iou[i], -1)))
                used[j] = True
                matched += 1
                worst_score = max(worst_score, abs(float(os_[j] - rs[i])))
            elif max_det is not None and len(rs) >= max_det and rs[i] <= rs.min() + score_tol:
                at_cut += 1
                total -= 1
    return {"images": len(ref), "detections": total, "matched": matched,
            "matched_fraction": matched / total if total else 1.0, "counts_equal": count_equal,
            "max_score_diff": worst_score, "at_cut": at_cut}


def merge_parity(parts: list[dict]) -> dict:
    out = {k: sum(p.get(k, 0) for p in parts) for k in ("images", "detections", "matched", "counts_equal", "at_cut")}
    out["matched_fraction"] = out["matched"] / out["detections"] if out["detections"] else 1.0
    out["max_score_diff"] = max(p["max_score_diff"] for p in parts)
    return out


@torch.no_grad()
def detection_parity(model: nn.Module, session, images: np.ndarray, *, score_thresh: float = 0.05,
                     iou_thresh: float | None = None, max_det: int = 100, pre_nms_topk: int = 1000) -> dict:
    """:meth:`postprocess` in PyTorch against the exported graph in ONNX Runtime on ``images`` (normalised, NCHW)."""
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    ref = model.postprocess(model(x), score_thresh=score_thresh, iou_thresh=iou_thresh, max_det=max_det,
                            pre_nms_topk=pre_nms_topk, image_size=tuple(images.shape[-2:]))
    ref = [{k: v.numpy() for k, v in d.items()} for d in ref]
    return match_detections(ref, run_detector_ort(session, images), max_det=max_det)


def to_efficient_nms(onnx_in: str | Path, onnx_out: str | Path) -> Path:
    """Rewrite an :func:`export_detector_onnx` file for TensorRT: its ``NonMaxSuppression`` and the padding
    after it become one ``EfficientNMS_TRT`` node with the same four outputs (see the module docstring)."""
    gs = require_graphsurgeon()
    import onnx

    model = onnx.load(str(onnx_in))
    props = {p.key: p.value for p in model.metadata_props}
    if "edgeda_max_det" not in props:
        raise EdgedaError(f"{onnx_in} was not written by export_detector_onnx (no edgeda_max_det in its metadata)")
    max_det, topk = int(props["edgeda_max_det"]), int(props["edgeda_pre_nms_topk"])
    if topk > TRT_MAX_CANDIDATES:
        raise EdgedaError(f"TensorRT's TopK takes at most {TRT_MAX_CANDIDATES} candidates; this file has pre_nms_topk "
                          f"{topk}: export again with pre_nms_topk <= {TRT_MAX_CANDIDATES}")
    if float(props["edgeda_score_thresh"]) < TRT_MIN_SCORE_THRESH:
        raise EdgedaError(f"EfficientNMS_TRT needs a score threshold of at least {TRT_MIN_SCORE_THRESH} (below it the plugin "
                          f"ranks below-threshold scores instead of dropping them); this file has "
                          f"{float(props['edgeda_score_thresh'])}: export again with a higher score_thresh")
    graph = gs.import_onnx(model)
    nms = [n for n in graph.nodes if n.op == "NonMaxSuppression"]
    if len(nms) != 1:
        raise EdgedaError(f"{onnx_in} has {len(nms)} NonMaxSuppression nodes; expected one")
    boxes, class_scores = nms[0].inputs[0], nms[0].inputs[1]
    outs = {t.name: t for t in graph.outputs}
    if set(outs) != set(OUTPUTS):
        raise EdgedaError(f"{onnx_in} has outputs {sorted(outs)}; expected {', '.join(OUTPUTS)}")
    scores = gs.Variable("nms/candidate_scores_bpk", dtype=np.float32)
    graph.nodes.append(gs.Node("Transpose", "nms/scores_to_bpk", attrs={"perm": [0, 2, 1]},
                               inputs=[class_scores], outputs=[scores]))
    count = gs.Variable("nms/num_detections_b1", dtype=np.int32, shape=["batch", 1])
    det_boxes = gs.Variable("boxes", dtype=np.float32, shape=["batch", max_det, 4])
    det_scores = gs.Variable("scores", dtype=np.float32, shape=["batch", max_det])
    det_classes = gs.Variable("classes", dtype=np.int32, shape=["batch", max_det])
    for t in outs.values():  # detach the ONNX-NMS outputs so their producers become dead code
        t.name = "unused/" + t.name
    graph.nodes.append(gs.Node(
        "EfficientNMS_TRT", "nms/EfficientNMS_TRT",
        attrs={"plugin_version": "1", "plugin_namespace": "", "background_class": -1, "box_coding": 0,
               "iou_threshold": float(props["edgeda_iou_thresh"]), "score_threshold": float(props["edgeda_score_thresh"]),
               "max_output_boxes": max_det, "score_activation": 0, "class_agnostic": 0},
        inputs=[boxes, scores], outputs=[count, det_boxes, det_scores, det_classes]))
    num = gs.Variable("num_detections", dtype=np.int32, shape=["batch"])
    graph.nodes.append(gs.Node("Reshape", "nms/num_detections_b", inputs=[count, gs.Constant("nms/shape_b", np.array([-1], np.int64))],
                               outputs=[num]))
    graph.outputs = [det_boxes, det_scores, det_classes, num]
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = min(model.ir_version, MAX_IR_VERSION)
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    from onnx import helper

    helper.set_model_props(out, {**props, "edgeda_nms": "EfficientNMS_TRT"})
    onnx.save(out, str(onnx_out))
    return Path(onnx_out)
