"""Translate-then-train for detection: ``cyclegan`` and ``fgbg_cyclegan`` with the foreground taken
from the boxes (Wang et al. 2019), and a train -> eval -> export -> predict run on the embedded digit pair."""
import numpy as np
import pytest
import torch

import edgeda
from edgeda.bundle import Bundle
from edgeda.methods.base import Batch

S = 64
MODELS = {"ssdlite": {"width": 0.25}, "fcos": {"backbone": "resnet18", "width": 8, "fpn_channels": 64, "num_convs": 1}}


def _method(name, arch="ssdlite", **options):
    from edgeda.methods import METHODS
    from edgeda.tasks.spec import TaskSpec

    spec = TaskSpec(2, ["a", "b"], task="detection", image_size=(S, S))
    return METHODS.get(name)(spec, backbone=arch, backbone_kwargs=MODELS[arch], options={"g_width": 8, **options})


def _batch(seed, labeled=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, S, S, generator=g) * 2 - 1
    y = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return Batch(x, y if labeled else None)


def test_box_mask_covers_the_pixels_whose_centre_is_in_a_box():
    from edgeda.models.detection.boxes import boxes_to_mask

    targets = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.6, 0.0, 6.0, 1.4]])}, {"boxes": torch.zeros(0, 4)}]
    m = boxes_to_mask(targets, (5, 7))
    want = np.zeros((5, 7))
    want[2:4, 1:3] = 1  # centres 2.5, 3.5 (rows) and 1.5, 2.5 (columns) lie in [2, 4] x [1, 3]
    want[0, 5] = 1  # centre (5.5, 0.5) in the second box; (4.5, .) is left of x1 = 4.6
    assert m.shape == (2, 1, 5, 7)
    assert np.array_equal(m[0, 0].numpy(), want) and m[1].sum() == 0


def test_fgbg_source_cycle_keeps_only_the_hue_under_the_boxes():
    m = _method("fgbg_cyclegan")
    src = _batch(0)
    x = src.x
    inside = torch.zeros(2, 1, S, S)
    inside[0, :, 8:28, 8:30] = 1  # the first image's box (pixel centres inside it)
    brighter = 0.7 * (x + 1) - 1  # brightness (V) scaled by 0.7 in [0, 1] terms: the hue stays

    in_box = torch.where(inside.bool(), brighter, x)
    out_box = torch.where(inside.bool(), x, brighter)
    assert float(m.source_cycle_loss(in_box, x, src)) < 1e-5  # a brightness change under a box is free
    assert float(m.source_cycle_loss(out_box, x, src)) > 0.05  # ... but not on the background

    plain = _method("cyclegan")
    assert float(plain.source_cycle_loss(in_box, x, src)) > 0.005  # the plain cycle loss sees every pixel

    recoloured = x.clone()
    recoloured[:, [0, 1, 2]] = x[:, [1, 2, 0]]  # channels rotated: the hue changes, not the brightness
    in_box_hue = torch.where(inside.bool(), recoloured, x)
    assert float(m.source_cycle_loss(in_box_hue, x, src)) > 0.05  # the foreground keeps its hue


@pytest.mark.parametrize("name", ["cyclegan", "fgbg_cyclegan"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_translation_methods_train_a_detector_on_translated_sources(name, arch):
    torch.manual_seed(0)
    m = _method(name, arch)
    m.train()
    g_before = [p.clone() for p in m.nets["refiner"].parameters()]
    m.progress = 0.1  # stage 1: the translators and discriminators learn, the detector on the source
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert all(np.isfinite(v) for v in out.values())
    assert {"loss/g_adv", "loss/cycle", "loss/semantic", "loss/cls"} <= set(out)
    assert (name == "fgbg_cyclegan") == ("loss/fg_hue" in out)  # the boxes gave the foreground
    assert any(not torch.equal(a, b) for a, b in zip(g_before, m.nets["refiner"].parameters()))

    m.progress = 0.9  # stage 2: G frozen, the detector learns on G(x_s) with the source boxes
    g_frozen = [p.clone() for p in m.nets["refiner"].parameters()]
    d_before = [p.clone() for p in m.model.parameters()]
    out = m.step(_batch(2), _batch(3, labeled=False))
    assert set(out) == {"loss/cls_refined"} and np.isfinite(out["loss/cls_refined"])
    assert all(torch.equal(a, b) for a, b in zip(g_frozen, m.nets["refiner"].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, m.model.parameters()))
    assert set(m.deployables()) == {"model", "refiner"}


def test_cyclegan_refuses_the_target_half_of_the_semantic_loss_for_detection():
    with pytest.raises(edgeda.errors.EdgedaError, match="semantic_target"):
        _method("cyclegan", semantic_target=1.0)


@pytest.mark.slow  # evaluates the whole embedded test split (300 images) twice: ~1-2 min on 2 shared cores
@pytest.mark.parametrize("method", ["fgbg_cyclegan"])
def test_translate_then_train_on_the_digit_pair_trains_evaluates_exports_and_predicts(tmp_path, method):
    from PIL import Image

    from edgeda.data import load_domain
    from edgeda.bundle_eval import evaluate_bundle
    from edgeda.export.api import export_bundle
    from edgeda.export.prediction import predict

    res = edgeda.train(method=method, task="detection", source="digitscenes", target="handwritten-scenes",
                       target_test="handwritten-scenes:test", source_n=64, image_size=[32, 32], backbone="ssdlite",
                       backbone_kwargs={"width": 0.25}, options={"g_width": 8, "gan_fraction": 0.5},
                       batch_size=4, iters=4, eval_every=4, checkpoint_every=4, device="cpu", workers=0,
                       augment_hflip=False, out=str(tmp_path / "run"), progress=False, log=None)
    b = Bundle(res.bundle)
    assert b.task.task == "detection" and b.task.classes == [str(d) for d in range(10)]
    assert set(b.names) == {"model", "refiner"} and b.manifest["method"]["name"] == method
    assert 0.0 <= res.metrics["target_test_map"] <= 1.0
    assert res.metrics.get("samples_png") and __import__("pathlib").Path(res.metrics["samples_png"]).is_file()

    m = evaluate_bundle(res.bundle, "handwritten-scenes:test", device="cpu")
    assert m["map"] == pytest.approx(res.metrics["target_test_map"], abs=1e-9)

    rec = export_bundle(res.bundle, tmp_path / "exported.edgeda", data="handwritten-scenes:test", log=None)
    e = Bundle(rec["bundle"])
    assert "onnx/model.fp32.onnx" in e.manifest["files"]
    assert e.manifest["export"]["deployables"]["model"]["parity_fp32"]["real"]["matched_fraction"] >= 0.98

    frames = tmp_path / "frames"
    frames.mkdir()
    dom = load_domain("handwritten-scenes:test", labeled=True, size=(32, 32), n=3, task="detection")
    for i, im in enumerate(dom.images[:3]):
        Image.fromarray(np.asarray(im)).save(frames / f"{i}.png")
    out = predict(rec["bundle"], frames, backend="ort", out=tmp_path / "p.csv", coco_out=tmp_path / "p.json")
    assert out["n"] == 3 and all(__import__("pathlib").Path(r["boxes_png"]).is_file() for r in out["predictions"])
