"""Adaptive Teacher for detectors: the mean teacher's branch plus a gradient-reversed discriminator."""
import numpy as np
import pytest
import torch

from edgeda.bundle import Bundle
from edgeda.errors import EdgedaError
from conftest import box_scenes_coco
from test_detection_pipeline import MODELS, S, _batch, _method, _train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("at")
    return {"source": box_scenes_coco(tmp / "src", 12, 0, S), "target": box_scenes_coco(tmp / "tgt", 8, 1, S, shift=60)}


@pytest.mark.parametrize("arch", list(MODELS))
def test_a_step_trains_the_student_the_discriminator_and_moves_the_teacher(arch):
    torch.manual_seed(0)
    m = _method("adaptive_teacher", arch, burn_in=0.0, threshold=0.0, alpha=0.5)
    assert len(m.nets["domain"]) == len(m.model.level_channels())  # one discriminator per feature level
    m.train()
    m.progress = 0.5
    disc = {k: v.clone() for k, v in m.nets["domain"].state_dict().items()}
    student = {k: v.clone() for k, v in m.model.state_dict().items()}
    out = m.step(_batch(0), _batch(1, labeled=False))
    assert np.isfinite(out["loss/domain"]) and 0.0 <= out["acc/domain"] <= 1.0 and np.isfinite(out["loss/unsup"])
    assert any(not torch.equal(v, disc[k]) for k, v in m.nets["domain"].state_dict().items())  # D is optimised
    assert any(not torch.equal(v, student[k]) for k, v in m.model.state_dict().items() if v.is_floating_point())
    assert m.mean_teacher.updates == 1


def test_burn_in_has_neither_pseudo_boxes_nor_the_discriminator():
    m = _method("adaptive_teacher", burn_in=0.5)
    m.train()
    m.progress = 0.1
    assert set(m.step(_batch(0), _batch(1, labeled=False))) == {"loss/src"}


@pytest.mark.parametrize("arch", list(MODELS))
def test_the_student_gets_the_reversed_gradient_of_the_discriminator_loss(arch):
    """The student's features move to confuse D: the domain term's gradient on the student is minus
    the gradient of D's own loss (the same loss without the reversal), for SSDLite's normalised and
    FCOS's standardised levels alike."""
    from edgeda.models.dense_alignment import channel_standardised, pixel_domain_adversarial_loss

    torch.manual_seed(0)
    m = _method("adaptive_teacher", arch, dis_weight=1.0)
    m.train()
    s, t = _batch(0), _batch(1, labeled=False)
    params = [p for p in m.model.parameters() if p.requires_grad]
    loss, logged = m.alignment_terms(torch.zeros(()), s, t)
    reversed_grads = torch.autograd.grad(loss, params, allow_unused=True)

    feats = m.model.features(torch.cat([s.x, t.x]))
    seen = feats if m.model.normalised_features else [channel_standardised(f) for f in feats]
    plain = torch.stack([pixel_domain_adversarial_loss(d, f[:2], f[2:], -1.0)[0]  # -1: no reversal
                         for d, f in zip(m.nets["domain"], seen)]).mean()
    assert plain.item() == pytest.approx(logged["loss/domain"], rel=1e-5)
    plain_grads = torch.autograd.grad(plain, params, allow_unused=True)
    pairs = [(a, b) for a, b in zip(reversed_grads, plain_grads) if a is not None and b is not None]
    assert pairs and any(b.abs().max() > 0 for _, b in pairs)
    for a, b in pairs:
        torch.testing.assert_close(a, -b, rtol=1e-4, atol=1e-7)


def test_options_are_checked():
    with pytest.raises(EdgedaError, match="dis_weight"):
        _method("adaptive_teacher", dis_weight=-1.0)
    with pytest.raises(EdgedaError, match="adaptive_teacher.*threshold"):
        _method("adaptive_teacher", threshold=2.0)


def test_trains_from_a_source_only_bundle_and_ships_a_detector(tmp_path, data):
    start = _train(tmp_path / "a", data)
    res = _train(tmp_path / "b", data, method="adaptive_teacher", arch="ssdlite", iters=2, init=str(start.bundle))
    b = Bundle(res.bundle)
    assert b.task.task == "detection" and 0.0 <= res.metrics["target_test_map"] <= 1.0
    last = res.history[-1]  # --init: no burn-in, the discriminator's term from the first step
    assert np.isfinite(last["train/loss/domain"]) and "train/loss/unsup" in last


def test_a_restored_state_continues_as_the_uninterrupted_run():
    """The discriminator, its optimizer state and the teacher are all in the checkpointed state: a
    method restored from it takes the next step exactly as the one it was saved from."""
    torch.manual_seed(0)
    a = _method("adaptive_teacher", burn_in=0.0, threshold=0.0, alpha=0.5)
    a.train()
    a.progress = 0.5
    for i in range(2):
        a.step(_batch(2 * i), _batch(2 * i + 1, labeled=False))
    state = a.state_dict()
    torch.manual_seed(1)  # another initialisation: everything must come from the state
    b = _method("adaptive_teacher", burn_in=0.0, threshold=0.0, alpha=0.5)
    b.load_state_dict(state)
    b.train()
    b.progress = 0.5
    out_a = a.step(_batch(8), _batch(9, labeled=False))
    out_b = b.step(_batch(8), _batch(9, labeled=False))
    assert out_a == pytest.approx(out_b, rel=1e-6, abs=1e-9)
    for k, v in a.nets["domain"].state_dict().items():
        torch.testing.assert_close(b.nets["domain"].state_dict()[k], v)
