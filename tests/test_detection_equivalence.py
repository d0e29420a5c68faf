"""edgeda's detectors compute what torchvision's do: ``ssdlite320_mobilenet_v3_large`` and
``fcos_resnet50_fpn`` with random weights and random BatchNorm statistics, saved to a file and loaded
into ``ssdlite`` / ``fcos`` with :func:`edgeda.models.weights.load_pretrained`, give the same head
outputs, anchors and detections (after decoding and NMS) in eval mode, fp32, on the same input tensor.

What is compared (:func:`compare_detector`):

* the input: one random batch, already normalised (what both models' networks receive); torchvision's
  own resize-and-normalise transform (``GeneralizedRCNNTransform``) is bypassed by calling its
  ``backbone``, ``head``, ``anchor_generator`` and ``postprocess_detections`` directly, as its
  ``forward`` does after the transform;
* head outputs: class logits, box regression, FCOS's centerness (max abs diff), and the anchors;
* detections: torchvision's ``postprocess_detections`` against edgeda's ``postprocess`` with the same
  score threshold, NMS IoU and detection cap. torchvision ranks its pre-NMS candidates per class (SSD) or
  per level (FCOS), edgeda over all (anchor, class) pairs, so both take every candidate above the
  threshold (torchvision's ``topk_candidates`` raised to anchors x classes, edgeda's ``pre_nms_topk`` to
  anchors x classes), where they agree. Detections are matched by class and IoU.

The random checkpoints: torchvision's own initialisation, then BatchNorm statistics measured on random
inputs and perturbed (``calibrate_batchnorm``: with torchvision's unit statistics a random MobileNetV3's
signal dies out, the outputs no longer depend on the input and exactly tied scores make NMS's choice
arbitrary). SSDLite's head keeps its initialisation; its score threshold is 0.5 (torchvision's 0.001
lets ~19k (anchor, class) pairs per image into NMS). FCOS's class logits get weights of standard
deviation 0.05 (its focal-loss prior bias kept) so that some points pass its 0.2 threshold, its box
regression bias +1 (so that the ReLU leaves boxes, not points), and its background column (0) bias -20:
torchvision's FCOS reports that column as label 0 where it scores, edgeda's FCOS leaves it out.

:func:`end_to_end` runs each library's own preprocessing at a non-native size instead: a uint8 image,
edgeda's ``resize_to`` (PIL bilinear, antialiased when shrinking, rounded to uint8) and normalisation
against torchvision's transform (float bilinear interpolation without antialiasing); it reports how far
apart the two input tensors are and how the detections (in the stored image's pixels) compare.

The sensitivity tests break edgeda's model for one test each (monkeypatched: box coder weights, anchor
offsets, a head output scale, the score) and check that the comparison fails.
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import torch
from test_pretrained import DETECTION, _public, calibrate_batchnorm, load_public_into

from edgeda.models import build
from edgeda.models.detection import box_iou

PUBLIC_CLASSES = 7  # torchvision's count, with the background column: edgeda's 6
SETTINGS = {  # edgeda arch, input (H, W) compared on, batch; the input sizes are small to keep the tests fast
    "ssdlite320_mobilenet_v3_large": {"arch": "ssdlite", "size": (320, 320), "batch": 2, "mean": 0.5, "std": 0.5,
                                      "score_thresh": 0.5},  # torchvision's 0.001 passes ~19k pairs per image
    "fcos_resnet50_fpn": {"arch": "fcos", "size": (256, 256), "batch": 2,
                          "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}
HEAD_TOL = 1e-4  # max abs diff of head outputs, relative to their largest magnitude (at least 1)
IOU_MIN, SCORE_TOL = 0.999, 1e-5
END_TO_END = {  # image (H, W) and the public model's settings for its own preprocessing
    "ssdlite320_mobilenet_v3_large": {"image": (400, 240), "kwargs": {}},  # -> 320 x 320: H shrinks, W grows
    "fcos_resnet50_fpn": {"image": (200, 200), "kwargs": {"min_size": 256, "max_size": 256}},  # -> 256 x 256
}


def public_detector(name, seed=0, **kwargs):
    """torchvision's detector with random weights and BatchNorm statistics, FCOS's output layers adjusted
    (see the module docstring), in eval mode; skips where torchvision does not import."""
    torch.manual_seed(seed)
    public = _public(name, num_classes=PUBLIC_CLASSES, **kwargs)
    x = torch.randn(4, 3, *SETTINGS[name]["size"], generator=torch.Generator().manual_seed(seed + 100))
    calibrate_batchnorm(public, lambda: public.head(list(public.backbone(x).values())), seed)
    with torch.no_grad():
        if name.startswith("fcos"):
            cls = public.head.classification_head.cls_logits
            cls.weight.normal_(0, 0.05)  # its prior bias (-4.6) kept: most points score low, some high
            cls.bias[0] = -20.0  # the background column, which edgeda's FCOS leaves out
            public.head.regression_head.bbox_reg.bias += 1.0  # distances mostly above 0 after the ReLU: boxes, not points
    if "score_thresh" in SETTINGS[name]:
        public.score_thresh = SETTINGS[name]["score_thresh"]
    return public.eval()


def edgeda_detector(name, public, folder):
    """edgeda's model of the same layout, ``public``'s weights loaded from a file; (model, load report)."""
    s = SETTINGS[name]
    ours = build("detector", arch=s["arch"], num_classes=PUBLIC_CLASSES - 1, channels=3, image_size=s["size"])
    rep = load_public_into(ours, public, folder)
    return ours.eval(), rep


def _detections_settings(public, anchors: int):
    """(score threshold, NMS IoU, detection cap) of the public model; its candidate cap raised to all."""
    public.topk_candidates = anchors * PUBLIC_CLASSES
    return public.score_thresh, public.nms_thresh, public.detections_per_img


@torch.no_grad()
def reference(public, x):
    """torchvision's head outputs, anchors (one image's) and detections on the normalised batch ``x``,
    its transform bypassed (the steps of its ``forward`` after the transform)."""
    from torchvision.models.detection.image_list import ImageList

    feats = list(public.backbone(x).values())
    head = public.head(feats)
    images = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
    anchors = public.anchor_generator(images, feats)
    _detections_settings(public, anchors[0].shape[0])
    if "bbox_ctrness" in head:  # FCOS splits per level first
        n = [f.shape[2] * f.shape[3] for f in feats]
        dets = public.postprocess_detections({k: list(v.split(n, dim=1)) for k, v in head.items()},
                                             [list(a.split(n)) for a in anchors], images.image_sizes)
    else:
        dets = public.postprocess_detections(head, anchors, images.image_sizes)
    return {"head": head, "anchors": anchors[0], "detections": dets}


@torch.no_grad()
def ours_outputs(ours, public, x):
    """edgeda's head outputs, anchors and detections on ``x`` with the public model's detection settings;
    labels shifted to torchvision's (edgeda's class ``c`` is its column ``c + 1``)."""
    head = ours(x)
    anchors = ours.anchors(tuple(x.shape[-2:]))
    thresh, iou, cap = _detections_settings(public, anchors.shape[0])
    dets = ours.postprocess(head, score_thresh=thresh, iou_thresh=iou, max_det=cap,
                            pre_nms_topk=anchors.shape[0] * ours.num_classes)
    return {"head": head, "anchors": anchors, "detections": [{**d, "labels": d["labels"] + 1} for d in dets]}


def match_detections(ours, ref):
    """Greedy matching of one image's detections, highest score first, to the unmatched reference
    detection of the same label with the highest IoU (>= 0.5). Returns matched count, min IoU and max
    score diff over the matches."""
    if len(ours["boxes"]) == 0 or len(ref["boxes"]) == 0:
        return 0, None, None
    iou = box_iou(ours["boxes"].float(), ref["boxes"].float()).nan_to_num(0.0)  # 0 / 0 for two empty boxes
    same = (ours["boxes"][:, None, :] == ref["boxes"][None, :, :]).all(-1)
    iou = torch.where(same, torch.ones_like(iou), iou)  # identical boxes match, empty ones too
    iou[ours["labels"][:, None] != ref["labels"][None, :]] = -1
    used = torch.zeros(len(ref["boxes"]), dtype=torch.bool)
    ious, diffs = [], []
    for i in range(len(ours["boxes"])):
        row = iou[i].masked_fill(used, -1)
        j = int(row.argmax())
        if row[j] >= 0.5:
            used[j] = True
            ious.append(float(row[j]))
            diffs.append(abs(float(ours["scores"][i]) - float(ref["scores"][j])))
    return len(ious), (min(ious) if ious else None), (max(diffs) if diffs else None)


def detection_agreement(out_dets, ref_dets):
    """Matched detections over a batch: counts, min IoU, max score diff."""
    rows = [match_detections(o, r) for o, r in zip(out_dets, ref_dets)]
    ious = [r[1] for r in rows if r[1] is not None]
    diffs = [r[2] for r in rows if r[2] is not None]
    return {"detections": sum(len(d["boxes"]) for d in out_dets), "public_detections": sum(len(d["boxes"]) for d in ref_dets),
            "matched": sum(r[0] for r in rows), "min_iou": min(ious) if ious else None,
            "max_score_diff": max(diffs) if diffs else None}


def agreement(out, ref):
    """Max abs diffs of the head outputs and anchors, and the matched detections (:func:`detection_agreement`)."""
    row = {}
    for k, r in ref["head"].items():
        o = out["head"][k]
        row[k] = {"max_abs_diff": (o - r).abs().max().item() if o.shape == r.shape else None,
                  "max_abs": r.abs().max().item(), "shape": list(r.shape)}
    a, ra = out["anchors"], ref["anchors"]
    row["anchors"] = {"max_abs_diff": (a - ra).abs().max().item() if a.shape == ra.shape else None, "shape": list(ra.shape)}
    row.update(detection_agreement(out["detections"], ref["detections"]))
    return row


def problems(row):
    """What makes ``row`` (:func:`agreement`) fail: empty where the two models agree."""
    out = []
    for k in ("cls_logits", "bbox_regression", "bbox_ctrness", "anchors"):
        if k not in row:
            continue
        d, tol = row[k]["max_abs_diff"], HEAD_TOL * max(1.0, row[k].get("max_abs", 1.0))
        if d is None or not d <= tol:
            out.append(f"{k}: max abs diff {d} > {tol:.3g}")
    if row["detections"] != row["public_detections"] or row["matched"] != row["detections"]:
        out.append(f"detections: {row['matched']} matched of {row['detections']} (public {row['public_detections']})")
    if row["matched"] and (row["min_iou"] < IOU_MIN or row["max_score_diff"] > SCORE_TOL):
        out.append(f"detections: min IoU {row['min_iou']:.6f}, max score diff {row['max_score_diff']:.3g}")
    return out


def random_input(name, seed=1):
    s = SETTINGS[name]
    return torch.randn(s["batch"], 3, *s["size"], generator=torch.Generator().manual_seed(seed))


def compare_detector(name, folder, seed=0):
    """The whole comparison of one detector: (load report, :func:`agreement` row with the time taken)."""
    t0 = time.perf_counter()
    public = public_detector(name, seed)
    ours, rep = edgeda_detector(name, public, folder)
    x = random_input(name)
    row = agreement(ours_outputs(ours, public, x), reference(public, x))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return rep, row


# ------------------------------------------------------------------- each library's own preprocessing

def _image(shape, seed=2):
    """A smooth random uint8 picture (blocks of colour), so that resizing changes it only a little."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, shape[0] // 16), max(2, shape[1] // 16), 3), dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(small).resize((shape[1], shape[0]), Image.BICUBIC))


