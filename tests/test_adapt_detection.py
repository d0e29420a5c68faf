"""On-device adaptation of detection bundles: TENT and CoTTA end to end through the CLI, the
per-anchor objectives and the anchor mirror map by hand, and the collapse monitor on detections
that vanish or explode (rolled back to a healthy state)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import edgeda
from edgeda.adapt import ADAPT_METHODS, adapt
from edgeda.adapt.base import AdaptMethod
from edgeda.adapt.detection import (DetectionMonitor, DetectionStats, anchor_entropy, class_probs,
                                    mirror_permutation)
from edgeda.adapt.tasks import adaptation_of
from edgeda.bundle import Bundle, write_bundle
from edgeda.models import build
from edgeda.tasks.spec import TaskSpec

CLASSES = ["red", "green"]
SIZE = 64
SMALL = {"ssdlite": {"width": 0.25},
         "fcos": {"backbone": "resnet18", "width": 8, "fpn_channels": 64, "num_convs": 1}}
TRAIN = {"ssdlite": (250, 5e-3), "fcos": (60, 3e-3)}  # (iterations, Adam lr) that give confident detections

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def squares(n, seed, bright=1.0):
    """(uint8 (n, 64, 64, 3) images, box targets): one or two red (class 0) or green (class 1) squares
    on a dark background; ``bright`` scales the squares' colour (the target shift)."""
    g = np.random.default_rng(seed)
    x = np.full((n, SIZE, SIZE, 3), 30, np.uint8)
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(g.integers(1, 3))):
            c, s = int(g.integers(0, 2)), int(g.integers(14, 26))
            x0, y0 = (int(v) for v in g.integers(0, SIZE - s, 2))
            colour = np.array([200, 60, 60] if c == 0 else [60, 200, 60]) * bright
            x[i, y0:y0 + s, x0:x0 + s] = np.clip(colour, 0, 255)
            boxes.append([x0, y0, x0 + s, y0 + s])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return x, targets


