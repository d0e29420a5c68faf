"""Detection models: box ops, NMS, SSD matching, FCOS assignment, losses, anchors and the model contract."""
import math

import pytest
import torch
import torch.nn.functional as F

from edgeda.errors import EdgedaError
from edgeda.models import arch_of, build, rebuild
from edgeda.models.detection import boxes as B
from edgeda.models.detection.losses import fcos_assign, ssd_loss, ssd_match

TINY = {
    "ssdlite": dict(width=0.25),
    "fcos": dict(backbone="resnet18", width=8, fpn_channels=64, num_convs=1),
}


def _model(arch, size=(64, 64), k=3, **kw):
    torch.manual_seed(0)
    return build("detector", arch=arch, num_classes=k, image_size=size, **{**TINY[arch], **kw})


# ---------------------------------------------------------------------------------------- box ops


def test_box_codings_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 60], 1)
    anchors = torch.cat([xy + 3, xy + 20 + torch.rand(50, 2, generator=g) * 30], 1)
    assert torch.allclose(B.decode_deltas(B.encode_deltas(boxes, anchors), anchors), boxes, atol=1e-3)
    assert torch.allclose(B.decode_ltrb(B.encode_ltrb(boxes, anchors), anchors), boxes, atol=1e-3)
    # SSD's code by hand: anchor centre (5, 5) size 10, box centre (7, 5) size (20, 5)
    t = B.encode_deltas(torch.tensor([[-3.0, 2.5, 17.0, 7.5]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert torch.allclose(t, torch.tensor([[10 * 0.2, 0.0, 5 * math.log(2.0), 5 * math.log(0.5)]]))


def test_box_iou_and_clip_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert torch.allclose(B.box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))
    clipped = B.clip_boxes(torch.tensor([[-5.0, -1.0, 70.0, 30.0]]), (20, 64))
    assert clipped.tolist() == [[0.0, 0.0, 64.0, 20.0]]


def test_nms_greedy_chain_and_class_aware():
    # b1 overlaps b0 (IoU 60/140 = 0.43 > 0.4) and is dropped; b2 overlaps only b1 (0.43) and b0 (20/180 = 0.11):
    # greedy NMS keeps b2 because its only suppressor was itself suppressed. b3 equals b0 but is another class.
    boxes = torch.tensor([[8.0, 0, 18, 10], [0.0, 0, 10, 10], [0.0, 0, 10, 10], [4.0, 0, 14, 10], [30.0, 30, 40, 40]])
    scores = torch.tensor([0.7, 0.9, 0.85, 0.8, 0.1])
    labels = torch.tensor([0, 0, 1, 0, 0])
    keep = B.batched_nms(boxes, scores, labels, 0.4)
    assert keep.tolist() == [1, 2, 0, 4]  # by decreasing score; index 3 (b1) suppressed
    assert B.batched_nms(boxes, scores, torch.zeros(5, dtype=torch.long), 0.4).tolist() == [1, 0, 4]
    assert B.batched_nms(boxes, scores, labels, 0.45).tolist() == [1, 2, 3, 0, 4]  # 0.43 is not above 0.45
    assert B.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


def test_nms_long_chain_equals_box_by_box_greedy():
    # 120 boxes 10 px wide shifted by 3 px, scores decreasing left to right: each overlaps its next neighbours
    # (IoU 7/13 and 4/16), so suppression alternates along the chain (longer than the matrix rounds allow)
    x = torch.arange(120, dtype=torch.float32) * 3
    boxes = torch.stack([x, torch.zeros(120), x + 10, torch.full((120,), 10.0)], 1)
    scores = torch.linspace(1.0, 0.1, 120)
    keep = B.batched_nms(boxes, scores, torch.zeros(120, dtype=torch.long), 0.5)
    kept = []
    for i in range(120):  # the textbook loop
        if all(float(B.box_iou(boxes[i:i + 1], boxes[j:j + 1])) <= 0.5 for j in kept):
            kept.append(i)
    assert keep.tolist() == kept == list(range(0, 120, 2))


# ---------------------------------------------------------------------------------------- SSD


def test_ssd_match_by_hand():
    anchors = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30], [40.0, 40, 50, 50]])
    gt = torch.tensor([[0.0, 0, 10, 10], [22.0, 22, 32, 32]])
    # a0: IoU 1 with g0; a1: 1/3 with g0 (below 0.5); a2: 64/136 = 0.47 with g1, below 0.5 but g1's best anchor
    # so matched anyway; a3: nothing
    assert ssd_match(gt, anchors).tolist() == [0, -1, 1, -1]
    assert ssd_match(torch.zeros(0, 4), anchors).tolist() == [-1] * 4


