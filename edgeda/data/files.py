"""User data: image folders (labeled ImageFolder layout or any unlabeled tree) and ``.npz`` files.

Bad files never crash a load: each unreadable, truncated, zero-byte, non-image, oversized
("decompression bomb") or unconvertible file is skipped and recorded with its reason in the
domain's :class:`LoadReport`. Directory walks do not follow symlinks into loops.
"""
from __future__ import annotations

import os
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .domain import Domain, LoadReport
from .transforms import prepare_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 64_000_000  # larger declared sizes are refused as decompression bombs
MAX_CLASSES = 100_000  # labels above this are refused (they would allocate one class name each)
# What a decoder may raise on a malformed file; each means "skip this file", never a crash.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError, OverflowError, MemoryError, RecursionError,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)


def not_data(name: str) -> bool:
    """Whether a file or folder name is no data: hidden (``.DS_Store``, the ``._name`` resource forks
    macOS writes beside each file on other disks, ``.git``) or the ``__MACOSX`` folder of a zip made on
    a Mac. Such entries are passed over by every folder reader, not counted as skipped files or classes."""
    return name.startswith(".") or name == "__MACOSX"


def walk_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Every file under ``root`` whose name ends with one of ``suffixes`` (lower case), recursive and
    sorted, passing over :func:`not_data` entries; symlinked directories are not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=lambda e: None):
        dirnames[:] = sorted(d for d in dirnames if not not_data(d))
        out.extend(Path(dirpath) / fn for fn in sorted(filenames)
                   if not not_data(fn) and fn.lower().endswith(suffixes))
    return out


def list_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (:func:`walk_files`)."""
    return walk_files(root, IMAGE_EXTENSIONS)


# EXIF orientation (tag 0x0112) -> the transpose that shows the image as the camera held it.
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1 (as stored) when absent or invalid."""
    try:
        v = im.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1
    return v if isinstance(v, int) and v in _EXIF_TRANSPOSE else 1


