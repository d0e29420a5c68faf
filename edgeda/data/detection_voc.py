"""Pascal VOC detection data: one XML file per image, as the VOC datasets and LabelImg write them.

**Layout** -- ``root/Annotations/<rel>.xml``; each file's ``<filename>`` is looked up in
``root/JPEGImages/``, ``root/images/``, beside the XML file (LabelImg's default) and in ``root``;
without a ``<filename>``, an image with the XML file's name is looked up in the same places, and
last the file ``<path>`` names, where it exists.
Each ``<object>`` has a ``<name>`` and a ``<bndbox>`` with ``xmin ymin xmax ymax``, VOC's 1-based pixel
indices, read as the box ``[xmin - 1, ymin - 1, xmax, ymax]`` (the convention of the VOC devkit's
readers, so a box covering the whole image is ``[0, 0, W, H]``). ``<difficult>1</difficult>`` objects
are kept apart like COCO's crowd regions: never trained on, and ignored at evaluation, as the VOC
evaluation ignores them. ``root/classes.txt`` (one name per line), when present, fixes the classes and
their order; without it the classes are the names seen, sorted. An image without objects is kept as
an image without objects.

**Bad data never crashes a load**, as for COCO and YOLO (:mod:`edgeda.data.detection_files`): XML files
that do not parse or are not VOC, XML files whose image is absent or unreadable or whose ``<size>``
differs from the image, a second XML file for an image already annotated, and objects without a name,
with a name not in ``classes.txt``, or with a box that is malformed, degenerate or entirely outside the
image (boxes partly outside are clipped) are skipped and counted with the reason; one object is named
``file#object <n>``. ``labeled=False`` reads the images of ``JPEGImages/`` (or ``images/``) only.
"""
from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from ..errors import DataError
from .dense_files import read_class_list
from .detection_files import FileDetectionDomain, _check_box, _image_size, _stack, declared_size, load_image_folder
from .domain import LoadReport
from .files import IMAGE_EXTENSIONS, not_data, shown_size, walk_files

MAX_XML_BYTES = 10_000_000  # one image's annotation; a larger file is not VOC
IMAGE_DIRS = ("JPEGImages", "images")


def is_voc_folder(path) -> bool:
    """A folder with an ``Annotations/`` folder holding at least one ``.xml`` file."""
    ann = Path(path) / "Annotations"
    return ann.is_dir() and any(not not_data(p.name) for p in ann.rglob("*.xml"))


def _read_xml(path: Path) -> ElementTree.Element:
    """The root ``<annotation>`` element; ValueError with a one-line reason when the file is not VOC XML."""
    try:
        if not path.is_file():  # a FIFO or device could block forever
            raise ValueError("not a regular file")
        if path.stat().st_size > MAX_XML_BYTES:
            raise ValueError(f"larger than {MAX_XML_BYTES // 1_000_000} MB")
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError, RecursionError) as e:
        raise ValueError(f"not readable XML ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})") from None
    if root.tag != "annotation":
        raise ValueError(f"not a VOC annotation (its root element is <{root.tag}>, not <annotation>)")
    return root


def _text(el: ElementTree.Element | None, tag: str) -> str | None:
    found = el.find(tag) if el is not None else None
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _number(el: ElementTree.Element | None, tag: str) -> float | None:
    try:
        return float(_text(el, tag))
    except (TypeError, ValueError):
        return None


def _find_image(root: Path, xml: Path, name: str | None, path: str | None) -> Path | None:
    """The image of one XML file: ``<filename>`` (with an image extension added where it has none, as some
    exporters write it), else the XML file's own name, in the module doc's places; last ``<path>``, where
    it names an existing file on this machine."""
    if name is not None and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        names = [name]
    else:
        base = name if name is not None else xml.stem
        names = [f"{base}{e}" for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]
    for where in [root / d for d in IMAGE_DIRS] + [xml.parent, root]:
        for n in names:
            if (where / n).is_file():
                return where / n
    if path is not None and Path(path).is_file():
        return Path(path)
    return None


