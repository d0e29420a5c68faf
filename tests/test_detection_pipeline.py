"""Detection through the trainer, eval, predict and export, and the detection adaptation methods.

Tiny COCO folders of bright squares (class "a") and bars (class "b") on a dark background keep
each run to seconds on a CPU."""
import json

import numpy as np
import pytest
import torch

import edgeda
from edgeda.bundle import Bundle
from conftest import box_scenes_coco

S = 64
MODELS = {"ssdlite": {"width": 0.25}, "fcos": {"backbone": "resnet18", "width": 8, "fpn_channels": 64, "num_convs": 1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    return {"source": box_scenes_coco(tmp / "src", 12, 0, S), "target": box_scenes_coco(tmp / "tgt", 8, 1, S, shift=60)}


def _train(tmp_path, data, method="source_only", arch="ssdlite", iters=2, **kw):
    return edgeda.train(method=method, task="detection", source=data["source"], target=data["target"],
                        target_test=data["target"], image_size=[S, S], backbone=arch, backbone_kwargs=MODELS[arch],
                        batch_size=4, iters=iters, eval_every=iters, checkpoint_every=iters, device="cpu", workers=0,
                        out=str(tmp_path / "run"), progress=False, log=None, **kw)


@pytest.mark.parametrize("arch", list(MODELS))
def test_detector_trains_evaluates_predicts_and_exports(tmp_path, data, arch):
    res = _train(tmp_path, data, arch=arch)
    b = Bundle(res.bundle)
    assert b.task.task == "detection" and b.task.classes == ["a", "b"]
    assert 0.0 <= res.metrics["target_test_map"] <= 1.0 and "map50" in res.metrics["target_test_scores"]
    fit = b.manifest["training"]["source_fit"]  # whether the detector's assignment reaches the source's boxes
    assert fit["arch"] == arch and fit["image_size"] == [S, S] and 0.0 <= fit["assigned"] <= 1.0 and fit["boxes"] > 0
    assert res.metrics["source_fit"] == fit

    from edgeda.bundle_eval import evaluate_bundle

    m = evaluate_bundle(res.bundle, data["target"], samples_png=tmp_path / "s.png", device="cpu")
    assert set(m["per_class_ap"]) == {"a", "b"} and (tmp_path / "s.png").is_file()
    assert m["map"] == pytest.approx(res.metrics["target_test_map"], abs=1e-9)  # the same weights, the same split

    from edgeda.export.prediction import predict

    frames = data["target"].rsplit("/", 1)[0]
    out = predict(res.bundle, frames, backend="torch", out=tmp_path / "p.csv", coco_out=tmp_path / "p.json")
    assert out["n"] == 8 and (tmp_path / "p.csv").read_text().startswith("path,")
    coco = json.loads((tmp_path / "p.json").read_text())
    assert isinstance(coco, list) and all({"image_id", "category_id", "bbox", "score"} <= set(r) for r in coco)
    assert all(r["category_id"] in (1, 2) for r in coco)  # the bundle's class ids back as COCO category ids
    drawn = [r["boxes_png"] for r in out["predictions"]]
    assert all(__import__("pathlib").Path(p).is_file() for p in drawn)

    from edgeda.export.api import export_bundle

    rec = export_bundle(res.bundle, tmp_path / "exported.edgeda", data=data["target"], log=None)
    e = Bundle(rec["bundle"])
    assert "onnx/model.fp32.onnx" in e.manifest["files"]
    parity = e.manifest["export"]["deployables"]["model"]["parity_fp32"]
    assert parity["real"]["images"] == 8 and parity["real"]["matched_fraction"] == 1.0
    fp32 = e.manifest["export"]["precisions"]["fp32"]
    assert fp32["target_map"] == pytest.approx(fp32["eager_map"], abs=1e-3)  # NMS in the graph scores as PyTorch's


def test_detection_runs_refuse_a_source_without_boxes(tmp_path, data):
    from PIL import Image

    folder = tmp_path / "plain"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((S, S, 3), np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(edgeda.errors.EdgedaError, match="box"):
        edgeda.train(method="source_only", task="detection", source=str(folder), iters=1, device="cpu",
                     out=str(tmp_path / "r"), progress=False, log=None)


# -- methods -----------------------------------------------------------------------------------
def _method(name, arch="ssdlite", **options):
    from edgeda.methods import METHODS
    from edgeda.tasks.spec import TaskSpec

    spec = TaskSpec(2, ["a", "b"], task="detection", image_size=(S, S))
    return METHODS.get(name)(spec, backbone=arch, backbone_kwargs=MODELS[arch], options=options)


def _batch(seed, labeled=True):
    from edgeda.methods.base import Batch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, S, S, generator=g)
    y = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return Batch(x, y if labeled else None)


@pytest.mark.parametrize("arch", list(MODELS))
def test_mean_teacher_step_trains_the_student_and_moves_the_teacher(arch):
    torch.manual_seed(0)
    m = _method("mean_teacher", arch, burn_in=0.0, threshold=0.0, alpha=0.5)
    m.train()
    m.progress = 0.5
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert np.isfinite(out["loss/src"]) and np.isfinite(out["loss/unsup"]) and out["pseudo/boxes_per_image"] > 0
    first = {k: v.clone() for k, v in m.mean_teacher.teacher.state_dict().items()}
    m.step(_batch(2), _batch(3, labeled=False))
    moved = [k for k, v in m.mean_teacher.teacher.state_dict().items() if v.is_floating_point() and not torch.equal(v, first[k])]
    assert moved  # the EMA teacher follows the student
    student = m.model.state_dict()
    assert any(not torch.equal(student[k], v) for k, v in m.mean_teacher.teacher.state_dict().items()
               if v.is_floating_point())  # ... without being a copy of it


def test_mean_teacher_burn_in_uses_only_the_source_loss():
    m = _method("mean_teacher", burn_in=0.5)
    m.train()
    m.progress = 0.1
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert set(out) == {"loss/src"} and m.mean_teacher.updates == 0


def test_mean_teacher_started_from_a_bundle_has_no_burn_in(tmp_path, data):
    res = _train(tmp_path, data)  # a trained detector: the burn-in stage --init stands for
    m = _method("mean_teacher", burn_in=0.5, threshold=0.0, alpha=0.5)
    m.load_init(str(res.bundle))
    m.train()
    m.progress = 0.1
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert "loss/unsup" in out and m.mean_teacher.updates == 1


def test_pseudo_boxes_keep_only_detections_above_the_threshold():
    from edgeda.methods.mean_teacher import pseudo_boxes

    m = _method("mean_teacher")
    x = _batch(0).x
    low = pseudo_boxes(m.model, x, 0.0)
    assert sum(len(p["scores"]) for p in low) > 0
    cut = float(torch.cat([p["scores"] for p in low]).median())
    high = pseudo_boxes(m.model, x, cut)
    kept = torch.cat([p["scores"] for p in high])
    assert len(kept) < sum(len(p["scores"]) for p in low) and bool((kept >= cut).all())
    assert all(set(p) == {"boxes", "labels", "scores"} and p["boxes"].shape[1] == 4 for p in high)


def _dets(scores, labels):
    n = len(scores)
    return {"boxes": torch.arange(4 * n, dtype=torch.float32).reshape(n, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.long)}


def test_rate_matched_thresholds_keep_the_source_boxes_per_image():
    from edgeda.methods.mean_teacher import RateMatchedThresholds

    r = RateMatchedThresholds(3, floor=0.5, ceiling=0.8)
    assert torch.equal(r.thresholds(), torch.full((3,), 0.8))  # nothing seen yet: the fixed threshold
    r.observe_source([{"labels": torch.tensor([0, 0, 1])}, {"labels": torch.tensor([0])}])  # 1.5, 0.5, 0 per image
    kept = r.select([_dets([0.9, 0.7, 0.6, 0.95], [0, 0, 0, 1]), _dets([0.55, 0.52, 0.3], [0, 1, 1])])
    # class 0: 3 wanted over 2 images -> the 3rd best of (0.9, 0.7, 0.6, 0.55); class 1: 1 wanted -> 0.95,
    # capped at 0.8; class 2: none in the source -> the cap
    assert torch.allclose(r.thresholds(), torch.tensor([0.6, 0.8, 0.8]))
    assert kept[0]["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.95]) and len(kept[1]["scores"]) == 0
    assert all(set(k) == {"boxes", "scores", "labels"} and k["boxes"].shape == (len(k["scores"]), 4) for k in kept)
    r.observe_source([{"labels": torch.tensor([0, 0, 0, 0, 0, 0])}] * 2)  # 14 / 4 = 3.5 per image: 7 wanted, 4 scored
    assert float(r.thresholds()[0]) == pytest.approx(0.5)  # the floor


def test_rate_matched_thresholds_forget_old_images_and_survive_a_checkpoint():
    from edgeda.methods.mean_teacher import RateMatchedThresholds
    from edgeda.training.checkpoint import flatten_state, unflatten_state

    r = RateMatchedThresholds(2, floor=0.1, ceiling=0.9, window=2)
    r.observe_source([{"labels": torch.tensor([1])}])
    r.select([_dets([0.8], [1]), _dets([0.7], [1]), _dets([0.2], [1])])
    assert len(r.recent) == 2 and float(r.thresholds()[1]) == pytest.approx(0.2)  # 2 wanted of (0.7, 0.2): 0.8 is gone
    tensors = {}
    state = unflatten_state(flatten_state(r.state_dict(), tensors), tensors)
    back = RateMatchedThresholds(2, floor=0.1, ceiling=0.9, window=2)
    back.load_state_dict(state)
    assert torch.equal(back.thresholds(), r.thresholds()) and back.source_images == 1


def test_mean_teacher_without_the_rate_prior_uses_the_fixed_threshold():
    m = _method("mean_teacher", rate_prior=False, threshold=0.8)
    m.thresholds.observe_source([{"labels": torch.tensor([0, 0, 0])}])
    m.thresholds.select([_dets([0.6, 0.7], [0, 0])])
    assert torch.allclose(m.thresholds.thresholds(), torch.full((m.task.num_classes,), 0.8))
    assert torch.allclose(_method("mean_teacher").thresholds.thresholds(), torch.full((m.task.num_classes,), 0.8))


def test_correct_detections_match_greedily_by_score_class_and_iou():
    from edgeda.methods.mean_teacher import correct_detections

    truth = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([0, 1])}
    det = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 9.0],     # class 0 on box 0, IoU 0.9, lower score
                                  [0.0, 0.0, 10.0, 10.0],    # class 0 on box 0, exact, higher score: takes it
                                  [20.0, 20.0, 30.0, 30.0],  # on box 1 but of class 0: wrong class
                                  [20.0, 20.0, 26.0, 30.0],  # class 1 on box 1, IoU 0.6
                                  [0.0, 0.0, 4.0, 4.0]]),    # class 0 on box 0, IoU 0.16
           "scores": torch.tensor([0.5, 0.9, 0.8, 0.4, 0.3]), "labels": torch.tensor([0, 0, 0, 1, 0])}
    assert correct_detections(det, truth).tolist() == [False, True, False, True, False]
    assert not correct_detections(det, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}).any()


