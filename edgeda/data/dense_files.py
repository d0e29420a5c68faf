"""Dense user data: folders of images with segmentation masks and/or depth maps, and ``.npz`` files.

Folder layout (``rel`` is the path below each folder without its extension, so
``images/a/x.jpg`` pairs with ``masks/a/x.png`` and ``depth/a/x.npy``; where no name pairs as it is
but each side's names share an ending from an underscore on (or a start up to one), those are dropped
and a warning says so: Cityscapes' ``a/x_leftImg8bit.png`` then pairs with ``a/x_gtFine_labelIds.png``,
Virtual KITTI's ``rgb_00001.jpg`` with ``depth_00001.png``)::

    root/images/rel.<png|jpg|jpeg|bmp|webp>
    root/masks/rel.png          optional: class ids
    root/depth/rel.<png|npy>    optional: 16-bit PNG in millimetres, or .npy float metres
    root/depth_units.txt        optional: PNG depth values per metre, if not 1000 (KITTI 256, Virtual KITTI 100)
    root/classes.txt            optional: one class per line, ``name``, ``name r g b`` or ``name = id id ...``

Masks: modes ``L``/``1``/``I;16``/``I`` hold ids, ``P`` (palette PNG) holds the palette index as
the id, 16-bit colour PNGs hold ids in their first channel (SYNTHIA's ``GT/LABELS``: class, instance),
8-bit ``RGB``/``RGBA`` are read only when classes.txt gives a colour per class (colour -> id,
unknown colours -> 255 = ignore). ``name = 7`` lines (every class then needs one) map the masks' own
ids to the classes in the file's order, every id not named becoming 255 = ignore: masks labelled with
other ids than the classes' 0..K-1 are read as they are, e.g. GTA5's and Cityscapes' label ids for the
19 Cityscapes training classes (``road = 7``, ``sidewalk = 8``, ``building = 11``, ...), or a
subset of a dataset's classes. Depth comes out as float32 metres; non-finite or negative
values become 0 = invalid.

Bad data never crashes a load, as in :mod:`edgeda.data.files`: at index time image and depth
headers are read and every mask is decoded once, and an unreadable header, a missing mask or depth
map, a JPEG mask (lossy: its ids are wrong along every edge), a mask with class ids beyond the
classes, or a mask/depth whose size differs from its image skips that sample with its reason in
``report.skipped``. A file that only fails
when decoded makes ``sample(i)`` raise ``ValueError``; the dense dataset then uses the next sample.
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
from .dense import IGNORE_INDEX, ArrayDenseDomain, DenseDomain, DenseSample
from .domain import LoadReport
from .files import _DECODE_ERRORS, MAX_IMAGE_PIXELS, list_images, read_image, shown_size, walk_files

MAX_DENSE_CLASSES = 255  # ids 0..254: masks are uint8 and 255 is the ignore label
MAX_MASK_ID = 65535  # the largest id a 16-bit mask holds: ``name = id`` ids must fit
DEPTH_UNITS = 1000.0  # 16-bit depth PNG values per metre: millimetres unless depth_units.txt says otherwise
_WIDE_RGB_MODES = ("RGB;16", "RGBA;16")  # 16-bit colour PNGs: ids in the first channel (SYNTHIA's GT/LABELS)
_ID_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I") + _WIDE_RGB_MODES
_RGB_MODES = ("RGB", "RGBA")
_DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
LOSSY_SUFFIXES = (".jpg", ".jpeg")  # masks must hold exact ids
_NPZ_ERRORS = (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError, zipfile.BadZipFile,
               zipfile.LargeZipFile, NotImplementedError, RuntimeError, MemoryError, struct.error)


def _short(text) -> str:
    return (str(text).splitlines() or [""])[0][:200]


def _open_checked(path: Path) -> Image.Image:
    """PIL image of sane declared size; pixels not decoded yet."""
    im = Image.open(path)
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise ValueError(f"declared size {w}x{h} is too large (possible decompression bomb)")
    return im


def _guarded(fn, path: Path, *args):
    """Run a reader on a regular, non-empty file, turning every decoder failure into ValueError
    with a one-line reason."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:  # a FIFO or device could block forever
            raise ValueError("not a regular file" if not stat.S_ISREG(st.st_mode) else "empty file")
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return fn(path, *args)
    except ValueError as e:
        raise ValueError(_short(e) or "ValueError") from None
    except _DECODE_ERRORS as e:
        raise ValueError(_short(f"{type(e).__name__}: {e}")) from None


