"""Resolving a spec string to a detection domain (the detection task's data loader, registered in
:data:`edgeda.data.spec.TASK_DOMAIN_LOADERS`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .detection import DetectionDomain, as_detection_images
from .detection_files import find_coco_json, is_yolo_folder, load_coco, load_image_folder, load_yolo
from .detection_instances import is_instance_folder, load_instance_folder
from .detection_kitti import is_kitti_folder, load_kitti
from .detection_voc import is_voc_folder, load_voc
from .spec import TASK_DOMAIN_LOADERS


@TASK_DOMAIN_LOADERS.register("detection")
def load_detection_domain(spec: str, *, labeled: bool, size=None, channels: int = 3, split: str | None = None,
                          n: int | None = None, seed: int = 0) -> DetectionDomain:
    """Resolve a spec for the detection task: a built-in (``digitscenes``, ``handwritten-scenes``,
    ``synscenes`` with any of their splits, ``name:split``), a COCO ``.json`` (or a folder holding one),
    a YOLO folder (``images/`` + ``labels/``), a Pascal VOC folder (``Annotations/*.xml`` + ``JPEGImages/``),
    a KITTI object folder (``image_2/`` + ``label_2/``), a folder of Cityscapes-style instance masks
    (``images/`` + ``masks/*_instanceIds.png`` + ``classes.txt``), or any image folder (unlabeled). ``size`` is the
    rendering size of a built-in (its default when None); user data comes at its stored size."""
    from .detection_builtin import DETECTION_BUILTINS
    from .spec import DomainSpec

    parsed = DomainSpec.parse(spec)
    if parsed.builtin:
        name, spec_split = parsed.name, parsed.split
        if name not in DETECTION_BUILTINS:
            raise DataError(f"built-in domain {name!r} has no boxes; detection built-ins: "
                            f"{', '.join(DETECTION_BUILTINS)}")
        loader = DETECTION_BUILTINS.get(name)
        kw = {"size": tuple(size) if size is not None else loader.default_size, "channels": 3, "n": n, "seed": seed}
        chosen = spec_split or split
        try:
            dom = loader(chosen, **kw) if chosen else loader(**kw)
        except ValueError as e:
            raise DataError(str(e)) from None
        return dom if labeled else as_detection_images(dom)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise DataError(f"{spec}: no such COCO .json file")
        return load_coco(path, labeled=labeled)
    if path.suffix.lower() == ".npz" and path.is_file():
        from .files import load_npz

        hw = tuple(size) if size is not None else (256, 256)
        return as_detection_images(load_npz(path, labeled=False, size=hw, channels=3))
    if path.is_dir():
        return load_detection_folder(path, labeled=labeled)
    from .builtin import BUILTIN_DOMAINS

    raise DataError(f"unknown domain {spec!r}: not a built-in name ({', '.join(BUILTIN_DOMAINS)}), a COCO .json, "
                    "a YOLO, Pascal VOC or KITTI folder, or an image folder")


def looks_like_detection_data(spec: str) -> bool:
    """Whether a user spec is box data by its form alone: a COCO ``.json``, a folder holding one, a YOLO
    folder, a Pascal VOC or a KITTI folder (built-in names and other folders: False)."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".json":
        return path.is_file()
    return path.is_dir() and (is_yolo_folder(path) or is_voc_folder(path) or is_kitti_folder(path)
                              or find_coco_json(path) is not None)


def load_detection_folder(root: Path, *, labeled: bool) -> DetectionDomain:
    """A YOLO, Pascal VOC, KITTI or instance-mask folder, a folder holding one COCO json, or (unlabeled)
    any image folder."""
    root = Path(root)
    if is_yolo_folder(root):
        return load_yolo(root, labeled=labeled)
    if is_instance_folder(root):
        return load_instance_folder(root, labeled=labeled)
    if is_voc_folder(root):
        return load_voc(root, labeled=labeled)
    if is_kitti_folder(root):
        return load_kitti(root, labeled=labeled)
    found = find_coco_json(root)
    if found is not None:
        return load_coco(found, labeled=labeled)
    return load_image_folder(root)
