"""CUDA-graph replay of one decoding step (``--cuda-graphs``; experimental).

A decoding step of a small model on a GPU is launch-bound: hundreds of kernel launches for a
few microseconds of work each. Captured once in a CUDA graph, the step is replayed with one
launch. The step must then have fixed shapes and addresses — the decoding loop's static mode
(:mod:`backends.hf.kv_cache`: writes at a column held in a device tensor, a full-width additive
attention mask) provides that.

Capture can fail (an operation that synchronises with the host inside the model's forward),
or a captured step could compute something else than the eager one (a host value frozen into
the graph). So :class:`GraphStep` is checked twice against the eager step, at capture and at
the next step, and the caller falls back to eager decoding — with a warning — when a check
fails. Nothing here has run on a GPU yet: ``bench/gpu_check.sh`` runs its tests there.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch

#: logits of the replayed step must match the eager step's to this tolerance (bf16 kernels
#: may pick different reduction orders between capture and eager runs)
TOLERANCE = 2e-2


def _autocast_for_capture(device: torch.device):
    """The ambient autocast again, without its weight-cast cache (which CUDA graphs forbid)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False)
    return contextlib.nullcontext()


class GraphStep:
    """``forward()`` (which reads and writes only static buffers) captured and replayed."""

    def __init__(self, forward: Callable[[], torch.Tensor], device: torch.device) -> None:
        self.graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with _autocast_for_capture(device):
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy initialisation, allocator, cuBLAS workspaces
                    forward()
            torch.cuda.current_stream(device).wait_stream(side)
            with torch.cuda.graph(self.graph):
                self.output = forward()

    def run(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


def agrees(replayed: torch.Tensor, eager: torch.Tensor) -> bool:
    return bool(torch.allclose(replayed, eager, rtol=TOLERANCE, atol=TOLERANCE))


def try_capture(forward: Callable[[], torch.Tensor], eager: torch.Tensor, device: torch.device) -> GraphStep | None:
    """Capture ``forward``; ``None`` (with a warning) when capture fails or the replay disagrees
    with ``eager`` — the logits the same step gave without a graph."""
    try:
        step = GraphStep(forward, device)
        ok = agrees(step.run(), eager)
    except RuntimeError as exc:  # e.g. "operation not permitted when stream is capturing"
        warnings.warn(f"CUDA graph capture failed, decoding without graphs: {exc}", RuntimeWarning, stacklevel=3)
        return None
    if not ok:
        warnings.warn("a CUDA-graph decoding step disagreed with the eager step; decoding without graphs",
                      RuntimeWarning, stacklevel=3)
        return None
    return step
