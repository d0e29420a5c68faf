"""``edgeda export`` of a bundle whose network post-processes its own outputs (a detector): ONNX with
box decoding and non-maximum suppression in the graph, parity-checked against PyTorch, added to the bundle.

The graph is :func:`edgeda.export.detection.export_detector_onnx`'s (padded ``boxes``, ``scores``,
``classes`` and ``num_detections``, dynamic batch). Parity: on random inputs (the export's own check)
and, with labeled data, on real images, where the exported and the eager detections are also scored
with the task's metric (COCO mAP).

Precisions: the fp32 file always, with its parity against PyTorch; ``fp16`` or ``int8`` (calibrated on
target images: ``calib``, else the bundle's target adaptation split) beside it, the network and decoding
at that precision and the NMS unchanged (:func:`~edgeda.export.detection.export_detector_onnx`). With
labeled data every precision is scored with COCO mAP on the same images (``precisions[p]["target_map"]``
and ``target_scores``) and compared with the fp32 file (``vs_fp32_<p>``: the share of fp32 detections
with one of the same class at IoU >= 0.5, and with one that also scores within 0.01 of it).

TensorRT (``trt``): the graph's NMS is rewritten for ``EfficientNMS_TRT``
(:func:`~edgeda.export.detection.to_efficient_nms`, kept as ``onnx/<name>.<p>.efficientnms.onnx``) and
built like every other engine (:func:`~edgeda.export.trt.engine_into_bundle`): from the fp32 graph with
builder flags (and int8 calibration on the same target images) on TensorRT 10, from the precision's own
graph on TensorRT 11. The engine has the ONNX file's four outputs; ``edgeda predict/bench --backend trt``
read them as detections.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ..bundle import Bundle, update_bundle
from ..data import load_domain
from ..errors import EdgedaError
from ..tasks import task_of
from .detection import (detection_parity, export_detector_onnx, match_detections, merge_parity, require_graphsurgeon,
                        run_detector_ort, to_efficient_nms)
from .files import PRECISIONS, calibration_images, onnx_name
from .onnx import ort_session
from .trt import engine_into_bundle, require_tensorrt, trt_major

# share of the PyTorch detections that need an exported one of the same class with IoU >= 0.99 and a
# score within 1e-4 (fp32). Not all: where candidates score equally to float rounding (common in an
# untrained or barely trained detector), the last places kept under max_det and some NMS decisions
# can fall either way in two implementations; a real export error misses far more.
MIN_MATCHED = 0.98
SCORE_TOL = 0.01  # a reduced-precision detection "keeps its score" within this of the fp32 one


def exports_postprocessing(module) -> bool:
    """Whether a bundle's network carries its own post-processing (decoding + NMS) into the graph."""
    return callable(getattr(module, "postprocess", None)) and callable(getattr(module, "decode", None))


