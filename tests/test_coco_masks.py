"""COCO instance masks (polygons, RLE) read as semantic segmentation, with the bad-data policy."""
import json

import numpy as np
import pytest
from PIL import Image

from edgeda.data import load_domain
from edgeda.errors import DataError

H, W = 24, 32


def _rle(mask, compressed=True):
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.astype(np.uint8).flatten(order="F")  # uncompressed: run lengths from a 0 run, column-major
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return {"size": [H, W], "counts": runs}


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _coco(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((H, W, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((H, W + 1, 3), np.uint8)).save(tmp_path / "wide.png")
    car, person, crowd = _box(2, 14, 2, 22), _box(4, 9, 5, 10), _box(16, 22, 20, 30)
    anns = [
        {"id": 1, "image_id": 0, "category_id": 9, "segmentation": _rle(person), "area": 25, "iscrowd": 0},
        {"id": 2, "image_id": 0, "category_id": 5, "segmentation": _rle(car), "area": 240, "iscrowd": 0},
        {"id": 3, "image_id": 0, "category_id": 9, "segmentation": _rle(crowd, compressed=False), "area": 60,
         "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 5, "segmentation": [[20, 4, 30, 4, 30, 20, 20, 20]], "area": 160,
         "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 77, "segmentation": _rle(person), "area": 25},  # unknown category
        {"id": 6, "image_id": 1, "category_id": 5, "segmentation": [[1, 2, 3, 4]], "area": 1},  # 2 points
        {"id": 7, "image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4], "area": 16},  # a box, no mask
    ]
    images = [{"id": 0, "file_name": "0.png", "width": W, "height": H}, {"id": 1, "file_name": "1.png"},
              {"id": 2, "file_name": "gone.png"}, {"id": 3, "file_name": "wide.png", "width": W, "height": H}]
    cats = [{"id": 9, "name": "person"}, {"id": 5, "name": "car"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, car, person, crowd


def test_instance_masks_are_drawn_as_classes_small_objects_on_top(tmp_path):
    path, car, person, crowd = _coco(tmp_path)
    dom = load_domain(str(path), labeled=True, task="segmentation")
    assert dom.classes == ["background", "car", "person"] and len(dom) == 2  # categories by id: 5 car, 9 person
    want = np.zeros((H, W), np.uint8)
    want[car], want[person], want[crowd] = 1, 2, 255
    np.testing.assert_array_equal(dom.sample(0).mask, want)
    m1 = dom.sample(1).mask
    assert m1[10, 25] == 1 and m1[1, 1] == 0 and set(np.unique(m1)) == {0, 1}  # the polygon
    reasons = [r for _, r in dom.report.skipped]
    assert sum("unknown category id 77" in r for r in reasons) == 1 and sum("3 points" in r for r in reasons) == 1
    assert sum("polygons" in r for r in reasons) == 1  # the box-only annotation
    assert sum("not there" in r for r in reasons) == 1 and sum("json says" in r for r in reasons) == 1
    assert dom.report.summary() == "2 images, 2 files skipped, 3 annotations skipped"
    unl = load_domain(str(path), labeled=False, task="segmentation")
    assert not unl.has_masks and len(unl) == 2 and unl.sample(0).mask is None


def test_box_only_coco_is_refused_for_segmentation_and_needs_a_task(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "0.png")
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": [{"id": 0, "file_name": "0.png"}], "categories": [{"id": 1, "name": "car"}],
                                "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5]}]}))
    with pytest.raises(DataError, match="--task detection"):
        load_domain(str(path), labeled=True, task="segmentation")
    with pytest.raises(DataError, match="--task segmentation"):
        load_domain(str(path), labeled=True)