def _mode_of(im: Image.Image) -> str:
    """``im``'s mode, or ``RGB;16`` / ``RGBA;16`` for a 16-bit colour PNG (which PIL reads as 8-bit RGB)."""
    tile = getattr(im, "tile", None) or []
    raw = tile[0][3] if len(tile) == 1 and len(tile[0]) == 4 else None
    if im.format == "PNG" and raw in ("RGB;16B", "RGBA;16B"):
        return raw[:-1]
    return im.mode


def _first_channel_16(path: Path) -> np.ndarray:
    """(H, W) int64: the first channel of a 16-bit colour PNG, exactly. PIL decodes such a file to 8 bits
    per sample, keeping each big-endian sample's first (high) byte; a second decode of the same data that
    reads the samples as little-endian keeps the other (low) byte (PNG's row filters are undone before
    either, so both are exact)."""
    planes = []
    for raw in ("16B", "16L"):
        with _open_checked(path) as im:
            codec, extents, offset, rawmode = im.tile[0]
            im.tile = [(codec, extents, offset, rawmode.replace("16B", raw))]
            im.load()
            planes.append(np.asarray(im)[..., 0].astype(np.int64))
    return planes[0] * 256 + planes[1]


def _mode_problem(what: str, mode: str, colours: np.ndarray | None) -> str | None:
    if what == "mask" and mode in _RGB_MODES and colours is None:
        return f"{mode} mask needs a colour per class in classes.txt"
    if what == "mask" and mode not in _ID_MODES + _RGB_MODES:
        return f"unsupported mask mode {mode}"
    if what == "depth" and mode not in _DEPTH_PNG_MODES:
        return f"depth PNG must be 16-bit millimetres, got mode {mode}"
    return None


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def _header(path: Path, what: str, colours: np.ndarray | None) -> tuple[int, int]:
    """(H, W) of an image, mask or depth file from its header only (an image as shown: EXIF orientation
    applied, :func:`~edgeda.data.files.read_image`); ValueError if unusable."""
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            shape, dtype = _npy_header(f)
        if dtype.hasobject or dtype.kind not in "fiu" or not (len(shape) == 2 or len(shape) == 3 and shape[2] == 1):
            raise ValueError(f"depth .npy must be (H, W) numbers, got {shape} {dtype}")
        return int(shape[0]), int(shape[1])
    with _open_checked(path) as im:
        mode, (w, h) = _mode_of(im), im.size
        shown = shown_size(im) if what == "image" else (h, w)
    problem = _mode_problem(what, mode, colours)
    if problem:
        raise ValueError(problem)
    return shown


def _stored_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image's stored pixels, before any EXIF orientation."""
    with _open_checked(path) as im:
        return im.size[1], im.size[0]