def test_ssd_hard_negative_mining_by_hand():
    # one image, 8 anchors, one positive (anchor 0, label 0 = column 1) -> 3 hard negatives of the 7
    anchors = torch.tensor([[10.0 * i, 0, 10.0 * i + 10, 10] for i in range(8)])
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}
    v = [2.0, 5.0, -5.0, 3.0, 1.0, -2.0, 4.0, 0.0]  # logit of the class column; background column 0
    logits = torch.tensor([[[0.0, x] for x in v]])
    deltas = torch.zeros(1, 8, 4)  # the positive's box equals its anchor: zero regression target
    out = ssd_loss({"cls_logits": logits, "bbox_regression": deltas}, [target], anchors)
    expected = F.softplus(torch.tensor(-2.0)) + sum(F.softplus(torch.tensor(x)) for x in (5.0, 4.0, 3.0))
    assert torch.isclose(out["classification"], expected)
    assert float(out["bbox_regression"]) == 0.0
    # a pseudo-label weight scales the positive's terms only
    target_w = dict(target, weights=torch.tensor([2.0]))
    deltas = torch.full((1, 8, 4), 0.5)
    plain = ssd_loss({"cls_logits": logits, "bbox_regression": deltas}, [target], anchors)
    weighted = ssd_loss({"cls_logits": logits, "bbox_regression": deltas}, [target_w], anchors)
    assert torch.isclose(weighted["bbox_regression"], 2 * plain["bbox_regression"])
    assert torch.isclose(weighted["classification"] - plain["classification"], F.softplus(torch.tensor(-2.0)))


def test_ssd_default_boxes_320_by_hand():
    m = build("detector", arch="ssdlite", num_classes=2, image_size=(320, 320), width=0.25)
    a = m.anchors()
    assert a.shape == (6 * (400 + 100 + 25 + 9 + 4 + 1), 4) == (3234, 4)
    # first cell of the stride-16 level (20 x 20): centre (8, 8); scale 0.2 -> 64 px; s' = sqrt(0.2 * 0.35)
    assert torch.allclose(a[0], torch.tensor([-24.0, -24.0, 40.0, 40.0]))
    half = 160 * math.sqrt(0.2 * 0.35)
    assert torch.allclose(a[1], torch.tensor([8 - half, 8 - half, 8 + half, 8 + half]))
    # the last box: 1 x 1 level, scale 0.95, ratio 3 transposed: width 0.95/sqrt(3), height clipped to 1
    w = 320 * 0.95 / math.sqrt(3)
    assert torch.allclose(a[-1], torch.tensor([160 - w / 2, 0.0, 160 + w / 2, 320.0]), atol=1e-4)


# ---------------------------------------------------------------------------------------- FCOS


def test_fcos_assignment_by_hand():
    m = _model("fcos", size=(128, 128))
    anchors = m.anchors()  # P3 16x16 (stride 8), P4 8x8, P5 4x4, P6 2x2, P7 1x1
    levels = [256, 64, 16, 4, 1]
    assert anchors.shape[0] == sum(levels)
    # A (24 x 16, centre (16, 12)): P3 points (8j, 8i) inside it and within 1.5 strides of the centre:
    # j in {1, 2, 3}, i in {1, 2}, all with largest side distance <= 20 < 64.
    # B (the whole image, centre (64, 64)): on P3 every central point has a side distance >= 64 (P3 takes < 64);
    # on P4 the points (16j, 16i), i, j in {3, 4, 5}, have distances in (64, 128) except the centre (exactly 64).
    gt = torch.tensor([[4.0, 4, 28, 20], [0.0, 0, 128, 128]])
    idx = fcos_assign(gt, anchors, levels)
    a_pts = {i * 16 + j for i in (1, 2) for j in (1, 2, 3)}
    b_pts = {256 + i * 8 + j for i in (3, 4, 5) for j in (3, 4, 5)} - {256 + 4 * 8 + 4}
    assert {int(i) for i in torch.where(idx == 0)[0]} == a_pts
    assert {int(i) for i in torch.where(idx == 1)[0]} == b_pts
    assert int((idx >= 0).sum()) == len(a_pts) + len(b_pts)
    # C and D share centre (20, 20); the four P3 points (16|24, 16|24) are positive for both: the smaller (D) wins
    gt = torch.tensor([[0.0, 0, 40, 40], [8.0, 8, 32, 32]])
    idx = fcos_assign(gt, anchors, levels)
    assert {int(i) for i in torch.where(idx >= 0)[0]} == {34, 35, 50, 51}
    assert (idx[[34, 35, 50, 51]] == 1).all()


