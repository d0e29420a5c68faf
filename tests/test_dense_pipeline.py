"""Dense prediction from data to deployment on tiny inputs: task inference and its errors, class
agreement, train -> eval -> export (int8, dynamic H/W) -> predict -> bench for segmentation and
depth, the same through the CLI, resumable dense streams and runs, --init from a dense bundle, and
--backbone-weights."""
import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import edgeda
from edgeda.cli import main
from edgeda.config import make_config
from edgeda.errors import DataError, EdgedaError
from conftest import square_scenes, stripe_scenes

CLASSES = ("bg", "square", "stripe")
TINY = {"width": 0.25}


# -- data --------------------------------------------------------------------------------------

def _scene(n, h, w, seed):
    """Images with a bright square (class 1) and a dark vertical stripe (class 2) on a noisy
    background; depth: 3 m on the square, 12 m elsewhere, 0 (invalid) in the top rows."""
    x, y = stripe_scenes(n, h, w, seed)
    depth = np.where(y == 1, 3.0, 12.0).astype(np.float32)
    depth[:, :2] = 0.0
    y[:, -1] = 255  # an ignored row
    return x, y, depth


def write_npz(path, n, h=32, w=32, *, masks=True, depth=False, classes=CLASSES, seed=0):
    x, y, d = _scene(n, h, w, seed)
    arrays = {"x": x}
    if masks:
        arrays["y"] = y
        arrays["classes"] = np.array(classes)
    if depth:
        arrays["depth"] = d
    np.savez(path, **arrays)
    return str(path)


def write_dense_folder(root, n, h=32, w=32, *, masks=False, seed=0):
    x, y, _ = _scene(n, h, w, seed)
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(x[i]).save(root / "images" / f"im{i:02d}.png")
        if masks:
            Image.fromarray(y[i], mode="L").save(root / "masks" / f"im{i:02d}.png")
    return str(root)


def _square_npz(path, n, h, w, *, seg=True, depth=False, classes=("bg", "fg"), seed=0):
    x, y = square_scenes(n, h, w, seed)  # a learnable bright square
    rng = np.random.default_rng([seed, 1])  # the depth's invalid pixels
    arrays = {"x": x, "classes": np.array(classes)}
    if seg:
        arrays["y"] = y
    if depth:
        arrays["depth"] = np.where(y == 1, 3.0, 10.0).astype(np.float32) * (rng.random((n, h, w)) > 0.3)
    np.savez(path, **arrays)
    return str(path)


