"""Detectors start from torchvision's public checkpoints: the tensor names and shapes of
``ssdlite320_mobilenet_v3_large`` and ``fcos_resnet50_fpn`` (written out here from the public model
definitions, never from edgeda's modules), whole-model checkpoints with the same or another class
count, the ImageNet classifier checkpoints their trunks come from, ``edgeda weights import`` and
``edgeda train --task detection --backbone-weights``."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from edgeda.errors import EdgedaError
from edgeda.models import build
from edgeda.models.weights import load_pretrained

# ------------------------------------------------------------------- the public layouts, by hand

# torchvision's mobilenet_v3_large table: (kernel, expanded, out, squeeze-excitation, stride)
MBV3_LARGE = [(3, 16, 16, 0, 1), (3, 64, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 1, 2), (5, 120, 40, 1, 1),
              (5, 120, 40, 1, 1), (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1),
              (3, 480, 112, 1, 1), (3, 672, 112, 1, 1), (5, 672, 160, 1, 2), (5, 960, 160, 1, 1), (5, 960, 160, 1, 1)]


def _divisible(v, d=8):  # torchvision's _make_divisible
    out = max(d, int(v + d / 2) // d * d)
    return out + d if out < 0.9 * v else out


def _bn(s, name, c, tracked=True):
    for p in ("weight", "bias", "running_mean", "running_var"):
        s[f"{name}.{p}"] = (c,)
    if tracked:  # FrozenBatchNorm2d (fcos_resnet50_fpn's trunk) has no counter
        s[f"{name}.num_batches_tracked"] = ()


def _conv_bn(s, name, cin, cout, k, groups=1):  # ConvBNActivation / Conv2dNormActivation: 0 conv, 1 BN
    s[f"{name}.0.weight"] = (cout, cin // groups, k, k)
    _bn(s, f"{name}.1", cout)


def mobilenet_v3_large_layers(reduced_tail: bool):
    """The modules of torchvision's ``mobilenet_v3_large().features`` as lists of (relative name, shape)
    per layer index: what an ImageNet checkpoint holds under ``features.{i}``."""
    div = 2 if reduced_tail else 1
    table = [row if i < 12 else (row[0], row[1] if i == 12 else row[1] // div, row[2] // div, row[3], row[4])
             for i, row in enumerate(MBV3_LARGE)]
    layers = []
    s = {}
    _conv_bn(s, "", 3, 16, 3)
    layers.append({k[1:]: v for k, v in s.items()})
    cin = 16
    for k, exp, out, se, _ in table:
        block = []  # the entries of InvertedResidual.block, in order
        if exp != cin:
            e = {}
            _conv_bn(e, "", cin, exp, 1)
            block.append(e)
        d = {}
        _conv_bn(d, "", exp, exp, k, groups=exp)
        block.append(d)
        if se:
            q = _divisible(exp // 4)
            block.append({".fc1.weight": (q, exp, 1, 1), ".fc1.bias": (q,), ".fc2.weight": (exp, q, 1, 1), ".fc2.bias": (exp,)})
        p = {}
        _conv_bn(p, "", exp, out, 1)
        block.append(p)
        layers.append(block)
        cin = out
    s = {}
    _conv_bn(s, "", cin, 6 * cin, 1)
    layers.append({k[1:]: v for k, v in s.items()})
    return layers


def _block_shapes(block, prefix, first=0):
    return {f"{prefix}.{j}{k}": v for j, entry in enumerate(block) if j >= first for k, v in entry.items()}


def mobilenet_v3_large_imagenet_shapes(reduced_tail=False, classes=1000):
    """``mobilenet_v3_large`` (ImageNet): ``features.*`` and ``classifier.{0,3}``."""
    s = {}
    for i, layer in enumerate(mobilenet_v3_large_layers(reduced_tail)):
        if isinstance(layer, dict):
            s.update({f"features.{i}.{k}": v for k, v in layer.items()})
        else:
            s.update(_block_shapes(layer, f"features.{i}.block"))
    s["classifier.0.weight"], s["classifier.0.bias"] = (1280, 960), (1280,)
    s["classifier.3.weight"], s["classifier.3.bias"] = (classes, 1280), (classes,)
    return s


def ssdlite320_shapes(num_classes=91):
    """``ssdlite320_mobilenet_v3_large(num_classes=...)`` (torchvision counts the background: COCO is 91).

    SSDLiteFeatureExtractorMobileNet: ``features.0`` = MobileNetV3 ``features[:13]`` then block 13's
    expansion layer; ``features.1`` = block 13 from its depthwise conv on (a slice of its ``block``,
    which keeps the indices 1, 2, 3) then ``features[14:]``; ``extra`` four blocks to 512, 256, 256,
    128; the SSDLite head per level a depthwise ConvBNActivation and a 1x1 conv with bias, 6 boxes
    per cell (ratios [2, 3])."""
    layers = mobilenet_v3_large_layers(reduced_tail=True)
    c4 = 13
    s = {}
    for i in range(c4):
        layer = layers[i]
        if isinstance(layer, dict):
            s.update({f"backbone.features.0.{i}.{k}": v for k, v in layer.items()})
        else:
            s.update(_block_shapes(layer, f"backbone.features.0.{i}.block"))
    s.update({f"backbone.features.0.{c4}{k}": v for k, v in layers[c4][0].items()})
    s.update(_block_shapes(layers[c4], "backbone.features.1.0", first=1))
    for j, layer in enumerate(layers[c4 + 1:], start=1):
        if isinstance(layer, dict):
            s.update({f"backbone.features.1.{j}.{k}": v for k, v in layer.items()})
        else:
            s.update(_block_shapes(layer, f"backbone.features.1.{j}.block"))
    c4_channels = layers[c4][0][".0.weight"][0]  # 672: the expansion's output
    last = 480
    outs = [c4_channels, last]
    cin = last
    for i, d in enumerate((512, 256, 256, 128)):
        mid = d // 2
        _conv_bn(s, f"backbone.extra.{i}.0", cin, mid, 1)
        _conv_bn(s, f"backbone.extra.{i}.1", mid, mid, 3, groups=mid)
        _conv_bn(s, f"backbone.extra.{i}.2", mid, d, 1)
        outs.append(d)
        cin = d
    for head, cols in (("classification_head", num_classes), ("regression_head", 4)):
        for k, c in enumerate(outs):
            _conv_bn(s, f"head.{head}.module_list.{k}.0", c, c, 3, groups=c)
            s[f"head.{head}.module_list.{k}.1.weight"] = (6 * cols, c, 1, 1)
            s[f"head.{head}.module_list.{k}.1.bias"] = (6 * cols,)
    return s


def resnet50_shapes(prefix="", tracked=True, classes=None):
    s = {f"{prefix}conv1.weight": (64, 3, 7, 7)}
    _bn(s, f"{prefix}bn1", 64, tracked)
    cin = 64
    for i, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"{prefix}layer{i}.{b}"
            s[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            _bn(s, f"{p}.bn1", planes, tracked)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(s, f"{p}.bn2", planes, tracked)
            s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            _bn(s, f"{p}.bn3", planes * 4, tracked)
            if b == 0:
                s[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                _bn(s, f"{p}.downsample.1", planes * 4, tracked)
            cin = planes * 4
    if classes:
        s["fc.weight"], s["fc.bias"] = (classes, 2048), (classes,)
    return s


def fcos_resnet50_fpn_shapes(num_classes=91, legacy_fpn=False):
    """``fcos_resnet50_fpn(num_classes=...)``: a FrozenBatchNorm ResNet-50 as ``backbone.body``
    (IntermediateLayerGetter: no ``fc``), ``backbone.fpn`` on layer2..4 with LastLevelP6P7(256, 256),
    the FCOS head (4 conv + GroupNorm(32) + ReLU per tower). ``legacy_fpn``: the pyramid's names
    before torchvision 0.13 (``inner_blocks.{i}.weight``), which the published COCO file still has."""
    s = resnet50_shapes("backbone.body.", tracked=False)
    sub = "" if legacy_fpn else ".0"
    for i, c in enumerate((512, 1024, 2048)):
        s[f"backbone.fpn.inner_blocks.{i}{sub}.weight"], s[f"backbone.fpn.inner_blocks.{i}{sub}.bias"] = (256, c, 1, 1), (256,)
        s[f"backbone.fpn.layer_blocks.{i}{sub}.weight"] = (256, 256, 3, 3)
        s[f"backbone.fpn.layer_blocks.{i}{sub}.bias"] = (256,)
    for p in ("p6", "p7"):
        s[f"backbone.fpn.extra_blocks.{p}.weight"], s[f"backbone.fpn.extra_blocks.{p}.bias"] = (256, 256, 3, 3), (256,)
    for head in ("classification_head", "regression_head"):
        for j in range(4):
            s[f"head.{head}.conv.{3 * j}.weight"], s[f"head.{head}.conv.{3 * j}.bias"] = (256, 256, 3, 3), (256,)
            s[f"head.{head}.conv.{3 * j + 1}.weight"] = s[f"head.{head}.conv.{3 * j + 1}.bias"] = (256,)
    s["head.classification_head.cls_logits.weight"] = (num_classes, 256, 3, 3)
    s["head.classification_head.cls_logits.bias"] = (num_classes,)
    s["head.regression_head.bbox_reg.weight"], s["head.regression_head.bbox_reg.bias"] = (4, 256, 3, 3), (4,)
    s["head.regression_head.bbox_ctrness.weight"], s["head.regression_head.bbox_ctrness.bias"] = (1, 256, 3, 3), (1,)
    return s


def _random(shapes, seed=0):
    """A checkpoint of those shapes: small random weights, positive running variances, BN counters 7."""
    g = torch.Generator().manual_seed(seed)

    def one(k, v):
        if v == ():
            return torch.tensor(7)
        if k.endswith("running_var"):
            return 0.5 + torch.rand(v, generator=g)
        return 0.05 * torch.randn(v, generator=g)

    return {k: one(k, v) for k, v in shapes.items()}


def _shapes_of(model, counters=True):
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if counters or not k.endswith("num_batches_tracked")}


def _ssdlite(k=90, **kw):
    return build("detector", arch="ssdlite", num_classes=k, image_size=320, **kw)


def _fcos(k=90, **kw):
    return build("detector", arch="fcos", num_classes=k, image_size=320, **kw)


# ----------------------------------------------------------------------------- names and shapes

def test_ssdlite_has_exactly_the_tensors_of_torchvisions_ssdlite320():
    # 91 torchvision classes = 90 edgeda classes and the background column
    assert _shapes_of(_ssdlite(90)) == ssdlite320_shapes(91)


def test_fcos_has_exactly_the_tensors_of_torchvisions_fcos_resnet50_fpn():
    model = _fcos(90)
    assert _shapes_of(model, counters=False) == fcos_resnet50_fpn_shapes(91)
    # the only extra tensors: the trunk's BatchNorm counters (torchvision's FrozenBatchNorm2d has none)
    extra = set(model.state_dict()) - set(fcos_resnet50_fpn_shapes(91))
    assert extra and all(k.startswith("backbone.body.") and k.endswith("num_batches_tracked") for k in extra)


def test_trunks_have_the_tensors_of_torchvisions_imagenet_classifiers():
    imagenet = mobilenet_v3_large_imagenet_shapes()
    trunk = {f"features.{k}": tuple(v.shape) for k, v in _ssdlite(3, reduced_tail=False).trunk.state_dict().items()}
    assert trunk == {k: v for k, v in imagenet.items() if k.startswith("features.")}
    assert _shapes_of(_fcos(3).trunk) == {k: v for k, v in resnet50_shapes(classes=1000).items() if not k.startswith("fc.")}


# ------------------------------------------------------------------------- whole-model checkpoints

@pytest.mark.parametrize("arch,shapes", [("ssdlite", ssdlite320_shapes), ("fcos", fcos_resnet50_fpn_shapes),
                                         ("fcos_legacy_fpn", lambda: fcos_resnet50_fpn_shapes(legacy_fpn=True))])
def test_torchvision_detector_checkpoint_loads_with_nothing_missing_or_left_over(tmp_path, arch, shapes):
    state = _random(shapes())
    torch.save(state, tmp_path / "coco.pth")  # as torchvision's files: a plain state dict, read with weights_only
    model = (_ssdlite if arch == "ssdlite" else _fcos)(90)
    report = load_pretrained(model, tmp_path / "coco.pth")
    assert report["kind"] == "whole model" and report["head"] == "loaded"
    assert report["missing"] == [] and report["unexpected"] == [] and report["reinitialised"] == []
    mine = model.state_dict()
    for key, value in state.items():
        name = key
        if arch == "fcos_legacy_fpn" and ".fpn." in key and "extra_blocks" not in key:
            name = key.rsplit(".", 1)[0] + ".0." + key.rsplit(".", 1)[1]  # inner_blocks.0.weight -> inner_blocks.0.0.weight
        assert torch.equal(mine[name], value.to(mine[name].dtype)), key
    assert type(model).classes_in_checkpoint(mine) == 90


def test_another_class_count_reinitialises_the_class_logits_and_says_so(tmp_path):
    from edgeda.models.weights import describe

    save_file(_random(ssdlite320_shapes(91)), str(tmp_path / "coco.safetensors"))
    torch.manual_seed(0)
    model = _ssdlite(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, tmp_path / "coco.safetensors")
    assert report["kind"] == "whole model" and "re-initialised" in report["head"]
    assert sorted(report["missing"]) == sorted(model.output_keys()) and len(report["reinitialised"]) == 12
    assert "(546, 672, 1, 1) -> (24, 672, 1, 1)" in " ".join(report["reinitialised"])
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in model.output_keys())  # kept at initialisation
    assert not torch.equal(after["head.regression_head.module_list.0.1.weight"], before["head.regression_head.module_list.0.1.weight"])
    assert any("re-initialised (class count differs)" in line for line in describe(report))


# ------------------------------------------------------------------------ ImageNet trunk checkpoints

def test_imagenet_mobilenet_v3_large_loads_into_the_ssdlite_trunk(tmp_path):
    from edgeda.models.detection import SSDLite

    state = _random(mobilenet_v3_large_imagenet_shapes())
    torch.save(state, tmp_path / "mobilenet_v3_large.pth")
    options = SSDLite.options_for_checkpoint(state, {})
    assert options == {"reduced_tail": False}  # torchvision builds SSDLite on an ImageNet trunk with the full tail
    assert SSDLite.options_for_checkpoint(state, {"reduced_tail": True}) == {"reduced_tail": True}  # given: kept
    assert SSDLite.options_for_checkpoint(_random(ssdlite320_shapes()), {"width": 1.0}) == {"width": 1.0}  # COCO: reduced
    model = _ssdlite(3, **options)
    report = load_pretrained(model, tmp_path / "mobilenet_v3_large.pth")
    assert report["kind"] == "encoder only" and "beyond the trunk" in report["head"]
    assert sorted(report["unexpected"]) == ["classifier.0.bias", "classifier.0.weight", "classifier.3.bias", "classifier.3.weight"]
    assert all(k.startswith(("backbone.extra.", "head.")) for k in report["missing"])
    trunk = model.trunk.state_dict()
    assert all(torch.equal(trunk[k[len("features."):]], v) for k, v in state.items() if k.startswith("features."))
    with pytest.raises(EdgedaError, match="shape"):  # the reduced tail cannot take the full-width last stage
        load_pretrained(_ssdlite(3, reduced_tail=True), tmp_path / "mobilenet_v3_large.pth")


def test_imagenet_resnet50_loads_into_the_fcos_trunk(tmp_path):
    state = _random(resnet50_shapes(classes=1000))
    save_file(state, str(tmp_path / "resnet50.safetensors"))
    model = _fcos(3)
    report = load_pretrained(model, tmp_path / "resnet50.safetensors")
    assert report["kind"] == "encoder only" and sorted(report["unexpected"]) == ["fc.bias", "fc.weight"]
    assert all(k.startswith(("backbone.fpn.", "head.")) for k in report["missing"])
    mine = model.state_dict()
    assert all(torch.equal(mine["backbone.body." + k], v.to(mine["backbone.body." + k].dtype))
               for k, v in state.items() if not k.startswith("fc."))


def test_a_checkpoint_missing_part_of_the_trunk_is_refused(tmp_path):
    state = _random(resnet50_shapes(classes=1000))
    del state["layer4.2.conv3.weight"]
    save_file(state, str(tmp_path / "resnet50.safetensors"))
    with pytest.raises(EdgedaError, match="layer4.2.conv3.weight"):
        load_pretrained(_fcos(3), tmp_path / "resnet50.safetensors")


# --------------------------------------------------------------------------------- weights import

def test_weights_import_converts_torchvision_detector_checkpoints(tmp_path):
    from edgeda.cli import main
    from edgeda.models.weights import read_state_dict

    torch.save(_random(ssdlite320_shapes(91)), tmp_path / "ssdlite.pth")
    runner = CliRunner()
    res = runner.invoke(main, ["weights", "import", str(tmp_path / "ssdlite.pth"), "--arch", "ssdlite",
                               "--out", str(tmp_path / "ssdlite.safetensors")])
    assert res.exit_code == 0, res.output
    assert "ssdlite with 90 classes" in res.output and "--task detection --backbone ssdlite" in res.output
    assert set(read_state_dict(tmp_path / "ssdlite.safetensors")) == set(_ssdlite(90).state_dict())

    torch.save(_random(fcos_resnet50_fpn_shapes(91, legacy_fpn=True)), tmp_path / "fcos.pth")
    res = runner.invoke(main, ["weights", "import", str(tmp_path / "fcos.pth"), "--arch", "fcos", "--num-classes", "3",
                               "--out", str(tmp_path / "fcos.safetensors"), "--json"])
    assert res.exit_code == 0, res.output
    import json

    rep = json.loads(res.output)
    assert rep["num_classes"] == 3 and rep["kind"] == "whole model" and len(rep["reinitialised"]) == 2
    assert rep["unexpected"] == []

    torch.save(_random(mobilenet_v3_large_imagenet_shapes()), tmp_path / "mobilenet.pth")
    res = runner.invoke(main, ["weights", "import", str(tmp_path / "mobilenet.pth"), "--arch", "ssdlite",
                               "--out", str(tmp_path / "m.safetensors")])
    assert res.exit_code != 0 and "--num-classes" in res.output  # an encoder-only file says nothing of the classes
    res = runner.invoke(main, ["weights", "import", str(tmp_path / "mobilenet.pth"), "--arch", "ssdlite", "--num-classes", "3",
                               "--out", str(tmp_path / "m.safetensors")])
    assert res.exit_code == 0, res.output
    assert "encoder only" in res.output and "--backbone-option reduced_tail=false" in res.output


# ------------------------------------------------------------------------- edgeda train --task detection

S = 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from conftest import box_scenes_coco

    return box_scenes_coco(tmp_path_factory.mktemp("det") / "src", 8, 0, S)


@pytest.mark.parametrize("kind", ["coco", "imagenet"])
def test_train_detection_starts_from_a_torchvision_checkpoint(tmp_path, scenes, kind):
    import edgeda
    from edgeda.bundle import Bundle

    shapes = ssdlite320_shapes(91) if kind == "coco" else mobilenet_v3_large_imagenet_shapes()
    torch.save(_random(shapes), tmp_path / "weights.pth")
    lines = []
    res = edgeda.train(method="source_only", task="detection", source=scenes, image_size=[S, S], backbone="ssdlite",
                       backbone_weights=str(tmp_path / "weights.pth"), batch_size=2, iters=1, eval_every=1,
                       checkpoint_every=1, device="cpu", workers=0, out=str(tmp_path / "run"), progress=False,
                       log=lines.append)
    b = Bundle(res.bundle)
    init = b.manifest["training"]["init_weights"]
    arch = b.manifest["deployables"]["model"]["arch"]["kwargs"]
    text = "\n".join(lines)
    if kind == "coco":  # 2 classes here, 90 in the checkpoint: the class logits start afresh, and the log says so
        assert init["kind"] == "whole model" and "re-initialised" in init["head"]
        assert "re-initialised (class count differs)" in text and "reduced_tail" not in arch and "built with" not in text
    else:
        assert init["kind"] == "encoder only" and arch["reduced_tail"] is False
        assert "reduced_tail=False" in text and "unused tensors in the file: classifier." in text
    # SSDLite's checkpoints expect [-1, 1] inputs, the default normalisation here: no advice printed
    assert "normalised with mean" not in text
