"""Pixel-level methods on segmentation: FDA (the low-frequency amplitude swap by hand, entropy on at
half-way, at the head's resolution), SUIT's per-pixel semantic-content losses, Label2Image's label-map
generator fed the source masks, the dense sample grid (source | translated | target), a short FDA run
whose bundle evaluates, and tiny training runs on both embedded dense pairs whose bundles evaluate,
export and predict."""
import numpy as np
import pytest
import torch
from PIL import Image

import edgeda
from edgeda.errors import EdgedaError
from edgeda.export.onnx import signature_of
from edgeda.methods import METHODS
from edgeda.models.fourier import fourier_amplitude_swap, low_frequency_mask
from conftest import (EMBEDDED_DENSE_PAIRS, export_and_predict, seg_batches, seg_spec, smoke_run_on_embedded_pair,
                      train_on_embedded_pair, train_on_square_npz)


def _spec(k=3):
    """Three classes for the image-translation methods (FDA's tests use two)."""
    return seg_spec(k)


def _batches(n=2, k=3, seed=0):
    """Two images a domain, with an ignored band: the first four rows of every source mask."""
    return seg_batches(n, k, seed, ignore_rows=4)


# ------------------------------------------------------------------------------------------- fda


def test_fda_beta_zero_is_identity_and_phase_is_kept():
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.rand(2, 3, 32, 64, generator=g), torch.rand(2, 3, 32, 64, generator=g) * 3
    assert torch.equal(fourier_amplitude_swap(xs, xt, 0.0), xs)
    out = fourier_amplitude_swap(xs, xt, 0.1)
    fo, fs, ft = torch.fft.fft2(out.double()), torch.fft.fft2(xs.double()), torch.fft.fft2(xt.double())
    band = low_frequency_mask(32, 64, 0.1).bool()  # b = floor(32 * 0.1) = 3: |ky|, |kx| <= 3
    assert int(band.sum()) == 7 * 7 and bool(band[0, 0]) and bool(band[3, -3]) and not bool(band[4, 0])
    # low band: the target's amplitude; elsewhere: the source's own amplitude
    assert torch.allclose(fo.abs()[..., band], ft.abs()[..., band], rtol=1e-4, atol=1e-3)
    assert torch.allclose(fo.abs()[..., ~band], fs.abs()[..., ~band], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(fs.abs()[..., band], ft.abs()[..., band], rtol=1e-2)
    # phase kept wherever the amplitude is not tiny
    keep = fs.abs() > 1e-3
    dphase = torch.angle(fo * fs.conj())[keep]
    assert dphase.abs().max() < 1e-3
    # a mean-only swap (b = 0): each channel's mean becomes the target's, the rest stays
    dc = fourier_amplitude_swap(xs, xt, 0.01)
    assert torch.allclose(dc.mean((2, 3)), xt.mean((2, 3)), atol=1e-5)
    assert torch.allclose(dc - dc.mean((2, 3), keepdim=True), xs - xs.mean((2, 3), keepdim=True), atol=1e-5)


def test_fda_trains_on_translated_source_and_switches_entropy_on():
    torch.manual_seed(0)
    m = METHODS.get("fda")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"beta": 0.1})
    src, tgt = seg_batches()
    x = m.translate(src.x, tgt.x)
    assert x.shape == src.x.shape and not torch.allclose(x, src.x)
    m.progress = 0.0
    assert m.step(src, tgt)["ent/on"] == 0.0
    m.progress = 0.5
    assert m.step(src, tgt)["ent/on"] == 1.0
    with pytest.raises(EdgedaError, match="beta"):
        METHODS.get("fda")(seg_spec(), backbone="lraspp", options={"beta": 0.7})



def test_fda_entropy_is_taken_at_the_heads_resolution(monkeypatch):
    import edgeda.methods.fda as fda
    from edgeda.methods import Batch

    seen = []
    real = fda.entropy_map
    monkeypatch.setattr(fda, "entropy_map", lambda z: seen.append(tuple(z.shape)) or real(z))
    spec = seg_spec()
    m = METHODS.get("fda")(spec, backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"beta": 0.1})
    g = torch.Generator().manual_seed(0)
    src = Batch(torch.randn(2, 3, 32, 48, generator=g), torch.randint(0, 2, (2, 32, 48), generator=g))
    tgt = Batch(torch.randn(2, 3, 32, 48, generator=g))
    m.progress = 0.5
    m.step(src, tgt)
    assert seen == [(2, 2, 4, 6)]  # the stride-8 head of the 32 x 48 frames, not the upsampled 32 x 48 map
    head, out = fda.head_and_output(m.model.eval(), tgt.x)
    assert torch.allclose(out, m.model(tgt.x), atol=1e-6) and head.shape[-2:] == (4, 6)



# ----------------------------------------------------------------------- image-translation methods


def test_suit_dense_losses_are_per_pixel_and_it_ships_model_and_refiner():
    torch.manual_seed(0)
    m = METHODS.get("suit")(_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25},
                            options={"g_width": 8, "d_width": 8, "g_blocks": 1})
    assert sorted(m.deployables()) == ["model", "refiner"]
    src, tgt = _batches()
    # the task term on source images is the per-pixel cross-entropy with 255 ignored
    with torch.no_grad():
        m.nets.eval()
        logits = m.model(src.x)
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



# ------------------------------------------------------------------------------------ training runs


@pytest.mark.parametrize("method,options", [("fda", {"beta": 0.05})])
def test_method_trains_and_its_bundle_evaluates(tmp_path, method, options):
    train_on_square_npz(tmp_path, method, options)


@pytest.mark.parametrize("method,options", [("fda", {"beta": 0.05}),
                                            ("cyclegan", {"g_width": 4, "d_width": 8, "g_blocks": 1})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_method_smoke_run_on_the_embedded_dense_pairs(tmp_path, method, options, pair):
    smoke_run_on_embedded_pair(tmp_path, method, options, pair)