@torch.no_grad()
def end_to_end(name, folder, seed=0, image=None):
    """Detections on one uint8 image of ``image`` = (H, W) pixels (by default a non-native size,
    ``END_TO_END``) through each library's own preprocessing (see the module docstring), boxes in the
    image's pixels; also the max abs diff of the two preprocessed inputs (normalised units)."""
    from edgeda.data.detection import DetectionSample
    from edgeda.data.detection_transforms import resize_to, to_original
    from edgeda.data.transforms import to_float_nchw

    e = END_TO_END[name]
    public = public_detector(name, seed, **e["kwargs"])
    ours, _ = edgeda_detector(name, public, folder)
    img = _image(e["image"] if image is None else image)
    empty = np.zeros((0, 4), np.float32)
    sample, info = resize_to(DetectionSample(img, empty, np.zeros(0, np.int64), empty, np.zeros(0, np.int64)), ours.image_size)
    s = SETTINGS[name]
    x = to_float_nchw(torch.from_numpy(np.ascontiguousarray(sample.image))[None], _triple(s["mean"]), _triple(s["std"]))
    out = ours_outputs(ours, public, x)["detections"]
    for d in out:
        d["boxes"] = torch.from_numpy(to_original(d["boxes"].numpy(), info))
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
    ref_input = public.transform([t])[0].tensors
    public.topk_candidates = ours.anchors().shape[0] * PUBLIC_CLASSES
    ref = public([t])
    row = {"image": list(img.shape[:2]), "input": list(ours.image_size),
           "input_max_abs_diff": (x - ref_input).abs().max().item() if x.shape == ref_input.shape else None,
           "input_shapes": [list(x.shape), list(ref_input.shape)]}
    row.update(detection_agreement(out, ref))
    return row