def test_source_precision_floor_reads_the_score_where_half_the_detections_are_right():
    from edgeda.methods.mean_teacher import SourcePrecisionFloor
    from edgeda.training.checkpoint import flatten_state, unflatten_state

    truth = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}
    on, off = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]

    def image(score, right):
        return {"boxes": torch.tensor([on if right else off]), "scores": torch.tensor([score]),
                "labels": torch.tensor([0])}

    f = SourcePrecisionFloor(precision=0.5, fallback=0.42, cap=0.8, window=400, min_detections=20)
    assert f.value() == 0.42  # nothing seen: the fallback
    # scores 0.01 .. 0.40: right above 0.2 three times in four, below it one time in four
    scores = [0.01 * k for k in range(1, 41)]
    rights = [(k % 4 != 0) if s > 0.2 + 1e-9 else (k % 4 == 0) for k, s in enumerate(scores)]
    f.observe([image(s, r) for s, r in zip(scores, rights)], [truth] * len(scores))
    assert 0.2 < f.value() <= 0.23  # a focal-loss detector's scale: far below a fixed 0.5
    tensors = {}
    back = SourcePrecisionFloor(precision=0.5, fallback=0.42, cap=0.8, window=400, min_detections=20)
    back.load_state_dict(unflatten_state(flatten_state(f.state_dict(), tensors), tensors))
    assert back.value() == f.value()
    never = SourcePrecisionFloor(cap=0.8, min_detections=1, window=10)
    never.observe([image(0.95, False)] * 30, [truth] * 30)
    assert never.value() == 0.8 and len(never.recent) == 10  # never right: the papers' threshold; window kept


