"""Public checkpoints load by name: torchvision MobileNetV3 / LR-ASPP / DeepLab-v3 / FCN / ResNet
and Hugging Face SegFormer layouts (names and shapes written out here from the public model
definitions, not from edgeda's modules), .pth through weights_only, refusal of pickled objects,
class-count changes, the `weights import` command, SegFormer's ONNX export; and, where torchvision
and transformers are importable, the same outputs as the public models."""
from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from edgeda.errors import EdgedaError
from edgeda.models import build, make_dense_model
from edgeda.models.weights import load_pretrained, read_state_dict

# ------------------------------------------------------------------- the public layouts, by hand

# MobileNetV3 (torchvision): (kernel, expanded, out, squeeze-excitation) per block
LARGE = [(3, 16, 16, 0), (3, 64, 24, 0), (3, 72, 24, 0), (5, 72, 40, 1), (5, 120, 40, 1), (5, 120, 40, 1),
         (3, 240, 80, 0), (3, 200, 80, 0), (3, 184, 80, 0), (3, 184, 80, 0), (3, 480, 112, 1), (3, 672, 112, 1),
         (5, 672, 160, 1), (5, 960, 160, 1), (5, 960, 160, 1)]
SMALL = [(3, 16, 16, 1), (3, 72, 24, 0), (3, 88, 24, 0), (5, 96, 40, 1), (5, 240, 40, 1), (5, 240, 40, 1),
         (5, 120, 48, 1), (5, 144, 48, 1), (5, 288, 96, 1), (5, 576, 96, 1), (5, 576, 96, 1)]