def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


# ------------------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each detector pair built once per module (the bug tests reuse it)."""
    store = {}

    def get(name):
        if name not in store:
            public = public_detector(name)
            ours, rep = edgeda_detector(name, public, tmp_path_factory.mktemp(name))
            x = random_input(name)
            store[name] = (name, public, ours, rep, x, reference(public, x))
        return store[name]

    return get


@pytest.fixture(params=DETECTION)
def pair(request, built):
    """(name, public model, edgeda model, load report, input, the public outputs) for one detector."""
    return built(request.param)


def test_detector_checkpoint_loads_with_nothing_missing_or_unexpected(pair):
    name, public, ours, rep, *_ = pair
    assert rep["kind"] == "whole model" and rep["missing"] == [] and rep["unexpected"] == [], rep
    assert rep["loaded"] == len(public.state_dict())


def test_same_head_outputs_anchors_and_detections_as_torchvision(pair):
    name, public, ours, rep, x, ref = pair
    t0 = time.perf_counter()
    row = agreement(ours_outputs(ours, public, x), ref)
    print(name, {k: v for k, v in row.items()}, f"{time.perf_counter() - t0:.2f} s")
    assert problems(row) == []
    assert row["matched"] >= 20 * x.shape[0]  # the random model detects things: the match is not vacuous
    assert set(row) >= {"cls_logits", "bbox_regression", "anchors"}


