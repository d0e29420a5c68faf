"""3C-GAN on segmentation bundles: confident layouts from the shipped model, a short run on a tiny
segmentation bundle (written bundle loads and predicts, input untouched), and depth still refused."""
import numpy as np
import pytest
import torch
from PIL import Image

import edgeda
from edgeda.adapt import adapt
from edgeda.adapt.threecgan import ThreeCGAN, confident_layouts
from edgeda.bundle import Bundle
from edgeda.errors import EdgedaError
from edgeda.utils import sha256_file
from conftest import stripe_scenes

CLASSES = ("bg", "square", "stripe")
N_TARGET = 8
SMALL = {"g_width": 8, "d_width": 8, "d_layers": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A tiny source-only segmentation bundle (its source data deleted) and a folder of target PNGs."""
    root = tmp_path_factory.mktemp("adapt-3cgan-dense")
    x, y = stripe_scenes(16, 32, 32, 0)
    src = root / "src.npz"
    np.savez(src, x=x, y=y, classes=np.array(CLASSES))
    xt, yt = stripe_scenes(N_TARGET, 32, 32, 1, bright=200)
    tgt = root / "tgt.npz"
    np.savez(tgt, x=xt)
    test = root / "test.npz"
    np.savez(test, x=xt, y=yt, classes=np.array(CLASSES))
    res = edgeda.train(method="source_only", task="segmentation", source=str(src), target=str(tgt), iters=30,
                       eval_every=30, batch_size=8, image_size=[32, 32], backbone="lraspp",
                       backbone_kwargs={"width": 0.25}, out=str(root / "run"), device="cpu", progress=False, log=None)
    src.unlink()
    frames = root / "camera"
    frames.mkdir()
    for i, img in enumerate(xt):
        Image.fromarray(img).save(frames / f"f{i:02d}.png")
    return {"bundle": res.bundle, "frames": frames, "test": str(test)}


def _hashes(path):
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def test_confident_layouts_ignore_pixels_below_the_threshold():
    # one frame, 3 classes, 1 x 4 pixels: top probabilities 0.95 (class 2), 0.5 (class 0), 0.9 (class 1), 1/3 (tie)
    probs = torch.tensor([[0.025, 0.025, 0.95], [0.5, 0.3, 0.2], [0.05, 0.9, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    logits = probs.log().t().reshape(1, 3, 1, 4)
    assert confident_layouts(logits, 0.9).tolist() == [[[2, 255, 1, 255]]]
    assert confident_layouts(logits, 0.0)[0, 0, :3].tolist() == [2, 0, 1]
    assert (confident_layouts(logits, 1.0) == 255).all()


def test_dense_defaults_overlay_and_explicit_options_win(seg):
    b = Bundle(seg["bundle"])
    m = ThreeCGAN(b.module(b.primary), b.task, options={"g_width": 8, "lambda_vat": "0"})
    assert m.opts["g_width"] == 8 and m.opts["lambda_vat"] == 0.0 and m.opts["z_dim"] == 32  # the dense z
    assert m.default_iters < ThreeCGAN.default_iters and m.model_passes == 3.0
    assert m.G.num_classes == len(CLASSES)
    with pytest.raises(EdgedaError, match="confidence"):
        ThreeCGAN(b.module(b.primary), b.task, options={"confidence": 1.5})


def test_3cgan_adapts_a_segmentation_bundle(seg, tmp_path):
    bundle = seg["bundle"]
    before = _hashes(bundle)
    out = tmp_path / "3cgan.edgeda"
    seen = {}

    def spy(it, stats, clf):
        seen.setdefault("its", []).append(it)

    r = adapt(bundle, seg["frames"], out, method="3cgan", iters=3, batch=4, labels=seg["test"], select="last",
              options={**SMALL, "gen_warmup": 0.0}, check_every=3, on_check=spy)
    assert _hashes(bundle) == before  # the input bundle is untouched
    assert r.iterations == 3 and not r.collapsed and seen["its"][-1] == 3
    a = Bundle(out).manifest["adaptation"]
    assert a["method"] == "3cgan" and a["task"] == "segmentation" and a["safety"]["per"] == "pixel"
    assert a["options"]["z_dim"] == 32 and a["options"]["confidence"] == 0.9
    assert r.accuracy["metric"] == "miou" and 0 <= r.accuracy["after"] <= 1
    nb = Bundle(out)
    model = nb.module(nb.primary).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, len(CLASSES), 32, 32) and torch.isfinite(logits).all()
    old, new = Bundle(bundle).module(Bundle(bundle).primary).state_dict(), model.state_dict()
    assert any(v.is_floating_point() and not torch.equal(v, new[k]) for k, v in old.items())
    pred = edgeda.evaluate(out, seg["test"], device="cpu")
    assert pred["miou"] == pytest.approx(r.accuracy["after"], abs=1e-9)


def test_3cgan_dense_steps_on_crops_with_layouts_cut_alike(seg, tmp_path, monkeypatch):
    import edgeda.adapt.plan as runner

    monkeypatch.setattr(runner, "plan_dense", lambda b, mb, **kw: (2, (16, 24), "fp32", 1.0))
    seen = []
    orig = ThreeCGAN._batch_layouts

    def spy(self, idx, n):
        lay = orig(self, idx, n)
        seen.append((tuple(lay.shape), self.window))
        return lay

    monkeypatch.setattr(ThreeCGAN, "_batch_layouts", spy)
    r = adapt(seg["bundle"], seg["frames"], tmp_path / "o.edgeda", method="3cgan", iters=2, memory_mb=1.0,
              select="last", options=SMALL)
    assert r.iterations == 2 and r.manifest["budget"]["train_crop"] == [16, 24]
    assert [s for s, _ in seen] == [(2, 16, 24)] * 2 and all(w[2:] == (16, 24) for _, w in seen)


def test_class_thresholds_keep_a_portion_of_every_predicted_class():
    from edgeda.adapt.threecgan import class_thresholds

    # class 0: confident (0.95-0.99); class 1: never above 0.9 (0.5, 0.6, 0.7, 0.8); class 2 not predicted
    conf = torch.tensor([0.95, 0.97, 0.99, 0.5, 0.6, 0.7, 0.8])
    arg = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    thr = class_thresholds(conf, arg, 3, threshold=0.9, portion=0.5)
    assert thr[0].item() == pytest.approx(0.9)            # min(0.9, median 0.97)
    assert thr[1].item() == pytest.approx(0.65)           # the median of class 1's confidences
    assert thr[2].item() == pytest.approx(0.9)
    probs = torch.tensor([[0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.4, 0.6, 0.0]]).T.reshape(1, 3, 1, 3)
    # pixel 0: class 0 at 0.8 < 0.9 -> ignored; pixel 1: class 1 at 0.7 >= 0.65 kept; pixel 2: 0.6 < 0.65 ignored
    assert confident_layouts(probs.clamp_min(1e-6).log(), thr).tolist() == [[[255, 1, 255]]]