def test_mean_teacher_reads_its_pseudo_box_floor_from_the_source_batches(tmp_path, data):
    res = _train(tmp_path, data)
    m = _method("mean_teacher", threshold=0.8)
    assert m.calibration is not None and _method("mean_teacher", calibrate_floor=False).calibration is None
    assert _method("mean_teacher", rate_prior=False).calibration is None
    m.load_init(str(res.bundle))
    m.train()
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert out["pseudo/floor"] == m.calibration.value() == m.thresholds.floor
    assert len(m.calibration.recent) == 2  # the source batch's two images


def test_cutout_erases_patches_and_keeps_the_rest():
    from edgeda.methods.mean_teacher import cutout

    x = torch.ones(4, 3, S, S)
    out = cutout(x, torch.Generator().manual_seed(0), p=1.0)
    erased = (out == 0).float().mean().item()
    assert 0.0 < erased < 0.5 and torch.equal(x, torch.ones(4, 3, S, S))


@pytest.mark.parametrize("arch", list(MODELS))
def test_dann_aligns_every_feature_level_of_a_detector(arch):
    torch.manual_seed(0)
    m = _method("dann", arch)
    m.eval()
    with torch.no_grad():
        assert len(m.nets["domain"]) == len(m.model.features(torch.zeros(1, 3, S, S))) > 1
    m.train()
    m.progress = 0.5
    before = [p.clone() for p in m.nets["domain"].parameters()]
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert all(np.isfinite(out[k]) for k in ("loss/cls", "loss/domain")) and 0.0 <= out["acc/domain"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets["domain"].parameters()))


