"""Dense metrics and losses pinned to hand-computed values: mIoU / IoU / pixel accuracy with the
ignore index, streamed and merged confusion meters, the Eigen et al. depth errors averaged per
image, the scale-invariant log loss, validator rows, and evaluation memory that does not grow
with the number of images."""
import math

import numpy as np
import pytest
import torch

from edgeda.tasks import task_of
from edgeda.tasks.depth import masked_l1, silog_loss
from edgeda.tasks.metrics import DEPTH_KEYS, ConfusionMeter, DepthMeter, segmentation_scores

CLASSES = ["c0", "c1", "c2", "c3", "c4"]

# truth / prediction of 7 pixels; the last one is ignored (255)
TRUTH = torch.tensor([0, 0, 1, 1, 2, 2, 255])
PRED = torch.tensor([0, 1, 1, 1, 0, 3, 2])


def _scores(pred, truth, k=5):
    m = ConfusionMeter(k)
    m.update(pred, truth)
    return m, segmentation_scores(m.matrix, CLASSES[:k])


# -- segmentation ------------------------------------------------------------------------------

def test_segmentation_scores_by_hand():
    m, s = _scores(PRED, TRUTH)
    want = np.zeros((5, 5), np.int64)
    want[0, 0] = want[0, 1] = want[2, 0] = want[2, 3] = 1
    want[1, 1] = 2
    assert np.array_equal(m.matrix.numpy(), want)
    assert s["confusion"] == want.tolist()
    # c0: tp 1, fp 1 (a c2 pixel), fn 1 -> 1/3; c1: tp 2, fp 1, fn 0 -> 2/3;
    # c2: tp 0, fn 2 -> 0; c3: only predicted (fp 1), never labelled -> None; c4: in neither -> None
    iou = s["per_class_iou"]
    assert iou["c0"] == pytest.approx(1 / 3)
    assert iou["c1"] == pytest.approx(2 / 3)
    assert iou["c2"] == 0.0
    assert iou["c3"] is None and iou["c4"] is None
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)  # the classes labelled in the data only
    assert s["n_classes_labelled"] == 3
    assert s["per_class_truth_pixels"] == {"c0": 2, "c1": 2, "c2": 2, "c3": 0, "c4": 0}
    assert s["pixel_accuracy"] == pytest.approx(3 / 6)
    assert s["n_pixels"] == 6
    assert s["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)  # classes with support only


def test_ignored_pixels_change_nothing():
    _, base = _scores(PRED, TRUTH)
    # other predictions on the ignored pixel, and many more ignored pixels predicted as anything
    for p in range(5):
        pred = PRED.clone()
        pred[-1] = p
        extra_t = torch.full((50,), 255)
        extra_p = torch.arange(50) % 5
        _, s = _scores(torch.cat([pred, extra_p]), torch.cat([TRUTH, extra_t]))
        assert s == base


def test_segmentation_scores_of_nothing_labelled():
    _, s = _scores(torch.tensor([0, 1]), torch.tensor([255, 255]))
    assert s["n_pixels"] == 0
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_accuracy"])
    assert all(v is None for v in s["per_class_iou"].values())


def _random_masks(seed, n=6, h=8, w=8, k=5):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, k, (n, h, w), generator=g)
    truth[torch.rand(n, h, w, generator=g) < 0.2] = 255
    pred = torch.randint(0, k, (n, h, w), generator=g)
    return pred, truth


def test_streaming_in_chunks_equals_one_update():
    pred, truth = _random_masks(0)
    once = ConfusionMeter(5)
    once.update(pred, truth)
    chunked = ConfusionMeter(5)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        chunked.update(pred[sl], truth[sl])
    assert torch.equal(once.matrix, chunked.matrix)
    assert segmentation_scores(once.matrix, CLASSES) == segmentation_scores(chunked.matrix, CLASSES)


def test_merge_equals_one_meter_on_the_union():
    pa, ta = _random_masks(1)
    pb, tb = _random_masks(2, n=3)
    a, b, union = ConfusionMeter(5), ConfusionMeter(5), ConfusionMeter(5)
    a.update(pa, ta)
    b.update(pb, tb)
    union.update(torch.cat([pa.flatten(), pb.flatten()]), torch.cat([ta.flatten(), tb.flatten()]))
    assert a.merge(b) is a
    assert torch.equal(a.matrix, union.matrix)


