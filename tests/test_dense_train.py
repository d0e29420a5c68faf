"""Dense prediction end to end on tiny data: metrics by hand, resumable streams, train -> eval -> export -> predict."""
import numpy as np
import pytest
import torch
from PIL import Image

import edgeda
from edgeda.errors import DataError
from edgeda.tasks.metrics import ConfusionMeter, DepthMeter, segmentation_scores
from conftest import square_scenes


def test_miou_by_hand_with_ignore_and_absent_classes():
    truth = torch.tensor([[0, 0, 1, 255], [1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 3], [1, 0, 2, 0]])
    m = ConfusionMeter(4)
    m.update(pred[:1], truth[:1])  # streamed in two chunks
    m.update(pred[1:], truth[1:])
    s = segmentation_scores(m.matrix, list("abcd"))
    # class a: tp 1, fp 1, fn 1 -> 1/3; b: tp 2, fp 1, fn 1 -> 1/2; c: 1/1; d: absent from truth and prediction
    # (the 3 predicted on an ignored pixel does not count) -> None, left out of the mean
    assert s["per_class_iou"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(0.5), "c": 1.0, "d": None}
    assert s["miou"] == pytest.approx((1 / 3 + 0.5 + 1) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6) and s["n_pixels"] == 6


def test_depth_metrics_by_hand_on_valid_pixels_per_image():
    truth = torch.tensor([[[2.0, 0.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    pred = torch.tensor([[[1.0, 9.0], [4.0, 9.0]], [[5.0, 5.0], [5.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]])
    m = DepthMeter()
    m.update(pred, truth)
    r = m.compute()
    # image 1: valid (2 -> 1), (4 -> 4): abs rel (0.5 + 0) / 2; image 2 has no valid pixel; image 3 perfect
    assert r["n_images"] == 2 and r["n_pixels"] == 6
    assert r["abs_rel"] == pytest.approx((0.25 + 0.0) / 2)
    assert r["sq_rel"] == pytest.approx(((1 / 2) / 2 + 0) / 2)
    assert r["rmse"] == pytest.approx((np.sqrt(0.5) + 0) / 2)
    assert r["rmse_log"] == pytest.approx((np.sqrt(np.log(2) ** 2 / 2) + 0) / 2)
    # ratio 2 is outside 1.25^3 = 1.95 as well
    assert r["delta1"] == pytest.approx((0.5 + 1) / 2) and r["delta3"] == pytest.approx((0.5 + 1) / 2)


def _npz(path, n, h, w, *, seg=True, depth=False, classes=("bg", "fg"), seed=0):
    x, y = square_scenes(n, h, w, seed)  # a learnable bright square
    rng = np.random.default_rng([seed, 1])  # the depth's invalid pixels
    arrays = {"x": x, "classes": np.array(classes)}
    if seg:
        arrays["y"] = y
    if depth:
        arrays["depth"] = np.where(y == 1, 3.0, 10.0).astype(np.float32) * (rng.random((n, h, w)) > 0.3)
    np.savez(path, **arrays)
    return str(path)


def _train(tmp_path, src, tgt, test, **kw):
    base = dict(method="source_only", source=src, target=tgt, target_test=test, iters=4, eval_every=2,
                checkpoint_every=2, batch_size=4, image_size=[32, 48], backbone="lraspp",
                backbone_kwargs={"width": 0.25}, out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    base.update(kw)
    return edgeda.train(**base)


def test_task_inference_and_class_agreement(tmp_path):
    both = _npz(tmp_path / "both.npz", 8, 32, 48, depth=True)
    with pytest.raises(DataError, match="--task"):
        _train(tmp_path, both, both, None)
    with pytest.raises(DataError, match="classification data"):
        _train(tmp_path, both, "handwritten", None, task="segmentation")
    seg = _npz(tmp_path / "seg.npz", 8, 32, 48)
    other = _npz(tmp_path / "other.npz", 8, 32, 48, classes=("road", "car"))
    with pytest.raises(DataError, match="classes differ"):
        _train(tmp_path, seg, seg, other)
    with pytest.raises(DataError, match="depth"):
        _train(tmp_path, seg, seg, None, task="depth")


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_dense_train_eval_export_predict(tmp_path, task):
    src = _npz(tmp_path / "src.npz", 24, 40, 56, depth=task == "depth", seg=task == "segmentation")
    test = _npz(tmp_path / "test.npz", 8, 40, 56, depth=task == "depth", seg=task == "segmentation", seed=1)
    res = _train(tmp_path, src, test, test)
    head = "miou" if task == "segmentation" else "abs_rel"
    assert res.task == task and f"target_test_{head}" in res.metrics and f"source_val_{head}" in res.metrics
    b = edgeda.load_bundle(res.bundle)
    assert b.task.task == task and b.task.image_size == (32, 48) and b.primary == "model"
    ev = edgeda.evaluate(res.bundle, test)
    assert head in ev and (("per_class_iou" in ev) if task == "segmentation" else ("delta1" in ev))
    from edgeda.export.api import export_bundle

    out = tmp_path / "exported.edgeda"
    rec = export_bundle(res.bundle, out, precision="int8", calib=test, data=test, log=None)
    parity = rec["deployables"]["model"]["parity_fp32"]
    assert parity["real"]["max_abs_diff"] <= 1e-4 * max(1.0, parity["real"]["max_abs_ref"])
    assert head in rec["precisions"]["int8"]["target_scores"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "onnx/model.fp32.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"image": np.zeros((1, 3, 64, 64), np.float32)})[0]
    assert y.shape[2:] == (64, 64)  # dynamic height and width
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((30, 70, 3), 200, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((40, 56, 3), 20, np.uint8)).save(folder / "b.png")
    (folder / "broken.png").write_bytes(b"not a png")
    pred = edgeda.predict(out, folder, out=tmp_path / "p.csv", out_dir=tmp_path / "png")
    assert pred["n"] == 2 and [s["path"].endswith("broken.png") for s in pred["skipped"]] == [True]
    kind = "mask" if task == "segmentation" else "depth"
    written = Image.open(tmp_path / "png" / f"a.{kind}.png")
    assert written.size == (70, 30)  # each image's own size
    if task == "depth":
        mm = np.asarray(written)
        assert mm.dtype == np.uint16 and 100 <= mm.min() and mm.max() <= 80000
    else:
        assert "fraction/fg" in (tmp_path / "p.csv").read_text().splitlines()[0]


def test_dense_stream_resumes_at_the_same_batch(tmp_path):
    from edgeda.data import load_domain
    from edgeda.task import TaskSpec
    from edgeda.training.dense_stream import DenseStream

    dom = load_domain(_npz(tmp_path / "s.npz", 10, 32, 48), labeled=True)
    spec = TaskSpec(2, ["bg", "fg"], task="segmentation", image_size=(24, 32))
    a = DenseStream(dom, spec, 4, torch.device("cpu"), 7, labeled=True)
    first = [a.next() for _ in range(2)]
    state = a.state_dict()
    rest = [a.next() for _ in range(4)]  # crosses an epoch boundary (10 images, batches of 4)
    b = DenseStream(dom, spec, 4, torch.device("cpu"), 7, labeled=True)
    b.load_state_dict(state)
    again = [b.next() for _ in range(4)]
    for x, y in zip(rest, again):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)
    assert not torch.equal(first[0].x, rest[0].x)


def test_dense_resume_gives_the_same_weights(tmp_path):
    src = _npz(tmp_path / "src.npz", 12, 32, 48)
    full = _train(tmp_path / "a", src, src, src, out=str(tmp_path / "a"))

    def stop(it):
        if it == 2:
            raise KeyboardInterrupt

    from edgeda.config import make_config
    from edgeda.training.trainer import Trainer

    cfg = make_config(None, dict(method="source_only", source=src, target=src, target_test=src, iters=4, eval_every=2, checkpoint_every=2,
                                 batch_size=4, image_size=[32, 48], backbone="lraspp", backbone_kwargs={"width": 0.25},
                                 out=str(tmp_path / "b"), device="cpu"))
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, progress=False, log=None).run(callback=stop)
    resumed = Trainer(cfg, progress=False, log=None).run(resume=True)
    wa = edgeda.load_bundle(full.bundle).module().state_dict()
    wb = edgeda.load_bundle(resumed.bundle).module().state_dict()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k


def test_init_from_a_dense_bundle_loads_its_model(tmp_path):
    """``--init`` with a segmentation bundle starts a method's task network from that bundle's
    ``model``; a bundle of another shape is one clear error."""
    from edgeda.config import make_config
    from edgeda.errors import EdgedaError
    from edgeda.training.trainer import Trainer

    src = _npz(tmp_path / "src.npz", 16, 32, 48)
    res = _train(tmp_path, src, src, None, iters=2)
    shipped = edgeda.load_bundle(res.bundle).classifier.state_dict()
    cfg = dict(method="advent", source=src, target=src, iters=2, batch_size=4, image_size=[32, 48], backbone="lraspp",
               backbone_kwargs={"width": 0.25}, device="cpu", init=str(res.bundle))
    tr = Trainer(make_config(None, {**cfg, "out": str(tmp_path / "adv")}), progress=False, log=None)
    tr.setup()  # what run() does first: the method, then --init
    got = tr.method.classifier.state_dict()
    assert set(got) == set(shipped) and all(torch.equal(got[k], shipped[k]) for k in shipped)
    fresh = Trainer(make_config(None, {**cfg, "init": None, "out": str(tmp_path / "fresh")}), progress=False, log=None)
    fresh.setup()
    assert not all(torch.equal(fresh.method.classifier.state_dict()[k], shipped[k]) for k in shipped)
    with pytest.raises(EdgedaError, match="does not fit"):
        Trainer(make_config(None, {**cfg, "backbone_kwargs": {"width": 0.5}, "out": str(tmp_path / "wide")}),
                progress=False, log=None).run()
