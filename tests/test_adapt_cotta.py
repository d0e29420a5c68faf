"""CoTTA on the device (stochastic restoration, the EMA teacher, augmentation averaging mapped back
to the frame, the teacher as the monitored and written model) and the method fixes that follow the
authors' code: dense SHOT's shipped-marginal prior, SHOT's weight decay, TENT on BatchNorm2d only."""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import edgeda
from conftest import stripe_scenes, tiny_config
from edgeda.adapt import ADAPT_METHODS, adapt
from edgeda.adapt.base import TargetSet
from edgeda.adapt.cotta import CoTTA, cotta_augment, multiscale_flip_probs, stochastic_restore
from edgeda.adapt.shot import mean_pixel_probabilities
from edgeda.bundle import Bundle
from edgeda.tasks.spec import TaskSpec
from edgeda.tasks import task_of

CLASSES = ("bg", "square", "stripe")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A tiny source-only segmentation bundle and a folder of target frames (PNG)."""
    root = tmp_path_factory.mktemp("cotta-seg")
    x, y = stripe_scenes(16, 32, 32, 0)
    np.savez(root / "src.npz", x=x, y=y, classes=np.array(CLASSES))
    xt, yt = stripe_scenes(8, 32, 32, 1, bright=200)
    np.savez(root / "tgt.npz", x=xt)
    np.savez(root / "test.npz", x=xt, y=yt, classes=np.array(CLASSES))
    res = edgeda.train(method="source_only", task="segmentation", source=str(root / "src.npz"),
                       target=str(root / "tgt.npz"), iters=30, eval_every=30, batch_size=8, image_size=[32, 32],
                       backbone="lraspp", backbone_kwargs={"width": 0.25}, out=str(root / "run"), device="cpu",
                       progress=False, log=None)
    frames = root / "camera"
    frames.mkdir()
    for i, img in enumerate(xt):
        Image.fromarray(img).save(frames / f"f{i:02d}.png")
    return {"bundle": res.bundle, "frames": frames, "test": str(root / "test.npz"), "x": xt}


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    """A tiny source-only syndigits classifier (DTN: BatchNorm2d and a BatchNorm1d) and 24 handwritten PNGs."""
    from edgeda.data import load_domain
    from edgeda.training import Trainer

    root = tmp_path_factory.mktemp("cotta-clf")
    res = Trainer(tiny_config(root, method="source_only", iters=20, eval_every=20, checkpoint_every=20),
                  progress=False, log=None).run()
    target = root / "camera"
    target.mkdir()
    dom = load_domain("handwritten:adapt", labeled=False, size=(8, 8), channels=1, n=24)
    for i, img in enumerate(dom.images):
        Image.fromarray(img[:, :, 0]).save(target / f"{i:03d}.png")
    return {"bundle": res.bundle, "frames": target}


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _written_params(path):
    b = Bundle(path)
    return _params(b.module(b.primary))


# -- the parts, by hand ----------------------------------------------------------------------------

def test_stochastic_restoration_resets_the_asked_share_of_elements():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 50))
    shipped = {k: v.clone() for k, v in model.state_dict().items()}
    n = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # every element moved away from the shipped value
    share = stochastic_restore(model, shipped, 0.3, torch.Generator().manual_seed(1))
    equal = sum(int((p == shipped[k]).sum()) for k, p in model.named_parameters())
    assert equal / n == pytest.approx(0.3, abs=0.02) and share == pytest.approx(equal / n, abs=1e-12)
    # the others keep their adapted value exactly
    assert all(torch.all((p == shipped[k]) | (p == shipped[k] + 1.0)) for k, p in model.named_parameters())
    again = stochastic_restore(model, shipped, 0.0, torch.Generator().manual_seed(2))
    assert again == 0.0 and sum(int((p == shipped[k]).sum()) for k, p in model.named_parameters()) == equal
    stochastic_restore(model, shipped, 1.0, torch.Generator().manual_seed(3))
    assert all(torch.equal(p, shipped[k]) for k, p in model.named_parameters())


def _dense_cotta(options=None):
    spec = TaskSpec(3, list(CLASSES), task="segmentation", image_size=(32, 32))
    torch.manual_seed(0)
    model = task_of(spec).build_model(spec, "lraspp", {"width": 0.25})
    return CoTTA(model, spec, options=options), spec


def test_teacher_is_the_ema_of_the_updated_student_and_restoration_follows():
    m, spec = _dense_cotta({"alpha": 0.9, "restore_p": 0.0, "anchor_threshold": 1.0})
    assert m.opts["lr"] == 5e-4 and m.opts["anchor_threshold"] == 1.0  # dense defaults, explicit options win
    x = torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    out = m.step(x)
    assert out["averaged"] == 1.0  # every pixel is below a threshold of 1: all targets averaged
    student = m.model.state_dict()
    moved = 0
    for k, t in m.teacher.state_dict().items():
        if t.is_floating_point():
            assert torch.allclose(t, 0.9 * before[k] + 0.1 * student[k], atol=1e-6), k
            moved += int(not torch.equal(t, before[k]))
    assert moved  # the student did move, and the teacher with it
    # with p = 1 every student weight is back at the shipped value after the step; the teacher is not
    m1, _ = _dense_cotta({"alpha": 0.9, "restore_p": 1.0})
    shipped = _params(m1.model)
    m1.step(x)
    assert all(torch.equal(p, shipped[k]) for k, p in m1.model.named_parameters())
    assert any(not torch.equal(p, shipped[k]) for k, p in m1.teacher.named_parameters())


class _Pointwise(nn.Module):
    """Class-1 logit = 10 * channel 0 + a * column index; class-0 logit = 0 (a 1x1 model plus a ramp)."""

    def __init__(self, ramp=0.0):
        super().__init__()
        self.ramp = ramp

    def forward(self, x):
        cols = torch.arange(x.shape[-1], dtype=x.dtype).view(1, 1, 1, -1)
        z1 = 10 * x[:, :1] + self.ramp * cols
        return torch.cat([torch.zeros_like(z1), z1], 1)


def test_flip_auto_mirrors_only_what_the_shipped_model_was_trained_to_see_mirrored():
    spec = TaskSpec(3, list(CLASSES), task="segmentation", image_size=(32, 32))
    torch.manual_seed(0)
    model = task_of(spec).build_model(spec, "lraspp", {"width": 0.25})
    assert CoTTA(model, spec).flip  # unknown training settings: a scene mirrors into a scene
    assert CoTTA(model, spec, training={"config": {"augment_hflip": True}}).flip
    assert not CoTTA(model, spec, training={"config": {"augment_hflip": False}}).flip  # digit scenes
    assert CoTTA(model, spec, options={"flip": "on"}, training={"config": {"augment_hflip": False}}).flip


def test_balanced_soft_cross_entropy_weighs_each_target_class_alike():
    from edgeda.adapt.losses import class_balanced_cross_entropy, class_balanced_soft_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    labels = torch.zeros(2, 4, 5, dtype=torch.long)
    labels[0, 0, :2] = 1  # two object pixels among 40
    labels[1, 3, 4] = 2
    onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    # one-hot targets: the hard class-balanced loss
    assert torch.allclose(class_balanced_soft_cross_entropy(logits, onehot), class_balanced_cross_entropy(logits, labels))
    # by hand: per-pixel soft CE, mean within each arg-max class, then over the 3 classes
    soft = 0.7 * onehot + 0.1
    ce = -(soft * logits.log_softmax(1)).sum(1)
    want = torch.stack([ce[labels == k].mean() for k in range(3)]).mean()
    assert torch.allclose(class_balanced_soft_cross_entropy(logits, soft), want)
    # the plain mean would weigh background 37 to 3
    assert not torch.allclose(ce.mean(), want)


def test_balanced_entropy_weighs_each_predicted_class_alike():
    from edgeda.adapt.tasks import adaptation_of
    from edgeda.scores import entropy

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    logits[:, 0] += 3.0  # mostly class 0
    h, pred = entropy(logits), logits.argmax(1)
    want = torch.stack([h[pred == k].mean() for k in range(3) if bool((pred == k).any())]).mean()
    ta = adaptation_of("segmentation")
    assert torch.allclose(ta.entropy(None, logits, balanced=True), want)
    assert torch.allclose(ta.entropy(None, logits), h.mean())
    assert not torch.allclose(h.mean(), want)


def test_balance_auto_is_on_for_segmentation_only(clf):
    spec = TaskSpec(3, list(CLASSES), task="segmentation", image_size=(32, 32))
    torch.manual_seed(0)
    model = task_of(spec).build_model(spec, "lraspp", {"width": 0.25})
    assert CoTTA(model, spec).balanced
    assert not CoTTA(model, spec, options={"balance": "off"}).balanced
    b = Bundle(clf["bundle"])
    assert not CoTTA(b.module(b.primary), b.task).balanced
    assert CoTTA(b.module(b.primary), b.task, options={"balance": "on"}).balanced
    from edgeda.adapt.tent import Tent

    assert Tent(model, spec).balanced and not Tent(model, spec, options={"balance": "off"}).balanced
    assert not Tent(b.module(b.primary), b.task).balanced


def test_flip_average_maps_the_mirrored_prediction_back_to_the_frame():
    x = torch.full((1, 3, 2, 6), -1.0)
    x[..., :2] = 1.0  # the left third is class 1
    single = _Pointwise()(x).softmax(1)
    # a content-only model predicts the same map on the mirrored frame, once it is mirrored back
    assert torch.allclose(multiscale_flip_probs(_Pointwise(), x, (1.0,), flip=True), single, atol=1e-6)
    assert single[0, 1, 0, 0] > 0.99 and single[0, 1, 0, -1] < 0.01
    # a position-dependent model by hand: column j sees sigma(a j) unflipped, sigma(a (W-1-j)) mirrored
    a, w = 0.7, 6
    zero = torch.zeros(1, 3, 1, w)
    got = multiscale_flip_probs(_Pointwise(ramp=a), zero, (1.0,), flip=True)[0, 1, 0]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want = torch.tensor([(sig(a * j) + sig(a * (w - 1 - j))) / 2 for j in range(w)])
    assert torch.allclose(got, want, atol=1e-6)
    # a rescaled copy comes back at the frame's size
    assert multiscale_flip_probs(_Pointwise(), torch.randn(2, 3, 8, 12), (0.75, 1.0, 1.5)).shape == (2, 2, 8, 12)


def test_classification_augmentation_keeps_pixels_in_range_and_varies():
    g = torch.Generator().manual_seed(0)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    a, b = cotta_augment(x, mean, std, g), cotta_augment(x, mean, std, g)
    assert a.shape == x.shape and a.min() >= -1 - 1e-6 and a.max() <= 1 + 1e-6
    assert not torch.allclose(a, b) and not torch.allclose(a, x)


def test_downscaled_copies_only_where_the_frame_keeps_a_128_pixel_side():
    from edgeda.adapt.cotta import usable_scales

    assert usable_scales((0.75, 1.0, 1.5), (64, 64)) == (1.0, 1.5)
    assert usable_scales((0.75, 1.0, 1.5), (64, 128)) == (1.0, 1.5)
    assert usable_scales((0.5, 0.75, 1.0, 1.5), (256, 512)) == (0.5, 0.75, 1.0, 1.5)
    assert usable_scales((0.25, 0.5, 1.0), (256, 512)) == (0.5, 1.0)
    assert usable_scales((0.5,), (64, 64)) == (1.0,)  # nothing usable: the frame itself


# -- the runs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["seg", "clf"])
def test_cotta_cli_writes_a_bundle_that_evaluates(request, tmp_path, kind):
    from edgeda.cli import main

    d = request.getfixturevalue(kind)
    out = tmp_path / "cotta.edgeda"
    args = ["adapt", str(d["bundle"]), "--target-dir", str(d["frames"]), "--out", str(out), "--method", "cotta",
            "--iters", "3", "--batch", "4", "--json"]
    if kind == "clf":
        args += ["--option", "augmentations=2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    r = json.loads(res.output[res.output.index("{"):])
    assert r["iterations"] == 3 and not r["collapsed"]
    a = Bundle(out).manifest["adaptation"]
    assert a["method"] == "cotta" and a["options"]["lr"] == (5e-4 if kind == "seg" else 1e-3)
    if kind == "seg":
        ev = edgeda.evaluate(out, d["test"], device="cpu")
        assert 0.0 <= ev["miou"] <= 1.0
    else:
        from edgeda.bundle_eval import evaluate_bundle

        ev = evaluate_bundle(out, "handwritten:test", device="cpu")
        assert ev["n"] == 797 and 0.0 <= ev["accuracy"] <= 1.0


def test_the_monitored_and_written_model_is_the_teacher(seg, tmp_path):
    """With p = 1 the student is the shipped model after every step; only the teacher moves. The
    written weights must be the teacher's, the very ones the last check saw."""
    seen = []
    r = adapt(seg["bundle"], seg["frames"], tmp_path / "o.edgeda", method="cotta", iters=3, batch=4, check_every=3,
              select="last", options={"restore_p": 1.0, "alpha": 0.5},
              on_check=lambda it, st, model: seen.append((it, _params(model))))
    assert r.iterations == 3 and seen[-1][0] == 3
    shipped, written = _written_params(seg["bundle"]), _written_params(r.bundle)
    assert any(not torch.equal(written[k], shipped[k]) for k in shipped)  # not the (restored) student
    assert all(torch.equal(written[k], seen[-1][1][k]) for k in written)  # what the monitor checked