def test_segmentation_task_scores_logits_through_argmax():
    spec = _seg_spec(3)
    task = task_of(spec)
    logits = torch.zeros(1, 3, 1, 4)
    for j, c in enumerate([0, 2, 1, 1]):
        logits[0, c, 0, j] = 5.0
    m = task.meter(spec)
    task.update(m, logits, torch.tensor([[[0, 2, 2, 255]]]))
    s = task.scores(m, spec)
    assert s["pixel_accuracy"] == pytest.approx(2 / 3)
    assert s["per_class_iou"] == {"a": 1.0, "b": None, "c": pytest.approx(1 / 2)}  # b: predicted, never labelled


def test_miou_counts_only_classes_labelled_in_the_whole_split():
    """A class predicted but never labelled does not pull the mean down, whichever image predicts it;
    a labelled class the model misses everywhere counts as 0."""
    truth = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 255]])
    quiet = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    loud = torch.tensor([[0, 2, 1, 1], [3, 1, 1, 4]])  # predicts the unlabelled classes 2 and 3 (4 on ignore)
    a, b = ConfusionMeter(5), ConfusionMeter(5)
    a.update(quiet, truth)
    b.update(loud, truth)
    sa, sb = segmentation_scores(a.matrix, CLASSES), segmentation_scores(b.matrix, CLASSES)
    assert sa["n_classes_labelled"] == sb["n_classes_labelled"] == 2
    assert sa["miou"] == 1.0 and sb["miou"] == pytest.approx((1 / 3 + 1) / 2)
    assert sb["per_class_iou"]["c2"] is None and sb["per_class_truth_pixels"]["c2"] == 0
    missed = ConfusionMeter(3)
    missed.update(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 2]))
    s = segmentation_scores(missed.matrix, CLASSES[:3])
    assert s["per_class_iou"]["c2"] == 0.0 and s["n_classes_labelled"] == 2 and s["miou"] == pytest.approx(2 / 6)


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



# -- depth -------------------------------------------------------------------------------------

def _two_images():
    """Image A: 3 valid pixels of 4 (the 0 is invalid); image B: 2 valid of 4."""
    truth = torch.tensor([[[2.0, 4.0], [0.0, 1.0]], [[10.0, 10.0], [0.0, 0.0]]])
    pred = torch.tensor([[[1.0, 4.0], [7.0, 1.5]], [[10.0, 15.0], [3.0, 3.0]]])
    return pred, truth


def _hand_two_images():
    l2, l15 = math.log(2), math.log(1.5)
    # A: pairs (p, g) = (1, 2), (4, 4), (1.5, 1); ratios 2, 1, 1.5
    a = {"abs_rel": (0.5 + 0 + 0.5) / 3, "sq_rel": (1 / 2 + 0 + 0.25 / 1) / 3, "rmse": math.sqrt((1 + 0 + 0.25) / 3),
         "rmse_log": math.sqrt((l2 ** 2 + 0 + l15 ** 2) / 3), "delta1": 1 / 3, "delta2": 2 / 3, "delta3": 2 / 3}
    # B: pairs (10, 10), (15, 10); ratios 1, 1.5
    b = {"abs_rel": (0 + 0.5) / 2, "sq_rel": (0 + 25 / 10) / 2, "rmse": math.sqrt(25 / 2),
         "rmse_log": math.sqrt(l15 ** 2 / 2), "delta1": 1 / 2, "delta2": 1.0, "delta3": 1.0}
    return a, b


def test_depth_metrics_by_hand_averaged_per_image():
    """Each image's errors are averaged over its valid pixels, then the images are averaged
    (so image B's 2 pixels weigh as much as image A's 3)."""
    pred, truth = _two_images()
    m = DepthMeter()
    m.update(pred, truth)
    r = m.compute()
    a, b = _hand_two_images()
    for k in DEPTH_KEYS:
        assert r[k] == pytest.approx((a[k] + b[k]) / 2, rel=1e-9), k
    assert r["n_images"] == 2 and r["n_pixels"] == 5
    # pooling all 5 pixels would give another abs rel: the metric is per image
    assert r["abs_rel"] != pytest.approx((0.5 + 0 + 0.5 + 0 + 0.5) / 5)


