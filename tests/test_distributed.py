"""torchrun semantics on 2 CPU processes (gloo): identical parameters, one bundle, resume.

Each test spawns two processes with the environment torchrun would set (RANK, WORLD_SIZE,
MASTER_ADDR/PORT on a free port) and runs the real Trainer on tiny .npz domains.
"""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _domains(folder):
    rng = np.random.default_rng(0)
    for name, n in (("src", 60), ("tgt", 40)):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8) + (y * 60).astype(np.uint8)[:, None, None, None]
        np.savez(folder / f"{name}.npz", x=x, y=y)
    return {"source": str(folder / "src.npz"), "target": str(folder / "tgt.npz"), "target_test": str(folder / "tgt.npz")}


def _register_two_optimizer_method():
    """A GAN-style method with two optimizers stepped one after the other (registered in the child only)."""
    import torch.nn.functional as F

    from edgeda.methods import METHODS
    from edgeda.methods.base import Method
    from edgeda.models import DomainClassifier

    if "two_optim_test" in METHODS:
        return

    @METHODS.register("two_optim_test")
    class TwoOptim(Method):
        summary = "test only: alternating discriminator / classifier updates"

        def build(self):
            self.nets["model"] = self.make_model()
            self.nets["disc"] = DomainClassifier(self.nets["model"].feature_dim, 16)
            self.optims["disc"] = self.make_optimizer(self.nets["disc"].parameters(), name="adam")
            self.optims["clf"] = self.make_optimizer(self.nets["model"].parameters())

        def step(self, source, target):
            fs, logits = self.model.features_and_logits(source.x)
            ft, _ = self.model.features_and_logits(target.x)
            d = self.nets["disc"]
            d_loss = F.binary_cross_entropy_with_logits(d(fs.detach()), torch.ones(len(fs))) + \
                F.binary_cross_entropy_with_logits(d(ft.detach()), torch.zeros(len(ft)))
            self.update(d_loss, "disc")
            g_loss = F.cross_entropy(logits, source.y) + F.binary_cross_entropy_with_logits(d(ft), torch.ones(len(ft)))
            self.update(g_loss, "clf")
            return {"loss/d": d_loss.item(), "loss/g": g_loss.item()}


def _worker(rank, port, jobs):
    """Run ``jobs`` (cfg, out_dir, resume, stop_at) in one process group, as torchrun's rank ``rank``."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")  # our own group: the Trainer joins it and leaves it open
    _register_two_optimizer_method()
    from edgeda.config import make_config
    from edgeda.training import Trainer

    class Stop(Exception):
        pass

    for cfg_dict, out_dir, resume, stop_at in jobs:
        def cb(it, stop_at=stop_at):
            if it == stop_at:
                raise Stop

        tr = Trainer(make_config(None, cfg_dict), progress=False, log=None)
        try:
            res = tr.run(resume=resume, callback=cb)
        except Stop:
            continue
        nets = tr.method.state_dict()["nets"]
        save_file({k: v.contiguous() for k, v in nets.items()}, f"{out_dir}/rank{rank}.safetensors")
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"bundle": None if res.bundle is None else str(res.bundle), "history": len(res.history)}, f)
    dist.destroy_process_group()


def _cfg(tmp_path, run, **kw):
    base = dict(out=str(tmp_path / run), iters=4, batch_size=4, eval_every=2, checkpoint_every=2, device="cpu",
                backbone_kwargs={"width": 8, "out_dim": 32}, val_fraction=0.2, **_domains(tmp_path))
    base.update(kw)
    return base


def _nets(path):
    return load_file(str(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One spawn of two ranks runs everything (process start-up dominates on a small CPU):
    a two-optimizer method; DANN uninterrupted; DANN stopped after iteration 3 then resumed."""
    tmp = tmp_path_factory.mktemp("dist")
    for d in ("gan", "full", "part"):
        (tmp / d).mkdir()
    jobs = [
        (_cfg(tmp, "gan_run", method="two_optim_test"), str(tmp / "gan"), False, -1),
        (_cfg(tmp, "a", method="dann"), str(tmp / "full"), False, -1),
        (_cfg(tmp, "b", method="dann"), str(tmp / "part"), False, 3),  # stopped after the iteration-2 checkpoint
        (_cfg(tmp, "b", method="dann"), str(tmp / "part"), True, -1),
    ]
    mp.start_processes(_worker, args=(_free_port(), jobs), nprocs=WORLD, join=True, start_method="spawn")
    return tmp


def test_two_ranks_keep_identical_parameters_and_write_one_bundle(runs):
    from edgeda.bundle import Bundle

    r0, r1 = _nets(runs / "gan" / "rank0.safetensors"), _nets(runs / "gan" / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    for k in r0:  # parameters and BatchNorm statistics alike
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=f"{k} differs between ranks")
    info0 = json.loads((runs / "gan" / "rank0.json").read_text())
    info1 = json.loads((runs / "gan" / "rank1.json").read_text())
    run = runs / "gan_run"
    assert info0["bundle"] == str(run / "model.edgeda") and info1["bundle"] is None
    assert info0["history"] == 2 and info1["history"] == 0  # only rank 0 evaluates and logs
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no stray temporary bundles
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [2, 4]  # logged once, not once per rank
    shipped = Bundle(run / "model.edgeda").module("classifier").state_dict()
    for k, v in shipped.items():
        torch.testing.assert_close(v, r0[f"model.{k}"], rtol=0, atol=0)


def test_ranks_train_on_different_shards(runs):
    """Identical parameters are not because the ranks saw the same data: the streams differ."""
    from edgeda.training.checkpoint import load_latest

    _, state = load_latest(runs / "a" / "checkpoints")
    ranks = state["rank_states"]["ranks"]
    assert state["rank_states"]["world_size"] == WORLD and len(ranks) == WORLD
    p0, p1 = ranks[0]["source_stream.perm"], ranks[1]["source_stream.perm"]
    assert set(p0.tolist()).isdisjoint(p1.tolist())


def test_resume_under_two_ranks_matches_an_uninterrupted_run(runs):
    assert (runs / "b" / "model.edgeda").is_dir()
    for rank in range(WORLD):  # each rank resumed its own data shard and RNG, so the runs agree exactly
        a, b = _nets(runs / "full" / f"rank{rank}.safetensors"), _nets(runs / "part" / f"rank{rank}.safetensors")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {k}")