def test_rollback_of_cotta_restores_the_teacher(seg, tmp_path):
    """A collapse planted in the teacher is caught (the monitor watches the teacher) and the shipped
    state is written."""
    class _Broken(CoTTA):
        def step(self, x, idx=None):
            out = super().step(x, idx)
            with torch.no_grad():
                from edgeda.adapt.base import hypothesis_layers

                for conv in hypothesis_layers(self.teacher):
                    conv.bias[0] = 1e4
            return out

    with ADAPT_METHODS.registered("cotta_broken_probe", _Broken):
        r = adapt(seg["bundle"], seg["frames"], tmp_path / "o.edgeda", method="cotta_broken_probe", iters=4, batch=4,
                  check_every=2)
    assert r.collapsed and "one class" in r.message
    shipped, written = _written_params(seg["bundle"]), _written_params(r.bundle)
    assert all(torch.equal(written[k], shipped[k]) for k in shipped)


# -- SHOT, TENT, FDA --------------------------------------------------------------------------------

def test_dense_shot_pulls_towards_the_shipped_marginal_by_default(seg):
    b = Bundle(seg["bundle"])
    spec = b.task
    model = b.module(b.primary)
    target = TargetSet(seg["x"], spec, "cpu")
    shipped = mean_pixel_probabilities(model, target)
    m = ADAPT_METHODS.get("shot")(model, spec)
    assert m.opts["diversity_prior"] == "shipped" and m.opts["weight_decay"] == 1e-3
    assert all(g["weight_decay"] == 1e-3 for g in m.optims["features"].param_groups)
    m.prepare(target)
    assert torch.allclose(m.prior, shipped, atol=1e-6)
    assert abs(float(m.prior.sum()) - 1) < 1e-5 and float(m.prior.max()) < 0.999  # a marginal, not uniform
    m.step(target.tensor(slice(0, 4)), torch.arange(4))
    m.prepare(target)  # a refresh after an update keeps the marginal measured before adaptation
    assert torch.allclose(m.prior, shipped, atol=1e-6)
    uniform = ADAPT_METHODS.get("shot")(b.module(b.primary), spec, options={"diversity_prior": "uniform"})
    uniform.prepare(target)
    assert uniform.prior is None