def test_depth_metrics_accept_n1hw_and_stream_per_image():
    pred, truth = _two_images()
    one = DepthMeter()
    one.update(pred[:, None], truth[:, None])
    split = DepthMeter()
    split.update(pred[:1], truth[:1])
    split.update(pred[1:], truth[1:])
    merged = DepthMeter()
    other = DepthMeter()
    merged.update(pred[:1], truth[:1])
    other.update(pred[1:], truth[1:])
    merged.merge(other)
    ref = one.compute()
    for r in (split.compute(), merged.compute()):
        for k in DEPTH_KEYS:
            assert r[k] == pytest.approx(ref[k], rel=1e-12)
        assert r["n_images"] == ref["n_images"] and r["n_pixels"] == ref["n_pixels"]


def test_invalid_pixels_are_ignored():
    pred, truth = _two_images()
    m1, m2 = DepthMeter(), DepthMeter()
    m1.update(pred, truth)
    wild = pred.clone()
    wild[truth == 0] = 1000.0  # whatever is predicted where the truth is invalid
    m2.update(wild, truth)
    assert m1.compute() == m2.compute()


def test_image_without_valid_pixel_does_not_count():
    pred, truth = _two_images()
    ref = DepthMeter()
    ref.update(pred, truth)
    m = DepthMeter()
    m.update(torch.cat([pred, torch.full((1, 2, 2), 5.0)]), torch.cat([truth, torch.zeros(1, 2, 2)]))
    assert m.compute() == ref.compute()
    empty = DepthMeter()
    empty.update(torch.ones(2, 3, 3), torch.zeros(2, 3, 3))
    r = empty.compute()
    assert r["n_images"] == 0 and r["n_pixels"] == 0 and math.isnan(r["abs_rel"])


def test_sparse_depth_map():
    rng = np.random.default_rng(0)
    g = rng.uniform(1, 50, (2, 20, 20))
    g[rng.random(g.shape) < 0.9] = 0.0  # LiDAR-like: ~90% invalid
    p = g * rng.uniform(0.7, 1.4, g.shape) + (g == 0) * 3.0
    m = DepthMeter()
    m.update(torch.from_numpy(p), torch.from_numpy(g))
    r = m.compute()
    per = []
    for pi, gi in zip(p, g):
        v = gi > 0
        pv, gv = pi[v], gi[v]
        ratio = np.maximum(pv / gv, gv / pv)
        per.append([np.mean(np.abs(pv - gv) / gv), np.mean((pv - gv) ** 2 / gv), np.sqrt(np.mean((pv - gv) ** 2)),
                    np.sqrt(np.mean((np.log(pv) - np.log(gv)) ** 2)), np.mean(ratio < 1.25),
                    np.mean(ratio < 1.25 ** 2), np.mean(ratio < 1.25 ** 3)])
    want = np.mean(per, axis=0)
    for k, w in zip(DEPTH_KEYS, want):
        assert r[k] == pytest.approx(w, rel=1e-9), k
    assert r["n_pixels"] == int((g > 0).sum()) and r["n_images"] == 2


def test_perfect_depth_prediction():
    g = torch.rand(3, 6, 7) * 20 + 0.5
    g[0, :2] = 0
    m = DepthMeter()
    m.update(g.clone(), g)
    r = m.compute()
    assert r["abs_rel"] == 0.0 and r["sq_rel"] == 0.0 and r["rmse"] == 0.0 and r["rmse_log"] == 0.0
    assert r["delta1"] == 1.0 and r["delta2"] == 1.0 and r["delta3"] == 1.0


def test_depth_task_meter_leaves_out_truth_beyond_the_range():
    spec = _depth_spec(max_depth=20.0)
    task = task_of(spec)
    m = task.meter(spec)
    truth = torch.tensor([[[2.0, 50.0]]])
    task.update(m, torch.tensor([[[[2.0, 1.0]]]]), truth)  # (N, 1, H, W) output
    r = task.scores(m, spec)
    assert r["n_pixels"] == 1 and r["abs_rel"] == 0.0


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



# -- losses ------------------------------------------------------------------------------------

def test_silog_is_zero_for_a_perfect_prediction():
    g = torch.rand(2, 5, 5) * 10 + 1
    g[0, 0] = 0
    assert float(silog_loss(g.clone(), g)) == pytest.approx(0.0, abs=1e-7)


