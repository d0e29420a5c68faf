import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgeda.errors import EdgedaError
from edgeda.models import BACKBONES, build, load_backbone_weights, make_dense_model, rebuild
from edgeda.models.backbones import DTN, SmallResNet
from edgeda.models.resnet import resnet18_encoder, resnet50_encoder

# tiny configurations that run in well under a second on a CPU
TINY = {
    "unet": dict(width=0.125),
    "deeplab": dict(width=0.125, encoder="resnet18"),
    "lraspp": dict(width=0.25),
    "segformer": dict(variant="b0"),
}


def _model(arch, output="logits", num_outputs=None, **kw):
    torch.manual_seed(0)
    k = num_outputs or (1 if output == "depth" else 5)
    return make_dense_model(arch, k, output, **{**TINY[arch], **kw})


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("channels", [3, 1])
def test_logits_shape_and_features(arch, channels):
    m = _model(arch, channels=channels).eval()
    x = torch.randn(2, channels, 64, 96)
    with torch.no_grad():
        f, y = m.features_and_logits(x)
        assert y.shape == (2, 5, 64, 96) and torch.isfinite(y).all()
        torch.testing.assert_close(m(x), y)
        torch.testing.assert_close(m.encoder.forward_features(x), f)
    assert f.dim() == 4 and f.shape[:2] == (2, m.feature_channels)
    assert m.num_outputs == 5 and m.output == "logits" and m.feature_channels == m.encoder.out_channels


@pytest.mark.parametrize("arch", sorted(TINY))
def test_depth_is_metric_and_within_range(arch):
    m = _model(arch, "depth", min_depth=0.5, max_depth=10.0).eval()
    x = torch.randn(3, 3, 64, 64) * 5
    with torch.no_grad():
        d0 = m(x)
        assert torch.allclose(d0, torch.full_like(d0, (0.5 * 10.0) ** 0.5), rtol=1e-5)  # untrained: the middle
        for name, conv in m.head.named_modules():
            if name.endswith("classifier"):
                torch.nn.init.normal_(conv.weight, std=3.0)  # a far-from-trained head must stay in range
        d = m(x)
    assert d.shape == (3, 1, 64, 64)
    assert (d > 0).all() and (d >= 0.5).all() and (d <= 10.0).all()
    assert d.std() > 0.1  # not a constant map


@pytest.mark.parametrize("arch", sorted(TINY))
def test_batch_one_training_step(arch):
    m = _model(arch, "depth").train()
    m(torch.randn(1, 3, 64, 64)).mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def _encoders():
    return {
        "unet": _model("unet").encoder,
        "deeplab-os16": _model("deeplab").encoder,
        "deeplab-os8": _model("deeplab", output_stride=8).encoder,
        "lraspp-os16": _model("lraspp").encoder,
        "lraspp-os32": _model("lraspp", output_stride=32).encoder,
        "resnet50-os32": resnet50_encoder(width=8),
        "dtn": DTN(3, 64, width=8),
        "resnet_small": SmallResNet(3, 64, width=8),
    }


@pytest.mark.parametrize("name", list(_encoders()))
def test_feature_info_matches_intermediates(name):
    enc = _encoders()[name].eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels = enc.forward_intermediates(x)
        final = enc.forward_features(x)
    assert list(levels)[-1] == "out" and set(levels) == set(enc.feature_info)
    torch.testing.assert_close(levels["out"], final)
    assert enc.out_channels == final.shape[1] == enc.feature_info["out"]["channels"]
    strides = []
    for key, t in levels.items():
        info = enc.feature_info[key]
        assert t.shape[1] == info["channels"], key
        assert (t.shape[2] * info["stride"], t.shape[3] * info["stride"]) == (64, 96), key
        strides.append(info["stride"])
    assert strides == sorted(strides)  # high to low resolution


def test_output_stride_and_aspp_rates():
    for os_, rates in ((8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))):
        m = _model("deeplab", output_stride=os_)
        assert m.encoder.feature_info["out"]["stride"] == os_
        assert tuple(c[0].dilation[0] for c in m.head.aspp.convs[1:]) == rates


