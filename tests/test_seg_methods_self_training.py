"""Self-training on segmentation. DACS with DAFormer's and MIC's pieces: ClassMix bookkeeping, the EMA
teacher, rare-class sampling, confidence weighting, MIC masks, the feature distance, smoke runs on the
embedded dense pairs and an exact --resume that restores the teacher. CBST: class-balanced thresholds on
hand-made confidences, the round schedule, class-normalised pseudo-labels, smoke runs from a source-only
bundle and resume within a round. Curriculum DA (cda): label distributions and their KL by hand,
landmark-superpixel labels on hand-made maps, the warm-up, and tiny runs on both embedded dense pairs."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import edgeda
from edgeda.data.sampling import class_counts, rare_class_probabilities, rare_class_weights
from edgeda.errors import EdgedaError
from edgeda.methods import METHODS, Batch
from edgeda.methods.class_balanced import (ConfidenceSample, class_confidence_thresholds, class_normalised_labels,
                                            kept_count, round_at, round_proportion)
from edgeda.methods.dacs import thing_classes, warmup_factor, weighted_cross_entropy
from edgeda.models.mean_teacher import MeanTeacher, pseudo_labels
from edgeda.models.mixing import (class_mix_masks, dacs_kernel_size, label_at_feature_scale, masked_feature_distance,
                                  mix, patch_keep_mask, strong_augment)
from edgeda.models.superpixels import (LabelDistributionRegressor, class_fractions, label_distribution_kl, landmark_labels,
                                       predicted_label_distribution, slic_superpixels, soft_cross_entropy)
from edgeda.tasks.spec import TaskSpec
from conftest import (EMBEDDED_DENSE_PAIRS, check_embedded_bundle, export_and_predict, seg_batches, seg_spec, square_scenes, stripe_scenes,
                      train_on_embedded_pair)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ================================================================================================ dacs

# -- ClassMix -------------------------------------------------------------------------------------
def test_class_mix_pastes_half_the_classes_with_exact_label_bookkeeping():
    g = torch.Generator().manual_seed(0)
    ys = torch.zeros(3, 12, 16, dtype=torch.long)
    ys[:, :, 4:8] = 1
    ys[:, :, 8:12] = 2
    ys[:, 6:, 12:] = 3
    ys[:, :2, :2] = 255  # ignored source pixels
    ys[2] = 5  # one class only: it is pasted (ceil(1 / 2) = 1)
    ys[2, 0, 0] = 255
    plabel = torch.randint(0, 4, (3, 12, 16), generator=g)
    plabel[:, -1] = 255  # a target label may carry the ignore index too
    xs, xt = torch.randn(3, 3, 12, 16, generator=g), torch.randn(3, 3, 12, 16, generator=g)
    chosen_sets = set()
    for seed in range(8):
        m = class_mix_masks(ys, torch.Generator().manual_seed(seed))
        assert m.shape == (3, 1, 12, 16) and set(m.unique().tolist()) <= {0.0, 1.0}
        for i in range(3):
            present = set(ys[i].unique().tolist()) - {255}
            pasted = set(ys[i][m[i, 0].bool()].unique().tolist())
            assert 255 not in pasted and len(pasted) == math.ceil(len(present) / 2) and pasted <= present
            # whole classes: every pixel of a chosen class is pasted, no other pixel is
            assert torch.equal(m[i, 0].bool(), torch.isin(ys[i], torch.tensor(sorted(pasted))))
            if i == 0:
                chosen_sets.add(tuple(sorted(pasted)))
        xm, ym = mix(m, xs, xt), mix(m, ys, plabel)
        pasted_px = m[:, 0].bool()
        assert torch.equal(ym[pasted_px], ys[pasted_px]) and torch.equal(ym[~pasted_px], plabel[~pasted_px])
        assert torch.equal(xm.permute(0, 2, 3, 1)[pasted_px], xs.permute(0, 2, 3, 1)[pasted_px])
        assert torch.equal(xm.permute(0, 2, 3, 1)[~pasted_px], xt.permute(0, 2, 3, 1)[~pasted_px])
        # ignore kept: the target's 255 where nothing is pasted; the source's 255 is never pasted
        assert bool((ym[~pasted_px & (plabel == 255)] == 255).all())
        assert int((ym == 255).sum()) == int(((plabel == 255) & ~pasted_px).sum())
    assert len(chosen_sets) > 1  # the choice is random (4 classes: C(4, 2) = 6 possible sets)


def test_strong_augment_changes_pixels_but_not_geometry_and_blur_size_is_dacs():
    assert [dacs_kernel_size(s) for s in (64, 128, 512, 8)] == [7, 13, 51, 1]
    x = torch.zeros(4, 3, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0
    out = strong_augment(x, (0.5,) * 3, (0.5,) * 3, torch.Generator().manual_seed(0), jitter_p=1.0, blur_p=1.0)
    assert out.shape == x.shape and not torch.equal(out, x) and torch.equal(x[0, 0, 0, 0], torch.tensor(0.0))
    again = strong_augment(x, (0.5,) * 3, (0.5,) * 3, torch.Generator().manual_seed(0), jitter_p=1.0, blur_p=1.0)
    assert torch.equal(out, again)  # the generator decides everything
    same = strong_augment(x, (0.5,) * 3, (0.5,) * 3, torch.Generator().manual_seed(0), jitter_p=0.0, blur_p=0.0)
    assert torch.allclose(same, x, atol=1e-6)


# -- the EMA teacher ------------------------------------------------------------------------------
def test_mean_teacher_value_after_k_updates_by_hand():
    student = nn.Linear(1, 1, bias=False)
    teacher = MeanTeacher(student, alpha=0.6)
    expected = float(student.weight.detach())
    values = [2.0, 4.0, -1.0, 3.0, 5.0]
    for t, v in enumerate(values):
        with torch.no_grad():
            student.weight.fill_(v)
        rate = min(0.6, 1 - 1 / (t + 1))  # DACS's warm-up: 0, 1/2, 0.6 (capped), 0.6, ...
        assert teacher.rate() == pytest.approx(rate)
        teacher.update(student)
        expected = rate * expected + (1 - rate) * v
        assert float(teacher.teacher.weight) == pytest.approx(expected)
    # by hand: 2 -> 0.5*2 + 0.5*4 = 3 -> 0.6*3 + 0.4*(-1) = 1.4 -> 0.6*1.4 + 1.2 = 2.04 -> 0.6*2.04 + 2 = 3.224
    assert float(teacher.teacher.weight) == pytest.approx(3.224)
    assert not teacher.teacher.weight.requires_grad and not teacher.teacher.training


def _dacs_spec(h=16, w=24):
    return TaskSpec(3, ["background", "a", "b"], task="segmentation", image_size=(h, w))


def _dacs(**options):
    torch.manual_seed(0)
    return METHODS.get("dacs")(_dacs_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25},
                               options={"warmup": 0.0, **options})


def _dacs_batches(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, 16, 24, dtype=torch.long)
    y[:, 4:10, 3:9], y[:, :, 15:18] = 1, 2
    return Batch(torch.randn(n, 3, 16, 24, generator=g), y), Batch(torch.randn(n, 3, 16, 24, generator=g) + 0.5)


def test_dacs_teacher_copies_the_student_first_then_averages():
    m = _dacs()
    s, t = _dacs_batches()
    with torch.no_grad():  # a teacher built before --init must not label the first batch
        for p in m.nets["teacher"].parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    m.step(s, t)
    student, teacher = m.model.state_dict(), m.nets["teacher"].state_dict()
    # first update: rate 0, the teacher is the student
    assert all(torch.equal(student[k], teacher[k]) for k in student)
    after_first = {k: v.clone() for k, v in teacher.items()}
    m.step(*_dacs_batches(1))
    student = m.model.state_dict()
    for k, v in m.nets["teacher"].state_dict().items():
        if v.dtype.is_floating_point:  # rate 1/2
            assert torch.allclose(v, 0.5 * after_first[k] + 0.5 * student[k], atol=1e-6), k
    assert any(not torch.equal(before[k], student[k]) for k in student)
    assert m.mean_teacher.updates == 2


# -- confidence weighting -------------------------------------------------------------------------
def test_pseudo_label_weight_is_the_share_of_confident_pixels():
    probs = torch.full((2, 2, 2, 5), 0.5)
    probs[0, 0, 0, :3], probs[0, 1, 0, :3] = 0.98, 0.02  # 3 of 10 pixels above 0.968 (class 0)
    probs[1, 1, :, :] = 0.97  # all 10 confident (class 1); 0.97 > 0.968
    probs[1, 0, :, :] = 0.03
    labels, confident, weight = pseudo_labels(probs, 0.968)
    assert weight.tolist() == pytest.approx([0.3, 1.0])
    assert int(confident.sum()) == 13 and bool((labels[1] == 1).all())
    # the mixed loss by hand: uniform logits give CE = log K per labelled pixel
    k = 3
    logits = torch.zeros(2, k, 2, 5)
    target = torch.zeros(2, 2, 5, dtype=torch.long)
    target[0, 0, 0] = 255
    mask = torch.zeros(2, 2, 5)
    mask[:, 1] = 1.0  # the second row pasted (weight 1), the first from the pseudo-labels (weight w_t)
    omega = mask + (1 - mask) * weight.view(-1, 1, 1)
    got = weighted_cross_entropy(logits, target, omega).item()
    # image 0: 4 pseudo pixels * 0.3 (one ignored) + 5 pasted; image 1: 5 * 1.0 + 5; over 20 pixels
    assert got == pytest.approx(math.log(k) * (4 * 0.3 + 5 + 5 + 5) / 20)


# -- rare-class sampling --------------------------------------------------------------------------
def test_rare_class_probabilities_and_image_weights_by_hand():
    freq = np.array([0.9, 0.09, 0.01])
    p = rare_class_probabilities(freq, 0.01)
    z = np.exp((1 - freq) / 0.01 - (1 - freq).max() / 0.01)
    assert p == pytest.approx(z / z.sum()) and p[2] > 0.999 and p.sum() == pytest.approx(1.0)
    assert rare_class_probabilities(freq, 100.0) == pytest.approx([1 / 3] * 3, abs=0.01)  # hot: uniform
    # 4 images, classes {0, 1, 2, 3}; class 3 appears in no image and gets no probability
    counts = np.array([[90, 10, 0, 0], [100, 0, 0, 0], [80, 15, 5, 0], [70, 0, 30, 0]])
    w, pc = rare_class_weights(counts, temperature=0.1, return_classes=True)
    f = counts.sum(0)[:3] / counts.sum()
    pc_hand = np.exp((1 - f) / 0.1) / np.exp((1 - f) / 0.1).sum()
    assert pc[:3] == pytest.approx(pc_hand) and pc[3] == 0.0
    contains = counts[:, :3] > 0
    w_hand = (contains * pc_hand / contains.sum(0)).sum(1)
    assert w == pytest.approx(w_hand / w_hand.sum()) and w.sum() == pytest.approx(1.0)
    assert w[1] < w[0] < w[2]  # the image with only the common class is the least likely
    # min_share: image 2's class 2 (5 of 100 px) no longer counts at a 0.1 share
    w2 = rare_class_weights(counts, temperature=0.1, min_share=0.1)
    contains2 = counts[:, :3] > 0.1 * counts.sum(1, keepdims=True)
    assert not contains2[2, 2] and contains2[3, 2]
    w2_hand = (contains2 * pc_hand / contains2.sum(0)).sum(1)
    assert w2 == pytest.approx(w2_hand / w2_hand.sum())


def test_weighted_source_stream_draws_images_at_the_rare_class_rates_and_resumes(tmp_path):
    from edgeda.data import load_domain
    from edgeda.training.dense_stream import DenseStream, epoch_order

    # known histogram: class 2 (a stripe) is in 4 of 20 images, class 1 (a square) in all
    x, y = stripe_scenes(20, 16, 24, seed=3)
    y[4:] = np.where(y[4:] == 2, 0, y[4:])
    np.savez(tmp_path / "s.npz", x=x, y=y, classes=np.array(["bg", "square", "stripe"]))
    dom = load_domain(str(tmp_path / "s.npz"), labeled=True)
    counts = class_counts(dom, 3)
    assert counts.sum() == 20 * 16 * 24 and (counts[:4, 2] > 0).all() and (counts[4:, 2] == 0).all()
    w, pc = rare_class_weights(counts, temperature=0.01, return_classes=True)
    # the two-stage draw (class, then an image that contains it) as a frequency per image
    draws = np.concatenate([epoch_order(20, 5, e, weights=w) for e in range(1000)])
    freq = np.bincount(draws, minlength=20) / len(draws)
    assert np.abs(freq - w).max() < 0.01
    stripe_rate = freq[:4].sum()  # images holding the rare class are drawn at about P(stripe) + P(others)/5
    assert stripe_rate == pytest.approx(pc[2] + (pc[0] + pc[1]) * 4 / 20, abs=0.01) and stripe_rate > 0.9
    # the stream: same seed, same batches; a restored state continues exactly
    spec = TaskSpec(3, ["bg", "square", "stripe"], task="segmentation", image_size=(16, 24))
    a = DenseStream(dom, spec, 4, torch.device("cpu"), 7, labeled=True, weights=w)
    [a.next() for _ in range(3)]
    state = a.state_dict()
    rest = [a.next() for _ in range(6)]  # crosses an epoch (20 draws)
    b = DenseStream(dom, spec, 4, torch.device("cpu"), 7, labeled=True, weights=w)
    b.load_state_dict(state)
    for u, v in zip(rest, [b.next() for _ in range(6)]):
        assert torch.equal(u.x, v.x) and torch.equal(u.y, v.y)
    assert np.mean([bool((u.y == 2).any()) for u in rest for u in [Batch(u.x[i:i + 1], u.y[i:i + 1]) for i in range(4)]]) > 0.7


# -- MIC and the feature distance -----------------------------------------------------------------
def test_mic_mask_ratio_and_patch_size():
    keep = patch_keep_mask(64, (64, 128), 8, 0.7, torch.Generator().manual_seed(0))
    assert keep.shape == (64, 1, 64, 128) and keep.mean().item() == pytest.approx(0.3, abs=0.02)
    blocks = keep.view(64, 1, 8, 8, 16, 8)  # constant on each 8x8 patch
    assert torch.equal(blocks.amax((3, 5)), blocks.amin((3, 5)))
    odd = patch_keep_mask(2, (10, 13), 4, 0.5, torch.Generator().manual_seed(1))
    assert odd.shape == (2, 1, 10, 13)
    assert _dacs().mask_patch() == 2  # 64 * 16 / 512 at 16x24; MIC's 64 px at 512
    big = METHODS.get("dacs")(TaskSpec(3, ["bg", "a", "b"], task="segmentation", image_size=(512, 1024)),
                              backbone="lraspp", backbone_kwargs={"width": 0.25})
    assert big.mask_patch() == 64


def test_feature_distance_labels_and_thing_classes():
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[0, :2, :2] = 3  # a full block of class 3
    y[0, :2, 2:] = torch.tensor([[1, 1], [1, 2]])  # 3/4 class 1
    y[0, 2:, :2] = torch.tensor([[1, 2], [2, 255]])  # 2/4 class 2: not enough
    small = label_at_feature_scale(y, (2, 2), 4, 0.75)
    assert small.tolist() == [[[3, 1], [255, 0]]]
    f, ref = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    f[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5 at (0, 0)
    assert masked_feature_distance(f, ref, small == 3).item() == pytest.approx(5.0)
    assert masked_feature_distance(f, ref).item() == pytest.approx(5.0 / 4)
    assert masked_feature_distance(f, ref, small == 7).item() == 0.0
    from edgeda.data.synscenes import CLASSES

    cs = thing_classes(CLASSES, len(CLASSES))
    assert [CLASSES[i] for i in cs][:2] == ["traffic light", "traffic sign"] and "road" not in [CLASSES[i] for i in cs]
    assert thing_classes(["background"] + [str(d) for d in range(10)], 11) == list(range(1, 11))
    assert warmup_factor(0.0, 0.1) == pytest.approx(1e-6) and warmup_factor(0.05, 0.1) == pytest.approx(0.5, abs=1e-6)
    assert warmup_factor(0.1, 0.1) == 1.0 and warmup_factor(0.3, 0.0) == 1.0


# -- training runs --------------------------------------------------------------------------------
def _dacs_npz(path, n=12, seed=0):
    x, y = stripe_scenes(n, 32, 48, seed)
    np.savez(path, x=x, y=y, classes=np.array(["background", "square", "stripe"]))
    return str(path)


def _dacs_config(tmp_path, src, out, **kw):
    from edgeda.config import make_config

    base = dict(method="dacs", source=src, target=src, iters=4, eval_every=2, checkpoint_every=2, batch_size=4,
                image_size=[32, 48], backbone="lraspp", backbone_kwargs={"width": 0.25}, out=str(out), device="cpu",
                options={"mic": True})
    base.update(kw)
    return make_config(None, base)


def test_feature_distance_only_with_pretrained_weights(tmp_path):
    from safetensors.torch import save_file

    from edgeda.models import make_dense_model  # noqa: F401  (the registry of dense models)
    from edgeda.training.trainer import Trainer

    src = _dacs_npz(tmp_path / "s.npz")
    plain = Trainer(_dacs_config(tmp_path, src, tmp_path / "a", iters=2), progress=False, log=None)
    plain.setup()
    assert plain.method.pretrained_encoder is None
    enc = {k: v.clone() + 0.01 for k, v in plain.method.model.encoder.state_dict().items() if v.is_floating_point()}
    save_file(enc, str(tmp_path / "enc.safetensors"))
    res = Trainer(_dacs_config(tmp_path, src, tmp_path / "b", iters=2, backbone_weights=str(tmp_path / "enc.safetensors")),
                  progress=False, log=None).run()
    assert "train/loss/fd" in res.history[-1] and "train/loss/fd" not in Trainer(
        _dacs_config(tmp_path, src, tmp_path / "c", iters=2), progress=False, log=None).run().history[-1]


@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_dacs_smoke_run_on_the_embedded_dense_pairs(tmp_path, pair):
    res = train_on_embedded_pair(tmp_path, "dacs", {"mic": True}, pair)
    last = res.history[-1]
    assert {"train/loss/src", "train/loss/mix", "train/loss/mic", "train/pseudo/weight"} <= set(last)
    assert 0.0 <= res.metrics["target_test_miou"] <= 1.0 and res.metrics["target_test_per_class"]
    assert 0.0 <= edgeda.evaluate(res.bundle, pair[2])["miou"] <= 1.0
    assert "model" in export_and_predict(res.bundle, tmp_path)["deployables"]


def test_dacs_resume_restores_the_teacher_and_continues_exactly(tmp_path):
    from edgeda.training.checkpoint import load_latest
    from edgeda.training.trainer import Trainer

    src = _dacs_npz(tmp_path / "s.npz")
    full = Trainer(_dacs_config(tmp_path, src, tmp_path / "full"), progress=False, log=None).run()

    def stop(it):
        if it == 2:
            raise KeyboardInterrupt

    cut = _dacs_config(tmp_path, src, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        Trainer(cut, progress=False, log=None).run(callback=stop)
    tr = Trainer(cut, progress=False, log=None)
    tr.setup()
    saved = load_latest(tmp_path / "cut" / "checkpoints")[1]
    assert tr.restore(saved) == 2 and tr.method.mean_teacher.updates == 2
    teacher = tr.method.nets["teacher"].state_dict()
    student = tr.method.model.state_dict()
    fresh = Trainer(cut, progress=False, log=None)
    fresh.setup()
    assert any(not torch.equal(teacher[k], fresh.method.nets["teacher"].state_dict()[k]) for k in teacher)
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher if teacher[k].is_floating_point())
    resumed = Trainer(cut, progress=False, log=None).run(resume=True)
    a = load_latest(tmp_path / "full" / "checkpoints")[1]["method"]["nets"]
    b = load_latest(tmp_path / "cut" / "checkpoints")[1]["method"]["nets"]
    for k in a:  # student and teacher both
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    wa = edgeda.load_bundle(full.bundle).module().state_dict()
    wb = edgeda.load_bundle(resumed.bundle).module().state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


# ================================================================================================ cbst


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


def test_a_round_freezes_the_model_and_trains_on_its_pseudo_labels():
    torch.manual_seed(0)
    m = METHODS.get("cbst")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"rounds": 2})
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
    assert not all(torch.equal(frozen[k], v) for k, v in m.model.state_dict().items())
    assert not m.frozen.training and not any(p.requires_grad for p in m.frozen.parameters())
    m.progress = 0.7
    assert m.step(src, tgt)["cbst/proportion"] == pytest.approx(0.25) and m.round == 1
    assert not all(torch.equal(frozen[k], v) for k, v in m.frozen.state_dict().items())  # re-frozen
    for bad in ({"rounds": 0}, {"p_start": 0.0}, {"warmup": 1.0}):
        with pytest.raises(EdgedaError):
            METHODS.get("cbst")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options=bad)


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


def test_cbst_resume_keeps_the_round_state(tmp_path):
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


# ================================================================================================= cda


def test_label_distribution_kl_by_hand():
    q = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    p = torch.tensor([[0.25, 0.25, 0.5], [0.4, 0.4, 0.2]])
    # row 1: 0.5 ln 2 + 0.5 ln 2 = ln 2; row 2: 0.2 ln(1/2) + 0.8 ln 2 = 0.6 ln 2; classes with q = 0 add nothing
    assert label_distribution_kl(q, p).item() == pytest.approx(0.8 * math.log(2), rel=1e-6)
    assert label_distribution_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)
    # a predicted distribution that misses a class present in q: p clamped at eps = 1e-8, so
    # 0.5 ln(0.5 / 1) + 0.5 ln(0.5 / 1e-8), large but finite
    worked = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-8)
    assert label_distribution_kl(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(worked, rel=1e-5)
    # the predicted distribution is the mean softmax over pixels: pixel 1 (0.5, 0.5), pixel 2 (0.9, 0.1)
    logits = torch.log(torch.tensor([[0.5, 0.9], [0.5, 0.1]])).view(1, 2, 1, 2)
    assert predicted_label_distribution(logits).tolist()[0] == pytest.approx([0.7, 0.3], rel=1e-6)


def test_label_distribution_of_a_mask_excludes_ignored_pixels_and_regressor_loss():
    mask = torch.tensor([[[0, 0, 1, 255], [2, 2, 2, 255]]])  # 6 labelled pixels: 2 of class 0, 1 of 1, 3 of 2
    assert class_fractions(mask, 4).tolist()[0] == pytest.approx([2 / 6, 1 / 6, 3 / 6, 0.0])
    # the regressor pools globally: a map that is constant per channel gives the linear layer of those constants
    r = LabelDistributionRegressor(2, 3)
    feats = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 4, 5)
    assert torch.allclose(r(feats), r.linear(torch.tensor([[1.0, -2.0]])))
    # soft cross-entropy of uniform logits against any distribution is log K
    assert soft_cross_entropy(torch.zeros(2, 4), class_fractions(torch.cat([mask, mask]), 4)).item() == pytest.approx(math.log(4))


def _probs_two_classes(p1: torch.Tensor) -> torch.Tensor:
    """(N, H, W) probability of class 1 -> (N, 2, H, W)."""
    return torch.stack([1 - p1, p1], dim=1)


def test_landmark_labels_keep_the_confident_superpixels_of_each_class_with_their_majority():
    # image 0: four 2x2 superpixels (ids 0..3); image 1: one superpixel (id 0 again: ids are per image)
    seg0 = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    p1 = torch.zeros(2, 4, 4)
    p1[0, :2, :2] = 0.9                        # s0: class 1, confidence 0.9
    p1[0, :2, 2:] = 0.6                        # s1: three pixels class 1 at 0.6 ...
    p1[0, 1, 3] = 0.3                          # ... one pixel class 0: majority 1, confidence (3 * 0.6 + 0.3) / 4
    p1[0, 2:, :2] = 0.05                       # s2: class 0, confidence 0.95
    p1[0, 2:, 2:] = 0.45                       # s3: class 0, confidence 0.55
    p1[1] = 0.7                                # image 1, s0: class 1, confidence 0.7
    segments = torch.stack([seg0, torch.zeros(4, 4, dtype=torch.long)])
    probs = _probs_two_classes(p1)
    # class 1 has 3 superpixels (0.9, 0.525, 0.7): ceil(1.5) = 2 kept; class 0 has 2 (0.95, 0.55): 1 kept
    y = landmark_labels(segments, probs, fraction=0.5)
    expect = torch.full((2, 4, 4), 255)
    expect[0, :2, :2] = 1
    expect[0, 2:, :2] = 0
    expect[1] = 1
    assert torch.equal(y, expect)
    # all kept: every pixel of a superpixel takes its majority class, also the one predicted 0
    y_all = landmark_labels(segments, probs, fraction=1.0)
    assert bool((y_all[0, :2, 2:] == 1).all()) and bool((y_all[0, 2:, 2:] == 0).all())
    with pytest.raises(ValueError):
        landmark_labels(segments, probs, fraction=0.0)


def test_slic_superpixels_follow_a_strong_edge_and_landmarks_fill_them():
    img = torch.zeros(1, 3, 24, 48)
    img[:, :, :, :24] = torch.tensor([0.1, 0.1, 0.1]).view(1, 3, 1, 1)
    img[:, :, :, 24:] = torch.tensor([0.9, 0.2, 0.2]).view(1, 3, 1, 1)
    seg = slic_superpixels(img, n_segments=8, compactness=10.0)
    assert seg.shape == (1, 24, 48) and seg.dtype == torch.long and int(seg.min()) == 0
    left, right = set(seg[0, :, :24].unique().tolist()), set(seg[0, :, 24:].unique().tolist())
    assert len(left) >= 1 and len(right) >= 1 and not (left & right)  # no superpixel crosses the edge
    # predictions: class 0 left, class 1 right, with every 5th pixel of each half predicted wrongly
    p1 = torch.zeros(1, 24, 48)
    p1[:, :, 24:] = 0.8
    wrong = (torch.arange(24 * 48).view(1, 24, 48) % 5) == 0
    p1[wrong] = 1 - p1[wrong]
    y = landmark_labels(seg, _probs_two_classes(p1), fraction=1.0)
    assert bool((y[0, :, :24] == 0).all()) and bool((y[0, :, 24:] == 1).all())
    grey = slic_superpixels(img[:, :1], n_segments=8)
    assert grey.shape == (1, 24, 48)


def test_cda_is_source_only_in_warmup_then_adds_the_target_terms():
    torch.manual_seed(0)
    m = METHODS.get("cda")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25})
    assert m.opts["lambda_kl"] == pytest.approx(0.1) and m.opts["landmark_fraction"] == pytest.approx(0.6)
    assert sorted(m.deployables()) == ["model"]
    src, tgt = seg_batches()
    before = [p.detach().clone() for p in m.nets["label_distribution"].parameters()]
    m.progress = 0.0
    out = m.step(src, tgt)
    assert out["cda/on"] == 0.0 and "loss/kl" not in out
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets["label_distribution"].parameters()))
    m.progress = 0.5
    out = m.step(src, tgt)
    assert out["cda/on"] == 1.0 and np.isfinite(out["loss/kl"]) and np.isfinite(out["loss/sp"])
    assert 0.0 < out["sp/landmark_pixels"] <= 1.0
    with pytest.raises(EdgedaError, match="landmark_fraction"):
        METHODS.get("cda")(seg_spec(), backbone="lraspp", options={"landmark_fraction": 1.5})



@pytest.mark.parametrize("method,options", [("cda", {"warmup": 0.3})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_method_trains_on_the_embedded_pair_and_its_bundle_evaluates(tmp_path, method, options, pair):
    res = train_on_embedded_pair(tmp_path, method, options, pair, iters=3)
    assert res.history[-1]["train/cda/on"] > 0  # the target terms ran (iterations 2 and 3 of 3)
    check_embedded_bundle(res, pair, tmp_path)
