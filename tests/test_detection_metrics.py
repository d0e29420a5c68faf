"""COCO mAP of the detection task against values worked by hand, crowd regions, merging across
ranks, export parity, and the task's predict row."""
import numpy as np
import pytest
import torch

from edgeda.tasks.spec import TaskSpec
from edgeda.tasks import task_of
from edgeda.tasks.detection_metrics import (DetectionMeter, coco_results, coco_scores, compare_detections, join_packed,
                                            unpad)

A, B = [0, 0, 10, 10], [20, 20, 30, 30]
B_SHIFTED = [22, 20, 32, 30]  # 2 px right of B: intersection 80, union 120, IoU exactly 2/3


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _truth(boxes, labels, **kw):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), **kw}


def test_perfect_predictions_score_one_with_empty_images_and_absent_classes():
    truths = [_truth([A, B], [0, 1]), _truth([], []), _truth([[5, 5, 25, 15]], [0])]
    preds = [_det([A, B], [0.9, 0.8], [0, 1]), _det([], [], []), _det([[5, 5, 25, 15]], [0.7], [0])]
    m = DetectionMeter(3, ["a", "b", "c"])
    m.update(preds, truths)
    s = m.compute()
    assert s["map"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0) and s["map75"] == pytest.approx(1.0)
    assert s["per_class_ap"]["a"] == pytest.approx(1.0) and s["per_class_ap"]["c"] is None
    assert s["n_images"] == 3 and s["n_truth"] == 3


def test_one_shifted_box_scores_the_thresholds_its_iou_passes():
    # IoU 2/3 passes the thresholds 0.50, 0.55, 0.60, 0.65 of the ten: AP 1 at those, 0 at the others
    s = coco_scores([_det([B_SHIFTED], [0.9], [0])], [_truth([B], [0])], ["a"])
    assert s["map"] == pytest.approx(0.4) and s["map50"] == pytest.approx(1.0) and s["map75"] == pytest.approx(0.0)


def test_ranked_detections_against_a_precision_recall_curve_worked_by_hand():
    """Detections by score: a false positive (0.95), A exact (0.9), B shifted (0.8, IoU 2/3).
    Thresholds <= 0.65: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; made monotone it is 2/3 at every
    one of the 101 recall points: AP = 2/3. Thresholds 0.70..0.95: B's detection is a false positive,
    recall stops at 1/2 with precision 1/2: 51 of the 101 points (recall 0 .. 0.50) score 1/2."""
    preds = [_det([[50, 50, 60, 60], A, B_SHIFTED], [0.95, 0.9, 0.8], [0, 0, 0])]
    s = coco_scores(preds, [_truth([A, B], [0, 0])], ["a"])
    low, high = 2 / 3, 51 * 0.5 / 101
    assert s["map50"] == pytest.approx(low) and s["map75"] == pytest.approx(high)
    assert s["map"] == pytest.approx((4 * low + 6 * high) / 10)


def test_a_detection_on_a_crowd_region_is_neither_hit_nor_false_positive():
    crowd = [40, 40, 60, 60]
    preds = [_det([[41, 41, 59, 59], A], [0.95, 0.9], [0, 0])]
    with_crowd = coco_scores(preds, [_truth([A], [0], crowd=np.array([crowd]), crowd_labels=np.array([0]))], ["a"])
    without = coco_scores(preds, [_truth([A], [0])], ["a"])
    assert with_crowd["map"] == pytest.approx(1.0) and without["map50"] == pytest.approx(0.5)


def test_no_truth_at_all_gives_nan_not_a_crash():
    s = coco_scores([_det([A], [0.9], [0])], [_truth([], [])], ["a"])
    assert np.isnan(s["map"]) and s["per_class_ap"]["a"] is None


def test_merged_and_gathered_meters_score_like_one_meter():
    preds = [_det([A], [0.9], [0]), _det([B_SHIFTED], [0.8], [1]), _det([], [], [])]
    truths = [_truth([A], [0]), _truth([B], [1]), _truth([A], [1])]
    whole = DetectionMeter(2)
    whole.update(preds, truths)
    a, b = DetectionMeter(2), DetectionMeter(2)
    a.update(preds[:1], truths[:1])
    b.update(preds[1:], truths[1:])
    ref = whole.compute()
    assert 0 < ref["map"] < 1

    def same(s):
        return all(s[k] == pytest.approx(ref[k]) for k in ("map", "map50", "map75")) and \
            s["per_class_ap"] == pytest.approx(ref["per_class_ap"]) and s["n_images"] == 3

    gathered = DetectionMeter(2)
    # what all_reduce does with the ranks' tensors
    gathered._unpack(join_packed([a._pack().numpy(), b._pack().numpy()]))
    assert same(gathered.compute()) and len(gathered) == 3
    assert same(a.merge(b).compute())
    assert whole.all_reduce() is whole  # no process group: nothing to gather


