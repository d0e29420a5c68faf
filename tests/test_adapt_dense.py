"""`edgeda adapt` on dense bundles: per-pixel losses and statistics, the collapse monitor over
pixels, TENT and SHOT on a tiny segmentation bundle, and the refusal of depth bundles."""
import inspect
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import edgeda
from edgeda.adapt import ADAPT_METHODS, AdaptMethod, adapt
from edgeda.adapt.base import hypothesis_layers
from edgeda.adapt.budget import plan_dense
from edgeda.adapt.losses import class_balanced_cross_entropy, pixel_information_maximisation_terms
from edgeda.adapt.safety import CollapseMonitor, prediction_stats
from edgeda.bundle import Bundle
from edgeda.errors import EdgedaError
from edgeda.utils import sha256_file
from conftest import stripe_scenes

CLASSES = ("bg", "square", "stripe")
N_TARGET = 12


def _scene(n, seed, h=32, w=32, bright=230):
    """A bright square (class 1) and a dark stripe (class 2) on a noisy background."""
    return stripe_scenes(n, h, w, seed, bright)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A tiny source-only segmentation bundle whose source data is deleted before any adaptation,
    a target folder of PNGs (one corrupt) and labeled target frames for the report."""
    root = tmp_path_factory.mktemp("adapt-dense")
    x, y = _scene(24, 0)
    src = root / "src.npz"
    np.savez(src, x=x, y=y, classes=np.array(CLASSES))
    xt, yt = _scene(N_TARGET, 1, bright=200)  # the target: a dimmer square
    tgt = root / "tgt.npz"
    np.savez(tgt, x=xt)
    test = root / "test.npz"
    np.savez(test, x=xt, y=yt, classes=np.array(CLASSES))
    res = edgeda.train(method="source_only", task="segmentation", source=str(src), target=str(tgt), iters=60,
                       eval_every=60, batch_size=8, image_size=[32, 32], backbone="lraspp",
                       backbone_kwargs={"width": 0.25}, out=str(root / "run"), device="cpu", progress=False, log=None)
    src.unlink()  # adaptation is source-free: nothing below may need the source images
    frames = root / "camera"
    frames.mkdir()
    for i, img in enumerate(xt):
        Image.fromarray(img).save(frames / f"f{i:02d}.png")
    (frames / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return {"bundle": res.bundle, "frames": frames, "test": str(test), "root": root}


def _hashes(path):
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def _state(path):
    b = Bundle(path)
    return b.module(b.primary).state_dict()


# -- losses on hand-made tensors -----------------------------------------------------------------

def test_pixel_information_maximisation_terms_by_hand():
    # two frames of 1 x 2 pixels, two classes; probabilities chosen through their logits
    p = torch.tensor([[[0.9, 0.5]], [[0.5, 0.1]]])  # p(class 0) per pixel, (N=2, H=1, W=2)
    logits = torch.stack([p.log(), (1 - p).log()], 1)  # (2, 2, 1, 2)
    ent, div_img, div_batch = pixel_information_maximisation_terms(logits, eps=0.0)

    def h(q):
        return -sum(v * math.log(v) for v in q if v > 0)

    pixels = [0.9, 0.5, 0.5, 0.1]
    assert ent.item() == pytest.approx(np.mean([h([v, 1 - v]) for v in pixels]), abs=1e-6)
    assert div_img.item() == pytest.approx((h([0.7, 0.3]) + h([0.3, 0.7])) / 2, abs=1e-6)
    assert div_batch.item() == pytest.approx(h([0.5, 0.5]), abs=1e-6)
    # with a prior the batch term is -KL(marginal || prior): zero, its maximum, when they agree
    _, _, at_prior = pixel_information_maximisation_terms(logits, eps=0.0, prior=torch.tensor([0.5, 0.5]))
    assert at_prior.item() == pytest.approx(0.0, abs=1e-6)
    _, _, off = pixel_information_maximisation_terms(logits, eps=0.0, prior=torch.tensor([0.9, 0.1]))
    assert off.item() == pytest.approx(-(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)), abs=1e-6)
    # a uniform frame marginal maximises both diversity terms; one class everywhere zeroes them
    one = torch.zeros(2, 2, 3, 3)
    one[:, 0] = 20.0
    _, d_img, d_batch = pixel_information_maximisation_terms(one)
    assert d_img.item() < 1e-3 and d_batch.item() < 1e-3


def test_class_balanced_cross_entropy_by_hand():
    # 4 pixels: three of class 0 (CE = -log 0.5 each), one of class 1 (CE = -log 0.2), one ignored
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.1, 0.9]])
    logits = probs.log().t().reshape(1, 2, 1, 5)
    labels = torch.tensor([[[0, 0, 0, 1, 255]]])
    cb = class_balanced_cross_entropy(logits, labels)
    assert cb.item() == pytest.approx((-math.log(0.5) + -math.log(0.2)) / 2, abs=1e-6)
    plain = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert plain.item() == pytest.approx((3 * -math.log(0.5) - math.log(0.2)) / 4, abs=1e-6)  # the rare class counts 1/4
    assert class_balanced_cross_entropy(logits, torch.full_like(labels, 255)).item() == 0.0


def test_info_max_against_a_prior_by_hand():
    # one frame of two pixels, two classes: p(class 0) = 0.9 and 0.5; mean p = (0.7, 0.3)
    p = torch.tensor([[[0.9, 0.5]]])
    logits = torch.stack([p.log(), (1 - p).log()], 1)  # (1, 2, 1, 2)
    mean_ent = (-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) + math.log(2)) / 2
    uniform = prediction_stats(logits)
    assert uniform["info_max"] == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)) - mean_ent, abs=1e-6)
    assert uniform["mean_probabilities"] == pytest.approx([0.7, 0.3], abs=1e-6)
    kl = 0.7 * math.log(0.7 / 0.9) + 0.3 * math.log(0.3 / 0.1)  # KL(mean p || prior) with prior (0.9, 0.1)
    rel = prediction_stats(logits, prior=torch.tensor([0.9, 0.1]))
    assert rel["info_max"] == pytest.approx(-kl - mean_ent, abs=1e-6) and rel["diversity_reference"] == "prior"
    own = prediction_stats(logits, prior=torch.tensor(uniform["mean_probabilities"]))
    assert own["info_max"] == pytest.approx(-mean_ent, abs=1e-6)  # against its own marginal: KL = 0


# -- the monitor over pixels ---------------------------------------------------------------------

def test_monitor_flags_pixel_collapse():
    torch.manual_seed(0)
    healthy = torch.randn(6, 4, 8, 8) * 3
    base = prediction_stats(healthy, healthy.argmax(1))
    assert base["pixels"] == 6 * 64 and base["agreement_with_shipped"] == 1.0 and base["classes_present"] == 4
    mon = CollapseMonitor(base, 4)
    assert mon.check(prediction_stats(healthy)) is None
    one = healthy.clone()
    one[:, 0] += 100  # every pixel of every frame in class 0
    assert "one class" in mon.check(prediction_stats(one))
    eight = torch.randn(6, 8, 8, 8) * 3
    mon8 = CollapseMonitor(prediction_stats(eight), 8)
    vanish = eight.clone()
    vanish[:, 3:] -= 100  # five of eight classes never predicted, the other three balanced
    assert "vanished" in mon8.check(prediction_stats(vanish))
    swallowed = healthy.clone()
    for i in range(4):  # four of the six frames each taken over by a different class
        swallowed[i, i] += 100
    assert "swallowed" in mon.check(prediction_stats(swallowed))
    assert "exploded" in mon.check(prediction_stats(healthy * 0.01))
    assert "NaN" in mon.check(prediction_stats(torch.full((2, 4, 3, 3), float("nan"))))


def test_dense_memory_plan_crops_after_halving_the_batch():
    assert plan_dense(8, None, fixed_mb=100, per_sample_mb=10, size=(64, 128)) == (8, (64, 128), "fp32", 340.0)
    b, crop, precision, est = plan_dense(8, 200, fixed_mb=100, per_sample_mb=10, size=(64, 128))
    assert (b, crop) == (2, (64, 128)) and est <= 200
    b, crop, _, est = plan_dense(8, 120, fixed_mb=100, per_sample_mb=10, size=(64, 128))
    assert b == 2 and crop[0] < 64 and crop[1] < 128 and est <= 120
    with pytest.raises(EdgedaError, match="too small"):
        plan_dense(8, 101, fixed_mb=100, per_sample_mb=10, size=(64, 128))


# -- the run ---------------------------------------------------------------------------------------

def test_no_option_lets_source_data_in_dense(seg, tmp_path):
    from edgeda.adapt.cli import adapt as cmd

    names = {n for p in cmd.params for n in (p.name, *getattr(p, "opts", []))}
    assert not [n for n in names if "source" in n.lower() or n.lower().lstrip("-") in ("src", "s")]
    assert not [n for n in inspect.signature(adapt).parameters if "source" in n or n == "src"]
    # the bundle names its source domain, which is gone from the disk: the dense run never reads it
    assert Bundle(seg["bundle"]).manifest["task"]["task"] == "segmentation"
    r = adapt(seg["bundle"], seg["frames"], tmp_path / "o.edgeda", method="tent", iters=2, batch=4)
    assert r.iterations == 2 and r.manifest["source_free"] and r.manifest["task"] == "segmentation"


@pytest.mark.parametrize("method", ["tent", "shot"])
def test_tent_and_shot_adapt_a_segmentation_bundle(seg, tmp_path, method):
    bundle = seg["bundle"]
    before = _hashes(bundle)
    out = tmp_path / f"{method}.edgeda"
    r = adapt(bundle, seg["frames"], out, method=method, iters=4, batch=4, labels=seg["test"], select="last")
    assert _hashes(bundle) == before  # the input bundle is untouched
    assert r.iterations == 4 and not r.collapsed
    a = Bundle(out).manifest["adaptation"]
    assert a["target"]["images_used"] == N_TARGET and a["target"]["files_skipped"] == 1
    assert a["safety"]["per"] == "pixel" and a["before"]["pixels"] == N_TARGET * 32 * 32
    assert a["budget"]["frame"] == [32, 32] == a["budget"]["train_crop"]
    assert r.accuracy["metric"] == "miou" and 0 <= r.accuracy["before"] <= 1 and 0 <= r.accuracy["after"] <= 1
    ev = edgeda.evaluate(out, seg["test"], device="cpu")  # the report is the written model's full-frame mIoU
    assert ev["miou"] == pytest.approx(r.accuracy["after"], abs=1e-9)
    old, new = _state(bundle), _state(out)
    changed = {k for k in old if old[k].is_floating_point() and not torch.equal(old[k], new[k])}
    assert changed
    model = Bundle(bundle).module(Bundle(bundle).primary)
    names = dict(model.named_modules())
    hyp = {f"{n}.{p}" for n, m in names.items() if m in hypothesis_layers(model) for p, _ in m.named_parameters()}
    assert not changed & hyp  # both keep the final classifier (SHOT's hypothesis; TENT touches only BN)
    if method == "tent":
        bn = {f"{n}.{p}" for n, m in names.items() if isinstance(m, torch.nn.BatchNorm2d)
              for p in ("weight", "bias", "running_mean", "running_var")}
        assert changed <= bn
    else:
        conv = {f"{n}.weight" for n, m in names.items() if isinstance(m, torch.nn.Conv2d)}
        assert changed & conv  # SHOT trains the feature extractor


def test_memory_plan_crops_train_on_windows_and_evaluate_full_frames(seg, tmp_path, monkeypatch):
    import edgeda.adapt.plan as runner

    seen = []
    monkeypatch.setattr(runner, "plan_dense", lambda b, mb, **kw: (2, (16, 24), "fp32", 1.0))  # as a tight budget would
    orig = ADAPT_METHODS.get("shot").step

    def spy(self, x, idx=None):
        seen.append((tuple(x.shape[-2:]), self.window, tuple(self._labels(idx).shape[-2:])))
        return orig(self, x, idx)

    monkeypatch.setattr(ADAPT_METHODS.get("shot"), "step", spy)
    r = adapt(seg["bundle"], seg["frames"], tmp_path / "o.edgeda", method="shot", iters=3, memory_mb=1.0, select="last")
    assert r.iterations == 3 and r.manifest["budget"]["train_crop"] == [16, 24]
    for shape, window, labels in seen:  # images and their pseudo-labels cut by the same window
        assert shape == (16, 24) == labels and window[2:] == (16, 24)
        assert 0 <= window[0] <= 16 and 0 <= window[1] <= 8
    assert r.after["pixels"] == N_TARGET * 32 * 32  # the monitor and the statistics see full frames


class _PixelCollapser(AdaptMethod):
    """Test method: harmless for two steps, then pushes every pixel into class 0."""

    name = "pixel_collapse_probe"
    defaults = {}
    tasks = ("segmentation",)

    def build(self):
        self.steps = 0

    def step(self, x, idx=None):
        self.steps += 1
        if self.steps >= 3:
            with torch.no_grad():
                for conv in hypothesis_layers(self.model):
                    conv.bias[0] = 1e4
        return {}


@pytest.fixture
def pixel_collapser():
    with ADAPT_METHODS.registered("pixel_collapse_probe", _PixelCollapser):
        yield


def test_planted_pixel_collapse_is_detected_and_rolled_back(seg, tmp_path, pixel_collapser):
    bundle = seg["bundle"]
    r = adapt(bundle, seg["frames"], tmp_path / "o.edgeda", method="pixel_collapse_probe", iters=20, batch=4,
              check_every=2)
    assert r.collapsed and r.stopped_because == "collapse" and r.iterations == 4
    assert "one class" in r.message and "pixels" in r.message
    a = Bundle(r.bundle).manifest["adaptation"]
    assert a["safety"]["status"] == "rolled_back" and a["last_good_iteration"] == 2
    shipped, written = _state(bundle), _state(r.bundle)
    assert all(torch.equal(shipped[k], written[k]) for k in shipped)  # the rollback is the shipped model
    from edgeda.cli import main

    res = CliRunner().invoke(main, ["adapt", str(bundle), "--target-dir", str(seg["frames"]), "--out",
                                    str(tmp_path / "cli.edgeda"), "--method", "pixel_collapse_probe", "--iters", "20",
                                    "--batch", "4", "--json"])
    assert res.exit_code == 3, res.output
    assert json.loads(res.output[res.output.index("{"):])["collapsed"] is True


class _LogitShift(AdaptMethod):
    """Test method: its preparation changes the hypothesis layers once: ``background`` adds that much
    to the background class's bias (negative: background pixels turn into foreground classes),
    ``scale`` multiplies every weight and bias (above 1: the same argmax, more confident)."""

    name = "logit_shift_probe"
    defaults = {"background": 0.0, "scale": 1.0}
    tasks = ("segmentation",)

    def build(self):
        pass

    def prepare(self, target):
        with torch.no_grad():
            for conv in hypothesis_layers(self.model):
                conv.weight.mul_(float(self.opts["scale"]))
                conv.bias.mul_(float(self.opts["scale"]))
                conv.bias[0] += float(self.opts["background"])

    def step(self, x, idx=None):
        return {}


@pytest.mark.parametrize("shift", ["background_to_foreground", "sharpen"])
def test_dense_selection_measures_diversity_against_the_shipped_marginal(seg, tmp_path, shift):
    """Turning background into foreground raises H(mean p) (the classifier's info_max) but is not
    an improvement; it must not beat the shipped state. Sharpening the same predictions must."""
    seen = []
    opts = {"background": -2.0} if shift == "background_to_foreground" else {"scale": 2.0}
    with ADAPT_METHODS.registered("logit_shift_probe", _LogitShift):
        r = adapt(seg["bundle"], seg["frames"], tmp_path / "o.edgeda", method="logit_shift_probe", iters=2, batch=4,
                  check_every=1, options=opts, on_check=lambda it, st, clf: seen.append(st))
    assert not r.collapsed, r.message
    sel = Bundle(r.bundle).manifest["adaptation"]["selection"]
    shipped_im = sel["shipped_info_max"]
    if shift == "sharpen":
        assert all(s > shipped_im for _, s in sel["info_max_per_check"])
        assert sel["selected_iteration"] != "shipped"
        return
    bg_before, bg_after = r.before["class_histogram"][0], seen[-1]["class_histogram"][0]
    assert bg_after < bg_before - 0.1  # the shift really moved pixels out of the background
    uniform = [prediction_stats_uniform(st) for st in seen]
    shipped_uniform = prediction_stats_uniform(r.before)
    assert min(uniform) > shipped_uniform  # the uniform-marginal score would have written it
    assert all(s < shipped_im for _, s in sel["info_max_per_check"])
    assert sel["selected_iteration"] == "shipped"
    shipped, written = _state(seg["bundle"]), _state(r.bundle)
    assert all(torch.equal(shipped[k], written[k]) for k in shipped)


def prediction_stats_uniform(stats):
    """H(mean p) - mean H(p) of recorded statistics."""
    return -sum(q * math.log(q) for q in stats["mean_probabilities"] if q > 0) - stats["mean_entropy"]


def test_depth_bundle_is_one_error_naming_the_methods(tmp_path):
    from edgeda.bundle import write_bundle
    from edgeda.tasks.spec import TaskSpec
    from edgeda.tasks import task_of

    spec = TaskSpec(task="depth", image_size=(32, 32), channels=3, depth_range=(0.1, 80.0))
    model = task_of(spec).build_model(spec, "lraspp", {"width": 0.25})
    bundle = write_bundle(tmp_path / "depth.edgeda", {task_of(spec).deployable: model}, spec)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(_scene(1, i)[0][0]).save(frames / f"{i}.png")
    for method in ("tent", "shot", "3cgan", None):  # None: the task's default, which depth has not
        with pytest.raises(EdgedaError, match="methods for depth bundles: none yet"):
            adapt(bundle, frames, tmp_path / "o.edgeda", method=method)
    from edgeda.cli import main

    for method in ("tent", "3cgan"):
        res = CliRunner().invoke(main, ["adapt", str(bundle), "--target-dir", str(frames), "--out",
                                        str(tmp_path / "o.edgeda"), "--method", method])
        assert res.exit_code == 2 and "none yet" in res.output and method in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.edgeda").exists()
    assert not (tmp_path / "o.edgeda").exists()