def shown_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) of an opened image as shown (EXIF orientation applied), from its header."""
    w, h = im.size
    return (w, h) if exif_orientation(im) >= 5 else (h, w)


def read_image(path: Path, labelled_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one file to (H, W, C) uint8 with C in {1, 3}; raises ValueError with a short reason.

    The image is turned as its EXIF orientation says (as cameras, phones, viewers, OpenCV and the
    labelling tools that display it show it). ``labelled_hw``: the (H, W) its labels were made at; when
    that is the stored pixels' size and not the turned one (a tool that ignored the orientation), the
    stored pixels are returned so the labels stay on their objects."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # FIFOs, sockets, devices: opening one could block forever
            raise ValueError("not a regular file")
        if st.st_size == 0:
            raise ValueError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ValueError(f"declared size {w}x{h} is too large (possible decompression bomb)")
                orientation = exif_orientation(im)
                im.load()
                keep_stored = labelled_hw is not None and tuple(labelled_hw) == (h, w) != shown_size(im)
                if orientation != 1 and not keep_stored:
                    return _to_uint8(im.transpose(_EXIF_TRANSPOSE[orientation]))
                return _to_uint8(im)
    except ValueError as e:
        raise ValueError((str(e).splitlines() or [type(e).__name__])[0][:200]) from None
    except _DECODE_ERRORS as e:
        raise ValueError((f"{type(e).__name__}: {e}".splitlines() or [""])[0][:200]) from None


def _to_uint8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)[:, :, None]
    if mode in ("L", "1"):
        return np.asarray(im.convert("L"))[:, :, None]
    if mode == "LA":
        return np.asarray(im.convert("L"))[:, :, None]
    return np.asarray(im.convert("RGB"))


def load_folder(root: Path, *, labeled: bool, size: tuple[int, int], channels: int) -> Domain:
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    report = LoadReport()
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not not_data(p.name))
    if labeled:
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not not_data(p.name)]
        if not class_dirs:
            raise DataError(
                f"{root} has no class subfolders; a labeled domain needs one subfolder per class (ImageFolder layout)"
            )
        for p in loose:
            report.skip(str(p), "image outside any class folder")
        items = [(f, i) for i, d in enumerate(class_dirs) for f in list_images(d)]
        classes = [d.name for d in class_dirs]
    else:
        items = [(f, -1) for f in list_images(root)]
        classes = None
    images, labels = [], []
    for f, y in items:
        try:
            img = prepare_image(read_image(f), size, channels)
        except ValueError as e:
            report.skip(str(f), str(e))
            continue
        images.append(img)
        labels.append(y)
    report.loaded = len(images)
    if labeled:  # a class without images keeps its index (class lists must match across domains) but says so
        counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes)) if labels else np.zeros(len(classes), int)
        for name, c in zip(classes, counts):
            if c == 0:
                report.warn(f"class folder {name!r} has no usable images: the class keeps its index, "
                            "but no image of it is trained on or scored")
    arr = np.stack(images) if images else np.zeros((0, *size, channels), np.uint8)
    return Domain(
        name=str(root),
        images=arr,
        labels=np.asarray(labels, np.int64) if labeled else None,
        classes=classes,
        report=report,
    )


def load_npz(path: Path, *, labeled: bool, size: tuple[int, int], channels: int) -> Domain:
    """``x``: (N, H, W[, C]) uint8; optional ``y``: (N,) integers; optional ``classes``: (K,) strings."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "x" not in files:
                raise DataError(f"{path} has no array 'x' (found: {', '.join(sorted(files)) or 'none'})")
            x = z["x"]
            y = z["y"] if "y" in files else None
            classes = None
            if "classes" in files:
                c = z["classes"]
                if c.ndim != 1 or c.dtype.kind not in "USiu" or len(c) > MAX_CLASSES:
                    raise DataError(f"{path}: 'classes' must be a 1-D array of names, got shape {c.shape} dtype {c.dtype}")
                classes = [str(v) for v in c]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, TypeError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError, MemoryError, struct.error) as e:
        reason = (str(e).splitlines() or [""])[0][:200]
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {reason})") from None
    if x.ndim == 4 and x.shape[3] == 0 or x.ndim >= 3 and (x.shape[1] == 0 or x.shape[2] == 0):
        raise DataError(f"{path}: 'x' has an empty image dimension, shape {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: 'x' must be uint8 images, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4 or x.shape[3] not in (1, 3, 4):
        raise DataError(f"{path}: 'x' must have shape (N,H,W) or (N,H,W,C) with C in 1/3/4, got {x.shape}")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{path}: 'y' must have shape ({len(x)},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: 'y' must hold integer labels, got dtype {y.dtype}")
        if y.dtype.kind == "u" and len(y) and int(y.max()) > MAX_CLASSES:
            raise DataError(f"{path}: 'y' has label {int(y.max())}, more than {MAX_CLASSES} classes")
        y = y.astype(np.int64)
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: 'y' has negative labels")
        if len(y) and int(y.max()) >= (len(classes) if classes is not None else MAX_CLASSES):
            limit = f"the {len(classes)} names in 'classes'" if classes is not None else f"{MAX_CLASSES} classes"
            raise DataError(f"{path}: 'y' has label {int(y.max())}, beyond {limit}")
        if classes is None and len(y):
            classes = [str(i) for i in range(int(y.max()) + 1)]
    if labeled and y is None:
        raise DataError(f"{path} has no labels 'y', but labels are needed here")
    images = np.stack([prepare_image(img, size, channels) for img in x]) if len(x) else np.zeros((0, *size, channels), np.uint8)
    report = LoadReport(loaded=len(images))
    return Domain(name=str(path), images=images, labels=y, classes=classes, report=report,
                  classes_from_ids=y is not None and "classes" not in files)
