"""A detection bundle trained on a COCO json keeps that json's category ids (non-contiguous, as
COCO's own 1..90 with gaps), and ``edgeda predict --coco`` writes them, so pycocotools scores the
results file against the user's annotation file; sources without ids fall back to class index + 1."""
from __future__ import annotations

import json

import numpy as np
import pytest

S = 64
IDS = (3, 7, 12)  # the json's category ids; classes 0, 1, 2 in id order


def _coco_scenes(folder, n=6, seed=0):
    """``n`` images with one to three objects (square, bar, tall bar) whose categories have ids 3, 7, 12;
    image ids are the images' positions in file-name order (as predict numbers a folder)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images, anns = [], []
    sizes = [(S // 4, S // 4), (S * 3 // 8, S // 8), (S // 8, S * 3 // 8)]
    colours = [(230, 200, 40), (40, 200, 230), (200, 40, 200)]
    for i in range(n):
        img = np.full((S, S, 3), 20, np.uint8)
        for j in range(1 + i % 3):
            cls = (i + j) % 3
            w, h = sizes[cls]
            x, y = int(rng.integers(0, S - w)), int(rng.integers(0, S - h))
            img[y:y + h, x:x + w] = colours[cls]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": IDS[cls], "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png", "width": S, "height": S})
    cats = [{"id": c, "name": name} for c, name in zip(IDS, ("square", "bar", "pillar"))]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_predict_writes_the_coco_sources_own_category_ids(tmp_path):
    import edgeda
    from edgeda.bundle import Bundle
    from edgeda.export.prediction import predict

    ann = _coco_scenes(tmp_path / "coco")
    res = edgeda.train(method="source_only", task="detection", source=str(ann), image_size=[S, S], backbone="ssdlite",
                       backbone_kwargs={"width": 0.25}, batch_size=2, iters=3, eval_every=3, checkpoint_every=3,
                       device="cpu", workers=0, out=str(tmp_path / "run"), progress=False, log=None)
    spec = Bundle(res.bundle).task
    assert spec.classes == ["square", "bar", "pillar"] and spec.category_ids == list(IDS)
    assert Bundle(res.bundle).manifest["task"]["category_ids"] == list(IDS)

    out = predict(res.bundle, tmp_path / "coco", backend="torch", coco_out=tmp_path / "results.json",
                  out_dir=tmp_path / "drawn")
    results = json.loads((tmp_path / "results.json").read_text())
    assert out["coco_n"] == len(results) > 0
    assert {r["category_id"] for r in results} <= set(IDS)
    assert [r["category_id"] for r in results] == [IDS[d["label"]] for row in out["predictions"] for d in row["detections"]]

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(ann))
    dt = gt.loadRes(str(tmp_path / "results.json"))  # refuses ids the annotation file does not know
    assert set(dt.getCatIds()) <= set(gt.getCatIds()) and len(dt.getAnnIds()) == len(results)
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    assert ev.eval["precision"].shape[2] == len(IDS)


def test_results_fall_back_to_class_index_plus_one_without_ids():
    from edgeda.export.prediction import coco_results
    from edgeda.tasks.spec import TaskSpec

    rows = [{"path": "a.png", "detections": [{"box": [1, 2, 5, 6], "score": 0.9, "label": 0},
                                             {"box": [0, 0, 3, 3], "score": 0.4, "label": 2}]}]
    assert [r["category_id"] for r in coco_results(rows)] == [1, 3]
    assert [r["category_id"] for r in coco_results(rows, [3, 7, 12])] == [3, 12]
    assert [r["bbox"] for r in coco_results(rows)][0] == [1, 2, 4, 4]
    # the spec keeps the ids only where there are some, one per class
    spec = TaskSpec(num_classes=3, classes=["a", "b", "c"], task="detection", category_ids=[3, 7, 12])
    assert TaskSpec.from_dict(spec.to_dict()).category_ids == [3, 7, 12]
    assert "category_ids" not in TaskSpec(num_classes=2, classes=["a", "b"], task="detection").to_dict()
    with pytest.raises(ValueError, match="category_ids"):
        TaskSpec(num_classes=3, classes=["a", "b", "c"], task="detection", category_ids=[3, 7])


def test_a_yolo_source_records_no_ids(tmp_path):
    from edgeda.data.spec import load_domain
    from edgeda.tasks import task_of
    from PIL import Image

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((S, S, 3), np.uint8)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (root / "classes.txt").write_text("x\ny\n")
    dom = load_domain(str(root), labeled=True, task="detection")
    spec = task_of("detection").make_spec(dom, image_size=(S, S), channels=3)
    assert spec.category_ids is None and spec.classes == ["x", "y"]


def test_coco_images_number_the_results_by_the_annotation_files_ids(tmp_path):
    from edgeda.errors import DataError
    from edgeda.export.prediction import coco_image_ids, coco_results

    root = tmp_path / "frames"
    (root / "a").mkdir(parents=True)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 501, "file_name": "a/x.png"}, {"id": 77, "file_name": "other/y.png"},
                                          {"id": 9, "file_name": "z.png"}, {"id": 10, "file_name": "b/z.png"}]}))
    files = [root / "a" / "x.png", root / "y.png", root / "z.png", root / "q.png"]
    ids = coco_image_ids(ann, files, root)
    # by path under the input folder; by file name when that name is listed once; unlisted -> None
    assert ids == [501, 77, 9, None]
    rows = [{"path": str(f), "detections": [{"box": [1.0, 2.0, 5.0, 8.0], "label": 0, "score": 0.9}]} for f in files]
    res = coco_results(rows, [3], ids)
    assert [r["image_id"] for r in res] == [501, 77, 9]
    assert res[0]["bbox"] == [1.0, 2.0, 4.0, 6.0] and res[0]["category_id"] == 3
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="--coco-images"):
        coco_image_ids(tmp_path / "bad.json", files, root)


def test_predict_writes_a_voc_folder_that_loads_back_as_labelled_data(tmp_path):
    import edgeda
    from edgeda.data import load_domain
    from edgeda.export.prediction import predict

    ann = _coco_scenes(tmp_path / "coco", n=4)
    res = edgeda.train(method="source_only", task="detection", source=str(ann), image_size=[S, S], backbone="ssdlite",
                       backbone_kwargs={"width": 0.25}, batch_size=2, iters=2, eval_every=2, checkpoint_every=2,
                       device="cpu", workers=0, out=str(tmp_path / "run"), progress=False, log=None)
    out = predict(res.bundle, tmp_path / "coco", backend="torch", voc_out=tmp_path / "voc", min_score=0.05,
                  out_dir=tmp_path / "drawn")
    kept = [[d for d in r["detections"] if d["score"] >= 0.05] for r in out["predictions"]]
    assert out["voc_objects"] == sum(map(len, kept)) > 0
    dom = load_domain(str(tmp_path / "voc"), labeled=True, task="detection")  # images found by their <path>
    assert dom.classes == ["square", "bar", "pillar"] and len(dom) == 4 and not dom.report.skipped
    for i, dets in enumerate(kept):
        s = dom.sample(i)
        want = np.array([[round(v) for v in d["box"]] for d in dets], np.float32).reshape(-1, 4)
        want = np.clip(want, 0, S)
        np.testing.assert_array_equal(s.boxes, want)
        assert s.labels.tolist() == [d["label"] for d in dets]