def _read_mask(path: Path, colours: np.ndarray | None, id_map: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int64 ids, not yet checked against the class count; ``id_map`` (:func:`read_class_file`)
    turns the file's ids into class ids."""
    with _open_checked(path) as im:
        mode = _mode_of(im)
        problem = _mode_problem("mask", mode, colours)
        if problem:
            raise ValueError(problem)
        if mode in _RGB_MODES:
            return _colours_to_ids(np.asarray(im.convert("RGB")), colours)
        if mode not in _WIDE_RGB_MODES:
            im.load()
            ids = np.asarray(im).astype(np.int64)  # mode P: the palette indices themselves
    if mode in _WIDE_RGB_MODES:
        ids = _first_channel_16(path)
    if id_map is None:
        return ids
    inside = (ids >= 0) & (ids < len(id_map))
    return np.where(inside, id_map[np.where(inside, ids, 0)], IGNORE_INDEX).astype(np.int64)


def _colours_to_ids(rgb: np.ndarray, colours: np.ndarray) -> np.ndarray:
    keys = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pix = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pos = np.minimum(np.searchsorted(sorted_keys, pix), len(keys) - 1)
    return np.where(sorted_keys[pos] == pix, order[pos], IGNORE_INDEX).astype(np.int64)


def _read_depth(path: Path, units: float = 1000.0) -> np.ndarray:
    """(H, W) float32 metres, 0 where invalid; a PNG holds ``units`` per metre (millimetres by default)."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise ValueError(f"depth .npy must be (H, W) numbers, got {arr.shape} {arr.dtype}")
        d = arr.astype(np.float32)
    else:
        with _open_checked(path) as im:
            problem = _mode_problem("depth", im.mode, None)
            if problem:
                raise ValueError(problem)
            im.load()
            d = np.asarray(im).astype(np.float32) / units
    d[~np.isfinite(d) | (d < 0)] = 0.0
    return d


def _ids_to_uint8(ids: np.ndarray, num_classes: int | None) -> np.ndarray:
    limit = MAX_DENSE_CLASSES if num_classes is None else num_classes
    bad = (ids != IGNORE_INDEX) & ((ids < 0) | (ids >= limit))
    if bad.any():
        v = ids[bad]
        worst = int(v.min()) if v.min() < 0 else int(v.max())
        raise ValueError(f"mask has class id {worst}, beyond the {limit} classes")
    return ids.astype(np.uint8)


class FileDenseDomain(DenseDomain):
    """Samples decoded from disk on demand. ``items``: (image, mask or None, depth or None) paths.

    ``palette`` (when given) is also the colour -> id map for RGB masks; ``id_map`` (when given) maps the
    ids of id masks to class ids (:func:`read_class_file`). ``has_masks`` / ``has_depth`` default to
    "some item has one"; when true, every item must have one.
    """

    def __init__(self, name: str, items, *, classes: list[str] | None = None, palette: np.ndarray | None = None,
                 has_masks: bool | None = None, has_depth: bool | None = None, report: LoadReport | None = None,
                 id_map: np.ndarray | None = None):
        items = [(Path(i), None if m is None else Path(m), None if d is None else Path(d)) for i, m, d in items]
        has_masks = any(m is not None for _, m, _ in items) if has_masks is None else bool(has_masks)
        has_depth = any(d is not None for _, _, d in items) if has_depth is None else bool(has_depth)
        if has_masks and any(m is None for _, m, _ in items) or has_depth and any(d is None for _, _, d in items):
            raise ValueError("with has_masks / has_depth every item needs a mask / depth path")
        super().__init__(name, classes=classes, palette=palette, has_masks=has_masks, has_depth=has_depth,
                         report=report or LoadReport(loaded=len(items)))
        self.items = items
        self.id_map = id_map
        self.depth_units = DEPTH_UNITS  # PNG depth values per metre (depth_units.txt)

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int) -> DenseSample:
        img_path, mask_path, depth_path = self.items[i]
        ids = _guarded(_read_mask, mask_path, self.palette, self.id_map) if self.has_masks and mask_path is not None else None
        depth = _guarded(_read_depth, depth_path, self.depth_units) if self.has_depth and depth_path is not None else None
        labelled = next((a.shape[:2] for a in (ids, depth) if a is not None), None)
        image = read_image(img_path, labelled)  # the labels' size decides the EXIF question (read_image)
        hw = image.shape[:2]
        for what, a in (("mask", ids), ("depth", depth)):
            if a is not None and a.shape[:2] != hw:
                raise ValueError(f"{what} is {a.shape[1]}x{a.shape[0]}, its image {hw[1]}x{hw[0]}")
        return DenseSample(image, None if ids is None else _ids_to_uint8(ids, self.num_classes), depth)


def read_class_list(path: Path) -> tuple[list[str], np.ndarray | None]:
    """classes.txt -> (names, (K, 3) uint8 colours or None); see :func:`read_class_file`."""
    names, colours, _ = read_class_file(path)
    return names, colours




def read_class_file(path: Path) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
    """classes.txt -> (names, (K, 3) uint8 colours or None, id map or None). Lines: ``name``, ``name r g b``
    or ``name = id id ...`` (names may contain spaces, not ``=``); blank lines and lines starting with ``#``
    are ignored. The id map, when the lines give ids, is a (MAX_MASK_ID + 1,) uint8 array: a mask's id ->
    class id, 255 (ignore) for the ids no class names."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a readable UTF-8 text file ({type(e).__name__})") from None
    names, colours, ids = [], [], []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        own = None
        if "=" in line:
            line, _, given = (x.strip() for x in line.partition("="))
            vals = given.replace(",", " ").split()
            if not line or not vals or not all(v.isdigit() and int(v) <= MAX_MASK_ID for v in vals):
                raise DataError(f"{path} line {n}: write 'name = id id ...' with ids 0..{MAX_MASK_ID}, got {raw.strip()!r}")
            own = [int(v) for v in vals]
        parts = line.split()
        rgb = None
        if len(parts) >= 4 and all(p.lstrip("-").isdigit() for p in parts[-3:]):
            rgb = [int(p) for p in parts[-3:]]
            if any(not 0 <= v <= 255 for v in rgb):
                raise DataError(f"{path} line {n}: colour values must be 0..255, got {' '.join(parts[-3:])}")
            line = " ".join(parts[:-3])
        names.append(line)
        colours.append(rgb)
        ids.append(own)
    if not names:
        raise DataError(f"{path} names no classes")
    if len(names) > MAX_DENSE_CLASSES:
        raise DataError(f"{path} names {len(names)} classes; masks hold at most {MAX_DENSE_CLASSES} (255 = ignore)")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"{path} names a class more than once: {', '.join(dup)}")
    given = [c is not None for c in colours]
    if any(given) and not all(given):
        raise DataError(f"{path}: give a colour (name r g b) for every class or for none")
    return names, _palette_of(path, colours) if all(given) else None, _id_map(path, names, ids, any(given))


