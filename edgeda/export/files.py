"""A bundle's deployable ONNX files: their names, the export of one deployable at one precision,
and the images export reads (parity data, int8 calibration). Both :mod:`edgeda.export.api` (the
export command) and :mod:`edgeda.export.runtime` (runners that export on first use) build on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..data import load_domain
from ..data.domain import Domain
from ..data.transforms import prepare_image
from ..errors import DataError, EdgedaError
from ..tasks import task_of
from .onnx import export_onnx, signature_of
from .quantize import quantize_int8, to_float16_file

PRECISIONS = ("fp32", "fp16", "int8")


def prepare_batch(images, task) -> np.ndarray:
    """A list/array of (H, W, C) uint8 images -> (N, C, H, W) float32 in the task's input space."""
    arr = np.stack([prepare_image(np.asarray(im), tuple(task.image_size), task.channels) for im in images]) \
        if len(images) else np.zeros((0, *task.image_size, task.channels), np.uint8)
    x = arr.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(task.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(task.std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, np.float32)


def onnx_name(deployable: str, precision: str) -> str:
    return f"onnx/{deployable}.{precision}.onnx"


def plan_name(deployable: str, precision: str) -> str:
    return f"trt/{deployable}.{precision}.plan"


def default_calib_spec(b: Bundle) -> str | None:
    """The bundle's (unlabeled) target adaptation split, for int8 calibration."""
    return b.manifest.get("training", {}).get("domains", {}).get("target")


def calibration_images(b: Bundle, calib: str | None = None, n: int | None = None) -> tuple[np.ndarray, str]:
    """(int8 calibration images at the bundle's input, the spec they came from): ``calib`` or the
    bundle's target adaptation split; up to ``n`` (default 128 for dense models, 512 otherwise)."""
    spec = calib or default_calib_spec(b)
    if spec is None:
        raise EdgedaError("int8 export needs calibration images: pass --calib SPEC (target images)")
    images, _ = load_images(spec, b, n=n or task_of(b.task).calibration_images, labels=False)
    return images, spec


def load_images(spec: str, b: Bundle, n: int | None = None, *, labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C, H, W) normalised float32 images of ``spec`` at the bundle's input size, first ``n``,
    and their labels when it has them and ``labels`` is set (class ids; for dense data masks or depth,
    resized alike)."""
    from ..training.model_eval import eval_batches

    task = b.task
    dom = None
    if labels:  # without labels, every readable image counts (none is skipped for a bad annotation)
        try:
            dom = load_domain(spec, labeled=True, size=task.image_size, channels=task.channels, task=task.task)
        except DataError:
            pass
    if dom is None:
        dom = load_domain(spec, labeled=False, size=task.image_size, channels=task.channels, task=task.task)
    tk = task_of(task)
    dom = tk.image_domain(dom)
    if not tk.reads(dom):
        raise DataError(f"{spec} is {'classification' if isinstance(dom, Domain) else 'dense'} data; "
                        f"the bundle is a {task.task} model")
    if isinstance(dom, Domain):
        dom.require_usable()
        images = dom.images[:n] if n else dom.images
        return prepare_batch(images, task), (dom.labels[:len(images)] if labels and dom.labels is not None else None)
    dom.require_usable()
    labeled = labels and tk.labeled_by(dom)
    xs, ys, got = [], [], 0
    for x, y, _ in eval_batches(dom, task, "cpu", 16, labels=labeled):
        xs.append(x.numpy())
        if y is not None:
            ys.append(y.numpy())
        got += len(x)
        if n and got >= n:
            break
    if not xs:
        raise EdgedaError(f"{spec}: no readable images")
    images = np.concatenate(xs)[:n] if n else np.concatenate(xs)
    labels = np.concatenate(ys)[:len(images)] if ys and labeled and task_of(task).label_key else None
    return images, labels


def export_deployable_onnx(b: Bundle, name: str, precision: str, folder: str | Path, *,
                           calib: str | None = None, calib_images: np.ndarray | None = None,
                           exporter: str | None = None) -> Path:
    """Write ``<folder>/onnx/<name>.<precision>.onnx`` (fp32 first where another precision needs it)."""
    folder = Path(folder)
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    module = b.module(name)
    sig = signature_of(module, b.task)
    fp32 = folder / onnx_name(name, "fp32")
    if not fp32.exists():
        export_onnx(module, sig, fp32, exporter=exporter)
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
            calib_images, _ = calibration_images(b, calib)
        return quantize_int8(fp32, dst, calib_images, image.name)
    raise EdgedaError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


