"""torchrun support: process-group set-up, rank helpers, parameter broadcast.

Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the trainer joins a process
group (NCCL on CUDA, gloo on CPU), broadcasts rank 0's initial parameters, draws per-rank data
shards, and averages gradients in :class:`~edgeda.methods.base.Engine`; only rank 0 writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device_name: str) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun; returns (info, device name for this rank)."""
    import torch.distributed as dist

    info = from_env()
    if not info.enabled:
        return info, device_name
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        return info, f"cuda:{info.local_rank}"
    return info, "cpu"


def broadcast_module(module: torch.nn.Module) -> None:
    import torch.distributed as dist

    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_true(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank only if ``flag`` is true on every rank (a collective)."""
    if not info.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
