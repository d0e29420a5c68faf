"""Library entry points behind ``edgeda export`` and ``edgeda predict``."""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..bundle import Bundle, update_bundle
from ..errors import DataError, EdgedaError
from .onnx import Signature, compare_outputs, export_onnx, ort_session, parity, run_ort, signature_of
from .runtime import PRECISIONS, make_runner, onnx_name, plan_name, prepare_batch, softmax_stats

FP32_TOLERANCE = 1e-4


def _quiet(*_a, **_k) -> None:
    pass


def default_data_spec(b: Bundle) -> str | None:
    """The bundle's target test split (labeled, for parity and accuracy), when it names one."""
    return b.manifest.get("training", {}).get("domains", {}).get("target_test")


def default_calib_spec(b: Bundle) -> str | None:
    """The bundle's (unlabeled) target adaptation split, for int8 calibration."""
    return b.manifest.get("training", {}).get("domains", {}).get("target")


def load_images(spec: str, b: Bundle, n: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C, H, W) normalised float32 images of ``spec`` (labels when it has them), first ``n``."""
    from ..data import load_domain

    task = b.task
    try:
        dom = load_domain(spec, labeled=True, size=task.image_size, channels=task.channels)
    except DataError:
        dom = load_domain(spec, labeled=False, size=task.image_size, channels=task.channels)
    dom.require_usable(labeled=False)
    images = dom.images[:n] if n else dom.images
    labels = None if dom.labels is None else dom.labels[:len(images)]
    return prepare_batch(images, task), labels


def _inputs_for(sig: Signature, images: np.ndarray | None, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for spec in sig.inputs:
        if spec.kind == "image" and images is not None:
            out.append(images[:n])
        else:
            out.append(spec.random(n if images is None else min(n, len(images)), rng))
    return out


def export_deployable_onnx(b: Bundle, name: str, precision: str, folder: str | Path, *,
                           calib: str | None = None, calib_images: np.ndarray | None = None) -> Path:
    """Write ``<folder>/onnx/<name>.<precision>.onnx`` (fp32 first where another precision needs it)."""
    from .quantize import quantize_int8, to_float16_file

    folder = Path(folder)
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    module = b.module(name)
    sig = signature_of(module, b.task)
    fp32 = folder / onnx_name(name, "fp32")
    if not fp32.exists():
        export_onnx(module, sig, fp32)
    if precision == "fp32":
        return fp32
    dst = folder / onnx_name(name, precision)
    if precision == "fp16":
        return to_float16_file(fp32, dst)
    if precision == "int8":
        image = sig.image_input
        if image is None or len(sig.inputs) != 1:
            raise EdgedaError(f"int8 export calibrates on images; {name!r} takes {', '.join(i.name for i in sig.inputs)}")
        if calib_images is None:
            spec = calib or default_calib_spec(b)
            if spec is None:
                raise EdgedaError("int8 export needs calibration images: pass --calib SPEC (target images)")
            calib_images, _ = load_images(spec, b, n=512)
        return quantize_int8(fp32, dst, calib_images, image.name)
    raise EdgedaError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def _accuracy(session, sig, images, labels) -> float | None:
    if labels is None or not sig.classifies:
        return None
    return float((run_ort(session, sig, [images]).argmax(1) == labels).mean())


def export_bundle(bundle: str | Path, out: str | Path | None = None, *, precision: str = "fp32",
                  data: str | None = None, calib: str | None = None, trt: bool = False,
                  batch: Sequence[int] = (1, 8, 32), workspace_mb: int = 1024, plugins: str | Path | None = None,
                  n_check: int = 2000, log: Callable[[str], None] | None = print) -> dict:
    """ONNX (and optionally TensorRT) for every deployable, parity-checked, added to a new bundle.

    Writes ``onnx/<name>.fp32.onnx`` (+ ``.<precision>.onnx``) and, with ``trt``, ``trt/<name>.<precision>.plan``
    and its metadata JSON; the result is recorded under ``manifest["export"]``. ``out`` defaults to
    the bundle itself (replaced atomically). Nothing is written when any step fails.
    """
    log = log or _quiet
    if precision not in PRECISIONS:
        raise EdgedaError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    b = Bundle(bundle)
    if trt:  # fail before any work: one sentence naming what is missing
        from .trt import require_tensorrt, trt_major

        trt_mod = require_tensorrt()
    if plugins is not None and not Path(plugins).is_file():
        raise EdgedaError(f"--plugins {plugins}: no such plugin library (build it: see kernels/README.md)")
    spec = data or default_data_spec(b)
    images, labels = load_images(spec, b, n=n_check) if spec else (None, None)
    if spec is None:
        log("no --data given and the bundle names no built-in target test domain: parity on random inputs only")
    record: dict = {"data": spec, "precisions": {}, "deployables": {}}
    add: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="edgeda-export-") as tmp:
        tmp = Path(tmp)
        calib_images = None
        if precision == "int8":
            cspec = calib or default_calib_spec(b)
            if cspec is None:
                raise EdgedaError("int8 export needs calibration images: pass --calib SPEC (target images)")
            calib_images, _ = load_images(cspec, b, n=512)
            record["calib"] = {"data": cspec, "n": int(len(calib_images))}
        for name in b.names:
            module = b.module(name)
            sig = signature_of(module, b.task)
            fp32 = export_deployable_onnx(b, name, "fp32", tmp)
            sess = ort_session(fp32)
            checks = {"random": parity(module, sess, sig, _inputs_for(sig, None, 17, seed=1))}
            if images is not None:
                checks["real"] = parity(module, sess, sig, _inputs_for(sig, images, n_check, seed=2))
            worst = max(c["max_abs_diff"] for c in checks.values())
            if worst > FP32_TOLERANCE:
                raise EdgedaError(f"ONNX parity failed for {name}: max abs diff {worst:.2e} > {FP32_TOLERANCE:.0e} "
                                  f"between PyTorch and ONNX Runtime; nothing was written")
            entry = {"inputs": [i.name for i in sig.inputs], "outputs": sig.outputs, "opset": 17,
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
                ref = run_ort(sess, sig, inp)
                entry[f"vs_fp32_{p}"] = compare_outputs(ref, run_ort(ort_session(path), sig, inp), sig.classifies)
            if sig.classifies and labels is not None:
                for p in precisions:
                    acc = _accuracy(ort_session(tmp / onnx_name(name, p)), sig, images, labels)
                    record["precisions"].setdefault(p, {})["target_accuracy"] = acc
                    if p != "fp32":
                        record["precisions"][p]["top1_agreement_with_fp32"] = entry[f"vs_fp32_{p}"]["top1_agreement"]
            if trt:
                entry["trt"] = _build_trt(trt_mod, trt_major(trt_mod), b, name, precision, tmp, calib_images, batch,
                                          workspace_mb, plugins, add, log)
            record["deployables"][name] = entry
            _log_entry(log, name, entry)
        for p, r in record["precisions"].items():
            agree = r.get("top1_agreement_with_fp32")
            log(f"  {p}: target accuracy {r['target_accuracy']:.1%} on {spec}"
                + (f", top-1 agreement with fp32 {agree:.1%}" if agree is not None else ""))
        merged = json.loads(json.dumps(b.manifest.get("export", {})))
        for name, entry in record["deployables"].items():
            old = merged.setdefault("deployables", {}).setdefault(name, {})
            files = {**old.get("files", {}), **entry["files"]}
            old.update(entry)
            old["files"] = files
        for p, r in record["precisions"].items():
            merged.setdefault("precisions", {})[p] = r
        merged["data"] = spec
        if "calib" in record:
            merged["calib"] = record["calib"]
        dst = update_bundle(b.path, out, add_files=add, manifest_updates={"export": merged})
    record["bundle"] = str(dst)
    record["files"] = sorted(add)
    log(f"bundle: {dst}")
    return record


def _build_trt(trt_mod, major, b, name, precision, tmp, calib_images, batch, workspace_mb, plugins, add, log):
    from .trt import build_engine

    # 10.x: fp32 graph + builder flags (+ calibrator); 11.x: strongly typed, the precision's own graph.
    src = tmp / onnx_name(name, "fp32" if major < 11 else precision)
    if plugins is not None and name == "classifier":
        import onnx

        from .plugins import apply_plugins

        rewritten = apply_plugins(onnx.load(str(src)), confidence=True, instnorm=True)
        src = src.with_suffix(".plugins.onnx")
        onnx.save(rewritten, str(src))
        add[f"onnx/{src.name}"] = src
    plan = tmp / plan_name(name, precision)
    meta = build_engine(src, plan, precision=precision, batch=batch, workspace_mb=workspace_mb,
                        calib=calib_images, timing_cache=tmp / "trt" / "timing.cache", plugin_library=plugins)
    for f in plan.parent.iterdir():
        if f.name.startswith(plan.name) or f.name == "timing.cache":
            add[f"trt/{f.name}"] = f
    log(f"  {name}: TensorRT {meta['tensorrt']} engine ({precision}) for {meta['gpu']} (SM {meta['sm']})")
    return {"plan": plan_name(name, precision), "metadata": meta}


def _log_entry(log, name, entry) -> None:
    for kind, c in entry["parity_fp32"].items():
        agree = f", top-1 agreement {c['top1_agreement']:.1%}" if "top1_agreement" in c else ""
        log(f"  {name} fp32 ONNX vs PyTorch ({kind}, n={c['n']}): max abs diff {c['max_abs_diff']:.2e}{agree}")
    for k, c in entry.items():
        if k.startswith("vs_fp32_"):
            agree = f", top-1 agreement {c['top1_agreement']:.1%}" if "top1_agreement" in c else ""
            log(f"  {name} {k[8:]} vs fp32 ONNX (n={c['n']}): max abs diff {c['max_abs_diff']:.2e}{agree}")


# -- predict ------------------------------------------------------------------------------------
def predict(bundle: str | Path, input: str | Path, *, backend: str = "ort", precision: str = "fp32",
            out: str | Path | None = None, batch_size: int = 64, device: str = "cpu", progress: bool = False,
            plugin_library: str | Path | None = None) -> dict:
    """Class, class name, confidence and entropy for every image in ``input`` (file or folder).

    ``plugin_library``: libedgeda_plugins.so for a TensorRT engine built with ``--plugins``.

    Unreadable files are skipped and listed; ``out`` (``.csv`` or ``.json``) is written atomically.
    """
    from ..data.files import list_images, read_image
    from ..utils import atomic_write_bytes

    b = Bundle(bundle)
    src = Path(input)
    if src.is_dir():
        files = list_images(src)
    elif src.is_file():
        files = [src]
    else:
        raise DataError(f"--input {src}: no such file or folder")
    if not files:
        raise DataError(f"--input {src} has no images (png, jpg, jpeg, bmp, webp)")
    if out is not None and Path(out).suffix.lower() not in (".csv", ".json"):
        raise EdgedaError(f"--out {out}: use a .csv or .json file name")
    runner = make_runner(backend, b, precision, device=device,
                         **({"plugin_library": plugin_library} if backend == "trt" else {}))
    classes = b.task.classes
    rows, skipped = [], []
    bar = None
    if progress:
        import click

        bar = click.progressbar(length=len(files), label="predicting", file=None)
        bar.__enter__()
    try:
        for i in range(0, len(files), batch_size):
            chunk, images = [], []
            for f in files[i:i + batch_size]:
                try:
                    images.append(read_image(f))
                    chunk.append(f)
                except ValueError as e:
                    skipped.append({"path": str(f), "reason": str(e)})
            if images:
                cls, conf, ent = softmax_stats(runner.predict(images))
                for f, c, p, h in zip(chunk, cls, conf, ent):
                    rows.append({"path": str(f), "class": int(c),
                                 "class_name": classes[int(c)] if int(c) < len(classes) else str(int(c)),
                                 "confidence": round(float(p), 6), "entropy": round(float(h), 6)})
            if bar is not None:
                bar.update(len(files[i:i + batch_size]))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        runner.close()
    result = {"bundle": str(b.path), "backend": backend, "precision": precision, "n": len(rows),
              "skipped": skipped, "runner": runner.describe()}
    if out is not None:
        out = Path(out)
        if out.suffix.lower() == ".json":
            data = json.dumps({**result, "predictions": rows}, indent=2) + "\n"
        else:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["path", "class", "class_name", "confidence", "entropy"])
            w.writeheader()
            w.writerows(rows)
            data = buf.getvalue()
        atomic_write_bytes(out, data.encode())
        result["out"] = str(out)
    result["predictions"] = rows
    return result
