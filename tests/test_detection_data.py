"""Detection data: COCO, YOLO and Pascal VOC loaders with every bad-annotation kind, box transforms against
hand-computed boxes, boxes that stay on their object, rendered boxes against instance pixels."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeda.data import load_domain
from edgeda.data.detection import DetectionSample, box_mask, collate_detection, instance_boxes
from edgeda.data.detection_transforms import (DetectionDataset, crop, hflip, letterbox, random_scale_crop, resize_to,
                                              to_original)
from edgeda.errors import DataError


def _png(path, w=20, h=10, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _reasons(dom):
    return [r for _, r in dom.report.skipped]


def _count(dom, words):
    return sum(words in r for r in _reasons(dom))


def _coco(tmp_path):
    root = tmp_path / "coco"
    _png(root / "a.png")
    _png(root / "images" / "b.png")  # found in images/ beside the json
    _png(root / "c.png")  # no annotation: an image without objects
    (root / "broken.png").write_bytes(b"not a png at all")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}, {"id": 2, "file_name": "b.png"},
                   {"id": 3, "file_name": "broken.png"}, {"id": 4, "file_name": "missing.png"},
                   {"id": 5, "file_name": "c.png"}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],  # ids sorted: cat -> 0, dog -> 1
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 1, 5, 4]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [15, 5, 10, 10]},  # partly outside: clipped
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [25, 0, 3, 3]},  # fully outside
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 3]},  # degenerate
            {"id": 5, "image_id": 1, "category_id": 9, "bbox": [1, 1, 3, 3]},  # unknown class
            {"id": 6, "image_id": 99, "category_id": 3, "bbox": [1, 1, 3, 3]},  # unknown image
            {"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 2]},  # malformed
            {"id": 8, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
            {"id": 9, "image_id": 2, "category_id": 7, "bbox": [5, 5, 4, 4], "iscrowd": 0},
        ],
    }
    (root / "instances.json").write_text(json.dumps(data))
    return root


def test_coco_loader_keeps_good_boxes_and_counts_each_bad_kind(tmp_path):
    root = _coco(tmp_path)
    dom = load_domain(str(root / "instances.json"), labeled=True, task="detection")
    assert dom.classes == ["cat", "dog"] and dom.labeled and len(dom) == 3 and dom.report.loaded == 3
    assert dom.category_ids == [3, 7] and dom.image_ids == [1, 2, 5]
    a, b, c = (dom.sample(i) for i in range(3))
    np.testing.assert_array_equal(a.boxes, [[2, 1, 7, 5], [15, 5, 20, 10]])
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert a.image.shape == (10, 20, 3) and a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    # iscrowd: kept apart as an ignored region, never a training box
    np.testing.assert_array_equal(b.boxes, [[5, 5, 9, 9]])
    np.testing.assert_array_equal(b.crowd, [[0, 0, 4, 4]])
    np.testing.assert_array_equal(b.crowd_labels, [0])
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,)
    _, targets = collate_detection([b, b])  # the meter sees crowd regions; losses read boxes and labels
    assert targets[0]["crowd"].tolist() == [[0, 0, 4, 4]] and "crowd" not in a.target()
    assert _count(dom, "outside") == 1 and _count(dom, "degenerate") == 1
    assert _count(dom, "unknown category id 9") == 1 and _count(dom, "unknown image id 99") == 1
    assert _count(dom, "four numbers") == 1 and _count(dom, "unreadable image") == 1
    assert _count(dom, "is not there") == 1 and len(dom.skipped) == 7
    assert dom.report.summary() == "3 images, 2 files skipped, 5 annotations skipped"  # files and entries apart
    # the folder holding the json is the same domain
    again = load_domain(str(root), labeled=True, task="detection")
    assert len(again) == 3 and len(again.skipped) == 7
    dom.require_usable(labels="boxes", num_classes=2)
    with pytest.raises(DataError):
        dom.require_usable(labels="boxes", num_classes=3)


def test_yolo_loader_keeps_good_boxes_and_counts_each_bad_kind(tmp_path):
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("person\ncar\n")
    _png(root / "images" / "x.png")
    (root / "labels" / "x.txt").write_text("\n".join([
        "0 0.5 0.5 0.5 0.4",  # [5, 3, 15, 7]
        "1 0.95 0.5 0.2 0.2",  # [17, 4, 21, 6] -> clipped to [17, 4, 20, 6]
        "5 0.5 0.5 0.1 0.1",  # unknown class id
        "0 1.5 0.5 0.1 0.1",  # fully outside
        "0 0.5 0.5 0 0.1",  # degenerate
        "0 0.5 abc 0.1 0.1",  # not numbers
        "0 0.5 0.5 0.1",  # four values
    ]))
    _png(root / "images" / "empty.png")
    (root / "labels" / "empty.txt").write_text("")  # an image without objects
    _png(root / "images" / "nolabel.png")  # no label file: skipped, counted
    (root / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    (root / "labels" / "broken.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    dom = load_domain(str(root), labeled=True, task="detection")
    assert dom.classes == ["person", "car"] and len(dom) == 2
    names = [p.name for p in dom.paths()]
    x, e = dom.sample(names.index("x.png")), dom.sample(names.index("empty.png"))
    np.testing.assert_allclose(x.boxes, [[5, 3, 15, 7], [17, 4, 20, 6]], atol=1e-5)
    np.testing.assert_array_equal(x.labels, [0, 1])
    assert e.boxes.shape == (0, 4)
    assert _count(dom, "unknown class id 5") == 1 and _count(dom, "outside") == 1
    assert _count(dom, "degenerate") == 1 and _count(dom, "needs numbers") == 1
    assert _count(dom, "needs 5 values") == 1 and _count(dom, "no label file") == 1
    assert _count(dom, "unreadable image") == 1 and _count(dom, "no image of the same name") == 1
    assert len(dom.skipped) == 8
    assert dom.report.summary() == "2 images, 3 files skipped, 5 annotations skipped"


def _voc_xml(path, filename, objects, size=(20, 10)):
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox>{bb}</bndbox></object>"
                   if n is not None else f"<object><bndbox>{bb}</bndbox></object>" for n, d, bb in objects)
    name = f"<filename>{filename}</filename>" if filename else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>{name}<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
                    f"{objs}</annotation>")


def _bb(x1, y1, x2, y2):
    return f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"


def test_voc_loader_keeps_good_boxes_and_counts_each_bad_kind(tmp_path):
    from edgeda.data.detection_spec import looks_like_detection_data

    root = tmp_path / "voc"
    ann = root / "Annotations"
    _png(root / "JPEGImages" / "a.jpg")
    _voc_xml(ann / "a.xml", "a.jpg", [
        ("dog", 0, _bb(3, 2, 8, 6)),  # 1-based: [2, 1, 8, 6]
        ("cat", 1, _bb(1, 1, 20, 10)),  # difficult: ignored region [0, 0, 20, 10]
        ("cat", 0, _bb(15, 5, 25, 9)),  # partly outside: clipped to [14, 4, 20, 9]
        ("bird", 0, _bb(3, 2, 8, 6)),  # not in classes.txt
        (None, 0, _bb(3, 2, 8, 6)),  # no name
        ("dog", 0, "<xmin>3</xmin><ymin>x</ymin><xmax>8</xmax><ymax>6</ymax>"),  # not numbers
        ("dog", 0, _bb(8, 2, 3, 6)),  # degenerate
        ("dog", 0, _bb(30, 2, 40, 6)),  # outside
    ])
    _png(root / "JPEGImages" / "empty.png")
    _voc_xml(ann / "empty.xml", "empty.png", [])  # an image without objects
    _png(ann / "beside.png")  # LabelImg: the image beside its xml, no <filename>
    _voc_xml(ann / "beside.xml", None, [("cat", 0, _bb(2, 2, 4, 4))])
    _png(root / "JPEGImages" / "noext.png")
    _voc_xml(ann / "noext.xml", "noext", [])  # <filename> without its extension
    _voc_xml(ann / "again.xml", "a.jpg", [("dog", 0, _bb(3, 2, 8, 6))])  # a second file for a.jpg
    _voc_xml(ann / "gone.xml", "gone.jpg", [])  # image not there
    _png(root / "JPEGImages" / "small.png", w=12)
    _voc_xml(ann / "small.xml", "small.png", [])  # <size> says 20x10
    (ann / "broken.xml").write_text("<annotation><object>")
    (ann / "other.xml").write_text("<svg></svg>")
    (root / "classes.txt").write_text("cat\ndog\n")
    assert looks_like_detection_data(str(root))
    dom = load_domain(str(root), labeled=True, task="detection")
    assert dom.classes == ["cat", "dog"] and len(dom) == 4
    names = [p.name for p in dom.paths()]
    a = dom.sample(names.index("a.jpg"))
    np.testing.assert_allclose(a.boxes, [[2, 1, 8, 6], [14, 4, 20, 9]])
    np.testing.assert_array_equal(a.labels, [1, 0])
    np.testing.assert_allclose(a.crowd, [[0, 0, 20, 10]])
    np.testing.assert_array_equal(a.crowd_labels, [0])
    assert dom.sample(names.index("empty.png")).boxes.shape == (0, 4)
    np.testing.assert_allclose(dom.sample(names.index("beside.png")).boxes, [[1, 1, 4, 4]])
    assert _count(dom, "not in classes.txt") == 1 and _count(dom, "no <name>") == 1
    assert _count(dom, "needs numbers") == 1 and _count(dom, "degenerate") == 1 and _count(dom, "outside") == 1
    assert _count(dom, "annotated already") == 1 and _count(dom, "is not there") == 1
    assert _count(dom, "the xml says 20x10") == 1 and _count(dom, "not readable XML") == 1
    assert _count(dom, "not a VOC annotation") == 1
    assert dom.report.summary() == "4 images, 5 files skipped, 5 annotations skipped"
    # without classes.txt: the names seen, sorted; unlabeled: the images of JPEGImages/
    (root / "classes.txt").unlink()
    again = load_domain(str(root), labeled=True, task="detection")
    assert again.classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(again.sample(names.index("a.jpg")).labels, [2, 1, 0])
    assert len(load_domain(str(root), labeled=False, task="detection")) == 4


def test_kitti_loader_keeps_good_boxes_counts_each_bad_kind_and_ignores_dontcare(tmp_path):
    from edgeda.data.detection_spec import looks_like_detection_data

    root = tmp_path / "kitti"
    lab = root / "label_2"
    lab.mkdir(parents=True)
    tail = "0.00 0 -1.58 {} 1.5 1.6 3.9 -3.1 1.7 13.4 1.5"
    for name in ("000000", "000001", "000002", "000003"):
        _png(root / "image_2" / f"{name}.png")
    (lab / "000000.txt").write_text("\n".join([
        "Car " + tail.format("2.5 1 10.5 8"),
        "Pedestrian " + tail.format("12 0 15 9") + " 0.9",  # 16 fields: with a score
        "DontCare -1 -1 -10 0 0 4 4 -1 -1 -1 -1000 -1000 -1000 -10",
        "Car " + tail.format("25 1 30 8"),  # outside the 20x10 image
        "Van " + tail.format("5 5 5 9"),  # degenerate
        "Car 0 0",  # too few fields
        "Car " + tail.format("a b c d"),  # not numbers
    ]) + "\n")
    (lab / "000001.txt").write_text("")  # an image without objects
    (lab / "000009.txt").write_text("Car " + tail.format("1 1 5 5") + "\n")  # no image
    (lab / "000003.txt").write_bytes(b"\xff\xfe\x00bad")  # not text
    assert looks_like_detection_data(str(root))
    dom = load_domain(str(root), labeled=True, task="detection")
    assert dom.classes == ["Car", "Pedestrian"] and len(dom) == 2
    s = dom.sample([p.stem for p in dom.paths()].index("000000"))
    np.testing.assert_allclose(s.boxes, [[2.5, 1, 10.5, 8], [12, 0, 15, 9]])
    assert s.labels.tolist() == [0, 1]
    # DontCare: an ignored region for every class, as KITTI's evaluation ignores detections there
    np.testing.assert_allclose(s.crowd, [[0, 0, 4, 4]] * 2)
    assert s.crowd_labels.tolist() == [0, 1]
    reasons = " | ".join(r for _, r in dom.report.skipped)
    for part in ("no label file", "outside", "degenerate", "3 fields", "not four numbers", "no image of the same name",
                 "not readable text"):
        assert part in reasons, part
    # classes.txt fixes the classes (Car only, the car pairs): other types are skipped and counted
    (root / "classes.txt").write_text("Car\n")
    car = load_domain(str(root), labeled=True, task="detection")
    assert car.classes == ["Car"] and "type 'Pedestrian' is not in classes.txt" in " ".join(
        r for _, r in car.report.skipped)
    assert len(load_domain(str(root), labeled=False, task="detection")) == 4


def test_box_data_without_task_is_read_as_detection_data_not_class_folders(tmp_path):
    from edgeda.config import make_config
    from edgeda.training.domains import load_domains

    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    for name in ("x", "y"):
        _png(root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.5 0.4\n")
    cfg = make_config(None, {"source": str(root), "target": str(root / "images"), "out": str(tmp_path / "run")})
    d = load_domains(cfg, True)
    assert d.task == "detection" == cfg.task and d.source.classes == ["0"] and d.source.has_boxes
    assert any("training a detector (--task detection)" in line for line in d.skip_lines())


def test_any_image_folder_is_unlabeled_target_data(tmp_path):
    _png(tmp_path / "imgs" / "a" / "1.png")
    _png(tmp_path / "imgs" / "2.jpg")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"")
    dom = load_domain(str(tmp_path / "imgs"), labeled=False, task="detection")
    assert len(dom) == 2 and not dom.labeled and len(dom.skipped) == 1
    dom.require_usable()
    with pytest.raises(DataError, match="no box annotations"):
        dom.require_usable(labels="boxes")
    assert dom.sample(0).boxes.shape == (0, 4)
    _png(tmp_path / "seg" / "images" / "a.png")
    _png(tmp_path / "seg" / "masks" / "a.png")  # a segmentation folder: its masks are no target images
    assert len(load_domain(str(tmp_path / "seg"), labeled=False, task="detection")) == 1


def _sample(boxes, labels=None, h=10, w=20):
    img = np.zeros((h, w, 3), np.uint8)
    return DetectionSample(img, np.asarray(boxes, np.float32), np.arange(len(boxes)) if labels is None else labels)


def test_box_transforms_against_hand_computed_boxes():
    s = _sample([[2, 1, 7, 5], [15, 0, 19, 8], [1, 1, 4, 2]])
    np.testing.assert_array_equal(hflip(s).boxes, [[13, 1, 18, 5], [1, 0, 5, 8], [16, 1, 19, 2]])
    c = crop(s, top=2, left=3, h=6, w=10)  # window x 3..13, y 2..8
    np.testing.assert_array_equal(c.boxes, [[0, 0, 4, 3]])  # the 2nd is left of the window's edge, the 3rd empty
    np.testing.assert_array_equal(c.labels, [0])
    assert c.image.shape == (6, 10, 3)
    r, info = resize_to(s, (20, 40))
    np.testing.assert_array_equal(r.boxes, np.asarray(s.boxes) * 2)
    lb, info = letterbox(_sample([[2, 1, 7, 5]]), (32, 32))  # k = 1.6: 16 x 32, 8 rows of padding above
    assert lb.image.shape == (32, 32, 3) and info.pad == (8, 0) and info.scale == (1.6, 1.6)
    np.testing.assert_allclose(lb.boxes, [[3.2, 9.6, 11.2, 16.0]], atol=1e-5)
    np.testing.assert_allclose(to_original(lb.boxes, info), [[2, 1, 7, 5]], atol=1e-5)
    # a crop that leaves a sliver below the minimum side drops it
    thin = crop(_sample([[0, 0, 10, 10]]), top=0, left=9, h=10, w=10, min_side=2)
    assert thin.boxes.shape == (0, 4) and thin.labels.shape == (0,)


def test_random_transforms_keep_boxes_tight_on_the_object():
    img = np.zeros((60, 80, 3), np.uint8)
    img[20:40, 30:55] = 255
    s = DetectionSample(img, [[30, 20, 55, 40]], [0])
    kept = 0
    for seed in range(25):
        out = random_scale_crop(s, (32, 48), np.random.default_rng(seed), scale=(0.4, 1.0))
        white = out.image[:, :, 0] > 127
        if len(out.boxes) == 0:
            assert white.sum() < 8  # the object was cropped away (or to a sliver)
            continue
        kept += 1
        rows, cols = np.nonzero(white)
        tight = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
        np.testing.assert_allclose(out.boxes[0], tight, atol=1.0)
    assert kept >= 15


def test_dataset_and_collate_normalise_and_keep_empty_targets():
    from edgeda.data.detection import ArrayDetectionDomain

    img = np.zeros((2, 24, 24, 3), np.uint8)
    img[0, 4:12, 4:12] = 255
    dom = ArrayDetectionDomain("toy", img, [np.array([[4, 4, 12, 12]]), np.zeros((0, 4))],
                               [np.array([0]), np.zeros(0)], classes=["sq"])
    ds = DetectionDataset(dom, (12, 12), 3, train=False)
    x, targets = collate_detection([ds[0], ds[1]], mean=(0.5,) * 3, std=(0.5,) * 3)
    assert x.shape == (2, 3, 12, 12) and x.dtype.is_floating_point
    assert float(x[0, :, 3, 3].min()) == pytest.approx(1.0) and float(x[1].max()) == pytest.approx(-1.0)
    np.testing.assert_allclose(targets[0]["boxes"].numpy(), [[2, 2, 6, 6]])
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].dtype == torch.int64
    assert ds[0]["resize"].scale == (0.5, 0.5)
    train = DetectionDataset(dom, (12, 12), 1, train=True, seed=3)
    a, b = train[5], train[5]
    assert a["sample"].image.shape == (12, 12, 1)
    np.testing.assert_array_equal(a["sample"].boxes, b["sample"].boxes)  # a function of (seed, k)


def test_instance_boxes_drop_slivers_and_cover_pixels():
    inst = np.zeros((10, 12), np.int64)
    inst[2:5, 3:8] = 4
    inst[6, 0:6] = 9  # one row: a sliver
    inst[8:10, 10:12] = 2  # 4 pixels, 2 x 2: kept
    ids, boxes = instance_boxes(inst)
    np.testing.assert_array_equal(ids, [2, 4])
    np.testing.assert_array_equal(boxes, [[10, 8, 12, 10], [3, 2, 8, 5]])


def test_rendered_scene_boxes_cover_each_visible_instance_and_leave_images_unchanged():
    from edgeda.data import synscenes as ss
    from edgeda.data.detection import MIN_BOX_SIDE, MIN_VISIBLE_PIXELS

    plain = ss.render(3, 11, (48, 96), "photo")
    images, masks, depth, inst = ss.render(3, 11, (48, 96), "photo", instances=True)
    for a, b in zip(plain, (images, masks, depth)):
        assert np.array_equal(a, b)  # boxes are extra outputs of the same geometry
    things = set(ss.THING_CLASSES)
    seen = 0
    for m, im in zip(masks, inst):
        assert set(np.unique(m[im > 0]).tolist()) <= things and not np.isin(m[im == 0], list(things)).any()
        boxes, classes = ss.instance_boxes(m, im)
        for k in np.unique(im[im > 0]):
            rows, cols = np.nonzero(im == k)
            tight = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            hit = [j for j, b in enumerate(boxes) if list(b) == tight]
            big = len(rows) >= MIN_VISIBLE_PIXELS and min(tight[2] - tight[0], tight[3] - tight[1]) >= MIN_BOX_SIDE
            assert len(hit) == (1 if big else 0)
            if hit:
                assert classes[hit[0]] == m[rows[0], cols[0]]
                seen += 1
        assert len(boxes) <= len(np.unique(im[im > 0]))
    assert seen >= 3


def test_builtin_detection_domains_share_the_segmentation_images():
    from edgeda.data.digitscenes import digit_boxes

    seg = load_domain("digitscenes:val", labeled=True, size=(64, 64), n=4)
    det = load_domain("digitscenes:val", labeled=True, size=(64, 64), n=4, task="detection")
    assert det.classes == [str(d) for d in range(10)]
    for i in range(4):
        s, m = det.sample(i), seg.sample(i).mask
        assert np.array_equal(s.image, seg.sample(i).image)
        assert set(s.labels.tolist()) == set((np.unique(m[m > 0]) - 1).tolist())
        for b, lab in zip(s.boxes, s.labels):
            rows, cols = np.nonzero(m == lab + 1)
            assert list(b) == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        np.testing.assert_array_equal(digit_boxes(m)[0], s.boxes)
    hw = load_domain("handwritten-scenes:test", labeled=True, size=(64, 64), n=2, task="detection")
    assert len(hw) == 2 and all(len(hw.sample(i).boxes) >= 1 for i in range(2))
    street = load_domain("synscenes:photo-test", labeled=True, size=(48, 96), n=2, task="detection")
    assert street.classes == ["person", "rider", "car", "truck", "bus", "bicycle"]
    target = load_domain("synscenes:fog", labeled=False, size=(48, 96), n=2, task="detection")
    assert not target.labeled and target.sample(0).boxes.shape == (0, 4)


def test_a_coco_file_without_categories_or_with_a_wrong_size_is_reported(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 30,
                                                             "height": 10}]}))
    dom = load_domain(str(tmp_path / "c.json"), labeled=True, task="detection")
    assert len(dom) == 0 and _count(dom, "the json says 30x10") == 1
    with pytest.raises(DataError, match="no usable images"):
        dom.require_usable(labels="boxes")
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []}))
    with pytest.raises(DataError, match="names no classes"):
        load_domain(str(tmp_path / "c.json"), labeled=True, task="detection").require_usable(labels="boxes")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable JSON"):
        load_domain(str(tmp_path / "c.json"), labeled=True, task="detection")


def test_box_mask_marks_the_pixels_whose_centres_lie_in_a_box():
    m = box_mask(np.array([[1, 0, 3, 2], [2.6, 3.4, 4.4, 5]]), 6, 5)
    expected = np.zeros((6, 5), np.uint8)
    expected[0:2, 1:3] = 255
    expected[3:5, 3:4] = 255  # column centre 3.5 in [2.6, 4.4); row centres 3.5 and 4.5 in [3.4, 5)
    np.testing.assert_array_equal(m, expected)
    rows, cols = np.nonzero(box_mask(np.array([[3, 2, 7, 5]]), 10, 10))  # integer boxes: exactly their pixels
    assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == [3, 2, 7, 5]


def test_data_preview_draws_the_boxes_of_coco_yolo_and_builtin_detection_data(tmp_path):
    """`edgeda data preview` recognises COCO and YOLO data by its form (and any detection spec with --task
    detection) and draws each box in its class colour; the reply names the classes and skipped files."""
    from click.testing import CliRunner

    from edgeda.cli import main
    from conftest import box_scenes_coco

    coco = box_scenes_coco(tmp_path / "coco", 4, 0, 64)
    yolo = tmp_path / "yolo"
    (yolo / "labels").mkdir(parents=True)
    (yolo / "classes.txt").write_text("person\ncar\n")
    _png(yolo / "images" / "a.png", 40, 40, 0)
    (yolo / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")  # a car at [10, 10, 30, 30]
    _png(yolo / "images" / "nolabel.png")
    for spec, extra, classes in ((str(coco), [], "a, b"), (str(coco).rsplit("/", 1)[0], [], "a, b"),
                                 (str(yolo), [], "person, car"), ("digitscenes:val", ["--task", "detection"], "0, 1")):
        out = tmp_path / f"p{len(list(tmp_path.glob('p*.png')))}.png"
        res = CliRunner().invoke(main, ["data", "preview", spec, "--out", str(out), "--n", "4", *extra])
        assert res.exit_code == 0, res.output
        assert f"classes: {classes}" in res.output and out.stat().st_size > 0
    grid = np.asarray(Image.open(out.with_name("p2.png")).convert("RGB"))  # the YOLO preview: one black tile
    tile = grid[:40, :40]
    assert (tile.reshape(-1, 3).max(1) > 0).sum() > 40  # the box outline (and its label) drawn on the black image
    assert "no label file" in CliRunner().invoke(main, ["data", "preview", str(yolo), "--out",
                                                        str(tmp_path / "q.png")]).output