def _palette_of(path: Path, colours: list) -> np.ndarray:
    pal = np.asarray(colours, np.uint8)
    if len({tuple(c) for c in pal.tolist()}) != len(pal):
        raise DataError(f"{path}: two classes share a colour, so RGB masks would be ambiguous")
    return pal


def _id_map(path: Path, names: list[str], ids: list, coloured: bool) -> np.ndarray | None:
    if all(i is None for i in ids):
        return None
    if any(i is None for i in ids):
        raise DataError(f"{path}: give the mask ids (name = id ...) of every class or of none")
    if coloured:
        raise DataError(f"{path}: a class list maps either colours (RGB masks) or ids (id masks), not both")
    lut = np.full(MAX_MASK_ID + 1, IGNORE_INDEX, np.uint8)
    owner: dict[int, str] = {}
    for k, (name, own) in enumerate(zip(names, ids)):
        for v in own:
            if v in owner and owner[v] != name:
                raise DataError(f"{path}: mask id {v} is given to both {owner[v]!r} and {name!r}")
            owner[v] = name
            lut[v] = k
    return lut


def _by_name(folder: Path, files: list[Path], report: LoadReport, what: str) -> dict[str, Path]:
    """rel path without extension -> file; later files with the same name are skipped."""
    out: dict[str, Path] = {}
    for f in files:
        key = f.relative_to(folder).with_suffix("").as_posix()
        if key in out:
            report.skip(str(f), f"another {what} has the same name: {out[key].name}")
        else:
            out[key] = f
    return out