def test_classification_shot_keeps_the_uniform_diversity_term(clf):
    b = Bundle(clf["bundle"])
    m = ADAPT_METHODS.get("shot")(b.module(b.primary), b.task)
    assert m.opts["diversity_prior"] == "uniform"


def test_tent_adapts_batchnorm2d_only(clf, tmp_path):
    r = adapt(clf["bundle"], clf["frames"], tmp_path / "t.edgeda", method="tent", iters=3, batch=8, select="last")
    assert r.iterations == 3
    b = Bundle(clf["bundle"])
    model = b.module(b.primary)
    kinds = {n: type(m) for n, m in model.named_modules()}
    shipped, written = _written_params(clf["bundle"]), _written_params(r.bundle)
    bn1 = [k for k in shipped if kinds[k.rsplit(".", 1)[0]] is nn.BatchNorm1d]
    bn2 = [k for k in shipped if kinds[k.rsplit(".", 1)[0]] is nn.BatchNorm2d]
    assert bn1 and bn2
    assert all(torch.equal(written[k], shipped[k]) for k in bn1)  # the BatchNorm1d after the FC layer: as shipped
    assert any(not torch.equal(written[k], shipped[k]) for k in bn2)
    assert all(torch.equal(written[k], shipped[k]) for k in shipped if k not in bn2)


def test_without_a_method_each_task_adapts_with_its_default(seg, clf, tmp_path):
    assert adapt(seg["bundle"], seg["frames"], tmp_path / "seg.edgeda", iters=2).method == "tent"
    assert adapt(clf["bundle"], clf["frames"], tmp_path / "clf.edgeda", iters=2).method == "shot"
    assert json.loads((tmp_path / "seg.edgeda" / "manifest.json").read_text())["adaptation"]["method"] == "tent"
