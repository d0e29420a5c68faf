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
    owns_group: bool = False  # this process created the process group (and destroys it at the end)

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
        info.owns_group = True
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


def _collective_device(info: DistInfo, device) -> torch.device:
    """Where collective tensors must live: the rank's GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Make buffers (BatchNorm running statistics) identical on every rank: floating ones are
    averaged across ranks, integer ones (``num_batches_tracked``) taken from rank 0."""
    if not info.enabled:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b.data)
                b.data.div_(info.world_size)
            else:
                dist.broadcast(b.data, src=0)


def broadcast_int(value: int, info: DistInfo, device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=_collective_device(info, device))
    dist.broadcast(t, src=0)
    return int(t.item())


def all_gather_1d(t: torch.Tensor, info: DistInfo, device) -> list[torch.Tensor]:
    """Every rank's 1-D tensor ``t`` (lengths may differ), on every rank, returned on the CPU."""
    if not info.enabled:
        return [t]
    import torch.distributed as dist

    dev = _collective_device(info, device)
    n = torch.tensor([t.numel()], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=t.dtype, device=dev)
    padded[: t.numel()] = t.reshape(-1).to(dev)
    out = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return [o[: int(s.item())].cpu() for o, s in zip(out, sizes)]


def gather_state(state: dict, info: DistInfo, device) -> list[dict]:
    """Every rank's copy of a flat state dict whose values are 1-D tensors or ints (a collective).

    Used for per-rank data-stream and RNG states, so that rank 0's checkpoint can restore every
    rank exactly.
    """
    out: list[dict] = [{} for _ in range(info.world_size)]
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor):
            parts = all_gather_1d(value, info, device)
        else:
            parts = [int(p.item()) for p in all_gather_1d(torch.tensor([int(value)]), info, device)]
        for r, p in enumerate(parts):
            out[r][key] = p
    return out


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if :func:`init` created it (a caller's own group is left alone)."""
    if info.enabled and info.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