def test_small_backbones_forward_unchanged_and_give_maps():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    dtn = DTN(3, 32, width=8, out_dim=32).eval()
    res = SmallResNet(3, 32, width=8).eval()
    assert {k.split(".")[0] for k in dtn.state_dict()} == {"conv", "fc"}
    assert {k.split(".")[0] for k in res.state_dict()} == {"net"}
    with torch.no_grad():
        fd, fr = dtn.forward_features(x), res.forward_features(x)
        assert fd.shape == (4, 32, 4, 4) and fr.shape == (4, 32, 8, 8)
        torch.testing.assert_close(dtn(x), dtn.fc(fd))
        torch.testing.assert_close(res(x), fr.mean(dim=(2, 3)))
        assert dtn(x).shape == (4, 32) and res(x).shape == (4, res.out_dim)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnets_are_classification_backbones(name):
    m = build("classifier", backbone=name, num_classes=4, channels=1, image_size=32, backbone_kwargs={"width": 8})
    x = torch.randn(2, 1, 32, 32)
    f, z = m.features(x), m(x)
    enc = BACKBONES.get(name)(channels=1, image_size=32, width=8)
    assert z.shape == (2, 4) and f.shape == (2, enc.out_dim) and enc.out_dim == enc.out_channels
    assert enc.forward_features(torch.randn(1, 1, 64, 64)).shape == (1, enc.out_channels, 2, 2)


# ----------------------------------------------------------------------------- pre-trained weights


