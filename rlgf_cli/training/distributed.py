"""Data parallelism over torch.distributed (``torchrun`` / ``accelerate launch``).

With ``WORLD_SIZE > 1`` every rank draws the same global batch of ``world × episodes``
prompts and keeps its own shard; losses are normalised by global token counts and the
gradients are summed over ranks, so N ranks behave like one process with N× the episodes.
Only rank 0 writes logs and checkpoints. With one process every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1


_WORLD = World()


def world() -> World:
    return _WORLD


def launched_as_main() -> bool:
    """Whether this process is rank 0 of a data-parallel launch, or was not launched as one (what
    :func:`init_from_env` decides): the one that reports to the user, even after the process
    group is gone."""
    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        return int(value) if value.isdigit() else default

    return number("WORLD_SIZE", 1) <= 1 or number("RANK", 0) == 0


def init_from_env(device: str) -> tuple[World, str]:
    """Join the process group torchrun describes in the environment; returns the world and
    this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = World()
        return _WORLD, device
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    _WORLD = World(rank=rank, size=size, local_rank=local_rank)
    return _WORLD, device


def shutdown() -> None:
    global _WORLD
    if _WORLD.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _WORLD = World()


def shard(items: list, w: World | None = None) -> list:
    """This rank's contiguous share of a global list (equal shares)."""
    w = w or _WORLD
    per = len(items) // w.size
    return items[w.rank * per:(w.rank + 1) * per]


def all_sum(values: list[float] | torch.Tensor, device=None) -> torch.Tensor:
    """Sum a small vector of numbers over ranks (returns a float64 CPU tensor)."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if _WORLD.enabled:
        import torch.distributed as dist

        backend_dev = device if device is not None and str(device).startswith("cuda") else "cpu"
        t = t.to(backend_dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so every rank can stop together)."""
    return bool(all_sum([1.0 if flag else 0.0])[0] > 0)


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum ``.grad`` over ranks in one flat all-reduce (missing grads count as zero)."""
    if not _WORLD.enabled:
        return
    import torch.distributed as dist

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
