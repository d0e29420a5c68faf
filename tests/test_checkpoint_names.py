"""Checkpoints from before the task network was called ``model`` (``nets["classifier"]``, an
optimizer ``"classifier"``) still load: the state itself, a method, and a resumed training run."""
import torch

from conftest import tiny_config
from edgeda.methods import METHODS
from edgeda.methods.base import task_network_renamed
from edgeda.tasks.spec import TaskSpec
from edgeda.training import Trainer
from edgeda.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


def _old_layout(state: dict) -> dict:
    """``state`` (a method's) with the task network and its optimizer under the old name."""
    nets = {("classifier." + k[len("model."):] if k.startswith("model.") else k): v for k, v in state["nets"].items()}
    optims = {("classifier" if k == "model" else k): v for k, v in state["optims"].items()}
    return {**state, "nets": nets, "optims": optims}


def _method(name="pixelda"):
    torch.manual_seed(0)
    return METHODS.get(name)(TaskSpec(10, [str(i) for i in range(10)]), backbone_kwargs={"width": 8, "out_dim": 32},
                             options={"g_width": 4, "g_blocks": 1, "g_kernel": 3, "d_width": 4, "d_layers": 1})


def test_old_names_become_new_and_other_keys_stay():
    w, d = torch.zeros(2), torch.ones(3)
    old = {"nets": {"classifier.head.weight": w, "disc.0.weight": d, "classifier_extra.x": d},
           "optims": {"classifier": {"lr": 1}, "disc": {"lr": 2}}, "scaler": {}, "cbst_round": 3}
    new = task_network_renamed(old)
    assert list(new["nets"]) == ["model.head.weight", "disc.0.weight", "classifier_extra.x"]
    assert new["nets"]["model.head.weight"] is w and new["nets"]["disc.0.weight"] is d
    assert new["optims"] == {"model": {"lr": 1}, "disc": {"lr": 2}}
    assert new["scaler"] == {} and new["cbst_round"] == 3
    assert "classifier.head.weight" in old["nets"] and "classifier" in old["optims"]  # the given state is not changed


def test_a_state_with_the_current_names_is_unchanged():
    state = {"nets": {"model.head.weight": torch.zeros(2), "refiner.w": torch.ones(1)},
             "optims": {"main": {}, "refiner": {}}, "scaler": {}}
    assert task_network_renamed(state) == state


def test_a_method_loads_its_state_in_the_old_and_the_new_layout():
    src = _method()
    with torch.no_grad():
        for p in src.nets.parameters():
            p.add_(0.5)
    state = src.state_dict()
    assert any(k.startswith("model.") for k in state["nets"]) and "model" in state["optims"]
    for given in (state, _old_layout(state)):
        dst = _method()
        dst.load_state_dict(given)
        for k, v in src.nets.state_dict().items():
            torch.testing.assert_close(dst.nets.state_dict()[k], v, rtol=0, atol=0)
        assert set(dst.optims) == set(src.optims)


class Stop(Exception):
    pass


def test_training_resumes_from_a_checkpoint_in_the_old_layout(tmp_path):
    full = Trainer(tiny_config(tmp_path / "a", method="source_only", iters=4, checkpoint_every=2, eval_every=2),
                   progress=False, log=None)
    full.run()

    def stop_at_3(it):
        if it == 3:
            raise Stop

    cfg = tiny_config(tmp_path / "b", method="source_only", iters=4, checkpoint_every=2, eval_every=2)
    stopped = Trainer(cfg, progress=False, log=None)
    try:
        stopped.run(callback=stop_at_3)
    except Stop:
        pass
    assert list_checkpoints(stopped.ckpt_dir) == [2]
    state = load_checkpoint(stopped.ckpt_dir, 2)
    state["method"] = _old_layout(state["method"])
    assert any(k.startswith("classifier.") for k in state["method"]["nets"])
    save_checkpoint(stopped.ckpt_dir, 2, state)
    logs = []
    resumed = Trainer(cfg, progress=False, log=logs.append)
    resumed.run(resume=True)
    assert "resumed from iteration 2" in logs
    a, b = full.method.nets.state_dict(), resumed.method.nets.state_dict()
    assert set(a) == set(b) and all(k.startswith("model.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