def _square_train(tmp_path, src, tgt, test, **kw):
    base = dict(method="source_only", source=src, target=tgt, target_test=test, iters=4, eval_every=2,
                checkpoint_every=2, batch_size=4, image_size=[32, 48], backbone="lraspp",
                backbone_kwargs={"width": 0.25}, out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    base.update(kw)
    return edgeda.train(**base)



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense-data")
    paths = {
        "seg_src": write_npz(d / "seg_src.npz", 16, 32, 48, seed=0),
        "seg_tgt": write_npz(d / "seg_tgt.npz", 8, 32, 48, masks=False, seed=1),
        "seg_test": write_npz(d / "seg_test.npz", 8, 32, 48, seed=2),
        "depth_src": write_npz(d / "depth_src.npz", 16, 32, 48, masks=False, depth=True, seed=3),
        "depth_tgt": write_dense_folder(d / "depth_tgt", 6, 32, 48, seed=4),
        "depth_test": write_npz(d / "depth_test.npz", 8, 32, 48, masks=False, depth=True, seed=5),
    }
    # images to predict: one at the training size, one of another size and shape, one corrupt
    pred = d / "to_predict"
    (pred / "sub").mkdir(parents=True)
    x, _, _ = _scene(2, 40, 24, 6)
    Image.fromarray(_scene(1, 32, 48, 7)[0][0]).save(pred / "same.png")
    Image.fromarray(x[0]).save(pred / "sub" / "tall.png")
    (pred / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    paths["predict"] = str(pred)
    paths["root"] = d
    return paths


def _train(out, source, target, target_test, **kw):
    base = dict(method="source_only", source=source, target=target, target_test=target_test, iters=4, eval_every=2,
                batch_size=4, image_size=[32, 48], backbone="lraspp", backbone_kwargs=TINY, out=str(out),
                device="cpu", progress=False, log=None)
    base.update(kw)
    return edgeda.train(**base)


@pytest.fixture(scope="module")
def seg_run(data):
    return _train(data["root"] / "seg_run", data["seg_src"], data["seg_tgt"], data["seg_test"])


@pytest.fixture(scope="module")
def depth_run(data):
    return _train(data["root"] / "depth_run", data["depth_src"], data["depth_tgt"], data["depth_test"])


def _export(run, data, kind):
    from edgeda.export.api import export_bundle

    out = data["root"] / f"{kind}_exported.edgeda"
    rec = export_bundle(run.bundle, out=out, precision="int8", calib=data[f"{kind}_tgt"], data=data[f"{kind}_test"],
                        log=None)
    return out, rec


@pytest.fixture(scope="module")
def seg_export(seg_run, data):
    return _export(seg_run, data, "seg")


@pytest.fixture(scope="module")
def depth_export(depth_run, data):
    return _export(depth_run, data, "depth")


# -- task inference and data checks -------------------------------------------------------------

def _domains(tmp_path, source, **kw):
    from edgeda.training.domains import load_domains

    cfg = make_config(None, dict(method="source_only", source=source, target="", out=str(tmp_path / "run"),
                                 image_size=[32, 32], **kw))
    return load_domains(cfg.validate(), needs_target=False)


def test_task_is_inferred_from_what_the_source_carries(tmp_path):
    seg = write_npz(tmp_path / "seg.npz", 8)
    dep = write_npz(tmp_path / "dep.npz", 8, masks=False, depth=True)
    d = _domains(tmp_path, seg)
    assert d.task == "segmentation" and d.source.classes == list(CLASSES)
    assert len(d.source) + len(d.source_val) == 8
    assert _domains(tmp_path, dep).task == "depth"
    assert _domains(tmp_path, seg, task="segmentation").task == "segmentation"


def test_masks_and_depth_need_task(tmp_path):
    both = write_npz(tmp_path / "both.npz", 8, depth=True)
    with pytest.raises(DataError, match="--task segmentation or --task depth"):
        _domains(tmp_path, both)
    assert _domains(tmp_path, both, task="depth").task == "depth"
    assert _domains(tmp_path, both, task="segmentation").task == "segmentation"


def test_task_the_source_cannot_supply(tmp_path):
    seg = write_npz(tmp_path / "seg.npz", 8)
    with pytest.raises(DataError, match="--task depth") as e:
        _domains(tmp_path, seg, task="depth")
    assert "has segmentation masks, no depth maps" in str(e.value) and "--task segmentation" in str(e.value)
    rng = np.random.default_rng(0)
    cls = tmp_path / "cls.npz"
    np.savez(cls, x=rng.integers(0, 255, (10, 32, 32, 3)).astype(np.uint8), y=np.arange(10) % 2)
    with pytest.raises(DataError, match="per-pixel labels"):
        _domains(tmp_path, str(cls), task="segmentation")


def test_source_and_target_test_classes_agree_by_name(tmp_path):
    src = write_npz(tmp_path / "src.npz", 8)
    # the same names in another order: the target test's masks are read in the source's order
    other = write_npz(tmp_path / "other.npz", 8, classes=("bg", "stripe", "square"), seed=1)
    d = _domains(tmp_path, src, target_test=other)
    raw = np.load(other)["y"][0]
    assert d.target_test.classes == list(CLASSES) == ["bg", "square", "stripe"]
    swap = np.full(256, 255, np.uint8)
    swap[:3] = [0, 2, 1]
    np.testing.assert_array_equal(d.target_test.sample(0).mask, swap[raw])
    assert any("by name" in w for w in d.target_test.report.warnings)
    # no name in common: one clear error, in one line, from the training entry point too
    alien = write_npz(tmp_path / "alien.npz", 8, classes=("sea", "boat", "sky"), seed=1)
    with pytest.raises(DataError) as e:
        _domains(tmp_path, src, target_test=alien)
    msg = str(e.value)
    assert "classes differ" in msg and "bg, square, stripe" in msg and "sea, boat, sky" in msg and "\n" not in msg
    with pytest.raises(DataError, match="classes differ"):
        _train(tmp_path / "run", src, "", alien, iters=1)


def test_task_inference_and_class_agreement(tmp_path):
    both = _square_npz(tmp_path / "both.npz", 8, 32, 48, depth=True)
    with pytest.raises(DataError, match="--task"):
        _square_train(tmp_path, both, both, None)
    with pytest.raises(DataError, match="classification data"):
        _square_train(tmp_path, both, "handwritten", None, task="segmentation")
    seg = _square_npz(tmp_path / "seg.npz", 8, 32, 48)
    other = _square_npz(tmp_path / "other.npz", 8, 32, 48, classes=("road", "car"))
    with pytest.raises(DataError, match="classes differ"):
        _square_train(tmp_path, seg, seg, other)
    with pytest.raises(DataError, match="depth"):
        _square_train(tmp_path, seg, seg, None, task="depth")



# -- segmentation: train -> eval -> export -> predict -> bench ----------------------------------

def test_segmentation_train_records_and_bundle(seg_run):
    m = seg_run.metrics
    assert seg_run.task == "segmentation"
    for k in ("source_val_miou", "source_val_pixel_acc", "target_test_miou", "target_test_pixel_acc"):
        assert 0.0 <= m[k] <= 1.0, k
    assert set(m["target_test_per_class"]) == set(CLASSES)
    lines = (seg_run.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2, 4]
    mf = json.loads((seg_run.bundle / "manifest.json").read_text())
    t = mf["task"]
    assert t["task"] == "segmentation" and t["classes"] == list(CLASSES) and t["num_classes"] == 3
    assert t["image_size"] == [32, 48] and t["output"] == "logits"
    assert len(t["palette"]) == 3 and all(len(c) == 3 for c in t["palette"])
    assert "model" in mf["deployables"]
    b = edgeda.load_bundle(seg_run.bundle)
    with torch.no_grad():
        assert b.module().eval()(torch.zeros(1, 3, 32, 48)).shape == (1, 3, 32, 48)


def test_segmentation_evaluate_bundle(seg_run, data):
    ev = edgeda.evaluate(seg_run.bundle, data=data["seg_test"], device="cpu")
    assert ev["task"] == "segmentation"
    for k in ("miou", "per_class_iou", "pixel_accuracy", "confusion", "n_pixels"):
        assert k in ev, k
    assert set(ev["per_class_iou"]) == set(CLASSES)
    conf = np.asarray(ev["confusion"])
    assert conf.shape == (3, 3)
    # every labelled pixel at the model's size (32x48, the last row ignored) is counted once
    assert conf.sum() == ev["n_pixels"] == 8 * 31 * 48
    assert ev["pixel_accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
    # evaluation reproduces the trainer's final target-test score
    assert ev["miou"] == pytest.approx(seg_run.metrics["target_test_miou"], abs=1e-9)


def test_segmentation_export_int8(seg_export, seg_run):
    out, rec = seg_export
    entry = rec["deployables"]["model"]
    for kind in ("random", "real"):
        c = entry["parity_fp32"][kind]
        assert c["max_abs_diff"] <= 1e-4 * max(1.0, c.get("max_abs_ref", 1.0)), kind
        assert c["pixel_agreement"] >= 0.999
    assert entry["parity_fp32"]["real"]["n"] == 8
    assert 0.0 <= entry["vs_fp32_int8"]["pixel_agreement"] <= 1.0
    for p in ("fp32", "int8"):
        s = rec["precisions"][p]["target_scores"]
        assert 0.0 <= s["miou"] <= 1.0 and "pixel_accuracy" in s
    assert rec["precisions"]["fp32"]["target_scores"]["miou"] == pytest.approx(seg_run.metrics["target_test_miou"], abs=1e-4)
    assert "pixel_agreement_with_fp32" in rec["precisions"]["int8"]
    assert rec["calib"]["n"] == 8
    mf = json.loads((out / "manifest.json").read_text())
    assert mf["export"]["deployables"]["model"]["files"] == {"fp32": "onnx/model.fp32.onnx", "int8": "onnx/model.int8.onnx"}
    assert (out / "onnx" / "model.int8.onnx").is_file()


def test_exported_onnx_takes_other_heights_and_widths(seg_export, data):
    import onnxruntime as ort

    out, _ = seg_export
    model = edgeda.load_bundle(out).module().eval()
    sess = ort.InferenceSession(str(out / "onnx" / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    y = sess.run(None, {name: x})[0]
    assert y.shape == (1, 3, 64, 64)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(ref - y).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))
    y2 = sess.run(None, {name: np.zeros((2, 3, 40, 24), np.float32)})[0]
    assert y2.shape == (2, 3, 40, 24)


def test_segmentation_predict_writes_pngs_and_csv(seg_export, data, tmp_path):
    out, _ = seg_export
    res = edgeda.predict(out, data["predict"], out=tmp_path / "preds.csv", out_dir=tmp_path / "png")
    assert res["n"] == 2 and res["task"] == "segmentation"
    assert [s["path"].endswith("corrupt.png") for s in res["skipped"]] == [True]
    assert res["skipped"][0]["reason"]
    palette = np.asarray(edgeda.load_bundle(out).task.palette, np.uint8)
    for rel, size in (("same", (48, 32)), ("sub/tall", (24, 40))):
        pngs = {kind: Image.open(tmp_path / "png" / f"{rel}.{kind}.png") for kind in ("mask", "overlay", "ids")}
        for kind, im in pngs.items():
            assert im.size == size, (rel, kind)  # each input image's own size
        ids = np.asarray(pngs["ids"])
        assert ids.dtype == np.uint8 and ids.max() < 3
        assert np.array_equal(np.asarray(pngs["mask"].convert("RGB")), palette[ids])
    with open(tmp_path / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    cols = set(rows[0])
    assert {f"fraction/{c}" for c in CLASSES} <= cols and {"path", "mean_confidence", "mask_png", "ids_png"} <= cols
    for r in rows:
        assert sum(float(r[f"fraction/{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
        ids = np.asarray(Image.open(r["ids_png"]))
        assert float(r["fraction/square"]) == pytest.approx((ids == 1).mean(), abs=1e-6)


def test_bench_on_a_dense_bundle(seg_export):
    out, _ = seg_export
    res = edgeda.bench(out, backends=("ort",), batches=(1,), warmup=1, iters=3, rounds=1)
    assert not res["skipped"]
    (row,) = res["results"]
    assert row["backend"] == "ort" and row["batch"] == 1 and row["precision"] == "fp32"
    lat = row["latency_ms"]
    assert lat["n"] == 3 and 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert row["throughput_ips"] > 0


# -- depth: train -> eval -> export -> predict --------------------------------------------------

def test_depth_train_records_and_bundle(depth_run):
    m = depth_run.metrics
    assert depth_run.task == "depth"
    for k in ("source_val_abs_rel", "source_val_rmse", "source_val_delta1", "target_test_abs_rel"):
        assert np.isfinite(m[k]) and m[k] >= 0, k
    assert 0 <= m["source_val_delta1"] <= 1
    t = json.loads((depth_run.bundle / "manifest.json").read_text())["task"]
    assert t["task"] == "depth" and t["classes"] == [] and t["num_classes"] == 0
    assert t["image_size"] == [32, 48] and t["output"] == "depth"
    lo, hi = t["depth_range"]
    assert 0 < lo < hi


def test_depth_evaluate_bundle(depth_run, data):
    ev = edgeda.evaluate(depth_run.bundle, data=data["depth_test"], device="cpu")
    assert ev["task"] == "depth"
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"):
        assert np.isfinite(ev[k]), k
    assert 0 <= ev["delta1"] <= ev["delta2"] <= ev["delta3"] <= 1
    assert ev["n_images"] == 8 and ev["n_pixels"] == 8 * 30 * 48  # the two top rows are invalid
    assert ev["abs_rel"] == pytest.approx(depth_run.metrics["target_test_abs_rel"], rel=1e-9)


def test_depth_export_int8(depth_export):
    out, rec = depth_export
    entry = rec["deployables"]["model"]
    for kind in ("random", "real"):
        c = entry["parity_fp32"][kind]
        assert c["max_abs_diff"] <= 1e-4 * max(1.0, c.get("max_abs_ref", 1.0)), kind
        assert c["max_rel_diff"] <= 1e-4
    for p in ("fp32", "int8"):
        s = rec["precisions"][p]["target_scores"]
        assert {"abs_rel", "rmse", "delta1"} <= set(s)
    assert (out / "onnx" / "model.int8.onnx").is_file()


def test_depth_predict_writes_16bit_millimetres(depth_export, data, tmp_path):
    out, _ = depth_export
    lo, hi = edgeda.load_bundle(out).task.depth_range
    res = edgeda.predict(out, data["predict"], out=tmp_path / "preds.csv", out_dir=tmp_path / "png")
    assert res["n"] == 2 and len(res["skipped"]) == 1
    for rel, size in (("same", (48, 32)), ("sub/tall", (24, 40))):
        raw = Image.open(tmp_path / "png" / f"{rel}.depth.png")
        colour = Image.open(tmp_path / "png" / f"{rel}.depth_color.png")
        assert raw.size == colour.size == size
        assert colour.mode == "RGB"
        mm = np.asarray(raw)
        assert mm.dtype == np.uint16
        assert lo * 1000 - 1 <= mm.min() and mm.max() <= min(hi * 1000, 65535) + 1
        row = next(r for r in res["predictions"] if r["path"].endswith(f"{rel.split('/')[-1]}.png"))
        assert mm.min() / 1000 == pytest.approx(row["depth_min_m"], abs=2e-3)
        # a 16-bit millimetre PNG holds at most 65.535 m: further pixels saturate and are counted
        assert mm.max() / 1000 == pytest.approx(min(row["depth_max_m"], 65.535), abs=2e-3)
        assert (row["depth_png_clipped_px"] > 0) == (row["depth_max_m"] > 65.5355)
    # the PNG is the format edgeda reads depth from: it loads back as metres
    from edgeda.data.dense_files import _read_depth

    back = _read_depth(tmp_path / "png" / "same.depth.png")
    assert back.shape == (32, 48) and lo - 1e-3 <= back.min() and back.max() <= hi + 1e-3
    header = (tmp_path / "preds.csv").read_text().splitlines()[0].split(",")
    assert {"depth_min_m", "depth_median_m", "depth_max_m", "depth_png_clipped_px", "depth_png", "depth_color_png"} <= set(header)


# -- both tasks on square scenes: train -> eval -> export int8 -> predict ------------------------

@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_dense_train_eval_export_predict(tmp_path, task):
    src = _square_npz(tmp_path / "src.npz", 24, 40, 56, depth=task == "depth", seg=task == "segmentation")
    test = _square_npz(tmp_path / "test.npz", 8, 40, 56, depth=task == "depth", seg=task == "segmentation", seed=1)
    res = _square_train(tmp_path, src, test, test)
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



# -- the CLI -----------------------------------------------------------------------------------

def test_cli_train_eval_predict_adapt_methods(data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli_run"
    r = runner.invoke(main, ["train", "--task", "segmentation", "--method", "source_only",
                             "--source", data["seg_src"], "--target", data["seg_tgt"], "--target-test", data["seg_test"],
                             "--iters", "2", "--eval-every", "2", "--batch-size", "4", "--image-size", "32,48",
                             "--backbone", "lraspp", "--backbone-option", "width=0.25", "--device", "cpu",
                             "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    bundle = res["bundle"]
    assert "target_test_miou" in res["metrics"]
    assert edgeda.load_bundle(bundle).task.image_size == (32, 48)

    r = runner.invoke(main, ["eval", bundle, "--data", data["seg_test"], "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert {"miou", "per_class_iou", "pixel_accuracy", "confusion"} <= set(ev)

    r = runner.invoke(main, ["predict", bundle, "--input", data["predict"], "--out", str(tmp_path / "p.csv"),
                             "--out-dir", str(tmp_path / "png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "png" / "same.mask.png").is_file() and (tmp_path / "png" / "sub" / "tall.ids.png").is_file()
    assert "corrupt.png" in r.output

    r = runner.invoke(main, ["adapt", bundle, "--target-dir", data["predict"], "--out", str(tmp_path / "adapted"),
                             "--method", "no_such_method"])
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "3cgan" in err and "tent" in err
    assert not (tmp_path / "adapted").exists()

    r = runner.invoke(main, ["methods", "--task", "depth"])
    assert r.exit_code == 0
    assert "source_only" in r.output
    listed = json.loads(runner.invoke(main, ["methods", "--task", "depth", "--json"]).stdout)
    assert "source_only" in listed and all("depth" in v["tasks"] for v in listed.values())


# -- resumable streams and runs ----------------------------------------------------------------

def _draw(stream, n):
    return [stream.next() for _ in range(n)]


def _same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x)
        assert torch.equal(x.y, y.y)


@pytest.mark.parametrize("kind", ["array", "folder"])
def test_dense_stream_resumes_at_the_same_batch(kind, tmp_path):
    from edgeda.data import load_domain
    from edgeda.tasks.spec import TaskSpec
    from edgeda.training.dense_stream import DenseStream

    if kind == "array":
        dom = load_domain(write_npz(tmp_path / "s.npz", 10, 32, 48), labeled=True)
        workers = None
        from edgeda.data.dense import ArrayDenseDomain

        assert isinstance(dom, ArrayDenseDomain)
    else:
        dom = load_domain(write_dense_folder(tmp_path / "f", 10, 32, 48, masks=True), labeled=True)
        workers = 2
        from edgeda.data.dense_files import FileDenseDomain

        assert isinstance(dom, FileDenseDomain)
    spec = TaskSpec(3, list(CLASSES), task="segmentation", image_size=(24, 32))

    def stream():
        return DenseStream(dom, spec, 3, torch.device("cpu"), 5, labeled=True, workers=workers)

    a = stream()
    first = _draw(a, 2)
    state = a.state_dict()
    rest = _draw(a, 3)  # 5 batches of 3 over 10 images: crosses an epoch boundary
    b = stream()
    b.load_state_dict(state)
    _same_batches(rest, _draw(b, 3))
    # and a fresh stream draws the very same five batches
    _same_batches(first + rest, _draw(stream(), 5))
    assert first[0].y.dtype == torch.int64 and first[0].x.shape == (3, 3, 24, 32)
    assert not torch.equal(first[0].x, rest[0].x)


def test_dense_run_resume_gives_the_same_weights(data, tmp_path):
    from safetensors.torch import load_file

    from edgeda.training import Trainer

    kw = dict(method="source_only", source=data["seg_src"], target=data["seg_tgt"], target_test=data["seg_test"],
              iters=4, eval_every=4, checkpoint_every=2, batch_size=4, image_size=[32, 32], backbone="lraspp",
              backbone_kwargs=TINY, device="cpu")
    full = Trainer(make_config(None, dict(kw, out=str(tmp_path / "full"))), progress=False, log=None).run()

    class Stop(Exception):
        pass

    def stop_after_2(it):
        if it == 2:
            raise Stop

    cfg = make_config(None, dict(kw, out=str(tmp_path / "cut")))
    with pytest.raises(Stop):
        Trainer(cfg, progress=False, log=None).run(callback=stop_after_2)
    logs, seen = [], []
    resumed = Trainer(cfg, progress=False, log=logs.append).run(resume=True, callback=seen.append)
    assert "resumed from iteration 2" in logs and seen == [3, 4]
    wa = load_file(str(full.bundle / "model.safetensors"))
    wb = load_file(str(resumed.bundle / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


def test_dense_stream_resumes_across_an_epoch_boundary(tmp_path):
    from edgeda.data import load_domain
    from edgeda.tasks.spec import TaskSpec
    from edgeda.training.dense_stream import DenseStream

    dom = load_domain(_square_npz(tmp_path / "s.npz", 10, 32, 48), labeled=True)
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
    src = _square_npz(tmp_path / "src.npz", 12, 32, 48)
    full = _square_train(tmp_path / "a", src, src, src, out=str(tmp_path / "a"))

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



# -- --init ------------------------------------------------------------------------------------

def test_init_from_a_dense_bundle_loads_its_model(tmp_path):
    """``--init`` with a segmentation bundle starts a method's task network from that bundle's
    ``model``; a bundle of another shape is one clear error."""
    from edgeda.config import make_config
    from edgeda.errors import EdgedaError
    from edgeda.training.trainer import Trainer

    src = _square_npz(tmp_path / "src.npz", 16, 32, 48)
    res = _square_train(tmp_path, src, src, None, iters=2)
    shipped = edgeda.load_bundle(res.bundle).model.state_dict()
    cfg = dict(method="advent", source=src, target=src, iters=2, batch_size=4, image_size=[32, 48], backbone="lraspp",
               backbone_kwargs={"width": 0.25}, device="cpu", init=str(res.bundle))
    tr = Trainer(make_config(None, {**cfg, "out": str(tmp_path / "adv")}), progress=False, log=None)
    tr.setup()  # what run() does first: the method, then --init
    got = tr.method.model.state_dict()
    assert set(got) == set(shipped) and all(torch.equal(got[k], shipped[k]) for k in shipped)
    fresh = Trainer(make_config(None, {**cfg, "init": None, "out": str(tmp_path / "fresh")}), progress=False, log=None)
    fresh.setup()
    assert not all(torch.equal(fresh.method.model.state_dict()[k], shipped[k]) for k in shipped)
    with pytest.raises(EdgedaError, match="does not fit"):
        Trainer(make_config(None, {**cfg, "backbone_kwargs": {"width": 0.5}, "out": str(tmp_path / "wide")}),
                progress=False, log=None).run()



# -- --backbone-weights ------------------------------------------------------------------------

DEEPLAB = {"encoder": "resnet18", "width": 0.25}


def _deeplab_trainer(data, tmp_path, weights):
    from edgeda.training import Trainer

    cfg = make_config(None, dict(method="source_only", source=data["seg_src"], target="", iters=1, batch_size=4,
                                 image_size=[32, 32], backbone="deeplab", backbone_kwargs=DEEPLAB,
                                 backbone_weights=str(weights), out=str(tmp_path / "run"), device="cpu"))
    logs = []
    return Trainer(cfg, progress=False, log=logs.append), logs


def test_backbone_weights_are_in_the_model_at_start(data, tmp_path):
    from safetensors.torch import save_file

    from edgeda.models.dense import make_dense_model

    torch.manual_seed(123)
    donor = make_dense_model("deeplab", 3, "logits", **DEEPLAB)
    with torch.no_grad():
        for p in donor.encoder.parameters():
            p.add_(torch.randn_like(p))  # unlike any fresh initialisation
    state = {k: v.contiguous() for k, v in donor.encoder.state_dict().items()}
    file = tmp_path / "encoder.safetensors"
    save_file({**state, "fc.weight": torch.randn(10, 8)}, str(file))

    tr, logs = _deeplab_trainer(data, tmp_path, file)
    tr.setup()
    enc = tr.method.model.encoder.state_dict()
    for k, v in state.items():
        assert torch.equal(enc[k], v), k
    assert any("tensors loaded" in line and "1 unused" in line for line in logs)

    res = tr.run()  # and training starts from there: one step later the bundle is a deeplab on resnet18
    mf = json.loads((res.bundle / "manifest.json").read_text())
    arch = json.dumps(mf["deployables"]["model"]["arch"])
    assert "deeplab" in arch and "resnet18" in arch


def test_backbone_weights_of_wrong_shapes_are_refused(data, tmp_path):
    from safetensors.torch import save_file

    from edgeda.models.dense import make_dense_model

    other = make_dense_model("deeplab", 3, "logits", encoder="resnet18", width=0.5)
    file = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in other.encoder.state_dict().items()}, str(file))
    tr, _ = _deeplab_trainer(data, tmp_path, file)
    with pytest.raises(EdgedaError, match="shape"):
        tr.setup()
