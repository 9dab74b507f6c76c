"""Data parallelism over torch.distributed (``torchrun`` / ``accelerate launch``).

With ``WORLD_SIZE > 1`` every rank draws the same global batch of ``world × episodes``
prompts and keeps its own shard; losses are normalised by global token counts and the
gradients are summed over ranks, so N ranks behave like one process with N× the episodes.
Only rank 0 writes logs and checkpoints. With one process every helper here is a no-op.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import torch

from backends.errors import RlgfError, debug_on


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


#: how long a rank that torchrun did not start waits for the others to join (seconds)
RENDEZVOUS_TIMEOUT_S = 300
#: the environment variable that changes it
RENDEZVOUS_ENV = "RLGF_RENDEZVOUS_TIMEOUT"
_LAUNCH_HINT = ("launch the ranks with torchrun (it sets them), or set WORLD_SIZE, RANK, MASTER_ADDR and "
                "MASTER_PORT for each rank; unset WORLD_SIZE to train in one process")


def launched_by_torchrun(environ=None) -> bool:
    """Whether torchrun (or ``accelerate launch``, through it) started this process: its agent
    then stops every rank when one fails, and hosts the rendezvous."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("TORCHELASTIC_RUN_ID"))


def _whole(environ, name: str, default: int | None, least: int) -> int:
    raw = (environ.get(name) or "").strip()
    if not raw:
        if default is None:
            raise RlgfError(f"WORLD_SIZE={environ.get('WORLD_SIZE')} asks for several processes but {name} is not set",
                            _LAUNCH_HINT)
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise RlgfError(f"{name}={raw!r} is not a whole number >= {least}", _LAUNCH_HINT)
    return value


def launch_from_env(environ=None) -> tuple[int, int, int]:
    """``(world size, rank, local rank)`` from torchrun's variables, checked: bad values raise
    :class:`RlgfError` before anything waits for other processes."""
    environ = os.environ if environ is None else environ
    size = _whole(environ, "WORLD_SIZE", 1, 1)
    if size == 1:
        return 1, 0, 0
    rank = _whole(environ, "RANK", None, 0)
    if rank >= size:
        raise RlgfError(f"RANK={rank} is not below WORLD_SIZE={size}", "give each process a RANK from 0 to "
                        f"{size - 1}; " + _LAUNCH_HINT)
    local_rank = _whole(environ, "LOCAL_RANK", 0, 0)
    _whole(environ, "MASTER_PORT", None, 1)
    if not (environ.get("MASTER_ADDR") or "").strip():
        raise RlgfError(f"WORLD_SIZE={size} asks for several processes but MASTER_ADDR is not set", _LAUNCH_HINT)
    return size, rank, local_rank


def rendezvous_timeout(environ=None) -> float:
    """Seconds a rank waits for the others (:data:`RENDEZVOUS_ENV`, else :data:`RENDEZVOUS_TIMEOUT_S`)."""
    environ = os.environ if environ is None else environ
    raw = (environ.get(RENDEZVOUS_ENV) or "").strip()
    if not raw:
        return float(RENDEZVOUS_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise RlgfError(f"{RENDEZVOUS_ENV}={raw!r} is not a number of seconds > 0",
                        f"unset it (default {RENDEZVOUS_TIMEOUT_S} s) or e.g. {RENDEZVOUS_ENV}=600")
    return value


def init_from_env(device: str) -> tuple[World, str]:
    """Join the process group torchrun describes in the environment; returns the world and
    this rank's device (``cuda:LOCAL_RANK`` on GPUs).

    Ranks that torchrun did not start (set by hand, or by a scheduler) wait at most
    :func:`rendezvous_timeout` for each other, then stop with :class:`RlgfError`: a rank whose
    partner failed before joining (its ``--out`` locked by another run, say) must not wait on."""
    global _WORLD
    size, rank, local_rank = launch_from_env()
    if size <= 1:
        _WORLD = World()
        return _WORLD, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise RlgfError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                            "device(s)", "start at most one rank per GPU on each machine")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if launched_by_torchrun():
            dist.init_process_group(backend=backend)
        else:
            _rendezvous(dist, backend, size, rank)
    _WORLD = World(rank=rank, size=size, local_rank=local_rank)
    return _WORLD, device


def _rendezvous(dist, backend: str, size: int, rank: int) -> None:
    """``init_process_group`` over a store that waits at most :func:`rendezvous_timeout` for the
    ranks to join; once joined, the store takes the process group's own timeout back. c10d's retry logs (C++
    back-traces on stderr) are kept off the terminal, and shown after a failure under RLGF_DEBUG=1."""
    wait = rendezvous_timeout()
    addr, port = os.environ["MASTER_ADDR"].strip(), int(os.environ["MASTER_PORT"])
    with _stderr_aside() as aside:
        try:
            store = dist.TCPStore(addr, port, size, rank == 0, timeout=timedelta(seconds=wait))
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=size)
            # joined: later store reads (NCCL's set-up at the first collective) get the process
            # group's own timeout, as with torch's env:// rendezvous, not the join's
            store.set_timeout(_group_timeout(dist, backend))
        except (RuntimeError, OSError, ValueError) as exc:
            aside.keep = debug_on()
            raise _rendezvous_error(exc, size, rank, addr, port, wait) from None


def _group_timeout(dist, backend: str) -> timedelta:
    """torch's default timeout for a process group of ``backend`` (30 min for gloo, 10 for NCCL)."""
    try:
        from torch.distributed.distributed_c10d import _get_default_timeout

        return _get_default_timeout(dist.Backend(backend))
    except (ImportError, AttributeError, ValueError):  # another torch: its documented default
        return timedelta(minutes=30)


def _rendezvous_error(exc: Exception, size: int, rank: int, addr: str, port: int, wait: float) -> RlgfError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = f"{addr}:{port}"
    if "address already in use" in text.lower():
        return RlgfError(f"rank 0 cannot listen on MASTER_PORT {port}: it is in use on this machine",
                         "choose another MASTER_PORT (the same for every rank), or let torchrun pick one "
                         "(torchrun --standalone)")
    after = (f"stop any rank still waiting, then launch every rank again — or use torchrun, which stops the "
             f"other ranks when one fails; {RENDEZVOUS_ENV} sets the wait (now {wait:g} s)")
    if rank == 0:
        return RlgfError(f"rank 0 of {size}: the other ranks did not all join at {where} within {wait:g} s ({text})",
                         "a rank stopped before joining (its own [error] line says why) or was not started "
                         f"with WORLD_SIZE={size} and MASTER_ADDR/MASTER_PORT {where}; " + after)
    return RlgfError(f"rank {rank} of {size} could not join rank 0 at {where} within {wait:g} s ({text})",
                     "rank 0 stopped before joining (its own [error] line says why: its --out being trained by "
                     "another process, say) or was not started with the same MASTER_ADDR/MASTER_PORT; " + after)


class _stderr_aside:
    """Send file descriptor 2 to a temporary file for the duration (C++ logs bypass ``sys.stderr``);
    write it back at the end when ``keep`` is set."""

    def __init__(self) -> None:
        self.keep = False

    def __enter__(self) -> "_stderr_aside":
        sys.stderr.flush()
        self._file = self._saved = None
        try:
            self._file = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except OSError:  # no descriptor 2, or no temporary folder: leave stderr as it is
            if self._file is not None:
                self._file.close()
            if self._saved is not None:
                os.close(self._saved)
            self._file = self._saved = None
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if self.keep:
            self._file.seek(0)
            sys.stderr.write(self._file.read().decode("utf-8", "replace"))
            sys.stderr.flush()
        self._file.close()


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
