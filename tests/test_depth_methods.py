"""Methods on the depth task. T2Net: its losses (edge-aware smoothness, identity on real images,
feature-GAN targets), depth metrics on a sparse map, and train -> evaluate -> export -> predict of a
T2Net bundle; cyclegan (GeneSIS-RT) on depth ships the same way; dense DANN trains on depth."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import edgeda
from edgeda.methods import METHODS
from edgeda.methods.losses import edge_aware_smoothness
from edgeda.errors import EdgedaError
from edgeda.tasks.spec import TaskSpec
from edgeda.tasks.metrics import DepthMeter

SPEC = TaskSpec(num_classes=0, classes=[], task="depth", image_size=(32, 64), channels=3, depth_range=(0.1, 80.0))


def _t2net(**options):
    return METHODS.get("t2net")(SPEC, backbone="lraspp", backbone_kwargs={"width": 0.25}, options=options)


def test_smoothness_is_zero_for_constant_depth_and_larger_for_noise():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 64, generator=g) * 2 - 1
    flat = torch.full((2, 1, 32, 64), 7.5)
    noisy = flat + torch.rand(2, 1, 32, 64, generator=g) * 5
    assert edge_aware_smoothness(flat, image).item() == pytest.approx(0.0, abs=1e-7)
    assert edge_aware_smoothness(noisy, image).item() > 0.05
    # mean-normalised: scaling the depth does not change the loss
    assert edge_aware_smoothness(3 * noisy, image).item() == pytest.approx(edge_aware_smoothness(noisy, image).item(), rel=1e-5)
    # a depth edge costs less where the image has an edge at the same place
    step = torch.ones(1, 1, 32, 64)
    step[..., 32:] = 4.0
    plain, edged = torch.zeros(1, 3, 32, 64), torch.zeros(1, 3, 32, 64)
    edged[..., 32:] = 1.0
    assert edge_aware_smoothness(step, edged).item() < edge_aware_smoothness(step, plain).item()


def test_identity_loss_is_zero_when_g_is_the_identity_on_real_images():
    m = _t2net()
    xt = torch.rand(2, 3, 32, 64) * 2 - 1
    assert m.identity_loss(xt).item() > 0.01  # a freshly initialised G is not the identity
    m.nets["refiner"] = nn.Identity()
    assert m.identity_loss(xt).item() == 0.0


class _Constant(nn.Module):
    """A stand-in D_f: logit 1 for features whose mean is positive, 0 otherwise."""

    def forward(self, f):
        return (f.mean(1, keepdim=True) > 0).float()


def test_feature_gan_targets():
    m = _t2net()
    m.nets["disc_f"] = _Constant()
    real, translated = torch.ones(2, 8, 2, 4), -torch.ones(2, 8, 2, 4)
    g, d = m.feature_gan(translated, real)
    # LSGAN: D_f says real features are real (1) and translated are fake (0): its loss is 0 and
    # the generator's (translated -> real) is (0 - 1)^2 = 1
    assert d.item() == pytest.approx(0.0) and g.item() == pytest.approx(1.0)
    g2, d2 = m.feature_gan(real, translated)  # a D_f fooled both ways
    assert g2.item() == pytest.approx(0.0) and d2.item() == pytest.approx(1.0)


def test_depth_metrics_on_a_sparse_map():
    truth = torch.zeros(1, 32, 64)
    truth[0, 5, 7], truth[0, 20, 40], truth[0, 30, 1] = 10.0, 20.0, 40.0  # 3 of 2048 pixels valid
    pred = torch.full((1, 32, 64), 1000.0)  # invalid pixels are wildly wrong and must not count
    pred[0, 5, 7], pred[0, 20, 40], pred[0, 30, 1] = 11.0, 20.0, 30.0
    meter = DepthMeter(max_depth=80.0)
    meter.update(pred, truth)
    s = meter.compute()
    assert s["abs_rel"] == pytest.approx((0.1 + 0.0 + 0.25) / 3)
    assert s["rmse"] == pytest.approx(np.sqrt((1 + 0 + 100) / 3))
    assert s["delta1"] == pytest.approx(2 / 3)  # 40/30 = 1.33 > 1.25


def test_t2net_refuses_other_tasks():
    spec = TaskSpec(num_classes=3, classes=["a", "b", "c"], task="segmentation", image_size=(32, 64), channels=3)
    with pytest.raises(EdgedaError, match="depth"):
        METHODS.get("t2net")(spec, backbone="lraspp", backbone_kwargs={"width": 0.25})


def _run(tmp_path, method):
    return edgeda.train(method=method, task="depth", source="synscenes", target="synscenes:photo",
                        target_test="synscenes:photo-test", iters=3, eval_every=3, checkpoint_every=3, batch_size=2,
                        image_size=[32, 64], backbone="lraspp", backbone_kwargs={"width": 0.25},
                        out=str(tmp_path / method), device="cpu", progress=False, log=None, seed=0, source_n=16)


@pytest.fixture(scope="module")
def t2net_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("t2net"), "t2net")


def test_t2net_bundle_evaluates_exports_and_predicts(t2net_run, tmp_path):
    from edgeda.export.api import export_bundle

    res = t2net_run
    m = res.metrics
    assert np.isfinite(m["target_test_abs_rel"]) and m["target_test_abs_rel"] > 0
    h = res.history[-1]
    assert "samples_png" in h and Image.open(h["samples_png"]).size[0] == 4 * 64
    b = edgeda.load_bundle(res.bundle)
    assert set(b.names) == {"model", "refiner"}
    ev = edgeda.evaluate(res.bundle, data="synscenes:photo-test", device="cpu")
    assert ev["abs_rel"] == pytest.approx(m["target_test_abs_rel"], rel=1e-9)
    out = tmp_path / "t2net.edgeda"
    rec = export_bundle(res.bundle, out=out, precision="fp32", log=None)
    for name in ("model", "refiner"):
        assert rec["deployables"][name]["parity_fp32"]["random"]["max_abs_diff"] <= 1e-4 * max(
            1.0, rec["deployables"][name]["parity_fp32"]["random"].get("max_abs_ref", 1.0))
    assert (out / "onnx" / "refiner.onnx").is_file() or any((out / "onnx").glob("refiner*.onnx"))
    img = tmp_path / "in"
    img.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 64, 3)).astype(np.uint8)).save(img / "a.png")
    pred = edgeda.predict(out, str(img), out=tmp_path / "p.csv", out_dir=tmp_path / "png")
    assert pred["n"] == 1 and np.asarray(Image.open(tmp_path / "png" / "a.depth.png")).dtype == np.uint16


def test_cyclegan_on_depth_ships_model_and_refiner(tmp_path):
    res = _run(tmp_path, "cyclegan")
    assert np.isfinite(res.metrics["target_test_abs_rel"])
    assert set(edgeda.load_bundle(res.bundle).names) == {"model", "refiner"}
    with pytest.raises(EdgedaError, match="semantic_target"):
        METHODS.get("cyclegan")(SPEC, backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"semantic_target": 1.0})


def test_dense_dann_trains_on_depth(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (10, 32, 48, 3)).astype(np.uint8)
    depth = (rng.random((10, 32, 48)) * 20 + 1).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, depth=depth)
    res = edgeda.train(method="dann", options={"hidden": 16}, source=str(tmp_path / "d.npz"), target=str(tmp_path / "d.npz"),
                       target_test=str(tmp_path / "d.npz"), task="depth", iters=2, eval_every=2, checkpoint_every=2,
                       batch_size=4, image_size=[32, 48], backbone="lraspp", backbone_kwargs={"width": 0.25},
                       out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    assert res.task == "depth"
    ev = edgeda.evaluate(res.bundle, str(tmp_path / "d.npz"))  # the test split the run scored the bundle on
    assert np.isfinite(ev["abs_rel"]) and ev["abs_rel"] == pytest.approx(res.metrics["target_test_abs_rel"], rel=1e-5)