def test_silog_by_hand():
    # d = log p - log g on the valid pixels = (log 2, 0); n = 2
    pred = torch.tensor([[[2.0, 1.0, 7.0]]])
    truth = torch.tensor([[[1.0, 1.0, 0.0]]])
    l2 = math.log(2)
    assert float(silog_loss(pred, truth)) == pytest.approx(l2 ** 2 / 2 - 0.5 * l2 ** 2 / 4, rel=1e-6)
    assert float(silog_loss(pred, truth, lam=0.0)) == pytest.approx(l2 ** 2 / 2, rel=1e-6)
    # averaged over images that have a valid pixel: an all-invalid image adds nothing
    both = silog_loss(torch.cat([pred, torch.ones(1, 1, 3)]), torch.cat([truth, torch.zeros(1, 1, 3)]))
    assert float(both) == pytest.approx(float(silog_loss(pred, truth)), rel=1e-6)
    assert float(silog_loss(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))) == 0.0


def test_silog_scale_invariance_only_with_lambda_one():
    g = torch.rand(2, 6, 6) * 10 + 1
    p = g * (1 + 0.3 * torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(0))).clamp_min(0.2)
    for scale in (0.5, 3.0):
        assert float(silog_loss(p * scale, g, lam=1.0)) == pytest.approx(float(silog_loss(p, g, lam=1.0)), rel=1e-4, abs=1e-6)
        assert float(silog_loss(p * scale, g, lam=0.5)) != pytest.approx(float(silog_loss(p, g, lam=0.5)), rel=1e-3)
    # a globally scaled perfect prediction costs nothing with lam = 1
    assert float(silog_loss(g * 2.5, g, lam=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_silog_ignores_invalid_pixels():
    g = torch.rand(2, 6, 6) * 10 + 1
    g[:, :3] = 0
    p = torch.rand(2, 6, 6) * 10 + 1
    q = p.clone()
    q[g == 0] = 123.0
    assert float(silog_loss(p, g)) == pytest.approx(float(silog_loss(q, g)), rel=1e-7)


def test_masked_l1_by_hand():
    pred = torch.tensor([[[1.0, 5.0, 3.0]]])
    truth = torch.tensor([[[2.0, 0.0, 1.0]]])
    assert float(masked_l1(pred, truth)) == pytest.approx((1 + 2) / 2)
    assert float(masked_l1(pred, torch.zeros_like(truth))) == 0.0


def test_depth_task_loss_picks_silog_or_l1():
    t = task_of("depth")
    pred = torch.tensor([[[[2.0, 1.0, 7.0]]]])  # (N, 1, H, W)
    truth = torch.tensor([[[1.0, 1.0, 0.0]]])
    assert float(t.loss(pred, truth)) == pytest.approx(float(silog_loss(pred[:, 0], truth)))
    assert float(t.loss(pred, truth, "l1")) == pytest.approx(0.5)
    from edgeda.errors import EdgedaError

    with pytest.raises(EdgedaError, match="unknown depth loss"):
        t.loss(pred, truth, "l2")


# -- validator rows ----------------------------------------------------------------------------

def test_segmentation_validator_rows_shape_determinism_and_content():
    task = task_of("segmentation")
    out = torch.randn(3, 4, 5, 6)
    rows = task.validator_rows(out, torch.Generator().manual_seed(7), per_image=10)
    assert rows.shape == (3 * 10, 4)
    again = task.validator_rows(out, torch.Generator().manual_seed(7), per_image=10)
    assert torch.equal(rows, again)
    other = task.validator_rows(out, torch.Generator().manual_seed(8), per_image=10)
    assert not torch.equal(rows, other)
    # each row is the logit vector of one pixel of its own image
    pix = out.flatten(2).permute(0, 2, 1)  # (N, H*W, K)
    for i in range(3):
        for r in rows[i * 10:(i + 1) * 10]:
            assert (pix[i] == r).all(1).any()
    assert task_of("depth").validator_rows(torch.rand(2, 1, 4, 4), torch.Generator()) is None


# -- evaluation memory -------------------------------------------------------------------------

def _seg_spec(k=3, size=(32, 32)):
    from edgeda.tasks.spec import TaskSpec

    return TaskSpec(num_classes=k, classes=list("abc")[:k] if k <= 3 else [str(i) for i in range(k)],
                    task="segmentation", image_size=size)


def _depth_spec(max_depth=80.0, size=(32, 32)):
    from edgeda.tasks.spec import TaskSpec

    return TaskSpec(task="depth", image_size=size, depth_range=(0.1, max_depth))


def _meter_state(meter):
    """Every attribute of a meter: tensors by shape, the rest by value."""
    state = {}
    for k, v in vars(meter).items():
        assert not isinstance(v, (list, tuple, dict, np.ndarray)), f"meter keeps a collection in {k!r}"
        state[k] = tuple(v.shape) if isinstance(v, torch.Tensor) else v
    return state


def _no_per_image_arrays(scores, n):
    for k, v in scores.items():
        if isinstance(v, dict):
            assert len(v) < n, k
            assert all(x is None or isinstance(x, (int, float)) for x in v.values()), k
        elif isinstance(v, list):
            assert len(v) < n and all(len(row) < n for row in v), k  # the K x K confusion only
        else:
            assert isinstance(v, (int, float)), k


@pytest.mark.parametrize("task_name", ["segmentation", "depth"])
def test_evaluation_state_does_not_grow_with_images(task_name, monkeypatch):
    from edgeda.data.dense import ArrayDenseDomain
    from edgeda.training.model_eval import evaluate_model

    torch.manual_seed(0)
    spec = _seg_spec(3) if task_name == "segmentation" else _depth_spec()
    task = task_of(spec)
    model = task.build_model(spec, "lraspp", {"width": 0.25})
    meters = []
    real_meter = type(task).meter

    def recording_meter(self, s):
        m = real_meter(self, s)
        meters.append(m)
        return m

    monkeypatch.setattr(type(task), "meter", recording_meter)
    rng = np.random.default_rng(0)
    results = {}
    for n in (16, 160):
        x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
        if task_name == "segmentation":
            dom = ArrayDenseDomain("d", x, masks=rng.integers(0, 3, (n, 32, 32)).astype(np.uint8), classes=list("abc"))
        else:
            dom = ArrayDenseDomain("d", x, depth=rng.uniform(1, 30, (n, 32, 32)).astype(np.float32))
        out = evaluate_model(model, dom, spec, "cpu", batch_size=16)
        results[n] = (out, _meter_state(meters[-1]))
        assert out.rows is None and out.features is None
        _no_per_image_arrays(out.scores, n)
    (small, st_small), (big, st_big) = results[16], results[160]
    assert st_small.keys() == st_big.keys()
    for k in st_small:
        if isinstance(st_small[k], tuple):
            assert st_small[k] == st_big[k], k  # same tensor shapes
    assert set(small.scores) == set(big.scores)
    if task_name == "segmentation":
        assert st_small["matrix"] == (3, 3)
        assert big.scores["n_pixels"] == 160 * 32 * 32
    else:
        assert st_small["sums"] == (len(DEPTH_KEYS),) and st_small["images"] == () and st_small["pixels"] == ()
        assert big.scores["n_images"] == 160


def test_dense_labels_are_scored_at_their_stored_size():
    """A test set stored larger than the model's input is scored at the labels' own resolution: the
    logits resized onto them (bilinear), every stored pixel counted; depth likewise."""
    import torch.nn.functional as F

    from edgeda.data.dense import ArrayDenseDomain
    from edgeda.tasks.spec import TaskSpec
    from edgeda.training.model_eval import evaluate_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    masks = (images[..., 0] > 127).astype(np.uint8)
    masks[:, 5, :] = 255  # ignored
    spec = TaskSpec(num_classes=2, classes=["a", "b"], task="segmentation", image_size=(10, 12), channels=3,
                    mean=[0.0] * 3, std=[1.0] * 3)

    class Logits(torch.nn.Module):
        def forward(self, x):
            return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], 1)

    from edgeda.data.transforms import resize_image

    res = evaluate_model(Logits(), ArrayDenseDomain("big", images, masks, classes=["a", "b"]), spec)
    seg = task_of("segmentation")
    assert res.scores["n_pixels"] == 3 * 19 * 24  # the stored pixels less the ignored row, not 3 * 10 * 12
    x = torch.from_numpy(np.stack([resize_image(im, (10, 12)) for im in images])).float()
    meter = ConfusionMeter(2)
    logits = Logits()(x.permute(0, 3, 1, 2) / 255.0)
    meter.update(F.interpolate(logits, size=(20, 24), mode="bilinear", align_corners=False).argmax(1),
                 torch.from_numpy(masks.astype(np.int64)))
    assert res.scores["confusion"] == segmentation_scores(meter.matrix, ["a", "b"])["confusion"]
    assert seg.at_size(torch.zeros(1, 2, 10, 12), (10, 12)).shape == (1, 2, 10, 12)
    assert seg.at_size(torch.zeros(1, 10, 12), (20, 24)).shape == (1, 20, 24)
