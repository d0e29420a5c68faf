"""Library entry point behind ``edgeda export``: ONNX (and TensorRT) of a bundle, parity-checked."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..bundle import Bundle, update_bundle
from ..errors import EdgedaError
from ..tasks import task_of
from .boxes_bundle import export_postprocessing_bundle, exports_postprocessing
from .files import PRECISIONS, calibration_images, export_deployable_onnx, load_images, onnx_name
from .onnx import (Signature, compare_outputs, compare_runs, exporter_of, onnx_opset, ort_session, parity, run_ort,
                   signature_of)
from .trt import engine_into_bundle, require_tensorrt, trt_major

# fp32 parity: max |PyTorch - ORT| <= 1e-4, scaled by the output's magnitude where it exceeds 1
# (float32 rounding through a deep network grows with the size of its outputs: a depth in metres or
# logits of 20 differ by more in absolute terms than logits of 1 at the same relative precision).
FP32_TOLERANCE = 1e-4


def _quiet(*_a, **_k) -> None:
    pass


def _inputs_for(sig: Signature, images: np.ndarray | None, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for spec in sig.inputs:
        if spec.kind == "image" and images is not None:
            out.append(images[:n])
        else:
            out.append(spec.random(n if images is None else min(n, len(images)), rng))
    return out


def _task_scores(session, sig, images, labels, spec) -> dict:
    """The task's headline scores of an exported model on labeled images, streamed in batches:
    ``target_accuracy`` for classifiers, ``target_scores`` (mIoU, or the depth errors) for dense models."""
    import torch

    task = task_of(spec)
    meter = task.meter(spec)
    for i in range(0, len(images), 32):
        out = run_ort(session, sig, [images[i:i + 32]])
        task.update(meter, torch.from_numpy(out), torch.from_numpy(np.asarray(labels[i:i + 32])))
    return task.export_scores(task.scores(meter, spec))


def export_bundle(bundle: str | Path, out: str | Path | None = None, *, precision: str = "fp32",
                  data: str | None = None, calib: str | None = None, trt: bool = False,
                  batch: Sequence[int] = (1, 8, 32), workspace_mb: int = 1024, plugins: str | Path | None = None,
                  n_check: int = 2000, exporter: str | None = None, log: Callable[[str], None] | None = print) -> dict:
    """ONNX (and optionally TensorRT) for every deployable, parity-checked, added to a new bundle.

    Writes ``onnx/<name>.fp32.onnx`` (+ ``.<precision>.onnx``) and, with ``trt``, ``trt/<name>.<precision>.plan``
    and its metadata JSON; the result is recorded under ``manifest["export"]``. ``out`` defaults to
    the bundle itself (replaced atomically). Nothing is written when any step fails. ``exporter``:
    see :func:`edgeda.export.onnx.export_onnx` (default ``auto``); the one used is recorded per deployable.
    """
    log = log or _quiet
    if precision not in PRECISIONS:
        raise EdgedaError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    b = Bundle(bundle)

    if exports_postprocessing(b.module(b.primary, "cpu")):  # decoding and NMS go into the graph
        return export_postprocessing_bundle(b, out, precision=precision, data=data or b.target_test, calib=calib,
                                            trt=trt, batch=batch, workspace_mb=workspace_mb, plugins=plugins,
                                            n_check=min(n_check, 64), exporter=exporter, log=log)
    if trt:  # fail before any work: one sentence naming what is missing
        trt_mod = require_tensorrt()
    if plugins is not None and not Path(plugins).is_file():
        raise EdgedaError(f"--plugins {plugins}: no such plugin library (build it: see kernels/README.md)")
    task = task_of(b.task)
    if task.parity_images is not None:
        n_check = min(n_check, task.parity_images)  # a dense check compares every pixel: 64 images are plenty
    spec = data or b.target_test
    images, labels = load_images(spec, b, n=n_check) if spec else (None, None)
    if spec is None:
        log("no --data given and the bundle names no built-in target test domain: parity on random inputs only")
    record: dict = {"data": spec, "precisions": {}, "deployables": {}}
    add: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="edgeda-export-") as tmp:
        tmp = Path(tmp)
        calib_images = None
        if precision == "int8":
            calib_images, cspec = calibration_images(b, calib)
            record["calib"] = {"data": cspec, "n": int(len(calib_images))}
        for name in b.names:
            module = b.module(name)
            sig = signature_of(module, b.task)
            entry, precisions = _export_deployable(b, name, module, sig, precision, tmp, add, images=images,
                                                   n_check=n_check, calib_images=calib_images, exporter=exporter)
            if name == b.primary and labels is not None:
                _score_precisions(record["precisions"], entry, precisions, tmp, name, sig, images, labels, b.task)
            if trt:
                entry["trt"] = _build_trt(trt_mod, trt_major(trt_mod), b, name, precision, tmp, calib_images, batch,
                                          workspace_mb, plugins, add, log)
            record["deployables"][name] = entry
            _log_entry(log, name, entry)
        _log_scores(log, record, task, spec, 0 if images is None else len(images), n_check)
        dst = update_bundle(b.path, out, add_files=add, manifest_updates={"export": merged_export(b.manifest, record)})
    record["bundle"] = str(dst)
    record["files"] = sorted(add)
    for name, entry in record["deployables"].items():
        for p, rel in entry["files"].items():
            how = f"{entry['exporter']} exporter, opset {entry['opset']}" if p == "fp32" else f"{p} from the fp32 graph"
            log(f"ONNX {name} {p}: {Path(dst) / rel} ({how})")
    log(f"bundle: {dst}")
    return record


def _export_deployable(b: Bundle, name: str, module, sig: Signature, precision: str, tmp: Path,
                       add: dict[str, Path], *, images, n_check: int, calib_images,
                       exporter: str | None) -> tuple[dict, list[str]]:
    """Deployable ``name`` to fp32 ONNX, parity-checked against PyTorch (random inputs, and the
    data's images where given; one error above the tolerance), then to ``precision`` compared with
    the fp32 graph. The files go to ``tmp`` and into ``add``; (the manifest entry, the precisions written)."""
    cmp = task_of(b.task).compare if name == b.primary else (lambda r, o: compare_outputs(r, o, sig.classifies))
    fp32 = export_deployable_onnx(b, name, "fp32", tmp, exporter=exporter)
    sess = ort_session(fp32)
    checks = {"random": parity(module, sess, sig, _inputs_for(sig, None, 17, seed=1), cmp)}
    if images is not None:
        checks["real"] = parity(module, sess, sig, _inputs_for(sig, images, n_check, seed=2), cmp)
    worst = max(c["max_abs_diff"] for c in checks.values())
    scale = max([1.0] + [c.get("max_abs_ref", 1.0) for c in checks.values()])
    if worst > FP32_TOLERANCE * scale:
        raise EdgedaError(f"ONNX parity failed for {name}: max abs diff {worst:.2e} > {FP32_TOLERANCE:.0e}"
                          f"{f' x {scale:.1f} (output scale)' if scale > 1 else ''} "
                          f"between PyTorch and ONNX Runtime; nothing was written")
    entry = {"inputs": [i.name for i in sig.inputs], "outputs": sig.outputs, "opset": onnx_opset(fp32),
             "exporter": exporter_of(fp32),
             "parity_fp32": checks, "files": {"fp32": onnx_name(name, "fp32")}}
    add[onnx_name(name, "fp32")] = fp32
    precisions = ["fp32"] + ([precision] if precision != "fp32" else [])
    if precision == "int8" and (sig.image_input is None or len(sig.inputs) != 1):
        precisions = ["fp32"]
        entry["int8"] = "skipped: not an image-input model"
    for p in precisions[1:]:
        path = export_deployable_onnx(b, name, p, tmp, calib_images=calib_images)
        add[onnx_name(name, p)] = path
        entry["files"][p] = onnx_name(name, p)
        inp = _inputs_for(sig, images, n_check, seed=2)
        other = ort_session(path)
        entry[f"vs_fp32_{p}"] = compare_runs(lambda c: run_ort(sess, sig, c),
                                             lambda c, other=other: run_ort(other, sig, c), inp, cmp)
    return entry, precisions


def _score_precisions(scores: dict, entry: dict, precisions: list[str], tmp: Path, name: str, sig: Signature,
                      images, labels, spec) -> None:
    """The task's scores of each precision's graph on the labeled images, and its agreement with fp32,
    into ``scores`` (precision -> record)."""
    for p in precisions:
        rec = scores.setdefault(p, {})
        rec.update(_task_scores(ort_session(tmp / onnx_name(name, p)), sig, images, labels, spec))
        agree = entry.get(f"vs_fp32_{p}", {})
        for k in ("top1_agreement", "pixel_agreement"):
            if k in agree:
                rec[f"{k}_with_fp32"] = agree[k]


def _log_scores(log, record: dict, task, spec: str | None, n_scored: int, n_check: int) -> None:
    if record["precisions"]:
        record["scored_images"] = n_scored
        first = " (the first ones; `edgeda eval` scores every image)" if n_scored == n_check else ""
        log(f"  scored on {n_scored} images of {spec}{first}:")
    for p, r in record["precisions"].items():
        agree = r.get("top1_agreement_with_fp32", r.get("pixel_agreement_with_fp32"))
        what = ("target accuracy {:.1%}".format(r["target_accuracy"]) if "target_accuracy" in r
                else task.format_scores(r["target_scores"]))
        log(f"  {p}: {what}" + (f", agreement with fp32 {agree:.1%}" if agree is not None else ""))


def merged_export(manifest: dict, record: dict) -> dict:
    """The bundle's ``export`` record with this export's merged in: per deployable its entry (the
    files of earlier exports kept), per precision its scores, the data and calibration used."""
    merged = json.loads(json.dumps(manifest.get("export", {})))
    for name, entry in record["deployables"].items():
        old = merged.setdefault("deployables", {}).setdefault(name, {})
        files = {**old.get("files", {}), **entry["files"]}
        old.update(entry)
        old["files"] = files
    for p, r in record["precisions"].items():
        merged.setdefault("precisions", {})[p] = r
    merged["data"] = record["data"]
    if "calib" in record:
        merged["calib"] = record["calib"]
    return merged


def _build_trt(trt_mod, major, b, name, precision, tmp, calib_images, batch, workspace_mb, plugins, add, log):
    # 10.x: fp32 graph + builder flags (+ calibrator); 11.x: strongly typed, the precision's own graph.
    src = tmp / onnx_name(name, "fp32" if major < 11 else precision)
    if plugins is not None and name == b.primary:
        import onnx

        from .plugins import apply_plugins

        # the confidence epilogue is per pixel for segmentation logits; depth outputs have no classes
        rewritten = apply_plugins(onnx.load(str(src)), confidence=b.task.output == "logits", instnorm=True)
        src = src.with_suffix(".plugins.onnx")
        onnx.save(rewritten, str(src))
        add[f"onnx/{src.name}"] = src
    return engine_into_bundle(src, tmp, name, precision, batch=batch, workspace_mb=workspace_mb, calib=calib_images,
                              plugin_library=plugins, add=add, log=log,
                              spatial=b.task.image_size if task_of(b.task).spatial_output else None)


def _agreement(c: dict) -> str:
    for k, label in (("top1_agreement", "top-1 agreement"), ("pixel_agreement", "pixel agreement")):
        if k in c:
            return f", {label} {c[k]:.1%}"
    return ""


def _log_entry(log, name, entry) -> None:
    for kind, c in entry["parity_fp32"].items():
        log(f"  {name} fp32 ONNX vs PyTorch ({kind}, n={c['n']}): max abs diff {c['max_abs_diff']:.2e}{_agreement(c)}")
    for k, c in entry.items():
        if k.startswith("vs_fp32_"):
            log(f"  {name} {k[8:]} vs fp32 ONNX (n={c['n']}): max abs diff {c['max_abs_diff']:.2e}{_agreement(c)}")
