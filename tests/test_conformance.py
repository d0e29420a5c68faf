"""The same smoke test for everything registered: every training method on every task it adapts,
every on-device method on every task it adapts, every backbone, every runner. Adding an entry to a
registry adds it here; nothing below lists names."""
import numpy as np
import pytest
import torch

import edgeda
from edgeda.adapt import ADAPT_METHODS
from edgeda.bundle import Bundle
from edgeda.export.runtime import RUNNERS
from edgeda.methods import METHODS
from edgeda.models import BACKBONES, build
from edgeda.tasks import task_of
from conftest import box_scenes_coco, square_scenes

H, W = 32, 48


def _dense_npz(path, n=12, seed=0, depth=False):
    """Images with a bright square (class 1 / 3 m) on a dark background (class 0 / 10 m)."""
    x, y = square_scenes(n, H, W, seed)
    arrays = {"x": x, "classes": np.array(["bg", "fg"])}
    if depth:
        arrays["depth"] = np.where(y == 1, 3.0, 10.0).astype(np.float32)
    else:
        arrays["y"] = y
    np.savez(path, **arrays)
    return str(path)


def _data(tmp_path, task):
    """Tiny data for ``task``, by the kind of labels it learns from (one per image, per pixel, boxes)."""
    kind = task_of(task).label_key
    if kind == "labels":
        return dict(source="syndigits", target="handwritten", target_test="handwritten:test", source_n=200,
                    backbone="dtn", backbone_kwargs={"width": 8, "out_dim": 32}, batch_size=8)
    if kind == "boxes":
        src = box_scenes_coco(tmp_path / "src", 8, 0, 64)
        tgt = box_scenes_coco(tmp_path / "tgt", 6, 1, 64, shift=60)
        return dict(source=src, target=tgt, target_test=tgt, task=task, image_size=[64, 64], backbone="ssdlite",
                    backbone_kwargs={"width": 0.25}, batch_size=4, workers=0)
    depth = kind == "depth"
    src = _dense_npz(tmp_path / "src.npz", seed=0, depth=depth)
    tgt = _dense_npz(tmp_path / "tgt.npz", seed=1, depth=depth)
    return dict(source=src, target=tgt, target_test=tgt, task=task, image_size=[H, W], backbone="lraspp",
                backbone_kwargs={"width": 0.25}, batch_size=4)


CASES = [(name, task) for name, cls in METHODS.items() for task in cls.tasks]


@pytest.mark.parametrize("name,task", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_every_method_trains_on_every_task_it_adapts(tmp_path, name, task):
    res = edgeda.train(method=name, iters=2, eval_every=2, checkpoint_every=2, device="cpu", out=str(tmp_path / "run"),
                       progress=False, log=None, **_data(tmp_path, task))
    b = Bundle(res.bundle)
    assert b.task.task == task and b.primary in b.names
    assert all(f.endswith((".safetensors", ".json", ".png", ".onnx")) for f in b.manifest["files"])
    t = task_of(task)
    record = next(k for k, v in t.record_keys.items() if v == t.headline)  # the record of the headline score
    assert np.isfinite(res.metrics[f"target_test_{record}"]), res.metrics
    assert res.metrics[f"target_test_{record}"] == res.metrics["target_test_scores"][t.headline]
    for m in b.names:  # every shipped network loads back and holds finite weights
        assert all(torch.isfinite(v.float()).all() for v in b.module(m).state_dict().values()), m


ADAPT_CASES = [(name, task) for name, cls in ADAPT_METHODS.items() for task in cls.tasks]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny source-only bundle per task, and a folder of target images for it."""
    from PIL import Image

    out = {}
    for task in sorted({t for _, t in ADAPT_CASES}):
        tmp = tmp_path_factory.mktemp(task)
        res = edgeda.train(method="source_only", iters=4, eval_every=4, checkpoint_every=4, device="cpu",
                           out=str(tmp / "run"), progress=False, log=None, **_data(tmp, task))
        folder = tmp / "frames"
        folder.mkdir()
        imgs = (np.random.default_rng(3).integers(0, 255, (12, 32, 32, 3)) if task_of(task).label_key == "labels"
                else np.load(_dense_npz(tmp / "frames.npz", seed=2))["x"]).astype(np.uint8)
        for i, a in enumerate(imgs):
            Image.fromarray(a).save(folder / f"{i:03d}.png")
        out[task] = (res.bundle, folder)
    return out


@pytest.mark.parametrize("name,task", ADAPT_CASES, ids=[f"{n}-{t}" for n, t in ADAPT_CASES])
def test_every_device_method_adapts_every_task_it_supports(tmp_path, shipped, name, task):
    bundle, frames = shipped[task]
    before = {k: v.clone() for k, v in Bundle(bundle).module(Bundle(bundle).primary).state_dict().items()}
    r = edgeda.adapt(bundle, frames, tmp_path / "a.edgeda", method=name, iters=2, batch=4, log=None)
    assert Bundle(r.bundle).manifest["adaptation"]["method"] == name
    after = Bundle(bundle).module(Bundle(bundle).primary).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shipped bundle is never modified


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_a_classifier_with_features_and_logits(name):
    clf = build("classifier", backbone=name, num_classes=5, backbone_kwargs={"width": 8} if name == "dtn" else {}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats, logits = clf.features_and_logits(x)
    assert logits.shape == (2, 5) and feats.shape[0] == 2 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(RUNNERS))
def test_every_runner_predicts_like_pytorch(shipped, name):
    from edgeda.export.runtime import make_runner

    bundle, _ = shipped["classification"]
    try:
        runner = make_runner(name, bundle)
    except edgeda.errors.MissingDependency as e:
        pytest.skip(f"{name}: {e}")
    except edgeda.errors.EdgedaError as e:
        if "TensorRT engine" in str(e) or "GPU" in str(e):
            pytest.skip(f"{name}: {e}")
        raise
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    ref = make_runner("torch", bundle).predict(images)
    np.testing.assert_allclose(runner.predict(images), ref, atol=1e-4)