def _scaled_head(ours, key, factor):
    """``ours.heads`` with output ``key`` multiplied by ``factor``."""
    heads = ours.heads

    def patched(feats):
        out = dict(heads(feats))
        out[key] = out[key] * factor
        return out

    return patched


BUGS = {  # (detector, bug) -> what to patch on edgeda's model
    ("ssdlite320_mobilenet_v3_large", "box coder weights (10, 10, 5, 5) -> (10, 10, 5, 4)"): "coder",
    ("ssdlite320_mobilenet_v3_large", "anchors shifted by half a pixel"): "anchors",
    ("ssdlite320_mobilenet_v3_large", "class logits scaled by 1.01"): "cls",
    ("fcos_resnet50_fpn", "anchor points at the cell centres ((j + 0.5) stride)"): "cell_centres",
    ("fcos_resnet50_fpn", "box regression scaled by 1.01"): "reg",
    ("fcos_resnet50_fpn", "score without the centerness"): "score",
}


def _apply_bug(monkeypatch, ours, kind):
    import edgeda.models.detection.ssdlite as ssdlite_mod
    from edgeda.models.detection.boxes import decode_deltas, decode_ltrb

    ours._anchor_cache.clear()
    if kind == "coder":
        monkeypatch.setattr(ssdlite_mod, "decode_deltas", functools.partial(decode_deltas, weights=(10.0, 10.0, 5.0, 4.0)))
    elif kind == "anchors":
        make = ours._make_anchors
        monkeypatch.setattr(ours, "_make_anchors", lambda size: make(size) + 0.5)
    elif kind == "cell_centres":
        make = ours._make_anchors

        def shifted(size):
            a = make(size)
            grids = ours._grids(size)
            half = torch.cat([torch.tensor([size[0] // h / 2, size[1] // w / 2]).repeat(h * w, 1) for h, w in grids])
            return a + half[:, [1, 0, 1, 0]]

        monkeypatch.setattr(ours, "_make_anchors", shifted)
    elif kind == "cls":
        monkeypatch.setattr(ours, "heads", _scaled_head(ours, "cls_logits", 1.01))
    elif kind == "reg":
        monkeypatch.setattr(ours, "heads", _scaled_head(ours, "bbox_regression", 1.01))
    elif kind == "score":
        def decode(outputs, image_size=None):
            anchors, size = ours._anchors_for(outputs, image_size)
            from edgeda.models.detection.boxes import clip_boxes

            return clip_boxes(decode_ltrb(outputs["bbox_regression"], anchors), size), torch.sigmoid(outputs["cls_logits"][..., 1:])

        monkeypatch.setattr(ours, "decode", decode)


@pytest.mark.parametrize(("pair", "bug"), [(name, bug) for name, bug in BUGS], indirect=["pair"],
                         ids=[f"{name.split('_')[0]}: {bug}" for name, bug in BUGS])
def test_the_comparison_catches_a_deliberate_bug(pair, bug, monkeypatch):
    name, public, ours, rep, x, ref = pair
    _apply_bug(monkeypatch, ours, BUGS[name, bug])
    try:
        found = problems(agreement(ours_outputs(ours, public, x), ref))
    finally:
        ours._anchor_cache.clear()
    print(bug, "->", found)
    assert found, f"the comparison missed: {bug}"


@pytest.mark.parametrize("name", DETECTION)
def test_each_librarys_own_preprocessing_at_a_non_native_size(name, tmp_path):
    """Documents, not asserts equality: the inputs differ by the resize (PIL's uint8 bilinear with
    antialiasing against torch's float bilinear), so detections differ somewhat."""
    row = end_to_end(name, tmp_path)
    print(name, row)
    assert row["input_shapes"][0] == row["input_shapes"][1]
    assert row["input_max_abs_diff"] < 0.5 and row["detections"] > 0 and row["public_detections"] > 0
    assert row["matched"] > 0 and math.isfinite(row["min_iou"])
