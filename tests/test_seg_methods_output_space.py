"""Output-space adversarial and entropy methods on segmentation: AdvEnt / MinEnt and AdaptSegNet.
The entropy and self-information maps by hand, the fully convolutional discriminator, each method's
discriminator step, a short run whose bundle evaluates, and smoke runs on the embedded dense pairs."""
import math

import pytest
import torch
import torch.nn.functional as F

from edgeda.errors import EdgedaError
from edgeda.methods import METHODS
from edgeda.models.dense_alignment import (FullyConvDiscriminator, charbonnier_penalty, entropy_map,
                                           pixel_domain_adversarial_loss, self_information_map)
from conftest import EMBEDDED_DENSE_PAIRS, seg_batches, seg_spec, smoke_run_on_embedded_pair, train_on_square_npz


def test_entropy_map_zero_for_one_hot_and_one_for_uniform():
    one_hot = F.one_hot(torch.randint(0, 5, (2, 6, 7)), 5).permute(0, 3, 1, 2).float() * 100.0
    assert entropy_map(one_hot).abs().max() < 1e-6
    assert self_information_map(one_hot).abs().max() < 1e-6
    uniform = torch.zeros(2, 5, 6, 7)
    assert torch.allclose(entropy_map(uniform), torch.ones(2, 6, 7), atol=1e-6)
    # each class contributes -(1/5) log(1/5) / log 5 = 1/5
    assert torch.allclose(self_information_map(uniform), torch.full((2, 5, 6, 7), 0.2), atol=1e-6)
    # a mixed pixel, by hand: p = (0.5, 0.25, 0.25)
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1)
    expected = (0.5 * math.log(2) + 0.5 * math.log(4)) / math.log(3)
    assert entropy_map(logits).item() == pytest.approx(expected, rel=1e-5)
    assert self_information_map(logits).sum().item() == pytest.approx(expected, rel=1e-5)
    assert charbonnier_penalty(torch.tensor([0.0, 0.5]), 2.0).tolist() == pytest.approx([1e-12, (0.25 + 1e-6) ** 2])


def test_discriminator_shape_and_pixel_domain_loss_by_hand():
    d = FullyConvDiscriminator(19, width=8, n_layers=4)
    assert d(torch.rand(2, 19, 64, 128)).shape == (2, 1, 2, 4)
    # a "classifier" that outputs the first channel: source maps 2.0, target maps -1.0 -> BCE by hand
    first = lambda f: f[:, :1]  # noqa: E731
    fs, ft = torch.full((2, 3, 2, 2), 2.0), torch.full((1, 3, 2, 2), -1.0)
    loss, acc = pixel_domain_adversarial_loss(first, fs, ft, coeff=1.0)
    expected = (2 * math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6) and acc.item() == 1.0


def test_advent_discriminator_step_and_frozen_discriminator_in_the_segmenter_step():
    torch.manual_seed(0)
    m = METHODS.get("advent")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 8})
    d_opt = m.optims["discriminator"]
    assert d_opt.param_groups[0]["betas"] == (0.9, 0.99) and d_opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    before = [p.detach().clone() for p in m.nets["discriminator"].parameters()]
    src, tgt = seg_batches()
    out = m.step(src, tgt)
    assert {"loss/seg", "loss/adv", "loss/d", "acc/domain"} <= set(out)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets["discriminator"].parameters()))
    assert all(p.requires_grad for p in m.nets["discriminator"].parameters())
    mini = METHODS.get("advent")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"mode": "minent"})
    assert "discriminator" not in mini.nets and set(mini.step(src, tgt)) == {"loss/seg", "loss/ent"}
    with pytest.raises(EdgedaError, match="mode"):
        METHODS.get("advent")(seg_spec(), backbone="lraspp", options={"mode": "both"})


def test_adaptseg_discriminator_sees_softmax_outputs():
    torch.manual_seed(0)
    m = METHODS.get("adaptseg")(seg_spec(), backbone="lraspp", backbone_kwargs={"width": 0.25}, options={"d_width": 8})
    assert "mode" not in m.opts and "lambda_ent" not in m.opts and m.opts["lambda_adv"] == pytest.approx(1e-3)
    seen = []
    m.nets["discriminator"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    src, tgt = seg_batches()
    out = m.step(src, tgt)
    assert {"loss/seg", "loss/adv", "loss/d", "acc/domain"} <= set(out)
    maps = seen[-1]  # the D step's input: source and target outputs
    assert maps.shape[1] == m.task.num_classes
    assert torch.allclose(maps.sum(1), torch.ones_like(maps[:, 0]), atol=1e-5)  # a distribution per pixel
    with pytest.raises(EdgedaError, match="mode"):
        METHODS.get("adaptseg")(seg_spec(), backbone="lraspp", options={"mode": "minent"})



@pytest.mark.parametrize("method,options", [("advent", {"d_width": 8}), ("adaptseg", {"d_width": 8})])
def test_method_trains_and_its_bundle_evaluates(tmp_path, method, options):
    train_on_square_npz(tmp_path, method, options)


@pytest.mark.parametrize("method,options", [("advent", {"d_width": 8}), ("adaptseg", {"d_width": 8})])
@pytest.mark.parametrize("pair", EMBEDDED_DENSE_PAIRS, ids=["digits", "synscenes"])
def test_method_smoke_run_on_the_embedded_dense_pairs(tmp_path, method, options, pair):
    smoke_run_on_embedded_pair(tmp_path, method, options, pair)
