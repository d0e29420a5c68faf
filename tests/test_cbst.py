"""CBST: class-balanced thresholds on hand-made confidences, the round schedule, class-normalised
pseudo-labels, smoke runs from a source-only bundle on the embedded dense pairs, and resume within a round."""
import math

import numpy as np
import pytest
import torch

import edgeda
from edgeda.errors import EdgedaError
from edgeda.methods import METHODS, Batch
from edgeda.task import TaskSpec
from edgeda.methods.class_balanced import (ConfidenceSample, class_confidence_thresholds, class_normalised_labels,
                                            kept_count, round_at, round_proportion)
from conftest import EMBEDDED_DENSE_PAIRS, export_and_predict, square_scenes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _confidences(counts, seed=0):
    """Distinct confidences in (0.6, 1) and predicted classes, ``counts[c]`` positions of class c, shuffled."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    conf = 0.6 + 0.4 * torch.randperm(len(pred), generator=g).float() / len(pred)
    return conf, pred[torch.randperm(len(pred), generator=g)]


@pytest.mark.parametrize("p", [0.2, 0.25, 0.35, 0.5, 1.0])
def test_thresholds_keep_the_asked_proportion_of_each_class(p):
    counts = [37, 100, 3, 0, 1, 250]
    conf, pred = _confidences(counts)
    t = class_confidence_thresholds(conf, pred, len(counts), p)
    for c, n in enumerate(counts):
        kept = int(((pred == c) & (conf >= t[c])).sum())
        if n == 0:
            assert t[c] == 1.0 and kept == 0
            continue
        assert kept == kept_count(n, p)
        # the share kept is p within rounding (a class keeps at least its most confident position)
        assert abs(kept - p * n) <= 0.5 + 1e-9 or (kept == 1 and p * n < 0.5), (c, kept, n)
        # the threshold is a confidence of the class itself: its kept positions are the most confident ones
        assert t[c] in conf[pred == c] and bool((conf[(pred == c) & (conf < t[c])] < t[c]).all())
    # each class is ranked alone: a class whose confidences are all low still keeps its share
    low = torch.cat([conf, torch.full((10,), 0.3) + torch.arange(10) * 0.01])
    lp = torch.cat([pred, torch.full((10,), 3)])
    t2 = class_confidence_thresholds(low, lp, len(counts), p)
    assert int(((lp == 3) & (low >= t2[3])).sum()) == kept_count(10, p) and t2[3] < 0.4
    with pytest.raises(EdgedaError, match="proportion"):
        class_confidence_thresholds(conf, pred, len(counts), 0.0)


def test_confidence_sample_is_bounded_seeded_and_exact_when_it_keeps_everything():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(5, 4, 16, 24, generator=g).softmax(1)
    conf, pred = probs.max(1)
    full = ConfidenceSample(4, per_image=0)
    full.add(probs[:2])
    full.add(probs[2:])
    assert len(full) == 5 * 16 * 24
    assert torch.equal(full.thresholds(0.3), class_confidence_thresholds(conf.flatten(), pred.flatten(), 4, 0.3))
    assert torch.equal(full.counts(), torch.bincount(pred.flatten(), minlength=4))

    def sampled(seed):
        s = ConfidenceSample(4, per_image=50, generator=torch.Generator().manual_seed(seed))
        s.add(probs)
        return s

    a, b, c = sampled(0), sampled(0), sampled(1)
    assert len(a) == 5 * 50  # memory grows with images, not pixels
    assert torch.equal(a.thresholds(0.3), b.thresholds(0.3)) and not torch.equal(a.thresholds(0.3), c.thresholds(0.3))
    # sampled positions are real positions of each image (no duplicates within an image)
    assert torch.cat(a._conf).unique().numel() == 5 * 50
    assert all(bool(torch.isin(v, conf.flatten()).all()) for v in a._conf)
    classification = ConfidenceSample(3, per_image=10)
    classification.add(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]))
    assert len(classification) == 2 and classification.thresholds(0.5).tolist() == pytest.approx([0.7, 0.8, 1.0])


def test_round_schedule():
    assert [round_proportion(r) for r in range(9)] == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.5, 0.5])
    assert round_proportion(-1) == pytest.approx(0.2)
    # 7 rounds over 1200 iterations from --init: each round starts where floor(7 it / 1200) changes
    rounds = [round_at(it / 1200, 7) for it in range(1200)]
    starts = [it for it in range(1200) if it == 0 or rounds[it] != rounds[it - 1]]
    assert starts == [math.ceil(1200 * r / 7) for r in range(7)] and rounds[-1] == 6
    assert sorted(set(rounds)) == list(range(7)) and all(b >= a for a, b in zip(rounds, rounds[1:]))
    # from scratch: a source-only third first, then the rounds evenly over the rest
    assert round_at(0.0, 7, 1 / 3) == -1 and round_at(0.33, 7, 1 / 3) == -1 and round_at(1 / 3, 7, 1 / 3) == 0
    assert round_at(0.999, 7, 1 / 3) == 6 and round_at(1 / 3 + 2 / 21 + 1e-6, 7, 1 / 3) == 1


def test_pseudo_labels_ignore_pixels_below_their_class_threshold():
    # three pixels by hand, thresholds (0.9, 0.4, 1.0)
    probs = torch.tensor([[0.95, 0.04, 0.01], [0.85, 0.10, 0.05], [0.50, 0.45, 0.05]]).T.reshape(1, 3, 1, 3)
    labels, kept = class_normalised_labels(probs, torch.tensor([0.9, 0.4, 1.0]))
    # 0.95 / 0.9 >= 1: class 0; 0.85 / 0.9 < 1 and 0.10 / 0.4 < 1: ignored; 0.45 / 0.4 > 0.5 / 0.9: class 1, not arg-max 0
    assert labels.tolist() == [[[0, 255, 1]]] and kept.tolist() == [[[True, False, True]]]
    # a whole map: each pixel's class holds its confidence q in (0.6, 1), the others share 1 - q
    counts = [500, 120, 20]
    conf, pred = _confidences(counts, seed=1)
    probs = torch.full((len(conf), 3), 0.0)
    probs[:] = ((1 - conf) / 2).unsqueeze(1)
    probs[torch.arange(len(conf)), pred] = conf
    probs = probs.T.reshape(1, 3, 20, 32)
    sample = ConfidenceSample(3)
    sample.add(probs)
    for p in (0.2, 0.5):
        labels, kept = class_normalised_labels(probs, sample.thresholds(p))
        flat_pred = pred.reshape(1, 20, 32)
        for c, n in enumerate(counts):
            assert int((labels == c).sum()) == int((kept & (flat_pred == c)).sum()) == kept_count(n, p)
        assert bool((labels[~kept] == 255).all()) and 0 < int(kept.sum()) < len(conf)


def _spec():
    return TaskSpec(2, ["bg", "fg"], task="segmentation", image_size=(32, 48))


def test_a_round_freezes_the_model_and_trains_on_its_pseudo_labels():
    torch.manual_seed(0)
    m = METHODS.get("cbst")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"rounds": 2})
    assert m.warmup == pytest.approx(1 / 3)  # from scratch: source-only first
    g = torch.Generator().manual_seed(0)
    src = Batch(torch.randn(4, 3, 32, 48, generator=g), torch.randint(0, 2, (4, 32, 48), generator=g))
    tgt = Batch(torch.randn(4, 3, 32, 48, generator=g) + 1.0)
    m.progress = 0.1
    assert m.step(src, tgt)["cbst/round"] == -1.0 and m.frozen is None
    m.progress = 0.4
    out = m.step(src, tgt)  # round 0 starts: thresholds from this batch (no target set attached)
    assert out["cbst/round"] == 0.0 and out["cbst/proportion"] == pytest.approx(0.2)
    assert out["cbst/labelled"] == pytest.approx(0.2, abs=0.01) and np.isfinite(out["loss/target"])
    frozen = {k: v.clone() for k, v in m.frozen.state_dict().items()}
    m.step(src, tgt)
    assert all(torch.equal(frozen[k], v) for k, v in m.frozen.state_dict().items())  # fixed within the round
    assert not all(torch.equal(frozen[k], v) for k, v in m.classifier.state_dict().items())
    assert not m.frozen.training and not any(p.requires_grad for p in m.frozen.parameters())
    m.progress = 0.7
    assert m.step(src, tgt)["cbst/proportion"] == pytest.approx(0.25) and m.round == 1
    assert not all(torch.equal(frozen[k], v) for k, v in m.frozen.state_dict().items())  # re-frozen
    for bad in ({"rounds": 0}, {"p_start": 0.0}, {"warmup": 1.0}):
        with pytest.raises(EdgedaError):
            METHODS.get("cbst")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options=bad)


SMALL = dict(task="segmentation", batch_size=2, image_size=[32, 64], backbone="lraspp", backbone_kwargs={"width": 0.25},
             device="cpu", progress=False, log=None, seed=0, source_n=16)


@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_cbst_from_a_source_only_bundle_on_the_embedded_pairs(tmp_path, pair):
    source, target, test = pair
    data = dict(source=source, target=target, target_test=test, **SMALL)
    so = edgeda.train(method="source_only", iters=2, eval_every=2, checkpoint_every=2, out=str(tmp_path / "so"), **data)
    res = edgeda.train(method="cbst", options={"rounds": 1, "pixels_per_image": 256}, init=str(so.bundle), iters=3,
                       eval_every=3, checkpoint_every=3, out=str(tmp_path / "cbst"), **data)
    h = res.history[-1]
    assert h["train/cbst/round"] == 0.0 and h["train/cbst/proportion"] == pytest.approx(0.2)  # from --init: no warm-up
    assert np.isfinite(h["train/loss/target"]) and 0.0 < h["train/cbst/labelled"] < 1.0
    assert 0.0 <= res.metrics["target_test_miou"] <= 1.0
    ev = edgeda.evaluate(res.bundle, test)
    assert 0.0 <= ev["miou"] <= 1.0 and "per_class_iou" in ev
    assert "model" in export_and_predict(res.bundle, tmp_path)["deployables"]  # fp32 parity checked, then predicts


def test_resume_keeps_the_round_state(tmp_path):
    from edgeda.config import make_config
    from edgeda.training.trainer import Trainer

    x, y = square_scenes(12, 32, 48, 0)
    np.savez(tmp_path / "src.npz", x=x, y=y, classes=np.array(("bg", "fg")))
    x, y = square_scenes(8, 32, 48, 1, bright=90)
    np.savez(tmp_path / "tgt.npz", x=x, y=y, classes=np.array(("bg", "fg")))
    base = dict(source=str(tmp_path / "src.npz"), target=str(tmp_path / "tgt.npz"), **{**SMALL, "image_size": [32, 48]})
    base.pop("progress"), base.pop("log")
    so = edgeda.train(method="source_only", iters=2, eval_every=2, checkpoint_every=2, out=str(tmp_path / "so"),
                      progress=False, log=None, **base)
    init = edgeda.load_bundle(so.bundle).module().state_dict()
    cfg = dict(method="cbst", options={"rounds": 1}, init=str(so.bundle), iters=4, eval_every=4, checkpoint_every=2, **base)

    straight = Trainer(make_config(None, {**cfg, "out": str(tmp_path / "a")}), progress=False, log=None)
    ra = straight.run()

    def stop(done):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(make_config(None, {**cfg, "out": str(tmp_path / "b")}), progress=False, log=None).run(callback=stop)
    resumed = Trainer(make_config(None, {**cfg, "out": str(tmp_path / "b")}), progress=False, log=None)
    rb = resumed.run(resume=True)
    # one round over the whole run: the frozen model is the --init model, also after resuming at iteration 2
    assert resumed.method.round == 0
    assert all(torch.equal(resumed.method.frozen.state_dict()[k], v) for k, v in init.items())
    assert torch.equal(resumed.method.thresholds, straight.method.thresholds)
    assert bool((straight.method.thresholds < 1).all())  # both classes were predicted on the target pass
    wa = edgeda.load_bundle(ra.bundle).module().state_dict()
    wb = edgeda.load_bundle(rb.bundle).module().state_dict()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k