def export_postprocessing_bundle(b: Bundle, out=None, *, precision: str = "fp32", data: str | None = None,
                                 calib: str | None = None, trt: bool = False, batch: Sequence[int] = (1, 8, 32),
                                 workspace_mb: int = 1024, plugins=None, n_check: int = 64,
                                 exporter: str | None = None, log: Callable[[str], None] = print) -> dict:
    if precision not in PRECISIONS:
        raise EdgedaError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if plugins is not None:
        raise EdgedaError(f"--plugins fuses the per-pixel epilogue of segmentation engines; a {b.task.task} engine "
                          "uses TensorRT's own EfficientNMS_TRT plugin only (leave out --plugins)")
    trt_mod = None
    if trt:  # fail before any work: one sentence naming what is missing
        trt_mod = require_tensorrt()
        require_graphsurgeon()
    task = task_of(b.task)
    name = b.primary
    model = b.module(name, "cpu").eval()
    opts = task.postprocess_options
    post = {"score_thresh": opts["score_thresh"], "max_det": opts["max_det"]}
    record: dict = {"data": data, "precisions": {}, "deployables": {}}
    precisions = ["fp32"] + ([precision] if precision != "fp32" else [])
    with tempfile.TemporaryDirectory(prefix="edgeda-export-") as tmp:
        tmp = Path(tmp)
        paths = {p: tmp / Path(onnx_name(name, p)).name for p in precisions}
        rep = export_detector_onnx(model, paths["fp32"], tuple(b.task.image_size), exporter=exporter, **post)
        calib_images = None
        if precision == "int8":
            calib_images, cspec = calibration_images(b, calib)
            record["calib"] = {"data": cspec, "n": int(len(calib_images))}
        for p in precisions[1:]:
            export_detector_onnx(model, paths[p], tuple(b.task.image_size), exporter=exporter, precision=p,
                                 calib_images=calib_images, **post)
        checks = {"random": rep["parity"]}
        vs_fp32: dict = {}
        if data:
            checks["real"], vs_fp32, record["precisions"] = _check_on_data(
                b, model, {p: ort_session(f) for p, f in paths.items()}, data, n_check, post)
        worst = min(c["matched_fraction"] for c in checks.values())
        if worst < MIN_MATCHED:
            raise EdgedaError(f"ONNX parity failed for {name}: {worst:.1%} of the PyTorch detections have an exported one "
                              "with IoU >= 0.99, the same class and a score within 1e-4; nothing was written")
        entry = {"inputs": ["image"], "outputs": ["boxes", "scores", "classes", "num_detections"], "nms": {
            k: rep[k] for k in ("num_anchors", "max_det", "pre_nms_topk", "score_thresh", "iou_thresh")},
            "parity_fp32": checks, "files": {p: onnx_name(name, p) for p in precisions}}
        for p, v in vs_fp32.items():
            entry[f"vs_fp32_{p}"] = v
        _log_checks(name, checks, vs_fp32, record["precisions"], data, task, log)
        add = {onnx_name(name, p): f for p, f in paths.items()}
        if trt_mod is not None:
            entry["trt"] = _build_engine(trt_mod, name, precision, paths, tmp, calib_images, batch, workspace_mb, add, log)
        record["deployables"][name] = entry
        merged = _merged_export_record(b.manifest.get("export", {}), name, entry, record)
        dst = update_bundle(b.path, out, add_files=add, manifest_updates={"export": merged})
    record["bundle"] = str(dst)
    record["files"] = sorted(add)
    log(f"bundle: {dst}")
    return record


def _build_engine(trt_mod, name: str, precision: str, paths: dict, tmp: Path, calib_images, batch, workspace_mb: int,
                  add: dict, log: Callable[[str], None]) -> dict:
    """The TensorRT engine of the detector: its ONNX with the NMS rewritten for ``EfficientNMS_TRT`` (the fp32 graph
    with builder flags on TensorRT 10, the precision's own graph on strongly typed 11), built and listed in ``add``."""
    src_precision = "fp32" if trt_major(trt_mod) < 11 else precision
    rewritten = tmp / Path(onnx_name(name, f"{src_precision}.efficientnms")).name
    to_efficient_nms(paths[src_precision], rewritten)
    add[onnx_name(name, f"{src_precision}.efficientnms")] = rewritten
    entry = engine_into_bundle(rewritten, tmp, name, precision, batch=batch, workspace_mb=workspace_mb,
                               calib=calib_images if trt_major(trt_mod) < 11 else None, plugin_library=None,
                               spatial=None, add=add, log=log)
    return {**entry, "onnx": onnx_name(name, f"{src_precision}.efficientnms"), "nms": "EfficientNMS_TRT"}


