"""Image-translation methods on segmentation: SUIT's per-pixel semantic-content losses, Label2Image's
label-map generator fed the source masks, the dense sample grid (source | translated | target),
and tiny training runs on both embedded dense pairs whose bundles evaluate, export and predict."""
import numpy as np
import pytest
import torch
from PIL import Image

import edgeda
from edgeda.export.onnx import signature_of
from edgeda.methods import METHODS, Batch
from edgeda.task import TaskSpec
from conftest import EMBEDDED_DENSE_PAIRS, export_and_predict, train_on_embedded_pair


def _spec(k=3):
    return TaskSpec(k, ["road", "car", "sky"][:k], task="segmentation", image_size=(32, 48))


def _batches(n=2, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(n, 3, 32, 48, generator=g), torch.randn(n, 3, 32, 48, generator=g) + 1.0
    y = torch.randint(0, k, (n, 32, 48), generator=g)
    y[:, :4] = 255  # an ignored band
    return Batch(xs, y), Batch(xt)


def test_suit_dense_losses_are_per_pixel_and_it_ships_model_and_refiner():
    torch.manual_seed(0)
    m = METHODS.get("suit")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25},
                            options={"g_width": 8, "d_width": 8, "g_blocks": 1})
    assert sorted(m.deployables()) == ["model", "refiner"]
    src, tgt = _batches()
    # the task term on source images is the per-pixel cross-entropy with 255 ignored
    with torch.no_grad():
        m.nets.eval()
        logits = m.classifier(src.x)
        expected = torch.nn.functional.cross_entropy(logits, src.y, ignore_index=255)
        assert m.task_loss_of(logits, src.y).item() == pytest.approx(expected.item(), rel=1e-6)
    m.nets.train()
    before = [p.detach().clone() for p in m.nets["refiner"].parameters()]
    out = m.step(src, tgt)
    assert {"loss/d", "loss/g_adv", "loss/cls_src", "loss/cls_gen", "loss/content"} <= set(out)
    assert all(np.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets["refiner"].parameters()))


def test_label2image_dense_generates_from_the_source_masks():
    torch.manual_seed(0)
    m = METHODS.get("label2image")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25},
                                   options={"g_width": 8, "d_width": 8, "z_dim": 4})
    G = m.nets["generator"]
    assert G.edgeda_arch["name"] == "label_map_generator" and sorted(m.deployables()) == ["generator", "model"]
    src, tgt = _batches()
    fake, y = m.sample(src)
    assert fake.shape == src.x.shape and torch.equal(y, src.y)
    assert float(fake.detach().abs().max()) <= 1.0
    # the layout drives the image: another mask, same noise -> another image
    z = torch.randn(2, 4)
    other = src.y.clone()
    other[other != 255] = (other[other != 255] + 1) % 3
    assert not torch.allclose(G(src.y, z), G(other, z))
    sig = signature_of(G, _spec())
    assert [(i.name, i.shape, i.kind, i.high) for i in sig.inputs] == [("label_map", (32, 48), "label", 3),
                                                                        ("noise", (4,), "float", 0)]
    for progress, has_gen in ((0.1, False), (0.45, False), (0.8, True)):
        m.progress = progress
        out = m.step(src, tgt)
        assert ("loss/semantic" in out) == (progress >= 0.3) and ("loss/cls_gen" in out) == has_gen
        assert all(np.isfinite(v) for v in out.values())


def test_dense_translation_grid_has_source_translated_and_target_columns(tmp_path):
    torch.manual_seed(0)
    m = METHODS.get("cyclegan")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25},
                                options={"g_width": 8, "d_width": 8, "g_blocks": 1})
    src, tgt = _batches(n=3)
    m.nets.eval()
    with torch.no_grad():
        png = m.visualize(tmp_path, 7, src, tgt)
    im = np.asarray(Image.open(png))
    # 3 rows of 32 px (+2 px gaps, 14 px title, 12 px column headers); columns: source, translated, target, each 48 px
    assert im.shape[:2] == (14 + 12 + 3 * 32 + 2 * 2, 3 * 48)
    header = im[14:26]
    assert all((header[:, i * 48:(i + 1) * 48] < 128).any() for i in range(3))  # a label over every column


@pytest.mark.parametrize("method,options", [("suit", {"g_width": 8, "d_width": 8, "g_blocks": 1}),
                                            ("label2image", {"g_width": 8, "d_width": 8, "phase1": 0.2, "phase2": 0.5})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_translation_method_trains_on_the_embedded_pair(tmp_path, method, options, pair):
    res = train_on_embedded_pair(tmp_path, method, options, pair, iters=4)
    png = res.history[-1]["samples_png"]
    assert Image.open(png).size[0] == 3 * 64  # source | translated | target
    b = edgeda.load_bundle(res.bundle)
    assert "model" in b.manifest["deployables"]
    if pair[0] == "synscenes":  # export with the parity check, then predict on target frames
        export_and_predict(res.bundle, tmp_path)
