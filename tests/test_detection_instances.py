"""Detection boxes from Cityscapes-style instance-id masks (``--task detection`` on images/ + masks/)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeda.data.detection_instances import boxes_of_instances, is_instance_folder, load_instance_folder
from edgeda.data.detection_spec import load_detection_domain
from edgeda.errors import DataError

CLASSES = "person = 24\ncar = 26\n"


def _instances():
    ids = np.full((10, 20), 7, np.uint16)  # road: no object
    ids[1:4, 2:6] = 26001  # a car
    ids[5:7, 10:12] = 26002  # another car, split in two by an occluder: one box over both parts
    ids[5:7, 14:16] = 26002
    ids[5:7, 12:14] = 24003  # the occluding person
    ids[8:10, 0:3] = 24  # a crowd of people, two regions
    ids[8:10, 17:20] = 24
    ids[0, 19] = 33001  # a bicycle: not named in classes.txt, no object
    return ids


def _folder(root: Path, extra=True):
    (root / "images" / "a").mkdir(parents=True)
    (root / "masks" / "a").mkdir(parents=True)
    (root / "classes.txt").write_text(CLASSES)
    Image.fromarray(np.full((10, 20, 3), 80, np.uint8)).save(root / "images" / "a" / "x_leftImg8bit.png")
    Image.fromarray(_instances()).save(root / "masks" / "a" / "x_gtFine_instanceIds.png")
    Image.fromarray(np.full((10, 20), 7, np.uint8)).save(root / "masks" / "a" / "x_gtFine_labelIds.png")
    if extra:
        Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(root / "images" / "a" / "y_leftImg8bit.png")  # no mask
        Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(root / "images" / "a" / "z_leftImg8bit.png")
        Image.fromarray(_instances()).save(root / "masks" / "a" / "z_gtFine_instanceIds.png")  # 20x10 vs 20x12
    return root


def test_boxes_cover_each_visible_instance_and_crowds_become_crowd_boxes():
    to_class = np.full(65536, 255, np.uint8)
    to_class[24], to_class[26] = 0, 1
    boxes, labels, crowd, crowd_labels = boxes_of_instances(_instances().astype(np.int64), to_class)
    got = sorted(zip(labels.tolist(), boxes.tolist()))
    assert got == [(0, [12.0, 5.0, 14.0, 7.0]), (1, [2.0, 1.0, 6.0, 4.0]), (1, [10.0, 5.0, 16.0, 7.0])]
    assert sorted(crowd.tolist()) == [[0.0, 8.0, 3.0, 10.0], [17.0, 8.0, 20.0, 10.0]]
    assert crowd_labels.tolist() == [0, 0]


def test_an_instance_folder_loads_as_detection_data_and_counts_what_it_skips(tmp_path):
    root = _folder(tmp_path / "cs")
    assert is_instance_folder(root) and not is_instance_folder(tmp_path)
    dom = load_detection_domain(str(root), labeled=True)
    assert dom.classes == ["person", "car"] and len(dom) == 1
    s = dom.sample(0)
    assert s.image.shape == (10, 20, 3) and len(s.boxes) == 3 and len(s.crowd) == 2
    reasons = " | ".join(r for _, r in dom.report.skipped)
    assert "no instance mask" in reasons and "the instance mask says 20x10" in reasons
    images = load_detection_domain(str(root), labeled=False)  # unlabeled: the images only, not the masks
    assert len(images) == 3 and not images.has_boxes


def test_an_instance_folder_needs_label_ids_in_classes_txt(tmp_path):
    root = _folder(tmp_path / "cs", extra=False)
    (root / "classes.txt").write_text("person\ncar\n")
    with pytest.raises(DataError, match="label id"):
        load_instance_folder(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="cityscapes-things"):
        load_instance_folder(root)


def test_the_shipped_cityscapes_things_file_reads():
    from edgeda.data.dense_files import read_class_file

    names, _, id_map = read_class_file(Path(__file__).resolve().parents[1] / "configs" / "classes" / "cityscapes-things.txt")
    assert names == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert [int(id_map[i]) for i in (24, 26, 33, 7)] == [0, 2, 7, 255]


def test_images_pair_with_the_mask_of_their_frame_one_file_or_many():
    from edgeda.data.detection_instances import _pair
    from edgeda.data.domain import LoadReport

    masks = {k: Path(k + ".png") for k in ("a/x_1_gtFine_instanceIds", "a/x_2_gtFine_instanceIds", "b/q_instanceIds")}
    images = {k: Path(k + ".png") for k in ("a/x_1_leftImg8bit_foggy_beta_0.02", "a/x_2_leftImg8bit", "b/q", "a/x_3_leftImg8bit")}
    report = LoadReport()
    got = sorted((str(i), str(m)) for i, m in _pair(images, masks, report))
    assert got == [("a/x_1_leftImg8bit_foggy_beta_0.02.png", "a/x_1_gtFine_instanceIds.png"),
                   ("a/x_2_leftImg8bit.png", "a/x_2_gtFine_instanceIds.png"), ("b/q.png", "b/q_instanceIds.png")]
    assert [(p, r.split(" (")[0]) for p, r in report.skipped] == [("a/x_3_leftImg8bit.png", "no instance mask")]
    one = _pair({"x_leftImg8bit": Path("x.png")}, {"x_gtFine_instanceIds": Path("m.png")}, LoadReport())
    assert one == [(Path("x.png"), Path("m.png"))]
