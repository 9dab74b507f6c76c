"""Where a run executes and how its randomness is seeded: the one device resolver, the one
precision resolver (both live in ``backends``, which places models), the one seed derivation
and the one place that seeds python, numpy and torch.

:func:`derive_seed` is the only seed arithmetic in the trainer: a run's seed and explicit
parts (the iteration, a rollout part, a chunk's global index) fold into one number, so the
same run, resumed or sharded over data-parallel ranks, draws the same random numbers.
"""

from __future__ import annotations

import random

from backends.device import resolve_device
from backends.precision import resolve_precision

__all__ = ["SEED_STRIDE", "derive_seed", "resolve_device", "resolve_precision", "set_seed", "use_threads"]

#: the multiplier each part is folded in with (a prime, so nearby seeds and parts do not collide)
SEED_STRIDE = 1_000_003
#: derived seeds stay below this (what ``torch.Generator.manual_seed`` takes)
SEED_MODULUS = 2**63


def derive_seed(seed: int, *parts: int, stride: int = SEED_STRIDE) -> int:
    """``seed`` with ``parts`` folded in, left to right: ``s = s * stride + part`` (mod 2⁶³).

    ``derive_seed(seed)`` is ``seed`` itself (below 2⁶³); ``derive_seed(seed, it)`` is
    ``seed * 1_000_003 + it``. A small ``stride`` packs a part with few values (``stride=16``
    for a rollout part index below 16) after a larger one.
    """
    value = int(seed) % SEED_MODULUS
    for part in parts:
        value = (value * stride + int(part)) % SEED_MODULUS
    return value


def set_seed(seed: int) -> None:
    """The one place that seeds python, numpy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def use_threads(threads: int | None) -> None:
    """``--threads N``: torch's CPU threads for this process (None: leave torch's own choice,
    ``$OMP_NUM_THREADS`` or one per core). More threads than cores is allowed, with a warning:
    on a CPU it usually slows every matrix product down."""
    if threads is None:
        return
    import os
    import warnings

    import torch

    from backends.errors import RlgfError, RlgfWarning

    if threads < 1:
        raise RlgfError(f"--threads must be at least 1 (got {threads})",
                        "leave it out for one thread per core, or pass e.g. --threads 2")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or threads)
    if threads > cores:
        warnings.warn(f"--threads {threads} is more than the {cores} CPUs this process may use; "
                      "torch usually runs slower so", RlgfWarning, stacklevel=2)
    torch.set_num_threads(threads)