def load_dense_folder(root: Path, *, labeled: bool) -> DenseDomain:
    """``root/images`` with optional ``masks/``, ``depth/`` and ``classes.txt`` (see the module doc).
    ``labeled=False`` uses the images only. Without classes.txt every mask is decoded once to name
    classes "0".."K-1", K = 1 + the largest id other than 255 (None when no mask has an id)."""
    root = Path(root)
    img_dir, mask_dir, depth_dir = root / "images", root / "masks", root / "depth"
    if not img_dir.is_dir():
        raise DataError(f"{root} has no images/ folder (a dense folder holds images/ and optional masks/, depth/)")
    use_masks, use_depth = labeled and mask_dir.is_dir(), labeled and depth_dir.is_dir()
    classes = palette = id_map = None
    if use_masks and (root / "classes.txt").is_file():
        classes, palette, id_map = read_class_file(root / "classes.txt")
    report = LoadReport()
    images = _by_name(img_dir, list_images(img_dir), report, "image")
    masks = _by_name(mask_dir, list_images(mask_dir), report, "mask") if use_masks else {}
    depths = _by_name(depth_dir, walk_files(depth_dir, (".png", ".npy")), report, "depth map") if use_depth else {}
    masks = _one_kind_of_mask(images, masks, report, palette, id_map)
    images, masks = _pair_by_shared_affixes(images, masks, report, "masks")
    images, depths = _pair_by_shared_affixes(images, depths, report, "depth maps")
    items = []
    for key, img in images.items():
        m, d = masks.pop(key, None), depths.pop(key, None)
        if use_masks and m is None:
            report.skip(str(img), f"no mask (expected masks/{key}.png)")
            continue
        if use_depth and d is None:
            report.skip(str(img), f"no depth map (expected depth/{key}.png or .npy)")
            continue
        if m is not None and m.suffix.lower() in LOSSY_SUFFIXES:
            report.skip(str(m), "JPEG mask refused: lossy compression changes the class ids along every edge "
                                "(save masks as PNG)")
            continue
        try:
            hw = _guarded(_header, img, "image", None)
        except ValueError as e:
            report.skip(str(img), str(e))
            continue
        problem = None
        for path, what in ((m, "mask"), (d, "depth")):
            if path is None:
                continue
            try:
                phw = _guarded(_header, path, what, palette)
            except ValueError as e:
                problem = (path, f"{what}: {e}")
                break
            if phw != hw and phw != _guarded(_stored_size, img):  # labels made on the stored pixels: kept
                problem = (path, f"{what} is {phw[1]}x{phw[0]}, its image {img.name} is {hw[1]}x{hw[0]}")
                break
        if problem:
            report.skip(str(problem[0]), problem[1])
        else:
            items.append((img, m, d))
    for p in list(masks.values()) + list(depths.values()):
        report.skip(str(p), "no image of the same name")
    from_ids = use_masks and classes is None
    if use_masks:  # every mask decoded once: ids beyond the classes are skipped and counted here, not later
        items, found = _scan_masks(items, report, classes, palette, id_map)
        classes = found if from_ids else classes
    report.loaded = len(items)
    dom = FileDenseDomain(str(root), items, classes=classes, palette=palette, has_masks=use_masks,
                          has_depth=use_depth, report=report, id_map=id_map)
    if use_depth and (root / "depth_units.txt").is_file():
        dom.depth_units = read_depth_units(root / "depth_units.txt")
    dom.classes_from_ids = from_ids
    return dom


def _shared_affixes(keys) -> tuple[str, str]:
    """(the start every name in ``keys`` shares, up to an underscore: ``rgb_``; the end they share, from an
    underscore on: ``_leftImg8bit``, ``_gtFine_labelIds``, ``_train_id``); "" where there is none."""
    stems = [k.rsplit("/", 1)[-1] for k in keys]
    start = os.path.commonprefix(stems)
    start = start[:start.rfind("_") + 1]
    end = os.path.commonprefix([t[::-1] for t in stems])[::-1]
    end = end[end.find("_"):] if "_" in end else ""
    if any(len(t) <= len(start) + len(end) for t in stems):  # nothing would be left of some name
        return "", ""
    return start, end