# ---------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("arch", sorted(TINY))
def test_contract_shapes_decode_postprocess(arch):
    m = _model(arch, size=(100, 70), k=3).eval()
    x = torch.randn(2, 3, 100, 70)
    with torch.no_grad():
        out = m(x)
        feats, again = m.features_and_outputs(x)
    assert all(torch.equal(out[k], again[k]) for k in out)
    a = m.anchors((100, 70))
    assert out["cls_logits"].shape == (2, a.shape[0], 4)
    assert out["bbox_regression"].shape == (2, a.shape[0], 4)
    if arch == "fcos":
        assert out["bbox_ctrness"].shape == (2, a.shape[0], 1)
        assert len(feats) == 5
    else:
        assert len(feats) == 6
    assert m.anchors((100, 70)) is a  # cached
    boxes, scores = m.decode(out)
    assert boxes.shape == (2, a.shape[0], 4) and scores.shape == (2, a.shape[0], 3)
    assert float(boxes[..., 0::2].min()) >= 0 and float(boxes[..., 0::2].max()) <= 70
    assert float(boxes[..., 1::2].max()) <= 100 and 0 <= float(scores.min()) and float(scores.max()) <= 1
    dets = m.postprocess(out, score_thresh=0.0, max_det=7)
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].shape == (7, 4) and d["labels"].dtype == torch.int64
        assert int(d["labels"].min()) >= 0 and int(d["labels"].max()) < 3
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
    assert m.postprocess(out, score_thresh=1.0)[0]["boxes"].shape == (0, 4)
    with pytest.raises(EdgedaError, match="image_size"):
        m.decode(out, image_size=(64, 64))
    again = rebuild(arch_of(m))
    assert list(again.state_dict()) == list(m.state_dict())
    trunk, rest = m.param_groups(1.0, 0.1)
    assert trunk["lr"] == 0.1 and rest["lr"] == 1.0
    assert len(trunk["params"]) + len(rest["params"]) == len(list(m.parameters())) and trunk["params"] and rest["params"]
    assert {id(p) for p in trunk["params"]} == {id(p) for p in m.trunk.parameters()}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_loss_decreases_and_empty_targets(arch):
    m = _model(arch).train()
    x = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 10, 40, 50], [30.0, 4, 60, 30]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[20.0, 20, 44, 44]]), "labels": torch.tensor([1])}]
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    losses = []
    for _ in range(8):
        out = m(x)
        parts = m.loss(out, targets)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["loss"].item())
    assert set(parts) >= {"loss", "classification", "bbox_regression"}
    assert losses[-1] < 0.6 * losses[0], losses
    # images without boxes: every anchor is a negative, the loss is finite and back-propagates
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = m(x)
    parts = m.loss(out, empty)
    assert all(torch.isfinite(v) for v in parts.values())
    assert parts["bbox_regression"].item() == 0.0
    parts["loss"].backward()
    with pytest.raises(EdgedaError, match="targets"):
        m.loss(out, empty[:1])
    mixed = m.loss(m(x), [targets[0], empty[0]])
    assert torch.isfinite(mixed["loss"]) and mixed["bbox_regression"].item() > 0


def test_public_layout_names_and_shapes():
    # tensors of torchvision's ssdlite320_mobilenet_v3_large / fcos_resnet50_fpn with num_classes = K + 1
    sd = build("detector", arch="ssdlite", num_classes=4, image_size=320).state_dict()
    assert len(sd) == 476
    assert sd["backbone.features.0.13.0.weight"].shape == (672, 112, 1, 1)  # block 13's expansion
    assert sd["backbone.features.1.0.1.0.weight"].shape == (672, 1, 5, 5)  # block 13's depthwise
    assert sd["backbone.features.1.3.0.weight"].shape == (480, 80, 1, 1)  # reduced tail
    assert sd["backbone.extra.0.0.0.weight"].shape == (256, 480, 1, 1)
    assert sd["head.classification_head.module_list.0.1.weight"].shape == (6 * 5, 672, 1, 1)
    assert sd["head.regression_head.module_list.5.1.weight"].shape == (6 * 4, 128, 1, 1)
    sd = build("detector", arch="fcos", num_classes=4, image_size=128, backbone="resnet18").state_dict()
    assert len(sd) == 174
    assert sd["backbone.body.layer2.0.conv1.weight"].shape == (128, 64, 3, 3)
    assert sd["backbone.fpn.inner_blocks.0.0.weight"].shape == (256, 128, 1, 1)
    assert sd["backbone.fpn.extra_blocks.p7.weight"].shape == (256, 256, 3, 3)
    assert sd["head.classification_head.conv.10.weight"].shape == (256,)  # 4th GroupNorm
    assert sd["head.classification_head.cls_logits.weight"].shape == (5, 256, 3, 3)
    assert sd["head.regression_head.bbox_ctrness.weight"].shape == (1, 256, 3, 3)


