"""``edgeda export`` of a bundle whose network post-processes its own outputs (a detector): ONNX with
box decoding and non-maximum suppression in the graph, parity-checked against PyTorch, added to the bundle.

The graph is :func:`edgeda.export.detection.export_detector_onnx`'s (padded ``boxes``, ``scores``,
``classes`` and ``num_detections``, dynamic batch). Parity: on random inputs (the export's own check)
and, with labeled data, on real images, where the exported and the eager detections are also scored
with the task's metric (COCO mAP). Precision fp32 only for now.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..bundle import Bundle, update_bundle
from ..errors import EdgedaError
from .files import onnx_name

# share of the PyTorch detections that need an exported one of the same class with IoU >= 0.99 and a
# score within 1e-4 (fp32). Not all: where candidates score equally to float rounding (common in an
# untrained or barely trained detector), the last places kept under max_det and some NMS decisions
# can fall either way in two implementations; a real export error misses far more.
MIN_MATCHED = 0.98


def exports_postprocessing(module) -> bool:
    """Whether a bundle's network carries its own post-processing (decoding + NMS) into the graph."""
    return callable(getattr(module, "postprocess", None)) and callable(getattr(module, "decode", None))


def export_postprocessing_bundle(b: Bundle, out=None, *, precision: str = "fp32", data: str | None = None,
                                 trt: bool = False, n_check: int = 64, exporter: str | None = None,
                                 log: Callable[[str], None] = print) -> dict:
    import torch

    from ..data import load_domain
    from ..tasks import task_of
    from ..training.evaluate import eval_batches
    from .detection import detection_parity, export_detector_onnx, merge_parity, run_detector_ort
    from .onnx import ort_session

    if precision != "fp32" or trt:
        raise EdgedaError(f"a {b.task.task} bundle exports fp32 ONNX with NMS in the graph; "
                          "fp16, int8 and TensorRT engines of it are not available yet (use --precision fp32, no --trt)")
    task = task_of(b.task)
    name = b.primary
    model = b.module(name, "cpu").eval()
    opts = dict(task.postprocess_options)
    record: dict = {"data": data, "precisions": {}, "deployables": {}}
    with tempfile.TemporaryDirectory(prefix="edgeda-export-") as tmp:
        path = Path(tmp) / Path(onnx_name(name, "fp32")).name
        rep = export_detector_onnx(model, path, tuple(b.task.image_size), score_thresh=opts.get("score_thresh", 0.05),
                                   max_det=opts.get("max_det", 100), exporter=exporter)
        checks = {"random": rep["parity"]}
        if data:
            dom = load_domain(data, labeled=True, size=b.task.image_size, channels=b.task.channels, task=b.task.task)
            sess = ort_session(path)
            parts, m_ort, m_eager, seen = [], task.meter(b.task), task.meter(b.task), 0
            for x, y, _ in eval_batches(dom, b.task, "cpu", 16, labels=True):
                x = x[: max(0, n_check - seen)]
                if not len(x):
                    break
                seen += len(x)
                xn = x.numpy()
                parts.append(detection_parity(model, sess, xn, score_thresh=opts.get("score_thresh", 0.05),
                                              max_det=opts.get("max_det", 100)))
                if y is not None:
                    y = y[:len(x)]
                    task.update(m_ort, run_detector_ort(sess, xn), y)
                    with torch.no_grad():
                        task.update(m_eager, task.infer(model, x), y)
            checks["real"] = merge_parity(parts)
            if len(m_ort):
                s_ort, s_eager = task.scores(m_ort, b.task), task.scores(m_eager, b.task)
                record["precisions"]["fp32"] = {"target_" + task.headline: s_ort[task.headline],
                                                "target_scores": {k: v for k, v in s_ort.items() if not isinstance(v, (dict, list))},
                                                "eager_" + task.headline: s_eager[task.headline], "n": seen}
        worst = min(c["matched_fraction"] for c in checks.values())
        if worst < MIN_MATCHED:
            raise EdgedaError(f"ONNX parity failed for {name}: {worst:.1%} of the PyTorch detections have an exported one "
                              "with IoU >= 0.99, the same class and a score within 1e-4; nothing was written")
        entry = {"inputs": ["image"], "outputs": ["boxes", "scores", "classes", "num_detections"], "nms": {
            k: rep[k] for k in ("num_anchors", "max_det", "pre_nms_topk", "score_thresh", "iou_thresh")},
            "parity_fp32": checks, "files": {"fp32": onnx_name(name, "fp32")}}
        record["deployables"][name] = entry
        for kind, c in checks.items():
            log(f"  {name} fp32 ONNX (NMS in the graph) vs PyTorch ({kind}, {c['images']} images): "
                f"{c['matched']}/{c['detections']} detections matched"
                + (f" ({c['at_cut']} more tied at the max_det cut)" if c.get("at_cut") else "")
                + f", max score diff {c['max_score_diff']:.1e}")
        for p, r in record["precisions"].items():
            log(f"  {p}: {task.format_scores(r['target_scores'])} on {data} (eager {r['eager_' + task.headline]:.1%})")
        merged = {**b.manifest.get("export", {}), "deployables": {name: entry}, "precisions": record["precisions"],
                  "data": data}
        dst = update_bundle(b.path, out, add_files={onnx_name(name, "fp32"): path}, manifest_updates={"export": merged})
    record["bundle"] = str(dst)
    record["files"] = [onnx_name(name, "fp32")]
    log(f"bundle: {dst}")
    return record
