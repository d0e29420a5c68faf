import os

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Rendered built-in domains go to a per-session cache (never the user's)."""
    os.environ["EDGEDA_CACHE"] = str(tmp_path_factory.mktemp("edgeda-cache"))
    # the torch.export-based ONNX exporter takes ~15 s per model on a CPU: tests export with the
    # TorchScript one, except the test of the exporter choice (test_export.py), which asks for auto
    os.environ.setdefault("EDGEDA_ONNX_EXPORTER", "torchscript")
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def tiny_config(tmp_path, **kw):
    """A training config that runs in a second or two on a CPU."""
    from edgeda.config import make_config

    base = dict(out=str(tmp_path / "run"), iters=6, batch_size=8, eval_every=3, checkpoint_every=3,
                source_n=200, device="cpu", backbone_kwargs={"width": 8, "out_dim": 32})
    base.update(kw)
    return make_config(None, base)


@pytest.fixture
def write_png():
    from PIL import Image

    def write(path, size=(12, 10), mode="RGB", value=128):
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.full((size[1], size[0], 3 if mode == "RGB" else 1), value, np.uint8)
        Image.fromarray(arr if mode == "RGB" else arr[:, :, 0], mode if mode != "RGB" else None).save(path)
        return path

    return write


def stripe_scenes(n, h, w, seed, bright=230):
    """(x, y): a bright square (class 1) and a dark vertical stripe (class 2) on a noisy background."""
    rng = np.random.default_rng(seed)
    x = rng.integers(60, 140, (n, h, w, 3)).astype(np.uint8)
    y = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y[i, r:r + h // 3, c:c + w // 3] = 1
        s = rng.integers(0, w - 4)
        y[i, :, s:s + 3] = 2
    x[y == 1] = bright
    x[y == 2] = 10
    return x, y


def square_scenes(n, h, w, seed, bright=150):
    """(x, y): a square brightened by ``bright`` (class 1) on a dark noisy background (class 0)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, h, w, 3)).astype(np.uint8)
    y = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y[i, r:r + h // 2, c:c + w // 2] = 1
    x[y == 1] += bright
    return x, y


def square_npz(path, n, h, w, seed, bright=150, classes=("bg", "fg")):
    """``square_scenes`` written as a labelled .npz domain; returns its path as a string."""
    x, y = square_scenes(n, h, w, seed, bright)
    np.savez(path, x=x, y=y, classes=np.array(classes))
    return str(path)


SEG_CLASSES = ("bg", "fg", "sky")


def seg_spec(k=2, size=(32, 48)):
    """A segmentation task of ``k`` classes, for method steps on hand-made batches."""
    from edgeda.tasks.spec import TaskSpec

    return TaskSpec(k, list(SEG_CLASSES[:k]), task="segmentation", image_size=size)


def seg_batches(n=4, k=2, seed=0, ignore_rows=0):
    """(source, target) batches of 32x48 noise, the target's brighter by 1; the source masks hold ``k``
    classes, with their first ``ignore_rows`` rows ignored (255)."""
    import torch

    from edgeda.methods import Batch

    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(n, 3, 32, 48, generator=g), torch.randn(n, 3, 32, 48, generator=g) + 1.0
    y = torch.randint(0, k, (n, 32, 48), generator=g)
    y[:, :ignore_rows] = 255
    return Batch(xs, y), Batch(xt)


EMBEDDED_DENSE_PAIRS = [("digitscenes", "handwritten-scenes", "handwritten-scenes:test"),
                        ("synscenes", "synscenes:photo", "synscenes:photo-test")]


def box_scenes_coco(folder, n=8, seed=0, size=64, shift=0):
    """``n`` images of ``size`` with one or two objects each, a square (class "a") or a bar (class
    "b") on a dark background (``shift`` brightens it), in a COCO folder; returns the json's path."""
    import json

    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((size, size, 3), 20 + shift, np.uint8)
        for _ in range(1 + i % 2):
            cls = int(rng.integers(0, 2))
            w, h = (size // 4, size // 4) if cls == 0 else (size * 3 // 8, size // 8)
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            img[y:y + h, x:x + w] = (230, 200, 40) if cls == 0 else (40, 200, 230)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls + 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png", "width": size, "height": size})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(folder / "annotations.json")


def train_on_embedded_pair(tmp_path, method, options, pair, iters=2):
    """A segmentation run of ``iters`` iterations on an embedded dense pair (32x64, tiny lraspp):
    returns the training result after checking every training loss stayed finite."""
    import edgeda

    source, target, test = pair
    res = edgeda.train(method=method, options=options, source=source, target=target, target_test=test, task="segmentation",
                       iters=iters, eval_every=iters, checkpoint_every=iters, batch_size=2, image_size=[32, 64],
                       backbone="lraspp", backbone_kwargs={"width": 0.25}, out=str(tmp_path / "run"), device="cpu",
                       progress=False, log=None, seed=0, source_n=16)
    assert all(np.isfinite(v) for h in res.history for k, v in h.items() if k.startswith("train/loss/"))
    return res


def smoke_run_on_embedded_pair(tmp_path, method, options, pair):
    """``train_on_embedded_pair``, its test mIoU a fraction with a per-class table; on synscenes the
    bundle also exports (fp32 parity checked) and predicts like any other."""
    res = train_on_embedded_pair(tmp_path, method, options, pair)
    assert 0.0 <= res.metrics["target_test_miou"] <= 1.0 and res.metrics["target_test_per_class"]
    if pair[0] == "synscenes":
        assert "model" in export_and_predict(res.bundle, tmp_path)["deployables"]
    return res


def train_on_square_npz(tmp_path, method, options):
    """Three iterations of ``method`` from square scenes to dimmer ones (32x48, tiny lraspp); the
    bundle evaluates to the mIoU the run recorded, with a per-class table."""
    import edgeda

    src = square_npz(tmp_path / "src.npz", 12, 32, 48, 0)
    tgt = square_npz(tmp_path / "tgt.npz", 8, 32, 48, 1, bright=90)
    res = edgeda.train(method=method, options=options, source=src, target=tgt, target_test=tgt, iters=3, eval_every=3,
                       checkpoint_every=3, batch_size=4, image_size=[32, 48], backbone="lraspp",
                       backbone_kwargs={"width": 0.25}, out=str(tmp_path / "run"), device="cpu", progress=False, log=None)
    assert res.task == "segmentation"
    ev = edgeda.evaluate(res.bundle, tgt)  # the test split the run scored the bundle on
    assert ev["miou"] == pytest.approx(res.metrics["target_test_miou"], abs=1e-6)
    assert set(ev["per_class_iou"]) == {"bg", "fg"}
    return res


def check_embedded_bundle(res, pair, tmp_path):
    """The bundle of a run on an embedded dense pair ships only the model and evaluates to an mIoU
    with a per-class table; on synscenes it also exports (fp32 parity checked) and predicts."""
    import edgeda

    b = edgeda.load_bundle(res.bundle)
    assert sorted(b.manifest["deployables"]) == ["model"]
    ev = edgeda.evaluate(res.bundle, pair[2])
    assert 0.0 <= ev["miou"] <= 1.0 and "per_class_iou" in ev
    if pair[0] == "synscenes":
        export_and_predict(res.bundle, tmp_path)


def assert_running_stats_follow(model, reference):
    """Every BatchNorm running mean / variance of ``model`` equals ``reference``'s (the statistics a
    chosen batch alone would give); returns the first of them."""
    import torch

    got, want = model.state_dict(), reference.state_dict()
    keys = [k for k in want if k.endswith(("running_mean", "running_var"))]
    assert keys
    for k in keys:
        torch.testing.assert_close(got[k], want[k])
    return got[keys[0]].clone()


def export_and_predict(bundle, tmp_path, size=(32, 64)):
    """Export a dense bundle (the exporter checks fp32 parity against PyTorch per deployable) and
    predict two frames with the exported bundle: what a user does with any trained bundle."""
    import edgeda
    from PIL import Image

    report = edgeda.export(bundle, tmp_path / "exported")
    for name, entry in report["deployables"].items():
        assert entry["parity_fp32"]["real"]["max_abs_diff"] <= 1e-4, name
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    pred = edgeda.predict(tmp_path / "exported", frames, out=tmp_path / "p.csv", out_dir=tmp_path / "png")
    assert pred["n"] == 2 and (tmp_path / "png" / "f0.mask.png").is_file()
    return report


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared two-core machine two OpenMP threads mostly wait on each other."""
    import torch

    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


class _Rec:
    """Records attribute calls; stands in for TensorRT objects whose behaviour is not under test."""

    def __init__(self, name, log):
        self._name, self._log = name, log

    def __getattr__(self, k):
        if k.startswith("__"):
            raise AttributeError(k)
        return _Rec(f"{self._name}.{k}", self._log)

    def __call__(self, *a, **kw):
        self._log.append((self._name, a))
        return _Rec(self._name + "()", self._log)

    def __bytes__(self):
        return b"cache"


def fake_tensorrt(version, log, input_shape=(-1, 3, 32, 32), outputs=("logits",)):
    """A stand-in for the ``tensorrt`` module with the calls ``build_engine`` makes (not TensorRT itself):
    ``log`` receives each call, and ``("parse", onnx_bytes)`` for the graph handed to the ONNX parser."""
    import types

    class Tensor:
        name, shape = "image", tuple(input_shape)

    class Network:
        num_inputs, num_outputs = 1, len(outputs)

        def get_input(self, i):
            return Tensor()

        def get_output(self, i):
            return type("Out", (), {"name": outputs[i]})()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log.append(("create_network", (flags,)))
            return Network()

        def create_builder_config(self):
            return _Rec("config", log)

        def create_optimization_profile(self):
            return _Rec("profile", log)

        def build_serialized_network(self, network, config):
            return b"PLAN"

    def parse(self, data):
        log.append(("parse", data))
        return True

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Builder = Builder
    trt.OnnxParser = type("OnnxParser", (), {"__init__": lambda s, n, lg: None, "parse": parse, "num_errors": 0})
    trt.MemoryPoolType, trt.BuilderFlag = _Rec("MemoryPoolType", log), _Rec("BuilderFlag", log)
    trt.init_libnvinfer_plugins = _Rec("init_libnvinfer_plugins", log)
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})
    return trt