def test_bad_arguments_are_one_sentence():
    for kw in (dict(arch="yolo"), dict(arch="fcos", backbone="vgg16"), dict(arch="ssdlite", num_classes=0),
               dict(arch="ssdlite", image_size=(16, 16)), dict(arch="fcos", fpn_channels=40), dict(arch="fcos", fpn_channels=32)):
        with pytest.raises(EdgedaError):
            build("detector", **{"num_classes": 2, "image_size": 64, **kw})


@pytest.mark.parametrize("arch", sorted(TINY))
def test_whole_checkpoint_loads_and_other_class_count_reinitialises_head(arch, tmp_path):
    from safetensors.torch import save_file

    from edgeda.models.weights import load_pretrained, read_state_dict

    src = _model(arch, k=4).eval()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}  # as frozen-BN files
    save_file(state, str(tmp_path / "det.safetensors"))
    assert type(src).classes_in_checkpoint(read_state_dict(tmp_path / "det.safetensors")) == 4
    same = build("detector", arch=arch, num_classes=4, image_size=(64, 64), **TINY[arch]).eval()
    report = load_pretrained(same, tmp_path / "det.safetensors")
    assert report["kind"] == "whole model" and not report["missing"] and not report["unexpected"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = src(x), same(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = build("detector", arch=arch, num_classes=2, image_size=(64, 64), **TINY[arch]).eval()
    report = load_pretrained(other, tmp_path / "det.safetensors")
    assert sorted(report["missing"]) == sorted(other.output_keys()) and report["reinitialised"]
    with torch.no_grad():
        assert torch.equal(other(x)["bbox_regression"], a["bbox_regression"])


def test_imagenet_trunk_checkpoint_loads_into_ssdlite(tmp_path):
    from safetensors.torch import save_file

    from edgeda.models import load_backbone_weights

    kw = dict(arch="ssdlite", num_classes=2, image_size=(64, 64), width=0.25, reduced_tail=False)
    torch.manual_seed(1)
    src = build("detector", **kw)
    # MobileNetV3's own names (features.13.block.1 is this layout's backbone.features.1.0.1) plus a classifier
    state = {f"features.{k}": v for k, v in src.trunk.state_dict().items()}
    assert "features.13.block.1.0.weight" in state and "features.16.0.weight" in state
    state["classifier.0.weight"] = torch.zeros(8, 8)
    save_file(state, str(tmp_path / "mobilenet.safetensors"))
    torch.manual_seed(2)
    dst = build("detector", **kw)
    report = load_backbone_weights(dst.trunk, tmp_path / "mobilenet.safetensors")
    assert report["unexpected"] == ["classifier.0.weight"] and report["missing"] == []
    a, b = src.state_dict(), dst.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone.features."))
    assert not torch.equal(a["backbone.extra.0.0.0.weight"], b["backbone.extra.0.0.0.weight"])


def test_class_aware_nms_equals_the_all_pairs_greedy_on_random_boxes_with_tied_scores():
    """NMS runs class by class; the kept boxes and their order are those of greedy NMS over all pairs with the
    class test in the suppression matrix (scores rounded so that ties occur)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        n, k = int(torch.randint(0, 300, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 0.5], 1)
        scores, labels = torch.rand(n, generator=g).round(decimals=2), torch.randint(0, k, (n,), generator=g)
        order = torch.argsort(scores, descending=True, stable=True)
        b, lab = boxes[order], labels[order]
        reference = order[B.nms_keep_mask((B.box_iou(b, b) > 0.5) & (lab[:, None] == lab[None, :]))]
        assert torch.equal(B.batched_nms(boxes, scores, labels, 0.5), reference)