#: The mask files read where masks/ holds several kinds per image (Cityscapes' gtFine, ACDC, Dark Zurich:
#: ``_labelIds``, ``_labelTrainIds``, ``_color``/``_labelColor``, ``_instanceIds``): by what classes.txt gives.
#: (what classes.txt gives, said as) -> the endings of the kind read.
_MASK_KINDS = {"gives colours": ("color", "colour"), "maps ids": ("labelids",),
               "names the classes by id (or is absent)": ("trainids", "train_id", "trainid")}


def _one_kind_of_mask(images: dict[str, Path], masks: dict[str, Path], report: LoadReport, palette, id_map):
    """``masks`` with one kind of file per image where masks/ holds several, told apart by what follows an
    image's name (after the images' shared ending): the colour images where classes.txt gives colours, the
    ``labelIds`` where it maps ids (``name = id``), else the ``trainIds``; a warning names the kind read.
    ``masks`` itself where each image has one; :class:`DataError` naming the kinds where none is the one."""
    if not images or not masks or images.keys() & masks.keys():
        return masks
    _, end = _shared_affixes(images)
    frames = {k[:len(k) - len(end)] for k in images}
    kind_of = {}
    for key in masks:
        cuts = [i for i, c in enumerate(key) if c == "_" and key[:i] in frames]
        if cuts:
            kind_of[key] = key[max(cuts):]
    kinds = sorted(set(kind_of.values()))
    if len(kinds) < 2:
        return masks
    given = list(_MASK_KINDS)[0 if palette is not None else 1 if id_map is not None else 2]
    chosen = [k for k in kinds if k.lower().endswith(_MASK_KINDS[given])]
    shared = os.path.commonprefix(kinds)
    shown = [k[shared.rfind("_"):] for k in kinds]  # the endings that tell the kinds apart: _color, _labelIds
    if len(chosen) != 1:
        raise DataError(f"masks/ holds {len(kinds)} kinds of file per image ({', '.join(shown)}) and classes.txt "
                        f"{given}: keep one kind in masks/ (Cityscapes-style: *_labelIds.png with a 'name = id' "
                        f"classes.txt such as configs/classes/cityscapes-label-ids.txt, or *_labelTrainIds.png)")
    report.warn(f"masks/ holds {len(kinds)} kinds of file per image ({', '.join(shown)}): reading the "
                f"{shown[kinds.index(chosen[0])]} ones (classes.txt {given})")
    for key in masks.keys() - kind_of.keys():  # masks of frames not among the images: by their ending
        kind_of[key] = next((k for k in sorted(kinds, key=len, reverse=True) if key.endswith(k)), chosen[0])
    return {k: v for k, v in masks.items() if kind_of[k] == chosen[0]}


def _pair_by_shared_affixes(images: dict[str, Path], labels: dict[str, Path], report: LoadReport, what: str):
    """``images`` and ``labels`` keyed alike when no name pairs as it is but the names pair once each side's
    shared ending (Cityscapes' ``x_leftImg8bit.png`` with ``x_gtFine_labelIds.png``, BDD100K's ``x.jpg`` with
    ``x_train_id.png``) -- or, failing that, also its shared start (Virtual KITTI's ``rgb_00001.jpg`` with
    ``depth_00001.png``) -- is dropped: the keys without them, and a warning saying so."""
    if not images or not labels or images.keys() & labels.keys():
        return images, labels
    (pa, sa), (pb, sb) = _shared_affixes(images), _shared_affixes(labels)

    def strip(d, start, end):
        out = {}
        for k, v in d.items():
            head, _, stem = k.rpartition("/")
            stem = stem[len(start):len(stem) - len(end)]
            out[f"{head}/{stem}" if head else stem] = v
        return out

    for (a0, a1), (b0, b1) in ((("", sa), ("", sb)), ((pa, sa), (pb, sb))):
        if not (a0 or a1 or b0 or b1):
            continue
        ia, lb = strip(images, a0, a1), strip(labels, b0, b1)
        if len(ia) == len(images) and len(lb) == len(labels) and ia.keys() & lb.keys():
            dropped = lambda x0, x1: " and ".join(repr(x) for x in (x0, x1) if x) or "nothing"  # noqa: E731
            report.warn(f"no image and {what[:-1]} names matched as they are: paired without "
                        f"{dropped(a0, a1)} (images) and {dropped(b0, b1)} ({what})")
            return ia, lb
    return images, labels


