"""--ema: an exponential moving average of the shipped weights is what is evaluated, selected and shipped."""
import pytest
import torch
from torch import nn

from conftest import tiny_config
from edgeda.bundle import load_bundle
from edgeda.errors import EdgedaError
from edgeda.training import Trainer
from edgeda.models.averaging import WeightAverage


class Stop(Exception):
    pass


def test_average_follows_the_warmed_up_decay_by_hand():
    live = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    w0 = live[0].weight.detach().clone()
    avg = WeightAverage({"m": live}, decay=0.5)
    with torch.no_grad():
        live[0].weight.fill_(1.0)
        live[1].running_mean.fill_(4.0)
        live[1].num_batches_tracked.fill_(7)
    avg.update({"m": live})  # first rate: min(0.5, 1/10) = 0.1
    expected = 0.1 * w0 + 0.9 * torch.ones(2, 2)
    torch.testing.assert_close(avg.modules["m"][0].weight, expected)
    torch.testing.assert_close(avg.modules["m"][1].running_mean, torch.full((2,), 0.9 * 4.0))
    assert int(avg.modules["m"][1].num_batches_tracked) == 7  # integer buffers are copied
    with torch.no_grad():
        live[0].weight.fill_(3.0)
    avg.update({"m": live})  # second rate: min(0.5, 2/11) = 2/11
    torch.testing.assert_close(avg.modules["m"][0].weight, 2 / 11 * expected + 9 / 11 * torch.full((2, 2), 3.0))
    for _ in range(20):
        avg.update({"m": live})
    assert avg.rate() == 0.5  # warm-up over: the configured decay
    assert not any(p.requires_grad for p in avg.modules["m"].parameters())
    assert live[0].weight.requires_grad  # the live module is untouched


def test_bad_decay_is_a_clear_error(tmp_path):
    with pytest.raises(EdgedaError, match="--ema"):
        tiny_config(tmp_path, ema=1.0)
    with pytest.raises(EdgedaError, match="--ema"):
        WeightAverage({"m": nn.Linear(1, 1)}, decay=0.0)


def test_trainer_ships_and_evaluates_the_average_not_the_live_weights(tmp_path):
    tr = Trainer(tiny_config(tmp_path, method="source_only", ema=0.9), progress=False, log=None)
    res = tr.run()
    shipped = load_bundle(res.bundle)
    assert shipped.manifest["training"]["weight_average"] == {"kind": "ema", "decay": 0.9}
    live = tr.method.model.state_dict()
    avg = tr.average.modules["classifier"].state_dict()
    bundle = shipped.model.state_dict()
    for k in avg:
        torch.testing.assert_close(bundle[k], avg[k].cpu(), rtol=0, atol=0)
    assert any(not torch.equal(avg[k], live[k]) for k in live if live[k].dtype.is_floating_point)
    # the reported accuracy is the shipped (averaged) model's
    from edgeda.training.model_eval import evaluate_classifier

    acc = evaluate_classifier(tr.average.modules["classifier"], tr.domains.target_test, tr.task, "cpu")["accuracy"]
    assert res.metrics["target_test_acc"] == acc


def test_without_ema_nothing_is_averaged(tmp_path):
    tr = Trainer(tiny_config(tmp_path, method="source_only"), progress=False, log=None)
    res = tr.run()
    assert tr.average is None
    assert load_bundle(res.bundle).manifest["training"]["weight_average"] is None


def test_resume_restores_the_average(tmp_path):
    kw = dict(method="dann", iters=8, checkpoint_every=4, eval_every=4, ema=0.8)
    full = Trainer(tiny_config(tmp_path / "a", **kw), progress=False, log=None)
    full.run()

    def stop_at_6(it):
        if it == 6:
            raise Stop

    cfg = tiny_config(tmp_path / "b", **kw)
    with pytest.raises(Stop):
        Trainer(cfg, progress=False, log=None).run(callback=stop_at_6)
    resumed = Trainer(cfg, progress=False, log=None)
    resumed.run(resume=True)
    assert resumed.average.updates == full.average.updates == 8
    a = full.average.modules["classifier"].state_dict()
    b = resumed.average.modules["classifier"].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
