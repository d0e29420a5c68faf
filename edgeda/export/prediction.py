"""``edgeda predict``: run a bundle on an image file or folder and write what it saw.

Classification: class, class name, confidence and entropy per image. Segmentation: per image a
colourised mask PNG, an overlay on the image and the raw class-id PNG, plus class fractions and
mean confidence. Depth: a colour-mapped depth PNG and a 16-bit depth PNG (millimetres, 0 =
invalid; depth beyond 65.535 m is written as 65535 and counted per image), plus the depth range. Dense outputs are resized back to each image's own size. Rows go
to a ``.csv`` or ``.json`` (written atomically); unreadable files are skipped and listed.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..bundle import Bundle
from ..data.files import list_images, read_image
from ..errors import DataError, EdgedaError
from ..tasks import task_of
from ..utils import atomic_write_bytes
from .runtime import make_runner


def predict(bundle: str | Path, input: str | Path, *, backend: str = "ort", precision: str = "fp32",
            out: str | Path | None = None, out_dir: str | Path | None = None, batch_size: int = 64,
            device: str = "cpu", progress: bool = False, plugin_library: str | Path | None = None,
            coco_out: str | Path | None = None, coco_images: str | Path | None = None, voc_out: str | Path | None = None,
            min_score: float = 0.5) -> dict:
    """Predict every image in ``input``; ``out_dir``: where dense bundles write their PNGs
    (default ``predictions/`` beside ``out``, else in the working folder). ``coco_out``: for box
    predictions, a COCO results ``.json`` (``image_id`` = the image's position in the sorted input,
    ``category_id`` = the category id of the COCO json the bundle was trained on (its task's
    ``category_ids``), else class index + 1 in the bundle's class order, ``bbox`` x y w h in the
    image's own pixels, ``score``; ``file_name`` beside each). ``coco_images``: a COCO annotation file
    whose ``images`` the input's files are (matched by their path under ``input``, else by file name):
    ``image_id`` is then that file's id, so pycocotools scores the results against it; an input image
    it does not list is left out of the results and counted.

    ``voc_out``: for box predictions, a Pascal VOC folder of the detections scoring at least ``min_score``
    (:func:`edgeda.data.detection_voc.write_voc`), to correct in a labelling tool and train or score on.

    ``plugin_library``: libedgeda_plugins.so for a TensorRT engine built with ``--plugins``.
    """
    b = Bundle(bundle)
    task = task_of(b.task)
    files, root = _input_files(Path(input))
    _check_output_names(out, coco_out, coco_images)
    if task.prediction_files:
        out_dir = Path(out_dir) if out_dir else (Path(out).parent if out else Path(".")) / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        batch_size = min(batch_size, 8)
    runner = make_runner(backend, b, precision, device=device,
                         **({"plugin_library": plugin_library} if backend == "trt" else {}))
    try:
        rows, skipped = _predict_files(b, task, runner, files, root, out_dir, batch_size, progress)
    finally:
        runner.close()
    result = {"bundle": str(b.path), "task": b.task.task, "backend": backend, "precision": precision, "n": len(rows),
              "skipped": skipped, "runner": runner.describe()}
    if task.prediction_files:
        result["out_dir"] = str(out_dir)
    if coco_out is not None:
        ids = coco_image_ids(coco_images, [Path(r["path"]) for r in rows], root) if coco_images is not None else None
        results = coco_results(rows, b.task.category_ids, ids)
        atomic_write_bytes(Path(coco_out), (json.dumps(results) + "\n").encode())
        result["coco_out"], result["coco_n"] = str(coco_out), len(results)
        if ids is not None:
            result["coco_unlisted"] = [r["path"] for r, i in zip(rows, ids) if i is None]
    if voc_out is not None:
        if rows and not all("detections" in r for r in rows):
            raise EdgedaError("--voc writes box predictions; this bundle does not predict boxes")
        from ..data.detection_voc import write_voc

        names = b.task.classes or [str(k) for k in range(b.task.num_classes)]
        result["voc_out"], result["voc_objects"] = str(voc_out), write_voc(Path(voc_out), rows, names, root,
                                                                           min_score=min_score)
    if out is not None:
        _write_table(Path(out), result, rows)
        result["out"] = str(out)
    result["predictions"] = rows
    return result


def _input_files(src: Path) -> tuple[list[Path], Path]:
    """(the images to predict, the folder their output paths are relative to)."""
    if src.is_dir():
        files, root = list_images(src), src
    elif src.is_file():
        files, root = [src], src.parent
    else:
        raise DataError(f"--input {src}: no such file or folder")
    if not files:
        raise DataError(f"--input {src} has no images (png, jpg, jpeg, bmp, webp)")
    return files, root


def _check_output_names(out, coco_out, coco_images) -> None:
    if coco_out is not None and Path(coco_out).suffix.lower() != ".json":
        raise EdgedaError(f"--coco {coco_out}: use a .json file name")
    if coco_images is not None and coco_out is None:
        raise EdgedaError("--coco-images numbers the images of the COCO results: give --coco FILE.json too")
    if out is not None and Path(out).suffix.lower() not in (".csv", ".json"):
        raise EdgedaError(f"--out {out}: use a .csv or .json file name")


def _predict_files(b: Bundle, task, runner, files: list[Path], root: Path, out_dir: Path | None, batch_size: int,
                   progress: bool) -> tuple[list[dict], list[dict]]:
    """(a row per readable image, the skipped files with their reasons), in ``batch_size`` chunks."""
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
                for f, img, o in zip(chunk, images, runner.predict(images)):
                    stem = out_dir / f.relative_to(root).with_suffix("") if task.prediction_files else None
                    rows.append({"path": str(f), **task.prediction_row(b.task, o, img, stem)})
            if bar is not None:
                bar.update(len(files[i:i + batch_size]))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return rows, skipped


def _write_table(out: Path, result: dict, rows: list[dict]) -> None:
    """The predictions as JSON (with the run's record) or as a flat CSV, by ``out``'s suffix."""
    if out.suffix.lower() == ".json":
        data = json.dumps({**result, "predictions": rows}, indent=2) + "\n"
    else:
        buf = io.StringIO()
        flat = [_flatten(r) for r in rows]
        fields = list(dict.fromkeys(k for r in flat for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(flat)
        data = buf.getvalue()
    atomic_write_bytes(out, data.encode())


def coco_image_ids(annotations: str | Path, files: list[Path], root: Path) -> list[int | None]:
    """The ``images[].id`` of each file in a COCO annotation file, matched by the file's path under
    ``root`` (as ``file_name`` is written), else by its name when that name is listed once; None where
    the file is not listed."""
    path = Path(annotations)
    try:
        images = json.loads(path.read_text())["images"]
        by_path = {str(Path(im["file_name"]).as_posix()): int(im["id"]) for im in images}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"--coco-images {path}: not a readable COCO annotation file with images (file_name, id): {e}") from e
    names: dict[str, list[int]] = {}
    for name, i in by_path.items():
        names.setdefault(Path(name).name, []).append(i)
    out = []
    for f in files:
        rel = f.relative_to(root).as_posix() if f.is_relative_to(root) else f.name
        i = by_path.get(rel)
        if i is None and len(names.get(f.name, ())) == 1:
            i = names[f.name][0]
        out.append(i)
    return out


def coco_results(rows: list[dict], category_ids: list[int] | None = None,
                 image_ids: list[int | None] | None = None) -> list[dict]:
    """COCO detection results of predict rows that list ``detections`` (``box`` x1 y1 x2 y2, ``label``, ``score``);
    ``category_ids[k]``: the id of class ``k`` (a COCO source's own ids), default ``k + 1``; ``image_ids[i]``:
    the id of row ``i`` (None: left out), default ``i``."""
    if rows and not all("detections" in r for r in rows):
        raise EdgedaError("--coco writes box predictions; this bundle does not predict boxes")
    res = []
    for i, r in enumerate(rows):
        if image_ids is not None:
            if image_ids[i] is None:
                continue
            i = image_ids[i]
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            k = int(d["label"])
            cid = category_ids[k] if category_ids is not None and 0 <= k < len(category_ids) else k + 1
            res.append({"image_id": i, "file_name": r["path"], "category_id": cid,
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": d["score"]})
    return res


def _flatten(row: dict) -> dict:
    """CSV columns: nested dicts (class fractions) become ``fraction/<class>`` columns."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        elif isinstance(v, list):  # per-detection records: one JSON cell
            out[k] = json.dumps(v)
        else:
            out[k] = v
    return out