def read_depth_units(path: Path) -> float:
    """``depth_units.txt``: how many 16-bit PNG depth values make a metre (one number; KITTI 256, Virtual
    KITTI 100 -- centimetres --, the default 1000 -- millimetres); ``#`` lines are comments."""
    try:
        words = [w for ln in Path(path).read_text(encoding="utf-8-sig").splitlines()
                 if not ln.strip().startswith("#") for w in ln.split()]
        units = float(words[0]) if len(words) == 1 else float("nan")
    except (OSError, UnicodeDecodeError, ValueError):
        units = float("nan")
    if not np.isfinite(units) or units <= 0:
        raise DataError(f"{path}: write one positive number, the depth PNG values per metre (KITTI 256, "
                        "Virtual KITTI 100, millimetres 1000)")
    return units


def _mask_top(path: Path, palette: np.ndarray | None, limit: int | None, id_map: np.ndarray | None = None) -> int:
    """The largest class id of a mask (-1: none but ignore); ValueError if unreadable or out of range."""
    ids = _guarded(_read_mask, path, palette, id_map)
    _ids_to_uint8(ids, limit)
    valid = ids[ids != IGNORE_INDEX]
    return int(valid.max()) if valid.size else -1


def _scan_masks(items, report: LoadReport, classes: list[str] | None = None, palette: np.ndarray | None = None,
                id_map: np.ndarray | None = None):
    """(items whose masks decode with ids in range, class names "0".."K-1" from the largest id).
    The masks are decoded on a few threads (the PNG decoder releases the GIL), in the items' order."""
    from concurrent.futures import ThreadPoolExecutor

    limit = None if classes is None else len(classes)

    def check(item):
        try:
            return _mask_top(item[1], palette, limit, id_map)
        except ValueError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(check, items))
    kept, top = [], -1
    for item, r in zip(items, results):
        if isinstance(r, ValueError):
            named = " named in classes.txt" if classes is not None and "beyond" in str(r) else ""
            report.skip(str(item[1]), f"mask: {r}{named}")
            continue
        top = max(top, r)
        kept.append(item)
    return kept, ([str(k) for k in range(top + 1)] if top >= 0 else None)