def test_the_reversed_gradient_cannot_grow_unbounded_features():
    """Standardised over channels, a map passes the domain classifier a reversed gradient orthogonal to
    its scale and offset at every location, however large the loss."""
    from edgeda.models.dense_alignment import channel_standardised, pixel_domain_adversarial_loss
    from edgeda.models.dense_gan import PixelDomainClassifier

    torch.manual_seed(0)
    f = (10 * torch.randn(4, 16, 3, 5) + 3).requires_grad_(True)
    z = channel_standardised(f)
    assert torch.allclose(z.mean(1), torch.zeros(4, 3, 5), atol=1e-5)
    assert torch.allclose(z.var(1, unbiased=False), torch.ones(4, 3, 5), atol=1e-3)
    loss, _ = pixel_domain_adversarial_loss(PixelDomainClassifier(16, 8), z[:2], z[2:], coeff=1.0)
    loss.backward()
    g = f.grad
    centred = f.detach() - f.detach().mean(1, keepdim=True)
    assert g.abs().max() > 0
    assert torch.allclose((g * centred).sum(1), torch.zeros(4, 3, 5), atol=1e-5)  # no pull along the scale
    assert torch.allclose(g.sum(1), torch.zeros(4, 3, 5), atol=1e-5)  # nor along the offset


@pytest.mark.parametrize("arch", list(MODELS))
def test_dann_standardises_the_levels_of_a_detector_without_normalised_features(arch, monkeypatch):
    import edgeda.models.dense_alignment as alignment  # dann's per-level loss calls it there

    seen = []
    real = alignment.pixel_domain_adversarial_loss

    def spy(d, fs, ft, coeff, **kw):
        seen.append(torch.cat([fs, ft]).detach())
        return real(d, fs, ft, coeff, **kw)

    monkeypatch.setattr(alignment, "pixel_domain_adversarial_loss", spy)
    m = _method("dann", arch)
    m.train()
    m.progress = 0.5
    m.step(_batch(0), _batch(1, labeled=False))
    standardised = all(torch.allclose(f.mean(1), torch.zeros_like(f.mean(1)), atol=1e-4) for f in seen)
    assert m.model.normalised_features == (arch == "ssdlite")
    assert standardised == (not m.model.normalised_features)  # FCOS's pyramid: plain convs; SSDLite's: after BN