def _check_on_data(b: Bundle, model, sessions: dict, data: str, n_check: int, post: dict) -> tuple[dict, dict, dict]:
    """Parity and scores on the first ``n_check`` images of labeled ``data``: (the fp32 file's parity against
    PyTorch, each reduced precision's agreement with the fp32 file, each precision's task scores)."""
    import torch

    from ..training.model_eval import eval_batches

    task = task_of(b.task)
    precisions = list(sessions)
    dom = load_domain(data, labeled=True, size=b.task.image_size, channels=b.task.channels, task=b.task.task)
    parts, seen = [], 0
    meters = {p: task.meter(b.task) for p in precisions}
    m_eager = task.meter(b.task)
    agree = {k: [] for p in precisions[1:] for k in (p, p + "/score")}
    for x, y, _ in eval_batches(dom, b.task, "cpu", 16, labels=True):
        x = x[: max(0, n_check - seen)]
        if not len(x):
            break
        seen += len(x)
        xn = x.numpy()
        parts.append(detection_parity(model, sessions["fp32"], xn, **post))
        dets = {p: run_detector_ort(s, xn) for p, s in sessions.items()}
        for p in precisions[1:]:
            agree[p].append(match_detections(dets["fp32"], dets[p], iou_min=0.5, score_tol=1.0))
            agree[p + "/score"].append(match_detections(dets["fp32"], dets[p], iou_min=0.5, score_tol=SCORE_TOL))
        if y is not None:
            y = y[:len(x)]
            for p in precisions:
                task.update(meters[p], dets[p], y)
            with torch.no_grad():
                task.update(m_eager, task.infer(model, x), y)
    vs_fp32 = {}
    for p in precisions[1:]:
        m, ms = merge_parity(agree[p]), merge_parity(agree[p + "/score"])
        vs_fp32[p] = {"n": m["images"], "fp32_detections": m["detections"], "matched_fraction": m["matched_fraction"],
                      "matched_fraction_within_score_tol": ms["matched_fraction"], "score_tol": SCORE_TOL}
    scored: dict = {}
    if len(m_eager):
        s_eager = task.scores(m_eager, b.task)
        for p in precisions:
            s_p = task.scores(meters[p], b.task)
            scored[p] = {"target_" + task.headline: s_p[task.headline],
                         "target_scores": {k: v for k, v in s_p.items() if not isinstance(v, (dict, list))},
                         "eager_" + task.headline: s_eager[task.headline], "n": seen}
            if p in vs_fp32:
                scored[p]["detection_agreement_with_fp32"] = vs_fp32[p]["matched_fraction"]
    return merge_parity(parts), vs_fp32, scored


def _log_checks(name: str, checks: dict, vs_fp32: dict, scored: dict, data: str | None, task,
                log: Callable[[str], None]) -> None:
    for kind, c in checks.items():
        log(f"  {name} fp32 ONNX (NMS in the graph) vs PyTorch ({kind}, {c['images']} images): "
            f"{c['matched']}/{c['detections']} detections matched"
            + (f" ({c['at_cut']} more tied at the max_det cut)" if c.get("at_cut") else "")
            + f", max score diff {c['max_score_diff']:.1e}")
    for p, v in vs_fp32.items():
        log(f"  {name} {p} vs fp32 ONNX ({v['n']} images): {v['matched_fraction']:.1%} of the fp32 detections "
            f"found (same class, IoU >= 0.5), {v['matched_fraction_within_score_tol']:.1%} also within "
            f"{SCORE_TOL:g} in score")
    for p, r in scored.items():
        log(f"  {p}: {task.format_scores(r['target_scores'])} on {data} (eager fp32 {r['eager_' + task.headline]:.1%})")


def _merged_export_record(old: dict, name: str, entry: dict, record: dict) -> dict:
    """The manifest's ``export`` record after this export: earlier precisions' files and scores kept."""
    files = {**old.get("deployables", {}).get(name, {}).get("files", {}), **entry["files"]}
    merged = {**old, "deployables": {name: {**old.get("deployables", {}).get(name, {}), **entry, "files": files}},
              "precisions": {**old.get("precisions", {}), **record["precisions"]}, "data": record["data"]}
    if "calib" in record:
        merged["calib"] = record["calib"]
    return merged