def _bn(shapes, name, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{p}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()


def _squeeze(c):  # torchvision's _make_divisible(c // 4, 8)
    v = c // 4
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


def mobilenet_v3_shapes(table, prefix="features.", classes=None, hidden=1280):
    s = {f"{prefix}0.0.weight": (16, 3, 3, 3)}
    _bn(s, f"{prefix}0.1", 16)
    cin = 16
    for i, (k, exp, out, se) in enumerate(table, start=1):
        j, b = 0, f"{prefix}{i}.block"
        if exp != cin:
            s[f"{b}.0.0.weight"] = (exp, cin, 1, 1)
            _bn(s, f"{b}.0.1", exp)
            j = 1
        s[f"{b}.{j}.0.weight"] = (exp, 1, k, k)
        _bn(s, f"{b}.{j}.1", exp)
        if se:
            q = _squeeze(exp)
            s[f"{b}.{j + 1}.fc1.weight"], s[f"{b}.{j + 1}.fc1.bias"] = (q, exp, 1, 1), (q,)
            s[f"{b}.{j + 1}.fc2.weight"], s[f"{b}.{j + 1}.fc2.bias"] = (exp, q, 1, 1), (exp,)
        s[f"{b}.{j + 1 + se}.0.weight"] = (out, exp, 1, 1)
        _bn(s, f"{b}.{j + 1 + se}.1", out)
        cin = out
    n = len(table) + 1
    s[f"{prefix}{n}.0.weight"] = (6 * cin, cin, 1, 1)
    _bn(s, f"{prefix}{n}.1", 6 * cin)
    if classes:
        s["classifier.0.weight"], s["classifier.0.bias"] = (hidden, 6 * cin), (hidden,)
        s["classifier.3.weight"], s["classifier.3.bias"] = (classes, hidden), (classes,)
    return s


def lraspp_shapes(classes=21):
    s = mobilenet_v3_shapes(LARGE, prefix="backbone.")
    s["classifier.cbr.0.weight"] = (128, 960, 1, 1)
    _bn(s, "classifier.cbr.1", 128)
    s["classifier.scale.1.weight"] = (128, 960, 1, 1)
    s["classifier.low_classifier.weight"], s["classifier.low_classifier.bias"] = (classes, 40, 1, 1), (classes,)
    s["classifier.high_classifier.weight"], s["classifier.high_classifier.bias"] = (classes, 128, 1, 1), (classes,)
    return s


def resnet_shapes(prefix="", layers=(3, 4, 6, 3), classes=None):
    s = {f"{prefix}conv1.weight": (64, 3, 7, 7)}
    _bn(s, f"{prefix}bn1", 64)
    cin = 64
    for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"{prefix}layer{i}.{b}"
            s[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            _bn(s, f"{p}.bn1", planes)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(s, f"{p}.bn2", planes)
            s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            _bn(s, f"{p}.bn3", planes * 4)
            if b == 0:
                s[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                _bn(s, f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    if classes:
        s["fc.weight"], s["fc.bias"] = (classes, 2048), (classes,)
    return s


def fcn_head_shapes(s, name, cin, classes):
    s[f"{name}.0.weight"] = (cin // 4, cin, 3, 3)
    _bn(s, f"{name}.1", cin // 4)
    s[f"{name}.4.weight"], s[f"{name}.4.bias"] = (classes, cin // 4, 1, 1), (classes,)


def deeplabv3_resnet50_shapes(classes=21, aux=True):
    s = resnet_shapes("backbone.")
    for b in range(5):
        conv = "0" if b < 4 else "1"
        k = 1 if b in (0, 4) else 3
        s[f"classifier.0.convs.{b}.{conv}.weight"] = (256, 2048, k, k)
        _bn(s, f"classifier.0.convs.{b}.{int(conv) + 1}", 256)
    s["classifier.0.project.0.weight"] = (256, 1280, 1, 1)
    _bn(s, "classifier.0.project.1", 256)
    s["classifier.1.weight"] = (256, 256, 3, 3)
    _bn(s, "classifier.2", 256)
    s["classifier.4.weight"], s["classifier.4.bias"] = (classes, 256, 1, 1), (classes,)
    if aux:
        fcn_head_shapes(s, "aux_classifier", 1024, classes)
    return s


def segformer_b0_shapes(classes=150, layout="hub"):
    """SegformerForSemanticSegmentation (nvidia/segformer-b0-*), Hub / transformers-4 names."""
    widths, depths, patch, sr = (32, 64, 160, 256), (2, 2, 2, 2), (7, 3, 3, 3), (8, 4, 2, 1)
    s, e = {}, "segformer.encoder."
    cin = 3
    for i, c in enumerate(widths):
        s[f"{e}patch_embeddings.{i}.proj.weight"], s[f"{e}patch_embeddings.{i}.proj.bias"] = (c, cin, patch[i], patch[i]), (c,)
        s[f"{e}patch_embeddings.{i}.layer_norm.weight"] = s[f"{e}patch_embeddings.{i}.layer_norm.bias"] = (c,)
        for j in range(depths[i]):
            b = f"{e}block.{i}.{j}."
            for n in ("layer_norm_1", "layer_norm_2"):
                s[b + n + ".weight"] = s[b + n + ".bias"] = (c,)
            for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
                s[b + n + ".weight"], s[b + n + ".bias"] = (c, c), (c,)
            if sr[i] > 1:
                s[b + "attention.self.sr.weight"], s[b + "attention.self.sr.bias"] = (c, c, sr[i], sr[i]), (c,)
                s[b + "attention.self.layer_norm.weight"] = s[b + "attention.self.layer_norm.bias"] = (c,)
            s[b + "mlp.dense1.weight"], s[b + "mlp.dense1.bias"] = (4 * c, c), (4 * c,)
            s[b + "mlp.dwconv.dwconv.weight"], s[b + "mlp.dwconv.dwconv.bias"] = (4 * c, 1, 3, 3), (4 * c,)
            s[b + "mlp.dense2.weight"], s[b + "mlp.dense2.bias"] = (c, 4 * c), (c,)
        s[f"{e}layer_norm.{i}.weight"] = s[f"{e}layer_norm.{i}.bias"] = (c,)
        cin = c
    for i, c in enumerate(widths):
        s[f"decode_head.linear_c.{i}.proj.weight"], s[f"decode_head.linear_c.{i}.proj.bias"] = (256, c), (256,)
    s["decode_head.linear_fuse.weight"] = (256, 1024, 1, 1)
    _bn(s, "decode_head.batch_norm", 256)
    s["decode_head.classifier.weight"], s["decode_head.classifier.bias"] = (classes, 256, 1, 1), (classes,)
    return s


def to_transformers5(state):
    """The same tensors under transformers-5 names (as its conversion mapping renames them)."""
    import re

    rules = [(r"segformer\.encoder\.patch_embeddings\.(\d+)\.", r"segformer.stages.\1.patch_embeddings."),
             (r"segformer\.encoder\.block\.(\d+)\.", r"segformer.stages.\1.blocks."),
             (r"segformer\.encoder\.layer_norm\.(\d+)\.", r"segformer.stages.\1.layer_norm."),
             ("attention.self.query", "attention.q_proj"), ("attention.self.key", "attention.k_proj"),
             ("attention.self.value", "attention.v_proj"), ("attention.self.sr", "attention.sequence_reduction.sequence_reduction"),
             ("attention.self.layer_norm", "attention.sequence_reduction.layer_norm"), ("attention.output.dense", "attention.o_proj"),
             ("mlp.dense1", "mlp.fc1"), ("mlp.dense2", "mlp.fc2"), ("layer_norm_1", "layernorm_before"),
             ("layer_norm_2", "layernorm_after"), ("decode_head.linear_c", "decode_head.linear_projections")]
    out = {}
    for k, v in state.items():
        for a, b in rules:
            k = re.sub(a, b, k) if a.startswith("segformer\\") else k.replace(a, b)
        out[k] = v
    return out


def to_original(state):
    """The same tensors under the original SegFormer release's names (kv stacked)."""
    out = {}
    for k, v in state.items():
        n = k.replace("segformer.encoder.", "backbone.")
        for i in range(4):
            n = n.replace(f"patch_embeddings.{i}.", f"patch_embed{i + 1}.").replace(f"block.{i}.", f"block{i + 1}.")
            n = n.replace(f"backbone.layer_norm.{i}.", f"backbone.norm{i + 1}.").replace(f"linear_c.{i}.", f"linear_c{i + 1}.")
        for a, b in (("patch_embed1.layer_norm", "patch_embed1.norm"), ("layer_norm_1", "norm1"), ("layer_norm_2", "norm2"),
                     ("attention.self.query", "attn.q"), ("attention.output.dense", "attn.proj"), ("attention.self.sr", "attn.sr"),
                     ("attention.self.layer_norm", "attn.norm"), ("mlp.dense1", "mlp.fc1"), ("mlp.dense2", "mlp.fc2"),
                     ("decode_head.linear_fuse.", "decode_head.linear_fuse.conv."), ("decode_head.batch_norm.", "decode_head.linear_fuse.bn."),
                     ("decode_head.classifier.", "decode_head.linear_pred.")):
            n = n.replace(a, b)
        for i in range(2, 5):
            n = n.replace(f"patch_embed{i}.layer_norm", f"patch_embed{i}.norm")
        out[n] = v
    for k in [k for k in out if ".attention.self.key." in k]:
        v = out.pop(k.replace(".key.", ".value."))
        out[k.replace("attention.self.key", "attn.kv")] = torch.cat([out.pop(k), v])
    return out


def checkpoint(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(3, dtype=torch.int64)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.05
    return out


def _expect_same_names(model, shapes):
    sd = model.state_dict()
    assert set(sd) == set(shapes), (sorted(set(sd) - set(shapes))[:5], sorted(set(shapes) - set(sd))[:5])
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == tuple(s), k


# ------------------------------------------------------------------------------ names and shapes


def test_mobilenet_v3_classifiers_have_torchvision_names_and_shapes(tmp_path):
    for backbone, table, hidden in (("mobilenet_v3_large", LARGE, 1280), ("mobilenet_v3_small", SMALL, 1024)):
        shapes = mobilenet_v3_shapes(table, classes=1000, hidden=hidden)
        m = build("classifier", backbone=backbone, num_classes=1000, channels=3, image_size=64)
        file = tmp_path / f"{backbone}.pth"
        torch.save(checkpoint(shapes), file)  # a torchvision-style .pth: a plain state dict
        rep = load_pretrained(m, file)
        assert rep["missing"] == [] and rep["unexpected"] == [] and rep["kind"] == "whole model"
        assert rep["loaded"] == len(shapes) and rep["head"] == "loaded"
        torch.testing.assert_close(m.head.weight, checkpoint(shapes)["classifier.3.weight"])


def test_lraspp_mobilenet_v3_large_loads_with_no_missing_keys(tmp_path):
    shapes = lraspp_shapes()
    m = make_dense_model("lraspp_mobilenet_v3_large", 21, "logits")
    _expect_same_names(m, shapes)
    save_file(checkpoint(shapes), str(tmp_path / "lraspp.safetensors"))
    rep = load_pretrained(m, tmp_path / "lraspp.safetensors")
    assert rep["missing"] == [] and rep["unexpected"] == [] and rep["reinitialised"] == []
    assert m.encoder is m.backbone and m.head is m.classifier
    assert m.encoder.feature_info["c2"] == {"channels": 40, "stride": 8} and m.encoder.feature_info["out"]["stride"] == 16


def test_lraspp_small_and_existing_lraspp_keep_their_layouts():
    small = make_dense_model("lraspp_mobilenet_v3_small", 3, "logits")
    assert "classifier.low_classifier.weight" in small.state_dict()
    assert small.state_dict()["classifier.low_classifier.weight"].shape == (3, 24, 1, 1)
    edge = make_dense_model("lraspp", 3, "logits", width=0.25)  # the stored benchmarks' model: unchanged names
    assert all(k.startswith(("encoder.", "head.")) for k in edge.state_dict())
    with pytest.raises(EdgedaError, match="lraspp_mobilenet_v3_large"):
        make_dense_model("lraspp", 3, "logits", encoder="mobilenet_v3_large")


def test_deeplabv3_and_fcn_resnet50_have_torchvision_names():
    m = make_dense_model("deeplabv3_resnet50", 21, "logits", aux=True)
    _expect_same_names(m, deeplabv3_resnet50_shapes())
    fcn = make_dense_model("fcn_resnet50", 21, "logits", aux=True)
    shapes = resnet_shapes("backbone.")
    fcn_head_shapes(shapes, "classifier", 2048, 21)
    fcn_head_shapes(shapes, "aux_classifier", 1024, 21)
    _expect_same_names(fcn, shapes)
    assert m.encoder.feature_info["out"]["stride"] == 8


def test_segformer_b0_has_hub_names():
    m = make_dense_model("segformer", 150, "logits", variant="b0")
    _expect_same_names(m, segformer_b0_shapes())


@pytest.mark.parametrize("name", ["large", "large-os32", "small", "segformer"])
def test_encoder_levels_match_feature_info(name):
    from edgeda.models.mobilenetv3 import MobileNetV3Features
    from edgeda.models.segformer import SegformerEncoder

    enc = {"large": lambda: MobileNetV3Features("large", width=0.5, dilated=True),
           "large-os32": lambda: MobileNetV3Features("large", width=0.5),
           "small": lambda: MobileNetV3Features("small", width=0.5, dilated=True),
           "segformer": lambda: SegformerEncoder("b0")}[name]().eval()
    with torch.no_grad():
        levels = enc.forward_intermediates(torch.randn(1, 3, 64, 96))
        final = enc.forward_features(torch.randn(1, 3, 64, 96))
    assert list(levels)[-1] == "out" and set(levels) == set(enc.feature_info)
    assert final.shape[1] == enc.out_channels
    for key, t in levels.items():
        info = enc.feature_info[key]
        assert t.shape[1] == info["channels"] and (t.shape[2] * info["stride"], t.shape[3] * info["stride"]) == (64, 96), key
    assert enc.feature_info["out"]["stride"] == (32 if name in ("large-os32", "segformer") else 16)


# --------------------------------------------------------------------------------------- loading


def test_imagenet_encoder_checkpoint_is_recognised_by_its_prefix(tmp_path):
    file = tmp_path / "mobilenet_v3_large.pth"
    torch.save(checkpoint(mobilenet_v3_shapes(LARGE, classes=1000)), file)
    m = make_dense_model("lraspp_mobilenet_v3_large", 5, "logits")
    head_before = m.classifier.cbr[0].weight.clone()
    rep = load_pretrained(m, file)
    assert rep["kind"] == "encoder only" and "initialisation" in rep["head"]
    assert sorted(rep["unexpected"]) == ["classifier.0.bias", "classifier.0.weight", "classifier.3.bias", "classifier.3.weight"]
    assert all(k.startswith("classifier.") for k in rep["missing"])
    torch.testing.assert_close(m.backbone[4].block[0][0].weight, read_state_dict(file)["features.4.block.0.0.weight"])
    assert torch.equal(m.classifier.cbr[0].weight, head_before)


def test_class_count_mismatch_reinitialises_the_head(tmp_path):
    save_file(checkpoint(deeplabv3_resnet50_shapes(classes=21, aux=True)), str(tmp_path / "coco.safetensors"))
    m = make_dense_model("deeplabv3_resnet50", 4, "logits", output_stride=32)
    rep = load_pretrained(m, tmp_path / "coco.safetensors")
    assert rep["kind"] == "whole model" and rep["head"].startswith("re-initialised")
    assert sorted(r.split()[0] for r in rep["reinitialised"]) == ["classifier.4.bias", "classifier.4.weight"]
    assert sorted(rep["missing"]) == ["classifier.4.bias", "classifier.4.weight"]
    assert all(k.startswith("aux_classifier.") for k in rep["unexpected"])
    assert m.classifier[4].weight.shape == (4, 256, 1, 1)


def test_more_than_the_head_missing_is_an_error(tmp_path):
    state = checkpoint(lraspp_shapes())
    del state["classifier.cbr.0.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(EdgedaError, match="classifier.cbr.0.weight"):
        load_pretrained(make_dense_model("lraspp_mobilenet_v3_large", 21, "logits"), tmp_path / "partial.safetensors")
    state = checkpoint(lraspp_shapes())
    del state["backbone.3.block.1.0.weight"]
    save_file(state, str(tmp_path / "no-enc.safetensors"))
    with pytest.raises(EdgedaError, match=r"backbone\.3\.block\.1\.0\.weight"):
        load_pretrained(make_dense_model("lraspp_mobilenet_v3_large", 21, "logits"), tmp_path / "no-enc.safetensors")


class Payload:  # a pickled custom object: torch.load(weights_only=True) must refuse it
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_and_other_formats_are_refused(tmp_path, capsys):
    bad = tmp_path / "model.pth"
    with open(bad, "wb") as f:
        pickle.dump({"conv1.weight": torch.zeros(1), "x": Payload()}, f)
    with pytest.raises(EdgedaError, match="weights_only"):
        read_state_dict(bad)
    assert "must never run" not in capsys.readouterr().out
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(EdgedaError, match=r"\.safetensors, \.pth, \.pt or \.bin"):
        read_state_dict(tmp_path / "w.ckpt")
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {"a.weight": torch.ones(2)}}, wrapped)
    assert list(read_state_dict(wrapped)) == ["a.weight"]


def test_one_channel_model_sums_rgb_first_conv(tmp_path):
    state = checkpoint(lraspp_shapes())
    save_file(state, str(tmp_path / "w.safetensors"))
    m = make_dense_model("lraspp_mobilenet_v3_large", 21, "logits", channels=1)
    load_pretrained(m, tmp_path / "w.safetensors")
    torch.testing.assert_close(m.backbone[0][0].weight, state["backbone.0.0.weight"].sum(1, keepdim=True))


@pytest.mark.parametrize("layout", ["transformers5", "original"])
def test_segformer_other_layouts_load_under_hub_names(layout, tmp_path):
    hub = checkpoint(segformer_b0_shapes(classes=19))
    other = to_transformers5(hub) if layout == "transformers5" else to_original(hub)
    assert {k for k in other if ".attention." in k}.isdisjoint(hub)
    save_file(other, str(tmp_path / "w.safetensors"))
    m = make_dense_model("segformer", 19, "logits", variant="b0")
    rep = load_pretrained(m, tmp_path / "w.safetensors")
    assert rep["missing"] == [] and rep["unexpected"] == []
    sd = m.state_dict()
    for k in ("segformer.encoder.block.1.0.attention.self.key.weight", "segformer.encoder.block.1.0.attention.self.value.bias",
              "decode_head.linear_fuse.weight", "segformer.encoder.layer_norm.3.weight"):
        assert torch.equal(sd[k], hub[k]), k


def test_weights_import_converts_checks_and_is_loadable(tmp_path):
    from edgeda.cli import main

    src = tmp_path / "mobilenet_v3_small.pth"
    torch.save(checkpoint(mobilenet_v3_shapes(SMALL, classes=1000, hidden=1024)), src)
    out = tmp_path / "mnv3s.safetensors"
    res = CliRunner().invoke(main, ["weights", "import", str(src), "--arch", "mobilenet_v3_small", "--num-classes", "10",
                                    "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["num_classes"] == 10 and sorted(rep["missing"]) == ["head.bias", "head.weight"] and rep["unexpected"] == []
    assert len(rep["sha256"]) == 64 and out.is_file() and rep["head"].startswith("re-initialised")
    m = build("classifier", backbone="mobilenet_v3_small", num_classes=10, channels=3, image_size=32)
    again = load_pretrained(m, out)
    assert again["missing"] == [] and again["unexpected"] == []
    res = CliRunner().invoke(main, ["weights", "import", str(src), "--arch", "mobilenet_v3_small", "--out", str(out)])
    assert res.exit_code == 0 and "1000 classes" in res.output  # the checkpoint's class count by default
    res = CliRunner().invoke(main, ["weights", "import", str(tmp_path / "absent.pth"), "--arch", "resnet50", "--out", str(out)])
    assert res.exit_code != 0 and "does not exist" in res.output


# ------------------------------------------------------------------------------------ SegFormer


def test_segformer_b0_forward_shape_and_onnx_parity(tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    m = make_dense_model("segformer", 5, "logits", variant="b0").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.decode_head.batch_norm.running_mean.uniform_(-0.2, 0.2)
        m.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        f, y = m.features_and_logits(x)
    assert y.shape == (2, 5, 64, 96) and f.shape == (2, 256, 2, 3)
    path = tmp_path / "segformer.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                                                 "logits": {0: "batch", 2: "height", 3: "width"}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 2, 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 64, 64), (2, 3, 64, 96)):  # other sizes than the traced one: dynamic H, W
        xi = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            ref = m(torch.from_numpy(xi)).numpy()
        out = sess.run(["logits"], {"image": xi})[0]
        assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-4


# ---------------------------------------------------------------- equivalence with the public code

PUBLIC = ["lraspp_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "fcn_resnet50",
          "mobilenet_v3_large", "segformer", "segformer_hub"]  # segformer_hub: save_pretrained's file (Hub names)
AUX = ("deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")


DETECTION = ("ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn")  # tests/test_detection_equivalence.py


def torchvision_models():
    """``torchvision.models``, or skip where it does not import."""
    try:  # a torchvision built for another torch build raises a RuntimeError (``torchvision::nms``), not an ImportError
        import torchvision.models as models
    except ModuleNotFoundError:
        pytest.skip("torchvision is not installed here")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torchvision is not importable here (it needs the torch build it was made for): {type(e).__name__}")
    return models


def _public(name, num_classes=7, **kwargs):
    """The public model with random weights (torchvision / transformers), or skip where not importable.
    ``num_classes`` is the public model's count (a torchvision detector's includes its background column)."""
    if name.startswith("segformer"):
        transformers = pytest.importorskip("transformers", reason="transformers is not installed here")
        model_cls = transformers.SegformerForSemanticSegmentation
        return model_cls(transformers.SegformerConfig(num_labels=num_classes))  # MiT-B0 defaults
    models = torchvision_models()
    seg, det = models.segmentation, models.detection
    build_fn = {"lraspp_mobilenet_v3_large": seg.lraspp_mobilenet_v3_large, "deeplabv3_resnet50": seg.deeplabv3_resnet50,
                "deeplabv3_mobilenet_v3_large": seg.deeplabv3_mobilenet_v3_large, "fcn_resnet50": seg.fcn_resnet50,
                "mobilenet_v3_large": models.mobilenet_v3_large, "ssdlite320_mobilenet_v3_large": det.ssdlite320_mobilenet_v3_large,
                "fcos_resnet50_fpn": det.fcos_resnet50_fpn}[name]
    kw = {"weights": None, "num_classes": num_classes, **kwargs}
    if name != "mobilenet_v3_large":
        kw["weights_backbone"] = None
    if name in AUX:
        kw["aux_loss"] = True
    return build_fn(**kw)


def randomise_batchnorm(model):
    """Random, non-trivial BatchNorm statistics (in place), so that a wrong eps or a swapped mean / var shows."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return model


def calibrate_batchnorm(model, run, seed=0):
    """BatchNorm statistics measured on the activations ``run()`` produces (train mode, one cumulative pass),
    then scaled at random (means shifted by up to 0.1 standard deviations, variances times 0.8 .. 1.25) and
    the affine parameters drawn near 1 and 0: a deep random network whose signal neither dies out (its
    outputs would not depend on the input) nor explodes. ``model`` is left in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        run()
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            c = m.num_features
            m.running_mean += (torch.rand(c, generator=g) - 0.5) * 0.2 * m.running_var.sqrt()
            m.running_var *= 0.8 + 0.45 * torch.rand(c, generator=g)
            m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
            m.bias.copy_(0.05 * torch.randn(c, generator=g))
    return model.eval()


def load_public_into(ours, public, folder, hub=False):
    """Save ``public``'s weights to a file in ``folder`` (its state dict with ``torch.save``; with ``hub``, what
    transformers' ``save_pretrained`` writes) and load that file into ``ours`` with :func:`load_pretrained`,
    as a user's ``--backbone-weights`` file is loaded. Returns the load report."""
    if hub:  # transformers writes the Hub names (segformer.encoder.block.*)
        public.save_pretrained(folder)
        file = folder / "model.safetensors"
    else:  # the module's own names (transformers 5: segformer.stages.*)
        file = folder / "public.pth"
        torch.save(public.state_dict(), file)
    return load_pretrained(ours, file)


def compare_with_public(name, folder, seed=0):
    """The public model ``name`` with random weights (random BatchNorm statistics too), saved to ``folder``
    and loaded into edgeda's model with :func:`load_pretrained`; both run in eval mode on one random
    input. Returns (load report, edgeda's output, the public output)."""
    torch.manual_seed(seed)
    public = randomise_batchnorm(_public(name).eval())
    if name == "mobilenet_v3_large":
        ours = build("classifier", backbone=name, num_classes=7, channels=3, image_size=64)
    else:
        ours = make_dense_model(name.split("_hub")[0], 7, "logits", **({"aux": True} if name in AUX else {}))
    rep = load_public_into(ours, public, folder, hub=name == "segformer_hub")
    ours.eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        if name.startswith("segformer"):
            ref = torch.nn.functional.interpolate(public(pixel_values=x).logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        elif name == "mobilenet_v3_large":
            ref = public(x)
        else:
            ref = public(x)["out"]
        return rep, ours(x), ref


@pytest.mark.parametrize("name", PUBLIC)
def test_same_outputs_as_the_public_model(name, tmp_path):
    rep, out, ref = compare_with_public(name, tmp_path)
    assert rep["missing"] == [] and rep["unexpected"] == [], rep
    diff = (out - ref).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g}")
    assert out.shape == ref.shape and diff <= 1e-4


def test_mmsegmentation_encoder_names_load(tmp_path):
    """mmsegmentation MixVisionTransformer names: fused in_proj (q, k, v) and 1x1-conv FFN."""
    hub = checkpoint(segformer_b0_shapes(classes=19))
    mm = {}
    for k, v in hub.items():
        if not k.startswith("segformer.encoder."):
            continue
        parts = k[len("segformer.encoder."):].split(".")
        if parts[0] == "patch_embeddings":
            mm[f"backbone.layers.{parts[1]}.0.{ {'proj': 'projection', 'layer_norm': 'norm'}[parts[2]]}.{parts[3]}"] = v
        elif parts[0] == "layer_norm":
            mm[f"backbone.layers.{parts[1]}.2.{parts[2]}"] = v
        else:
            i, j, rest = parts[1], parts[2], ".".join(parts[3:])
            for a, b in (("layer_norm_1.", "norm1."), ("layer_norm_2.", "norm2."), ("attention.output.dense.", "attn.attn.out_proj."),
                         ("attention.self.sr.", "attn.sr."), ("attention.self.layer_norm.", "attn.norm."),
                         ("mlp.dwconv.dwconv.", "ffn.layers.1."), ("mlp.dense1.", "ffn.layers.0."), ("mlp.dense2.", "ffn.layers.4.")):
                if rest.startswith(a):
                    w = v[:, :, None, None] if rest.startswith(("mlp.dense1.weight", "mlp.dense2.weight")) else v
                    mm[f"backbone.layers.{i}.1.{j}.{b}{rest[len(a):]}"] = w
            if rest == "attention.self.query.weight":
                p = k.rsplit(".", 2)[0]
                for kind in ("weight", "bias"):
                    mm[f"backbone.layers.{i}.1.{j}.attn.attn.in_proj_{kind}"] = torch.cat(
                        [hub[f"{p}.{n}.{kind}"] for n in ("query", "key", "value")])
    save_file(mm, str(tmp_path / "mit.safetensors"))
    m = make_dense_model("segformer", 19, "logits", variant="b0")
    rep = load_pretrained(m, tmp_path / "mit.safetensors")
    assert rep["kind"] == "encoder only" and rep["unexpected"] == []
    sd = m.state_dict()
    for k in ("segformer.encoder.block.2.1.attention.self.value.bias", "segformer.encoder.block.0.0.mlp.dense2.weight",
              "segformer.encoder.patch_embeddings.3.layer_norm.weight"):
        assert torch.equal(sd[k], hub[k]), k


def test_training_records_the_weights_and_slows_the_encoder(tmp_path):
    from conftest import stripe_scenes

    from edgeda.training import train

    x, y = stripe_scenes(8, 32, 32, 0)
    np.savez(tmp_path / "src.npz", x=x, y=y, classes=np.array(["bg", "square", "stripe"]))
    donor = make_dense_model("lraspp_mobilenet_v3_small", 5, "logits", width=0.5)
    torch.save(donor.state_dict(), tmp_path / "donor.pth")
    logs = []
    res = train(method="source_only", source=str(tmp_path / "src.npz"), target="", iters=1, batch_size=4, image_size=[32, 32],
                backbone="lraspp_mobilenet_v3_small", backbone_kwargs={"width": 0.5},
                backbone_weights=str(tmp_path / "donor.pth"), out=str(tmp_path / "run"), device="cpu", log=logs.append,
                progress=False)
    mf = json.loads((res.bundle / "manifest.json").read_text())
    rec = mf["training"]["init_weights"]
    assert rec["file"] == "donor.pth" and len(rec["sha256"]) == 64 and rec["kind"] == "whole model"
    assert mf["method"]["options"]["encoder_lr"] == 0.1
    assert any("re-initialised" in line for line in logs)