def _objects(xml: Path, ann: ElementTree.Element, hw: tuple[int, int], index: dict[str, int], fixed: bool,
             report: LoadReport) -> tuple[list, list, list, list]:
    """(boxes, labels, difficult boxes, their labels) of one file's good objects; a name not in ``index``
    is skipped when the classes are ``fixed`` (classes.txt), else added to it."""
    H, W = hw
    boxes, labels, hard, hard_labels = [], [], [], []
    for n, obj in enumerate(ann.findall("object")):
        where = f"{xml}#object {n}"
        name = _text(obj, "name")
        if name is None:
            report.skip(where, "object has no <name>", entry=True)
            continue
        if class_id(index, name, fixed, report, where, "class") is None:
            continue
        bb = obj.find("bndbox")
        v = [_number(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if any(x is None for x in v):
            report.skip(where, "<bndbox> needs numbers <xmin> <ymin> <xmax> <ymax>", entry=True)
            continue
        box, problem = _check_box(np.array([v[0] - 1, v[1] - 1, v[2], v[3]], np.float64), H, W)
        if problem:
            report.skip(where, problem, entry=True)
            continue
        difficult = _text(obj, "difficult") in {"1", "true", "True"}
        (hard if difficult else boxes).append(box)
        (hard_labels if difficult else labels).append(index[name])
    return boxes, labels, hard, hard_labels


def load_voc(root: Path, *, labeled: bool = True) -> FileDetectionDomain:
    """A Pascal VOC folder (see the module doc)."""
    root = Path(root)
    if not labeled:
        where = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
        if where is None:
            raise DataError(f"{root} has no {' or '.join(IMAGE_DIRS)} folder of images")
        return load_image_folder(where)
    report = LoadReport()
    fixed = (root / "classes.txt").is_file()
    index = {n: k for k, n in enumerate(read_class_list(root / "classes.txt")[0])} if fixed else {}
    items, used = [], {}
    for xml in walk_files(root / "Annotations", (".xml",)):
        try:
            ann = _read_xml(xml)
        except ValueError as e:
            report.skip(str(xml), str(e))
            continue
        img = _find_image(root, xml, _text(ann, "filename"), _text(ann, "path"))
        if img is None:
            report.skip(str(xml), f"its image {_text(ann, 'filename') or xml.stem + '.*'} is not there")
            continue
        if img in used:
            report.skip(str(xml), f"{img.name} is annotated already by {used[img].name}")
            continue
        hw = _image_size(img, report)
        if hw is None:
            continue
        size = ann.find("size")  # 0 or absent: tools that do not fill <size>
        hw = declared_size(img, hw, _number(size, "width"), _number(size, "height"), "xml", report)
        if hw is None:
            continue
        used[img] = xml
        b, lab, c, clab = _objects(xml, ann, hw, index, fixed, report)
        items.append((img, hw, *_stack(b, lab), *_stack(c, clab)))
    if not items and not report.skipped:
        raise DataError(f"{root}/Annotations holds no .xml annotation file")
    classes = list(index)
    if not fixed:
        items, classes = sorted_classes(items, classes)
    report.loaded = len(items)
    return FileDetectionDomain(str(root), items, classes=classes or None, has_boxes=True, report=report)


def class_id(index: dict[str, int], name: str, fixed: bool, report: LoadReport, where: str, what: str) -> int | None:
    """``name``'s class id in ``index``, added to it unless the classes are ``fixed`` (classes.txt): then a
    name it lacks is skipped and counted (None)."""
    if name not in index:
        if fixed:
            report.skip(where, f"{what} {name!r} is not in classes.txt", entry=True)
            return None
        index[name] = len(index)
    return index[name]


def sorted_classes(items: list, classes: list[str]) -> tuple[list, list[str]]:
    """(``items`` with their labels renumbered, ``classes`` sorted): the names seen, in the same order
    however the files are named."""
    order = sorted(classes)
    remap = np.array([order.index(n) for n in classes], np.int64)
    return [(p, hw, b, remap[lab] if len(lab) else lab, c, remap[clab] if len(clab) else clab)
            for p, hw, b, lab, c, clab in items], order


def write_voc(folder: Path, rows: list[dict], classes: list[str], root: Path, *, min_score: float = 0.5) -> int:
    """Box predictions as a Pascal VOC folder that :func:`load_voc` (and LabelImg, CVAT) read back:
    ``folder/Annotations/<rel>.xml`` per image (``rel``: its path under ``root``), with ``<filename>``, the
    image's absolute ``<path>`` (so no image is copied), ``<size>`` and one ``<object>`` per detection scoring
    at least ``min_score`` (pixel boxes written as VOC's 1-based indices), and ``folder/classes.txt`` with the
    model's classes in order. ``rows``: ``edgeda predict`` rows (``path``, ``detections``). Returns the number
    of objects written. For labelling real images faster: correct the boxes, then use the folder as
    labelled data (``--target-val``, ``--target-test``)."""
    from PIL import Image

    from ..utils import atomic_write_bytes

    folder = Path(folder)
    n = 0
    for r in rows:
        img = Path(r["path"]).resolve()
        with Image.open(img) as im:
            h, w = shown_size(im)  # the predictions' frame (read_image)
        ann = ElementTree.Element("annotation")
        for tag, text in (("folder", img.parent.name), ("filename", img.name), ("path", str(img))):
            ElementTree.SubElement(ann, tag).text = text
        size = ElementTree.SubElement(ann, "size")
        for tag, v in (("width", w), ("height", h), ("depth", 3)):
            ElementTree.SubElement(size, tag).text = str(v)
        for d in r["detections"]:
            if d["score"] < min_score:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
            x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
            if x2 <= x1 or y2 <= y1:
                continue
            obj = ElementTree.SubElement(ann, "object")
            ElementTree.SubElement(obj, "name").text = str(d["class"])
            ElementTree.SubElement(obj, "difficult").text = "0"
            ElementTree.SubElement(obj, "score").text = f"{d['score']:.4f}"  # not VOC's: what the model thought
            bb = ElementTree.SubElement(obj, "bndbox")
            for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ElementTree.SubElement(bb, tag).text = str(v)
            n += 1
        ElementTree.indent(ann)
        rel = img.relative_to(root.resolve()) if img.is_relative_to(root.resolve()) else Path(img.name)
        out = folder / "Annotations" / rel.with_suffix(".xml")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, ElementTree.tostring(ann, encoding="utf-8") + b"\n")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "classes.txt", ("\n".join(classes) + "\n").encode())
    return n
