"""Feature- and model-level methods on classification (coral, mmd, dsn, two_stream, csg, dann): their
losses on hand-made tensors against values worked out by hand, a short training run each, their bundles,
and one DANN step written out."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_running_stats_follow, tiny_config
from edgeda.bundle import load_bundle
from edgeda.bundle_eval import evaluate_bundle
from edgeda.methods import METHODS, Batch
from edgeda.methods.losses import difference_loss, info_nce, nt_xent, scale_invariant_mse
from edgeda.models.alignment import coral, multi_kernel_mmd
from edgeda.models.augment import rand_augment
from edgeda.models.pooling import attention_pool
from edgeda.tasks.spec import TaskSpec
from edgeda.training import Trainer

FEATURE_METHODS = ["coral", "mmd", "dsn", "two_stream", "csg"]


def test_coral_hand_value_and_identical_distributions():
    s = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # covariance diag(2, 0)
    t = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # covariance diag(0, 2)
    assert coral(s, t).item() == pytest.approx((4 + 4) / (4 * 2 * 2))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g)
    assert coral(a, a).item() == 0.0
    assert coral(a, b).item() < 1e-3 < coral(a, 3 * b).item()


def test_mmd_hand_value_and_shift():
    # one point per side, pooled bandwidth = mean off-diagonal squared distance = 1
    mults = (0.25, 0.5, 1.0, 2.0, 4.0)
    expected = 2 - 2 * sum(math.exp(-1 / m) for m in mults) / len(mults)
    assert multi_kernel_mmd(torch.zeros(1, 1), torch.ones(1, 1)).item() == pytest.approx(expected, rel=1e-5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    same, shifted = multi_kernel_mmd(x, y), multi_kernel_mmd(x, y + 2.0)
    assert multi_kernel_mmd(x, x).abs().item() < 1e-6
    assert shifted.item() > 10 * same.item()


def test_difference_loss_zero_for_orthogonal_codes():
    shared = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert difference_loss(shared, torch.tensor([[1.0], [-1.0]])).item() == 0.0  # H_c^T H_p = [[0], [0]]
    assert difference_loss(shared, torch.tensor([[1.0], [1.0]])).item() == pytest.approx((2**2 + 0) / 2)  # [[2], [0]]


def test_scale_invariant_mse_ignores_offsets():
    x = torch.randn(3, 1, 4, 4)
    assert scale_invariant_mse(x, x + 0.7).item() == pytest.approx(0.0, abs=1e-6)
    assert scale_invariant_mse(torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2)).item() == pytest.approx(1.0)


def test_info_nce_hand_value_and_matched_pairs():
    q = torch.tensor([[1.0, 0.0]])
    loss = info_nce(q, q, torch.tensor([[0.0, 1.0]]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    g = torch.Generator().manual_seed(2)
    a, neg = torch.randn(16, 8, generator=g), torch.randn(64, 8, generator=g)
    matched = info_nce(a, a + 0.05 * torch.randn(16, 8, generator=g), neg)
    unmatched = info_nce(a, torch.randn(16, 8, generator=g), neg)
    assert matched.item() < 0.1 < unmatched.item()


def test_attention_pool():
    fmap = torch.randn(2, 6, 1, 1).expand(2, 6, 3, 3).contiguous()
    torch.testing.assert_close(attention_pool(fmap), fmap.mean((2, 3)))  # equal locations: average pooling
    spike = torch.zeros(1, 4, 2, 2)
    spike[0, :, 0, 0] = 10.0
    pooled = attention_pool(spike)  # the dominant location outweighs the 3 empty ones
    assert (pooled > spike.mean((2, 3))).all()


def test_attention_pool_can_take_its_weights_from_another_map():
    fmap = torch.arange(4.0).view(1, 1, 2, 2).expand(1, 3, 2, 2).contiguous()  # values 0, 1, 2, 3
    spike = torch.zeros(1, 3, 2, 2)
    spike[0, :, 0, 0] = 10.0  # the other map attends to location 0, where fmap is 0
    assert (attention_pool(fmap, attention_from=spike) < fmap.mean((2, 3))).all()
    torch.testing.assert_close(attention_pool(fmap, attention_from=fmap), attention_pool(fmap))
    with pytest.raises(ValueError, match="shape"):
        attention_pool(fmap, attention_from=torch.zeros(1, 3, 4, 4))


def test_csg_key_is_pooled_with_the_students_attention_on_the_key_view(tmp_path, monkeypatch):
    import edgeda.methods.csg as csg_module

    calls = []

    def recording_pool(fmap, attention_from=None):
        calls.append((fmap.detach().clone(), None if attention_from is None else attention_from.detach().clone()))
        return attention_pool(fmap, attention_from)

    monkeypatch.setattr(csg_module, "attention_pool", recording_pool)
    tr = Trainer(tiny_config(tmp_path / "csg", method="csg", options={"pretrain": 0.0}), progress=False, log=None)
    tr.setup()
    m = tr.method
    m.train()
    m._freeze_initial()
    m.augment = lambda x: x  # both views are the image itself: the student's key-view map is its query map
    torch.manual_seed(0)
    m.step(Batch(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))), None)
    (q_map, q_attn), (k_map, k_attn) = calls
    assert q_attn is None and k_attn is not None
    torch.testing.assert_close(k_attn, q_map)  # attention from the student's map of the key view
    assert not torch.allclose(k_map, q_map)  # pooled: the frozen encoder's map (eval-mode statistics)


def test_rand_augment_stays_in_input_range():
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    before = x.clone()
    y = rand_augment(x, (0.5,) * 3, (0.5,) * 3, n_ops=3, magnitude=1.0)
    assert y.shape == x.shape and torch.equal(x, before)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6 and not torch.equal(x, y)


def test_two_stream_linear_fit_recovers_transform():
    from edgeda.methods.two_stream import TwoStream

    ws = torch.randn(50, 7)
    a, b = TwoStream.linear_fit(ws, 1.5 * ws - 0.2, ridge=0.0)
    assert a.item() == pytest.approx(1.5, rel=1e-4) and b.item() == pytest.approx(-0.2, abs=1e-4)


def test_classification_dann_is_unchanged():
    """One step equals the classification DANN written out: CE + domain BCE through the GRL on pooled features."""
    from edgeda.models import DomainClassifier, dann_coefficient
    from edgeda.methods.losses import domain_adversarial_loss

    spec = TaskSpec(3, ["a", "b", "c"], task="classification", image_size=(16, 16))
    torch.manual_seed(0)
    m = METHODS.get("dann")(spec, backbone="dtn", backbone_kwargs={"width": 2, "out_dim": 16}, options={"hidden": 8})
    assert type(m.nets["domain"]) is DomainClassifier
    ref = copy.deepcopy(m.nets)
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    g = torch.Generator().manual_seed(1)
    xs, xt, ys = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 1])
    m.progress = 0.4
    out = m.step(Batch(xs, ys), Batch(xt))
    coeff = dann_coefficient(0.4)
    feats, logits = ref["model"].features_and_logits(torch.cat([xs, xt]))
    cls = F.cross_entropy(logits[:4], ys)
    dom, _ = domain_adversarial_loss(ref["domain"], feats[:4], feats[4:], coeff)
    opt.zero_grad()
    (cls + dom).backward()
    opt.step()
    assert out["loss/cls"] == pytest.approx(cls.item(), rel=1e-5) and out["loss/domain"] == pytest.approx(dom.item(), rel=1e-5)
    for a, b in zip(m.nets.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)



@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_method_trains_and_bundle_evaluates(tmp_path, method):
    tr = Trainer(tiny_config(tmp_path, method=method, eval_every=6), progress=False, log=None)
    res = tr.run()
    losses = {k for h in res.history for k in h if k.startswith("train/loss/")}
    expected = {"coral": {"coral"}, "mmd": {"mmd"}, "dsn": {"recon", "difference", "similarity"},
                "two_stream": {"mmd", "weight_reg"}, "csg": {"nce"}}[method]
    assert {f"train/loss/{k}" for k in expected | {"cls"}} <= losses
    b = load_bundle(res.bundle)
    assert set(b.manifest["files"]) == {"classifier.safetensors"}  # private encoders, streams, heads stay behind
    m = evaluate_bundle(res.bundle, device="cpu")
    assert m["accuracy"] == pytest.approx(res.metrics["target_test_acc"], abs=1e-9)
    if method == "two_stream":  # ships the target stream, which has drifted from the source stream
        src, tgt = tr.method.nets["source"].state_dict(), tr.method.model.state_dict()
        assert any(not torch.equal(src[k], tgt[k]) for k in src)
        torch.testing.assert_close(b.model.state_dict()["head.weight"], tgt["head.weight"].cpu())


def test_csg_init_freezes_the_given_encoder(tmp_path):
    base = Trainer(tiny_config(tmp_path / "so", method="source_only", iters=2), progress=False, log=None).run()
    tr = Trainer(tiny_config(tmp_path / "csg", method="csg", init=str(base.bundle), eval_every=6), progress=False, log=None)
    res = tr.run()
    assert "train/loss/nce" in res.history[0]  # contrastive from the first step: no pretraining phase
    init = load_bundle(base.bundle).model.features.state_dict()
    frozen = tr.method.nets["frozen"].state_dict()
    for k, v in init.items():
        torch.testing.assert_close(frozen[k], v)  # E_0 stays the initial encoder, BN statistics included
    assert not torch.equal(tr.method.model.features.state_dict()["fc.2.weight"], init["fc.2.weight"])


def test_frozen_bn_statistics_normalises_per_batch_and_keeps_running_statistics():
    from torch import nn

    from edgeda.models.norm import frozen_bn_statistics

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = [t.clone() for t in (net[1].running_mean, net[1].running_var, net[1].num_batches_tracked)]
    with frozen_bn_statistics(net):
        out_s = net(torch.randn(16, 3) * 4 + 10)  # a shifted, scaled "source" batch
    after = (net[1].running_mean, net[1].running_var, net[1].num_batches_tracked)
    for b, a in zip(before, after):
        assert torch.equal(b, a)
    # still normalised by its own batch statistics (train mode): zero mean, unit variance per unit
    torch.testing.assert_close(out_s.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    out_t = net(torch.randn(16, 3))  # outside the block the target batch updates the statistics
    assert not torch.equal(net[1].running_mean, before[0])
    (out_s.pow(2).sum() + out_t.pow(2).sum()).backward()  # the swapped buffers leave autograd intact
    assert net[0].weight.grad is not None


def test_coral_separate_bn_statistics_follow_the_target_only(tmp_path):
    torch.manual_seed(0)
    xs, ys, xt = torch.randn(8, 3, 32, 32) + 2, torch.randint(0, 10, (8,)), torch.randn(8, 3, 32, 32)
    stats = {}
    for bn in ("separate", "joint"):
        tr = Trainer(tiny_config(tmp_path / bn, method="coral", options={"bn": bn}), progress=False, log=None)
        tr.setup()
        tr.method.train()
        reference = copy.deepcopy(tr.method.model)
        with torch.no_grad():  # what the target batch alone does to the statistics
            reference(xt if bn == "separate" else torch.cat([xs, xt]))
        tr.method.step(Batch(xs, ys), Batch(xt))
        stats[bn] = assert_running_stats_follow(tr.method.model, reference)
    assert not torch.equal(stats["separate"], stats["joint"])
    with pytest.raises(Exception, match="bn="):
        Trainer(tiny_config(tmp_path / "bad", method="coral", iters=1, options={"bn": "both"}), progress=False, log=None).run()


def test_csg_backbone_lr_scales_the_encoders_learning_rate_only(tmp_path):
    tr = Trainer(tiny_config(tmp_path / "csg", method="csg", options={"backbone_lr": 0.1}), progress=False, log=None)
    tr.setup()
    m = tr.method
    enc, rest = m.optims["main"].param_groups
    assert {id(p) for p in enc["params"]} == {id(p) for p in m.model.features.parameters()}
    assert id(m.model.head.weight) in {id(p) for p in rest["params"]}
    assert id(next(m.nets["proj"].parameters())) in {id(p) for p in rest["params"]}
    assert enc["lr"] == pytest.approx(0.1 * rest["lr"]) and enc["initial_lr"] == pytest.approx(0.1 * rest["initial_lr"])
    with pytest.raises(Exception, match="backbone_lr="):
        Trainer(tiny_config(tmp_path / "bad", method="csg", iters=1, options={"backbone_lr": 0}), progress=False, log=None).run()


def test_csg_two_layers_contrast_the_last_two_stages_each_with_its_own_head_and_queue(tmp_path):
    base = Trainer(tiny_config(tmp_path / "so", method="source_only", iters=2), progress=False, log=None).run()
    tr = Trainer(tiny_config(tmp_path / "csg", method="csg", init=str(base.bundle), options={"layers": 2}, iters=3,
                             eval_every=3), progress=False, log=None)
    res = tr.run()
    nets = tr.method.nets
    # tiny DTN width 8: stage maps of 16 and 32 channels feed their own projection heads
    assert nets["proj"].net[0].in_features == 32 and nets["proj_l1"].net[0].in_features == 16
    queues = (nets["queue"], nets["queue_l1"])
    assert all(int(q.ptr) == 3 * 8 % q.keys.shape[0] for q in queues)  # 3 steps x batch 8 keys pushed to each
    for ema in ("proj_ema", "proj_ema_l1"):
        assert all(not p.requires_grad for p in nets[ema].parameters())
    assert "train/loss/nce" in res.history[-1]
    with pytest.raises(Exception, match="layers=4"):
        Trainer(tiny_config(tmp_path / "bad", method="csg", options={"layers": 4}), progress=False, log=None).run()


def test_nt_xent_hand_value_and_matched_pairs():
    e = torch.eye(2)  # two pairs, each view identical to its partner and orthogonal to the other pair
    assert nt_xent(e, e, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(32, 8, generator=g)
    matched = nt_xent(a, a + 0.05 * torch.randn(32, 8, generator=g))
    unmatched = nt_xent(a, torch.randn(32, 8, generator=g))
    assert matched.item() < 1.0 < math.log(32) < unmatched.item()  # chance level is log N


def test_paired_crops_pair_two_views_of_one_region():
    from edgeda.data.photos import paired_crops

    photos = torch.stack([torch.full((3, 40, 40), 40 * i, dtype=torch.uint8) for i in range(6)])  # one flat colour each
    g = torch.Generator().manual_seed(0)
    a, b = paired_crops(photos, 64, (16, 16), generator=g)
    assert a.shape == b.shape == (64, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a.mean((1, 2, 3)), b.mean((1, 2, 3)))  # both views come from the same photo
    assert len(torch.unique(a.mean((1, 2, 3)))) > 1  # and the batch from several photos
    ramp = torch.arange(64, dtype=torch.uint8).mul(4).expand(1, 3, 64, 64).contiguous()  # a horizontal gradient
    a, b = paired_crops(ramp, 32, (8, 8), generator=g)
    assert not torch.allclose(a, b)  # jittered: overlapping, not identical views
    a, b = paired_crops(ramp, 32, (8, 8), jitter=0.0, generator=g)
    torch.testing.assert_close(a, b)


def test_anchor_photos_bundled_and_from_a_folder(tmp_path, write_png):
    from edgeda.data.photos import anchor_photos, bundled_photo_paths
    from edgeda.errors import DataError

    photos = anchor_photos("photos", 1, side=24)
    assert photos.shape == (len(bundled_photo_paths()), 1, 24, 24) and photos.dtype == torch.uint8
    assert len(bundled_photo_paths()) == 3  # scikit-learn's china and flower, matplotlib's grace_hopper
    write_png(tmp_path / "cam" / "a.png", size=(30, 20), value=10)
    write_png(tmp_path / "cam" / "sub" / "b.png", size=(20, 30), value=200)
    (tmp_path / "cam" / "broken.png").write_bytes(b"not a png")
    got = anchor_photos(str(tmp_path / "cam"), 3, side=8)
    assert got.shape == (2, 3, 8, 8) and set(got.flatten().tolist()) == {10, 200}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable anchor image"):
        anchor_photos(str(tmp_path / "empty"), 3)
    with pytest.raises(DataError, match="not a folder"):
        anchor_photos(str(tmp_path / "missing"), 3)


@pytest.mark.parametrize("anchor", ["photos", "source_ssl"])
def test_csg_anchor_pretrains_the_encoder_without_labels_then_freezes_it(tmp_path, anchor):
    tr = Trainer(tiny_config(tmp_path / "csg", method="csg", options={"anchor": anchor, "pretrain": 0.5}),
                 progress=False, log=None)
    tr.setup()
    m = tr.method
    m.train()
    main = {id(p) for g in m.optims["main"].param_groups for p in g["params"]}
    assert not main & {id(p) for p in m.nets["proj_anchor"].parameters()}
    before = copy.deepcopy(m.model.state_dict())
    batch = Batch(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    assert set(m.step(batch, None)) == {"loss/anchor"}  # the source labels are not used yet
    after = copy.deepcopy(m.model.state_dict())
    assert torch.equal(after["head.weight"], before["head.weight"])  # the task head waits
    assert not torch.equal(after["features.fc.2.weight"], before["features.fc.2.weight"])
    m.progress = 0.5
    assert "loss/nce" in m.step(batch, None)
    frozen = m.nets["frozen"].state_dict()
    for k, v in after.items():
        if k.startswith("features."):
            torch.testing.assert_close(frozen[k[len("features."):]], v)  # E_0 = the self-supervised encoder
    with pytest.raises(Exception, match="pretrain must be > 0"):
        Trainer(tiny_config(tmp_path / "p0", method="csg", iters=1, options={"anchor": "photos", "pretrain": 0}),
                progress=False, log=None).run()
    base = Trainer(tiny_config(tmp_path / "so", method="source_only", iters=2), progress=False, log=None).run()
    with pytest.raises(Exception, match="use one of them"):
        Trainer(tiny_config(tmp_path / "both", method="csg", init=str(base.bundle), iters=1,
                            options={"anchor": "photos"}), progress=False, log=None).run()
