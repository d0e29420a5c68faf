"""Label-free selection among detectors: box agreement, the box ``majority`` and ``--method auto --task detection``."""
import numpy as np
import pytest

from edgeda.training.validators import VALIDATORS, EvalContext, box_agreement, score_candidates

CLASSES = ["a", "b"]


def _dets(boxes, labels, scores):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, int), "scores": np.asarray(scores, float)}


# two images: image 0 has an "a" and a "b", image 1 one "a"
TRUTH = [_dets([[10, 10, 30, 30], [40, 40, 60, 60]], [0, 1], [0.9, 0.8]), _dets([[5, 5, 25, 25]], [0], [0.7])]


def _shifted(dets, dx):
    return [{**d, "boxes": d["boxes"] + np.array([dx, 0, dx, 0])} for d in dets]


def test_box_agreement_of_worked_cases():
    assert box_agreement(TRUTH, TRUTH, CLASSES) == pytest.approx(1.0)
    # moved by a whole box width: no box matches at IoU 0.5
    assert box_agreement(_shifted(TRUTH, 20), TRUTH, CLASSES) == pytest.approx(0.0)
    # the same boxes with the wrong class: nothing matches
    swapped = [{**d, "labels": 1 - d["labels"]} for d in TRUTH]
    assert box_agreement(swapped, TRUTH, CLASSES) == pytest.approx(0.0)
    # a truth that is not sure of a box (score < 0.5) does not count: only image 0's "a" and image 1's "a" remain
    unsure = [_dets([[10, 10, 30, 30], [40, 40, 60, 60]], [0, 1], [0.9, 0.3]), TRUTH[1]]
    only_a = [_dets([[10, 10, 30, 30]], [0], [0.9]), TRUTH[1]]
    assert box_agreement(only_a, unsure, CLASSES) == pytest.approx(1.0)
    # finding half of the "a" boxes (ranked first) and all "b": AP(a) = 0.5 by the 101-point rule, AP(b) = 1
    half = [TRUTH[0], _dets([], [], [])]
    assert box_agreement(half, TRUTH, CLASSES) == pytest.approx((0.5 + 1.0) / 2, abs=0.01)
    with pytest.raises(ValueError, match="no box"):
        box_agreement(TRUTH, [_dets([[1, 1, 5, 5]], [0], [0.2]), _dets([], [], [])], CLASSES)
    with pytest.raises(ValueError, match="images"):
        box_agreement(TRUTH, TRUTH[:1], CLASSES)


def test_box_majority_and_agreement_rank_the_consensus_above_a_lost_detector():
    good = [_shifted(TRUTH, 1), _shifted(TRUTH, -1), TRUTH]  # three detectors that agree to a pixel
    lost = _shifted(TRUTH, 25)  # finds its boxes elsewhere
    contexts = {f"good{i}": EvalContext(0.5, target_detections=d, reference_detections=TRUTH, classes=CLASSES)
                for i, d in enumerate(good)}
    contexts["lost"] = EvalContext(0.5, target_detections=lost, reference_detections=TRUTH, classes=CLASSES)
    scores = score_candidates(contexts)
    for name in ("good0", "good1", "good2"):
        assert scores[name]["majority"] > scores["lost"]["majority"] + 0.5
        assert scores[name]["agreement"] > scores["lost"]["agreement"] + 0.5
    assert {"entropy", "info_max", "aug_consistency"}.isdisjoint(scores["lost"])  # no class rows: left out
    alone = EvalContext(0.5, target_detections=TRUTH, classes=CLASSES, peer_detections={"x": TRUTH})
    with pytest.raises(ValueError, match="at least 2"):
        VALIDATORS.get("majority")(alone)
    with pytest.raises(ValueError, match="source-only detector"):
        VALIDATORS.get("agreement")(alone)


def test_method_auto_detection_smoke(tmp_path, one_torch_thread):
    """``--method auto`` on a detection task: the task's candidates from the source-only bundle, ranked by
    comparing boxes, the pick shipped with every score."""
    from conftest import box_scenes_coco

    from edgeda.auto import DENSE_REFERENCE, train_auto
    from edgeda.bundle import load_bundle
    from edgeda.config import make_config
    from edgeda.tasks import task_of

    src, tgt = box_scenes_coco(tmp_path / "src", 12, 0, 64), box_scenes_coco(tmp_path / "tgt", 8, 1, 64, shift=60)
    cfg = make_config(None, dict(method="source_only", task="detection", source=src, target=tgt, target_test=tgt,
                                 image_size=[64, 64], backbone="ssdlite", backbone_kwargs={"width": 0.25}, batch_size=4,
                                 iters=2, eval_every=2, checkpoint_every=2, device="cpu", workers=0, seed=0,
                                 out=str(tmp_path / "run")))
    logs = []
    res = train_auto(cfg, log=logs.append)
    want = {DENSE_REFERENCE, *(f"{m}@init" for m in task_of("detection").auto_methods)}
    assert set(res["candidates"]) == want and not any("+" in n for n in res["candidates"])  # no source-free candidate
    for c in res["candidates"].values():
        assert "source_val" in c["scores"]
        assert 0.0 <= c["target_test_scores"]["map50"] <= 1.0  # reported only
    assert res["selector"] == task_of("detection").auto_selector == "source_val"  # the detection suite's pick
    assert load_bundle(res["bundle"]).manifest["metrics"]["auto"]["chosen"] == res["chosen"]
    if res["chosen"] != DENSE_REFERENCE:  # the transfer warning is calibrated on class outputs: silent for detectors
        assert res["transfer_warning"] is None
    else:
        assert "no candidate beats" in res["transfer_warning"]
