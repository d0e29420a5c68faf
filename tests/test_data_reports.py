"""Files that training and evaluation skip are said, with the reason, and listed in the manifest."""
import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from edgeda.bundle import Bundle
from edgeda.cli import main

TINY = ["--backbone-option", "width=8", "--backbone-option", "out_dim=32", "--batch-size", "4", "--iters", "2",
        "--image-size", "16", "--device", "cpu"]


def test_training_prints_and_records_skipped_files_and_empty_classes(tmp_path, write_png):
    src = tmp_path / "src"
    for c, v in (("a", 40), ("b", 200)):
        for i in range(4):
            write_png(src / c / f"{i}.png", value=v + i)
    buf = (src / "a" / "0.png").read_bytes()
    Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(src / "a" / "cut.jpg")
    (src / "a" / "cut.jpg").write_bytes((src / "a" / "cut.jpg").read_bytes()[:60])  # truncated JPEG
    (src / "b" / "junk.png").write_bytes(b"not an image" + buf[:10])
    (src / "empty").mkdir()
    res = CliRunner().invoke(main, ["train", "--method", "source_only", "--source", str(src), "--out", str(tmp_path / "r"),
                                    *TINY])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "source " in out and "2 files skipped" in out and "cut.jpg" in out and "junk.png" in out
    assert "warning: source" in out and "'empty' has no usable images" in out
    domains = Bundle(tmp_path / "r" / "model.edgeda").manifest["training"]["domains"]
    assert domains["source_skipped"] == 2 and {f["path"].rsplit("/", 1)[-1] for f in domains["source_skipped_files"]} == \
        {"cut.jpg", "junk.png"}
    assert all(f["reason"] for f in domains["source_skipped_files"]) and "empty" in domains["source_warnings"][0]


def test_eval_names_the_reasons_of_skipped_dense_files(tmp_path):
    """A segmentation folder with an out-of-range id, a JPEG mask and an image without a mask: eval
    says how many it skipped and why, and scores only the rest."""
    from edgeda.bundle import write_bundle
    from edgeda.models import build
    from edgeda.tasks.spec import TaskSpec

    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    for i, top in ((0, 2), (1, 9), (4, 1)):  # 9: beyond the 3 classes
        Image.fromarray(np.full((16, 16), top, np.uint8)).save(root / "masks" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / "4.png")
    raw = (root / "images" / "4.png").read_bytes()
    (root / "images" / "4.png").write_bytes(raw[:len(raw) // 2])  # a readable header, truncated pixels
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "2.jpg")
    (root / "classes.txt").write_text("a\nb\nc\n")
    spec = TaskSpec(3, ["a", "b", "c"], task="segmentation", image_size=(16, 16))
    net = build("dense_model", arch="lraspp", num_outputs=3, output="logits", channels=3, width=0.25).eval()
    b = write_bundle(tmp_path / "m.edgeda", {"model": net}, spec)
    res = CliRunner().invoke(main, ["eval", str(b), "--data", str(root), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    reasons = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in m["load_report"]["skipped_files"]}
    assert m["load_report"]["loaded"] == 1 and set(reasons) == {"1.png", "2.jpg", "3.png", "4.png"}
    assert "class id 9" in reasons["1.png"] and "JPEG" in reasons["2.jpg"] and "no mask" in reasons["3.png"]
    assert "could not be decoded when read" in reasons["4.png"] and m["n_pixels"] == 16 * 16  # one image scored
    res = CliRunner().invoke(main, ["eval", str(b), "--data", str(root)])
    assert "skipped 4 files:" in res.output and "class id 9" in res.output and "unreadable" not in res.output
    assert "over 1 class labelled in the test split (of 3)" in res.output and "b:no truth pixels" in res.output


def test_mac_and_hidden_entries_are_no_classes_images_or_skipped_files(tmp_path):
    """A zip made on a Mac unpacks ``__MACOSX/`` and ``._name`` resource forks beside the data; Finder
    writes ``.DS_Store``: none is a class, an image, a label file or a skipped file."""
    import numpy as np
    from PIL import Image

    from edgeda.data import load_domain

    def mac_litter(folder):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "._0.png").write_bytes(b"\0\5\26\7")

    cls = tmp_path / "cls"
    for name in ("cat", "dog"):
        (cls / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cls / name / "0.png")
        mac_litter(cls / name)
    (cls / "__MACOSX" / "cat").mkdir(parents=True)
    (cls / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\0\5\26\7")
    dom = load_domain(str(cls), labeled=True, size=(8, 8), channels=3)
    assert dom.classes == ["cat", "dog"] and len(dom) == 2 and not dom.report.skipped and not dom.report.warnings

    dense = tmp_path / "dense"
    for sub in ("images", "masks"):
        (dense / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(dense / sub / "0.png")
        mac_litter(dense / sub)
    seg = load_domain(str(dense), labeled=True)
    assert len(seg) == 1 and not seg.report.skipped

    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(yolo / "images" / "0.png")
    (yolo / "labels" / "0.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (yolo / "labels" / "._0.txt").write_bytes(b"\0\5\26\7")
    mac_litter(yolo / "images")
    det = load_domain(str(yolo), labeled=True, task="detection")
    assert len(det) == 1 and not det.report.skipped
    # a COCO folder: its one json, not the "._" copy beside it
    import json

    from edgeda.data.detection_files import find_coco_json

    (yolo / "images" / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    (yolo / "images" / "._ann.json").write_bytes(b"\0\5\26\7")
    assert find_coco_json(yolo / "images").name == "ann.json"