def spec():
    return TaskSpec(num_classes=2, classes=CLASSES, task="detection", image_size=(SIZE, SIZE), channels=3,
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def train_detector(arch):
    x, targets = squares(32, 0)
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.manual_seed(0)
    model = build("detector", arch=arch, num_classes=2, channels=3, image_size=[SIZE, SIZE], **SMALL[arch])
    iters, lr = TRAIN[arch]
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(iters):
        idx = torch.randint(0, len(x), (8,), generator=g)
        loss = model.loss(model(xt[idx]), [targets[i] for i in idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """Tiny trained SSDLite and FCOS bundles (written with the bundle API) and a folder of target PNGs
    (the squares dimmer)."""
    root = tmp_path_factory.mktemp("adapt-det")
    bundles = {}
    for arch in SMALL:
        bundles[arch] = write_bundle(root / f"{arch}.edgeda", {"model": train_detector(arch)}, spec(),
                                     method={"name": "source_only"})
    frames = root / "camera"
    frames.mkdir()
    xt, _ = squares(16, 1, bright=0.8)
    for i, img in enumerate(xt):
        Image.fromarray(img).save(frames / f"f{i:02d}.png")
    yolo = root / "labeled"  # the same target, labeled as a YOLO folder (for the report only)
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    (yolo / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    xl, truth = squares(12, 2, bright=0.8)
    for i, (img, t) in enumerate(zip(xl, truth)):
        Image.fromarray(img).save(yolo / "images" / f"l{i:02d}.png")
        rows = [f"{c} {(b[0] + b[2]) / 2 / SIZE} {(b[1] + b[3]) / 2 / SIZE} {(b[2] - b[0]) / SIZE} {(b[3] - b[1]) / SIZE}"
                for b, c in zip(t["boxes"].tolist(), t["labels"].tolist())]
        (yolo / "labels" / f"l{i:02d}.txt").write_text("\n".join(rows) + "\n")
    return {"bundles": bundles, "frames": frames, "labeled": yolo}


def _state(path):
    b = Bundle(path)
    return {k: v.detach().clone() for k, v in b.module(b.primary).state_dict().items()}


def _hashes(path):
    import hashlib

    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*")) if f.is_file()}


def class_biases(model):
    """The biases of the layers that output the class logits: SSDLite one conv per level (anchors x
    (K+1) channels, column c at c, c+K+1, ...), FCOS ``cls_logits`` (K+1)."""
    return [p for n, p in model.named_parameters()
            if n == "head.classification_head.cls_logits.bias"
            or (n.startswith("head.classification_head.module_list.") and n.endswith(".1.bias") and n.count(".") == 5)]


# -- the parts, by hand ----------------------------------------------------------------------------

class _Fake(torch.nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.arch = arch


def test_anchor_entropy_and_probabilities_by_hand():
    z = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]])  # (B=1, A=2, K+1=3)
    ssd, fcos = _Fake("ssdlite"), _Fake("fcos")
    h = anchor_entropy(ssd, {"cls_logits": z})
    assert h[0, 0].item() == pytest.approx(np.log(3), abs=1e-6)  # uniform over background and two classes
    assert h[0, 1].item() < 1e-3
    assert class_probs(ssd, {"cls_logits": z}).shape == (1, 2, 3)
    # FCOS: column 0 is unused; the sum of the binary entropies of the K sigmoids
    hf = anchor_entropy(fcos, {"cls_logits": z})
    assert hf[0, 0].item() == pytest.approx(2 * np.log(2), abs=1e-6)
    assert hf[0, 1].item() == pytest.approx(2 * np.log(2), abs=1e-6)  # column 0's 10 is ignored
    assert class_probs(fcos, {"cls_logits": z}).shape == (1, 2, 2)


def test_tent_detection_objective_weights_anchors_by_foreground():
    """A sure-background anchor with a high-entropy tail weighs (almost) nothing; an anchor split
    between two classes carries the objective."""
    ta = adaptation_of("detection")
    ssd = _Fake("ssdlite")
    background = torch.tensor([12.0, 0.0, 0.0])  # p_bg ~ 0.99999
    split = torch.tensor([-8.0, 0.0, 0.0])  # foreground, half class 0 half class 1: H ~ log 2
    z = torch.stack([background] * 50 + [split])[None].requires_grad_(True)
    loss = ta.entropy(ssd, {"cls_logits": z})
    assert loss.item() == pytest.approx(np.log(2), abs=0.01)  # the split anchor's entropy
    unweighted = anchor_entropy(ssd, {"cls_logits": z.detach()}).mean().item()
    assert unweighted < 0.05  # what a plain mean over anchors would minimise: the background's
    loss.backward()
    assert z.grad[0, :50].abs().max() < 0.01 * z.grad[0, 50].abs().max()


def test_mirror_permutation_by_hand_and_on_ssdlite_anchors():
    anchors = torch.tensor([[0.0, 0, 4, 4], [6.0, 0, 10, 4], [2.0, 2, 8, 6]])
    perm = mirror_permutation(anchors, 10.0)
    assert perm.tolist() == [1, 0, 2]
    assert mirror_permutation(torch.tensor([[0.0, 0, 4, 4], [5.0, 0, 9, 4]]), 10.0) is None  # no mirror partner
    model = build("detector", arch="ssdlite", num_classes=2, channels=3, image_size=[SIZE, SIZE], **SMALL["ssdlite"])
    a = model.anchors((SIZE, SIZE))
    p = mirror_permutation(a, float(SIZE))
    assert p is not None and torch.equal(p[p], torch.arange(len(a))) and int((p != torch.arange(len(a))).sum()) > 0
    mirrored = torch.stack([SIZE - a[:, 2], a[:, 1], SIZE - a[:, 0], a[:, 3]], 1)
    assert torch.allclose(a[p], mirrored, atol=1e-3)
    fcos = build("detector", arch="fcos", num_classes=2, channels=3, image_size=[SIZE, SIZE], **SMALL["fcos"])
    assert mirror_permutation(fcos.anchors((SIZE, SIZE)), float(SIZE)) is None  # locations at j x stride


def _stats(mean_detections, top=0.5, detections=100, finite=True):
    if not finite:
        return {"finite": False, "n": 8}
    return {"finite": True, "n": 8, "score_threshold": 0.3, "mean_detections": mean_detections,
            "detections": detections, "class_histogram": [top, 1 - top], "top_class_fraction": max(top, 1 - top)}


def test_detection_monitor_flags_vanishing_exploding_one_class_and_nan():
    mon = DetectionMonitor(_stats(2.0, top=0.6), 2)
    assert mon.check(_stats(2.0)) is None
    assert mon.check(_stats(0.8)) is None  # fewer, not gone
    assert "vanished" in mon.check(_stats(0.4))  # below 0.25 x 2
    assert mon.check(_stats(7.5)) is None
    assert "exploded" in mon.check(_stats(8.5))  # above max(4 x 2, 2 + 3)
    assert "one class" in mon.check(_stats(2.0, top=0.95))
    assert mon.check(_stats(2.0, top=0.95, detections=5)) is None  # too few detections to judge the classes
    assert "NaN" in mon.check(_stats(0, finite=False))
    assert mon.check({**_stats(2.0), "score_drift": 0.2}) is None
    assert "score distribution" in mon.check({**_stats(2.0), "score_drift": 0.3})
    lim = mon.limits()
    assert lim["min_mean_detections"] == 0.5 and lim["max_mean_detections"] == 8.0 and lim["max_top_class_fraction"] == 0.9


def test_detection_stats_count_after_nms_and_measure_drift():
    model = build("detector", arch="ssdlite", num_classes=2, channels=3, image_size=[SIZE, SIZE], **SMALL["ssdlite"])
    model.eval()
    x = torch.zeros(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x)
        out["cls_logits"][..., 0] += 30.0  # every anchor sure background
        quiet = DetectionStats(2)
        quiet.update(model, {k: v.clone() for k, v in out.items()})
        base = quiet.result()
        loud_out = {k: v.clone() for k, v in out.items()}
        loud_out["cls_logits"][..., 1] += 60.0  # every anchor sure of class 0
        loud = DetectionStats(2)
        counts = loud.update(model, loud_out)
        res = loud.result(base["score_histogram"])
    assert base["mean_detections"] == 0 and base["score_drift"] == 0.0
    n_anchors = out["cls_logits"].shape[1]
    assert 0 < res["mean_detections"] < n_anchors  # NMS merged the overlapping anchors
    assert counts.tolist() == [int(res["mean_detections"])] * 2
    assert res["class_histogram"] == [1.0, 0.0] and res["classes_present"] == 1
    # every anchor's best score moved from ~0 to ~1: Wasserstein-1 ~ 1 (0.99 with 100 bins)
    assert res["score_drift"] == pytest.approx(1.0, abs=0.011) and res["mean_max_score"] == pytest.approx(1.0)
    assert res["confidence_minus_drift"] == pytest.approx(0.0, abs=0.011)
    shifted = torch.zeros(100, dtype=torch.float64)
    shifted[3] = 1.0  # the reference one shows every anchor at score ~0.035: W1 = 0.03
    quiet_again = DetectionStats(2)
    quiet_again.update(model, out)
    assert quiet_again.result(shifted.tolist())["score_drift"] == pytest.approx(0.03, abs=1e-9)
    assert quiet_again.result(base["score_histogram"])["score_drift"] == 0.0
    bad = DetectionStats(2)
    bad.update(model, {**out, "cls_logits": out["cls_logits"] * float("nan")})
    assert bad.result() == {"finite": False, "n": 2}


# -- end to end ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,method", [("ssdlite", "tent"), ("ssdlite", "cotta"), ("fcos", "tent"),
                                         ("fcos", "cotta")])