def _bn(shapes, name, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{p}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()


def _resnet18_checkpoint_shapes(channels=3, classes=1000):
    """Tensor names and shapes of the public ResNet-18 ImageNet checkpoints, written out from the
    published layout (not from edgeda's encoder)."""
    shapes = {"conv1.weight": (64, channels, 7, 7)}
    _bn(shapes, "bn1", 64)
    cin = 64
    for i, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            _bn(shapes, f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(shapes, f"{p}.bn2", planes)
            if b == 0 and i > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                _bn(shapes, f"{p}.downsample.1", planes)
            cin = planes
    shapes["fc.weight"], shapes["fc.bias"] = (classes, 512), (classes,)
    return shapes


def _checkpoint(shapes, prefix=""):
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[prefix + k] = torch.tensor(7, dtype=torch.int64)
        elif k.endswith("running_var"):
            out[prefix + k] = torch.rand(s, generator=g) + 0.5
        else:
            out[prefix + k] = torch.randn(s, generator=g) * 0.05
    return out


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    tensors = _checkpoint(_resnet18_checkpoint_shapes())
    save_file(tensors, str(path))
    return path, tensors


def test_resnet18_checkpoint_loads_with_only_fc_left_over(resnet18_file):
    path, tensors = resnet18_file
    enc = resnet18_encoder()
    n_params = sum(v.numel() for k, v in tensors.items() if not k.startswith("fc.") and "running" not in k and "num_batches" not in k)
    assert sum(p.numel() for p in enc.parameters()) == n_params == 11_176_512
    report = load_backbone_weights(enc, path)
    assert report["loaded"] == len(enc.state_dict()) and report["missing"] == []
    assert sorted(report["unexpected"]) == ["fc.bias", "fc.weight"]
    sd = enc.state_dict()
    for k in ("conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.bn2.running_var", "layer2.0.bn1.num_batches_tracked"):
        torch.testing.assert_close(sd[k], tensors[k])


def test_one_channel_encoder_sums_rgb_conv1(resnet18_file):
    path, tensors = resnet18_file
    enc = resnet18_encoder(channels=1)
    load_backbone_weights(enc, path)
    torch.testing.assert_close(enc.conv1.weight, tensors["conv1.weight"].sum(1, keepdim=True))
    # a grey image fed as RGB gives the same stem response
    g = torch.randn(1, 1, 32, 32)
    rgb = torch.nn.functional.conv2d(g.expand(-1, 3, -1, -1), tensors["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(enc.conv1(g), rgb, atol=1e-5, rtol=1e-5)


def test_prefixed_fp16_checkpoint_without_batch_counters_loads(tmp_path):
    src = resnet50_encoder(width=8)
    tensors = {f"module.backbone.{k}": v.half() if v.is_floating_point() else v
               for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    tensors["module.classifier.weight"] = torch.zeros(3, 4)
    save_file(tensors, str(tmp_path / "w.safetensors"))
    enc = resnet50_encoder(width=8)
    report = load_backbone_weights(enc, tmp_path / "w.safetensors")
    assert report["missing"] == [] and report["unexpected"] == ["module.classifier.weight"]
    assert report["loaded"] == len(tensors) - 1
    torch.testing.assert_close(enc.layer1[0].conv3.weight, src.layer1[0].conv3.weight.half().float())


def test_dense_model_encoder_loads_the_checkpoint(resnet18_file):
    path, tensors = resnet18_file
    m = make_dense_model("deeplab", 3, "logits", encoder="resnet18", width=1.0)
    report = load_backbone_weights(m.encoder, path)
    assert report["missing"] == []
    torch.testing.assert_close(m.encoder.layer4[1].conv2.weight, tensors["layer4.1.conv2.weight"])


def test_bad_weight_files_are_refused(resnet18_file, tmp_path):
    path, tensors = resnet18_file
    bad = dict(tensors)
    bad["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(EdgedaError, match=r"layer2\.0\.conv1\.weight.*\(128, 32, 3, 3\).*\(128, 64, 3, 3\)"):
        load_backbone_weights(resnet18_encoder(), tmp_path / "bad.safetensors")
    with pytest.raises(EdgedaError, match="shape"):  # width 32 is another model
        load_backbone_weights(resnet18_encoder(width=32), path)
    few = {k: v for k, v in tensors.items() if k.startswith(("conv1", "bn1", "layer1"))}
    save_file(few, str(tmp_path / "few.safetensors"))
    with pytest.raises(EdgedaError, match="only"):
        load_backbone_weights(resnet18_encoder(), tmp_path / "few.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(EdgedaError, match="safetensors"):
        load_backbone_weights(resnet18_encoder(), tmp_path / "junk.safetensors")
    with pytest.raises(EdgedaError, match="does not exist"):
        load_backbone_weights(resnet18_encoder(), tmp_path / "absent.safetensors")


# ------------------------------------------------------------------------------- training plumbing


@pytest.mark.parametrize("arch", sorted(TINY))
def test_param_groups_cover_every_parameter_once(arch):
    m = _model(arch)
    groups = m.param_groups(0.01, encoder_lr_mult=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in m.encoder.parameters()}
    assert groups[0]["lr"] == pytest.approx(0.001) and groups[1]["lr"] == 0.01
    torch.optim.SGD(groups, lr=0.01)  # accepted as optimizer groups


@pytest.mark.parametrize("arch", sorted(TINY))
def test_rebuild_from_json_record(arch):
    m = _model(arch, "depth", max_depth=20.0, dropout=0.2)
    record = json.loads(json.dumps(m.edgeda_arch))
    m2 = rebuild(record)
    m2.load_state_dict(m.state_dict())
    m.eval(), m2.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)
    with torch.device("meta"):  # how a bundle sizes the record before loading weights
        probe = rebuild(record)
    assert sum(p.numel() for p in probe.parameters()) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("kw", [dict(arch="vit"), dict(output="normals"), dict(num_outputs=0), dict(width=0),
                                dict(arch="deeplab", encoder="vgg16"), dict(arch="unet", output_stride=8),
                                dict(arch="lraspp", output_stride=8), dict(output="depth", min_depth=0.0),
                                dict(output="depth", min_depth=5.0, max_depth=1.0)])
def test_invalid_kwargs_are_refused(kw):
    args = {"arch": "lraspp", "num_outputs": 2, "output": "logits", **kw}
    with pytest.raises(EdgedaError):
        build("dense_model", **args)


# ------------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("arch,output", [("unet", "logits"), ("deeplab", "logits"), ("lraspp", "logits"), ("lraspp", "depth"),
                                         ("segformer", "logits")])
def test_onnx_export_matches_pytorch_at_two_sizes(arch, output, tmp_path):
    import onnx
    import onnxruntime as ort

    m = _model(arch, output).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{arch}.onnx"
    name = m.output_name
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=[name],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        name: {0: "batch", 2: "height", 3: "width"}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 2, 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ((2, 3, 64, 96), (1, 3, 96, 64)):
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            ref = m(torch.from_numpy(x)).numpy()
        out = sess.run([name], {"image": x})[0]
        assert out.shape == ref.shape == (shape[0], m.num_outputs, *shape[2:])
        assert np.abs(out - ref).max() <= 1e-4, (shape, float(np.abs(out - ref).max()))
