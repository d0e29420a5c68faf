"""Opt-in training numerics: ``--amp bf16`` (bf16 autocast, also on the CPU) and ``--channels-last``.
The defaults stay as they were: AMP on CUDA only, fp32 and contiguous tensors on the CPU."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_config
from edgeda.errors import EdgedaError
from edgeda.methods.base import Engine
from edgeda.training.trainer import Trainer


def test_default_engine_does_not_autocast_on_the_cpu():
    eng = Engine("cpu", amp=True)
    assert not eng.amp and not eng.scaler.is_enabled()
    with eng.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert tiny_config(__import__("pathlib").Path("/tmp")).amp is True


def test_bf16_engine_autocasts_on_the_cpu_without_loss_scaling():
    eng = Engine("cpu", amp="bf16")
    assert eng.amp and eng.dtype == torch.bfloat16 and not eng.scaler.is_enabled()
    lin = torch.nn.Linear(4, 3)
    with eng.autocast():
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16


@pytest.mark.parametrize("value, expected", [("on", True), ("off", False), ("bf16", "bf16"), (False, False)])
def test_amp_config_values(tmp_path, value, expected):
    assert tiny_config(tmp_path, amp=value).amp == expected


def test_bad_amp_values_are_refused(tmp_path):
    with pytest.raises(EdgedaError, match="--amp"):
        tiny_config(tmp_path, amp="int4")
    with pytest.raises(EdgedaError, match="CUDA"):
        Engine("cpu", amp="fp16")


def test_bf16_and_channels_last_training_runs_and_ships_fp32(tmp_path):
    tr = Trainer(tiny_config(tmp_path, amp="bf16", channels_last=True, iters=3, eval_every=3, method="dann"),
                 progress=False, log=None)
    res = tr.run()
    assert tr.method.engine.amp and tr.method.engine.dtype == torch.bfloat16
    convs = [m for m in tr.method.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(p.dtype == torch.float32 for p in tr.method.model.parameters())
    assert 0.0 <= res.metrics["source_val_acc"] <= 1.0


def test_cli_flags_reach_the_config(tmp_path, monkeypatch):
    from edgeda import cli

    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"] = cfg
        raise EdgedaError("stop here")

    monkeypatch.setattr("edgeda.training.train", fake_train)
    r = CliRunner().invoke(cli.main, ["train", "--amp", "bf16", "--channels-last", "--iters", "1", "--out", str(tmp_path)])
    assert "stop here" in r.output
    assert seen["cfg"].amp == "bf16" and seen["cfg"].channels_last is True