def test_tent_and_cotta_adapt_a_detection_bundle_through_the_cli(det, tmp_path, arch, method):
    from edgeda.cli import main

    bundle = det["bundles"][arch]
    before = _hashes(bundle)
    out = tmp_path / "adapted.edgeda"
    res = CliRunner().invoke(main, ["adapt", str(bundle), "--target-dir", str(det["frames"]), "--out", str(out),
                                    "--method", method, "--iters", "6", "--batch", "4", "--select", "last",
                                    "--threads", "1", "--labels", str(det["labeled"]), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    # the report's mAP (labels read only for it) is the task's COCO evaluation of the shipped and written models
    acc = rep["accuracy"]
    assert acc["metric"] == "map" and acc["n"] == 12
    assert acc["before"] == pytest.approx(edgeda.evaluate(bundle, str(det["labeled"]), device="cpu")["map"], abs=1e-9)
    assert acc["after"] == pytest.approx(edgeda.evaluate(out, str(det["labeled"]), device="cpu")["map"], abs=1e-9)
    assert acc["before"] > 0.02  # the shipped detector finds some of the labeled squares
    assert _hashes(bundle) == before  # the input bundle is untouched
    assert rep["iterations"] == 6 and not rep["collapsed"]
    a = Bundle(out).manifest["adaptation"]
    assert a["task"] == "detection" and a["method"] == method and a["safety"]["per"] == "image"
    assert a["selection"]["score"] == "confidence_minus_drift" and a["selection"]["selected_iteration"] == 6
    assert a["budget"]["train_crop"] == [SIZE, SIZE]  # detection frames are never cropped
    for s in (a["before"], a["after"]):
        assert s["finite"] and s["n"] == 16 and len(s["class_histogram"]) == 2
    assert a["before"]["mean_detections"] > 0.5  # the shipped detector detects the target squares
    assert a["safety"]["limits"]["min_mean_detections"] == pytest.approx(0.25 * a["before"]["mean_detections"],
                                                                         abs=1e-4)
    model = Bundle(out).module()  # the written bundle loads and detects
    with torch.no_grad():
        dets = model.postprocess(model(torch.zeros(1, 3, SIZE, SIZE)))
    assert set(dets[0]) == {"boxes", "scores", "labels"}
    old, new = _state(bundle), _state(out)
    changed = {k for k in old if old[k].is_floating_point() and not torch.equal(old[k], new[k])}
    names = dict(model.named_modules())
    bn = {f"{n}.{p}" for n, m in names.items() if isinstance(m, torch.nn.BatchNorm2d)
          for p in ("weight", "bias", "running_mean", "running_var")}
    affine = {f"{n}.{p}" for n, m in names.items() if isinstance(m, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    if method == "tent":  # only BatchNorm: affine parameters trained, statistics re-estimated
        assert changed <= bn and changed & affine
    else:  # CoTTA's teacher ships: an EMA of a student that trains every weight
        conv = {f"{n}.weight" for n, m in names.items() if isinstance(m, torch.nn.Conv2d)}
        assert changed & conv


class _DetectionCollapser(AdaptMethod):
    """Test method: harmless for ``after`` steps, then shifts the class-logit biases of the detector:
    ``mode`` = vanish (every anchor background) or explode (every anchor class 0)."""

    name = "detection_collapse_probe"
    defaults = {"mode": "vanish", "after": 3}
    tasks = ("detection",)

    def build(self):
        self.steps = 0

    def step(self, x, idx=None):
        self.steps += 1
        if self.steps > self.opts["after"]:
            k1 = self.task.num_classes + 1
            with torch.no_grad():
                for b in class_biases(self.model):
                    if self.model.arch == "fcos":  # sigmoids: every class off, or every class on
                        b[1:] += -30.0 if self.opts["mode"] == "vanish" else 30.0
                    else:  # softmax: background, or class 0, wins at every anchor
                        b[0 if self.opts["mode"] == "vanish" else 1::k1] += 30.0
        return {}


@pytest.fixture
def collapser():
    with ADAPT_METHODS.registered("detection_collapse_probe", _DetectionCollapser):
        yield


@pytest.mark.parametrize("arch,mode", [("ssdlite", "vanish"), ("ssdlite", "explode"), ("fcos", "vanish"),
                                       ("fcos", "explode")])
def test_vanishing_and_exploding_detections_are_flagged_and_rolled_back(det, tmp_path, collapser, arch, mode):
    bundle = det["bundles"][arch]
    r = adapt(bundle, det["frames"], tmp_path / "o.edgeda", method="detection_collapse_probe", iters=20, batch=4,
              check_every=2, options={"mode": mode}, threads=1)
    assert r.collapsed and r.stopped_because == "collapse" and r.iterations == 4
    assert ("vanished" if mode == "vanish" else "exploded") in r.message
    a = Bundle(r.bundle).manifest["adaptation"]
    assert a["safety"]["status"] == "rolled_back" and a["last_good_iteration"] == 2
    shipped, written = _state(bundle), _state(r.bundle)
    assert all(torch.equal(shipped[k], written[k]) for k in shipped)  # the rollback is the shipped model
    assert a["after"]["mean_detections"] == pytest.approx(a["before"]["mean_detections"])


def test_a_collapse_exits_3_from_the_cli(det, tmp_path, collapser):
    from edgeda.cli import main

    res = CliRunner().invoke(main, ["adapt", str(det["bundles"]["fcos"]), "--target-dir", str(det["frames"]), "--out",
                                    str(tmp_path / "cli.edgeda"), "--method", "detection_collapse_probe", "--iters",
                                    "10", "--batch", "4", "--option", "mode=explode", "--json"])
    assert res.exit_code == 3, res.output
    assert "exploded" in json.loads(res.output[res.output.index("{"):])["message"]


def test_cotta_detection_targets_average_the_mirror_where_the_bundle_trained_with_flips(det):
    from edgeda.adapt.cotta import CoTTA

    x = (torch.from_numpy(squares(2, 3)[0]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    for arch in SMALL:
        model = Bundle(det["bundles"][arch]).module()  # trained: its scores differ between anchors
        flips = CoTTA(model, spec(), training={"config": {"augment_hflip": True}})
        assert flips.flip
        assert not CoTTA(model, spec(), training={"config": {"augment_hflip": False}}).flip
        assert CoTTA(model, spec()).flip  # not recorded: on
        t = flips.teacher.eval()
        with torch.no_grad():
            plain = class_probs(t, t(x))
            got = flips.averaged_probs(x)
            if arch == "ssdlite":  # mirrored frame's scores, anchors mapped back, averaged with the frame's
                perm = mirror_permutation(t.anchors((SIZE, SIZE)), float(SIZE))
                want = 0.5 * (plain + class_probs(t, t(x.flip(-1)))[:, perm])
                assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, plain, atol=1e-4)
            else:  # no mirror map of FCOS's locations: the unaugmented teacher scores
                assert torch.equal(got, plain)
        y, share = flips.targets(x)
        assert y.shape == plain.shape and 0.0 <= share <= 1.0


def test_every_task_an_adapt_method_supports_has_its_task_adaptation():
    from edgeda.adapt.tasks import TaskAdaptation

    tasks = {t for _, cls in ADAPT_METHODS.items() for t in cls.tasks}
    assert "detection" in tasks
    for t in tasks:
        assert isinstance(adaptation_of(t), TaskAdaptation)
    assert adaptation_of("detection").score_name == "confidence_minus_drift" and not adaptation_of("detection").crops
    assert adaptation_of("segmentation").score_name == "info_max" and adaptation_of("segmentation").crops