def test_export_parity_matches_boxes_by_iou_and_reports_score_differences():
    ref = [{"boxes": np.array([A, B], float), "scores": np.array([0.9, 0.6]), "labels": np.array([0, 1])}]
    same = [{"boxes": np.array([B, [0, 0, 10, 10.02]], float), "scores": np.array([0.6, 0.90005]),
             "labels": np.array([1, 0])}]
    c = compare_detections(ref, same)
    assert c["matched"] == 2 and c["match_rate"] == 1.0 and c["max_score_diff"] == pytest.approx(5e-5)
    moved = [{"boxes": np.array([A, B_SHIFTED], float), "scores": np.array([0.9, 0.6]), "labels": np.array([0, 1])}]
    c = compare_detections(ref, moved)
    assert c["matched"] == 1 and c["unmatched_ref"] == 1 and c["unmatched_out"] == 1
    relabelled = [{"boxes": np.array([A], float), "scores": np.array([0.9]), "labels": np.array([1])}]
    assert compare_detections(ref[:1], relabelled)["matched"] == 0
    padded = {"boxes": np.array([[A, B, [0, 0, 0, 0]]], float), "scores": np.array([[0.9, 0.6, 0]]),
              "labels": np.array([[0, 1, 0]]), "count": np.array([2])}
    assert len(unpad(padded["boxes"], padded["scores"], padded["labels"], padded["count"])[0]["boxes"]) == 2
    assert task_of("detection").compare(ref, padded)["match_rate"] == 1.0


def test_task_through_the_registry(tmp_path):
    task = task_of("detection")
    assert task.headline == "map" and task.record_keys == {"map": "map", "map50": "map50"}
    spec = TaskSpec(2, ["cat", "dog"], task="detection", image_size=(20, 40))
    m = task.meter(spec)
    task.update(m, [_det([A], [0.9], [1])], [_truth([A], [1])])
    s = task.scores(m, spec)
    assert s["per_class_ap"] == {"cat": None, "dog": pytest.approx(1.0)}
    assert "mAP 100.0%" in task.format_scores(s)
    assert task.validator_rows([_det([A], [0.9], [1])], torch.Generator()) is None
    scores = torch.tensor([[[0.05, 0.1], [0.6, 0.2], [0.1, 0.9]], [[0.01, 0.02], [0.1, 0.1], [0.2, 0.1]]])
    rows = task.validator_rows(scores, torch.Generator())
    assert rows.shape == (2, 2)  # the two confident anchors of image 0; image 1 has none
    np.testing.assert_allclose(rows.exp().sum(1).numpy(), [1, 1], atol=1e-6)
    image = np.zeros((10, 20, 3), np.uint8)  # the stored image: half the input size
    row = task.prediction_row(spec, _det([[4, 2, 12, 10], A], [0.8, 0.1], [0, 1]), image, tmp_path / "out" / "im")
    assert row["n_detections"] == 2 and row["n_drawn"] == 1 and row["detections"][0]["class"] == "cat"
    assert row["detections"][0]["box"] == [2.0, 1.0, 6.0, 5.0]
    assert (tmp_path / "out" / "im.boxes.png").is_file()


def test_results_records_use_the_source_json_ids():
    recs = coco_results([_det([[2, 1, 7, 5]], [0.5], [1]), _det([], [], [])], image_ids=[17, 18], category_ids=[3, 7])
    assert recs == [{"image_id": 17, "category_id": 7, "bbox": [2.0, 1.0, 5.0, 4.0], "score": 0.5}]


def test_sample_panels_draw_truth_and_predicted_boxes(tmp_path):
    from PIL import Image

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x

        def postprocess(self, out, **kw):
            return [_det([[2, 2, 20, 20]], [0.9], [1]) for _ in out]

    spec = TaskSpec(2, ["a", "b"], task="detection", image_size=(32, 32))
    raw = np.zeros((2, 32, 32, 3), np.uint8)
    path = task_of("detection").sample_panels(spec, Fixed(), torch.zeros(2, 3, 32, 32), [_truth([A], [0])] * 2, raw,
                                              tmp_path / "p.png")
    assert np.asarray(Image.open(path)).shape[0] > 2 * 32  # a figure: headers, two rows of panels, the class key
    from edgeda.tasks.draw import boxes_row

    row = boxes_row(spec, raw[0], _det([[2, 2, 20, 20]], [0.9], [1]), _truth([A], [0]))
    assert len(row) == len(task_of("detection").panel_headers(True)) == 3
    assert row[1].any() and row[2].any() and not row[0].any()  # image | truth boxes | predicted boxes