def load_dense_npz(path: Path, *, labeled: bool) -> ArrayDenseDomain:
    """``x`` (N,H,W[,C]) uint8, optional ``y`` (N,H,W) ids (255 = ignore), ``depth`` (N,H,W) metres,
    ``classes`` (K,) names, ``palette`` (K,3). Without ``classes``, K is the palette's length if one
    is given, else 1 + the largest id. ``labeled=False`` keeps ``x`` only."""
    path = Path(path)
    wanted = ("x", "y", "depth", "classes", "palette") if labeled else ("x",)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path} has no array 'x' (found: {', '.join(sorted(z.files)) or 'none'})")
            arr = {k: z[k] for k in wanted if k in z.files}
    except DataError:
        raise
    except _NPZ_ERRORS as e:
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {_short(e)})") from None
    x = arr["x"]
    if x.dtype != np.uint8:
        raise DataError(f"{path}: 'x' must be uint8 images, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4 or x.shape[3] not in (1, 3, 4) or x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{path}: 'x' must have shape (N,H,W) or (N,H,W,C) with C in 1/3/4, got {arr['x'].shape}")
    if x.shape[0] == 0:
        raise DataError(f"{path}: 'x' holds no images")
    x = x[..., :3]
    nhw = x.shape[:3]
    y, depth, classes, palette = arr.get("y"), arr.get("depth"), None, None
    for name, a, kinds in (("y", y, "iu"), ("depth", depth, "fiu")):
        if a is not None and a.shape != nhw:
            raise DataError(f"{path}: '{name}' must have shape {nhw} to match 'x' {arr['x'].shape}, got {a.shape}")
        if a is not None and a.dtype.kind not in kinds:
            raise DataError(f"{path}: '{name}' has dtype {a.dtype}; it needs {'integer ids' if name == 'y' else 'numbers'}")
    if depth is not None:
        with np.errstate(all="ignore"):
            depth = depth.astype(np.float32)
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    if y is not None:
        if y.size and (int(y.min()) < 0 or int(y.max()) > IGNORE_INDEX):
            raise DataError(f"{path}: 'y' has ids in [{int(y.min())}, {int(y.max())}]; they must be 0..254, 255 = ignore")
        y = y.astype(np.uint8)
        classes, palette = _npz_classes(path, arr, y)
    dom = ArrayDenseDomain(str(path), x, y, depth, classes=classes, palette=palette, report=LoadReport(loaded=len(x)))
    dom.classes_from_ids = y is not None and "classes" not in arr and "palette" not in arr
    return dom


def _npz_classes(path: Path, arr: dict, y: np.ndarray):
    classes = palette = None
    if "classes" in arr:
        c = arr["classes"]
        if c.ndim != 1 or c.dtype.kind not in "US" or not 0 < len(c) <= MAX_DENSE_CLASSES:
            raise DataError(f"{path}: 'classes' must be 1 to {MAX_DENSE_CLASSES} names, got shape {c.shape} dtype {c.dtype}")
        classes = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in c.tolist()]
    if "palette" in arr:
        p = arr["palette"]
        k = len(classes) if classes is not None else len(p)
        if p.shape != (k, 3) or p.dtype.kind not in "iu" or p.size and (p.min() < 0 or p.max() > 255):
            raise DataError(f"{path}: 'palette' must be ({k}, 3) integers 0..255, got shape {p.shape} dtype {p.dtype}")
        if not 0 < k <= MAX_DENSE_CLASSES:
            raise DataError(f"{path}: 'palette' has {k} rows; 1 to {MAX_DENSE_CLASSES} classes are allowed")
        palette = p.astype(np.uint8)
        classes = classes if classes is not None else [str(i) for i in range(k)]
    valid = y[y != IGNORE_INDEX]
    top = int(valid.max()) if valid.size else -1
    if classes is None:
        return ([str(i) for i in range(top + 1)] if top >= 0 else None), None
    if top >= len(classes):
        raise DataError(f"{path}: 'y' has class id {top}, beyond the {len(classes)} classes named")
    return classes, palette


def is_dense_folder(path: Path) -> bool:
    """A dense folder has an ``images/`` subfolder."""
    return Path(path).is_dir() and (Path(path) / "images").is_dir()


def npz_is_dense(path: Path) -> bool:
    """An .npz holds dense data when it has ``depth`` or a ``y`` of shape (N, H, W).
    Only the header of ``y`` is read; an unreadable file answers False."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "depth" in z.files:
                return True
            if "y" not in z.files:
                return False
        with zipfile.ZipFile(path) as zf, zf.open("y.npy") as f:
            return len(_npy_header(f)[0]) == 3
    except _NPZ_ERRORS:
        return False


def check_same_classes(a: DenseDomain, b: DenseDomain) -> None:
    """DataError when both domains name classes and the lists differ (order matters: ids index them)."""
    if a.classes is not None and b.classes is not None and a.classes != b.classes:
        raise DataError(f"domains {a.name!r} and {b.name!r} name different classes: "
                        f"[{', '.join(a.classes)}] vs [{', '.join(b.classes)}]")
