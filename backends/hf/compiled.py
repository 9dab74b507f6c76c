"""``--compile``: the trained models' scoring and update forward passes through ``torch.compile``.

On a CPU an update is mostly elementwise work between small matrix products (norms, residual
adds, SiLU, rotary embeddings, and under bf16 the casts around every product); Inductor fuses
it. Measured on a 2-core AMX Xeon (SmolLM2-135M, forward + backward of 16 × 44 tokens, dynamic
shapes): bf16 autocast 1.07–1.25 s eager against about 0.8 s compiled, fp32 1.9–2.0 s against
1.55–1.7 s; a bf16 iteration of the embedded default 10.6–11.6 s against 12.6 s
(``bench/README.md``). Only the repeated blocks are compiled (:class:`GradModeForward`), which
takes about 20 s, and 0–4 s once Inductor's on-disk cache (:func:`inductor_cache`) holds them.

One compiled graph per model serves both the no-grad scoring of old log-probabilities and
values and the update: :class:`GradModeForward` always runs it with autograd on (and the
scoring detaches what it keeps). So the scoring and the first minibatch of the update run the
very same kernels, and the PPO ratio there is exactly 1, as it is without ``--compile``; and
each model compiles once, not once per grad mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import types
import warnings
from pathlib import Path

import torch

from backends.cache import INDUCTOR_CACHE_ENV, cache_dir, check_inductor_cache_env
from backends.errors import RlgfError, RlgfWarning

INDUCTOR_ENV = INDUCTOR_CACHE_ENV


def inductor_cache() -> Path:
    """Inductor's cache folder: ``$TORCHINDUCTOR_CACHE_DIR`` as the user set it, else rlgf's cache
    folder (which outlives ``/tmp``, Inductor's default), set for this process before any compile.
    (torch writes its default into the variable on import, so that value counts as unset.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(INDUCTOR_ENV)
    if not current or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ[INDUCTOR_ENV] = str(cache_dir("inductor"))  # one RlgfError naming $RLGF_CACHE_DIR if it cannot be
    check_inductor_cache_env()
    return Path(os.environ[INDUCTOR_ENV])


#: from this many iterations a run without ``--compile``/``--no-compile`` compiles under CPU bf16:
#: the ~20 s of a cold compile against ~2.1 s saved an iteration (embedded default, 2-core AMX Xeon)
AUTO_COMPILE_ITERATIONS = 20


def has_compiler() -> bool:
    """Whether a C++ compiler for Inductor's CPU kernels is on the ``PATH``."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def auto_compile(precision, iterations: int) -> tuple[bool, str]:
    """What ``--compile`` not given means for a PPO-family run of ``iterations`` under
    ``precision``: ``(on, why)``. On where it was measured to repay: bf16 on a CPU (an
    iteration 1.2× faster; fp32 gains 3 %), a run long enough to repay a cold compile, and a
    compiler to build the kernels with. GPUs stay eager (not measured there)."""
    if not (precision.bf16 and precision.device_type == "cpu"):
        return False, "compiling pays off under bf16 on a CPU"
    if iterations < AUTO_COMPILE_ITERATIONS:
        return False, f"{iterations} iterations (a cold compile repays from about {AUTO_COMPILE_ITERATIONS})"
    if not has_compiler():
        return False, "no C++ compiler found"
    return True, f"bf16 on a CPU, {iterations} iterations"


def require_compiler(device_type: str) -> None:
    """On a CPU Inductor builds C++ kernels: refuse ``--compile`` up front where no compiler is
    found, rather than fail inside the first iteration."""
    if device_type == "cpu" and not has_compiler():
        raise RlgfError("--compile needs a C++ compiler on a CPU (torch's Inductor builds its kernels with one)",
                        "install one (Debian/Ubuntu: apt-get install g++) or leave out --compile")


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks a model repeats: the members of every ``ModuleList`` of two or more modules
    of one class (a transformer's layers)."""
    blocks = []
    for child in module.modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) > 1 and len({type(m) for m in child}) == 1:
            blocks.extend(child)
    return blocks


_BLOCK_FORWARDS: dict[type, object] = {}


def block_forward(cls: type):
    """``cls.forward`` compiled once per process, with dynamic shapes: every block of the class,
    in every model (the learner's layers and its critic's), runs the same compiled code."""
    if cls not in _BLOCK_FORWARDS:
        _BLOCK_FORWARDS[cls] = torch.compile(cls.forward, dynamic=True)
    return _BLOCK_FORWARDS[cls]


class GradModeForward:
    """``module``'s forward with its repeated blocks compiled, always run with autograd on.

    Regional compilation: Dynamo traces one transformer layer and every layer reuses it, so a
    model compiles in about 20 s instead of 2-3 min for the whole graph, at the same speed
    (SmolLM2-135M on the 2-core AMX Xeon: 23 s against 210 s, forward + backward 0.84 s
    against 0.82 s under bf16). The blocks run compiled only inside a call of this object, so
    decoding with the same model stays eager; a model without repeated blocks is compiled
    whole. Call it with keyword arguments as the module; under ``torch.no_grad()`` the outputs
    still carry a graph, so callers go through :func:`forward_through`, which detaches what
    they keep. Not an ``nn.Module``, so holding one as an attribute adds nothing to a module's
    ``state_dict``.
    """

    def __init__(self, module: torch.nn.Module):
        from torch._dynamo.exc import TorchDynamoException  # BackendCompilerFailed among them

        require_compiler(next(module.parameters()).device.type)
        inductor_cache()
        self._compile_errors = TorchDynamoException
        self.module = module
        self.blocks = repeated_blocks(module)
        self.whole = None if self.blocks else torch.compile(module, dynamic=True)
        #: set when compiling failed: the module then runs eagerly from that call on
        self.failed: str | None = None

    def serves(self, module) -> bool:
        """Whether this is ``module``'s compiled forward (a shallow copy of its owner may hold
        another model)."""
        return self.module is module

    def __call__(self, **kwargs):
        if self.failed is None:
            try:
                with self._compiled_blocks():
                    return self._run(self.module if self.whole is None else self.whole, kwargs)
            except self._compile_errors as exc:
                self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                warnings.warn(RlgfWarning(f"--compile: torch.compile failed for {type(self.module).__name__} "
                                          f"({self.failed}); it runs eagerly from here on"), stacklevel=2)
        return self._run(self.module, kwargs)

    @contextlib.contextmanager
    def _compiled_blocks(self):
        for block in self.blocks:
            block.forward = types.MethodType(block_forward(type(block)), block)
        try:
            yield
        finally:
            for block in self.blocks:
                block.__dict__.pop("forward", None)

    @staticmethod
    def _run(fn, kwargs):
        if torch.is_grad_enabled():
            return fn(**kwargs)
        with torch.enable_grad():
            return fn(**kwargs)


def forward_through(compiled: GradModeForward | None, module, pick, **kwargs) -> torch.Tensor:
    """``pick(module(**kwargs))``, through ``compiled`` when it is ``module``'s compiled forward
    (what it picks is then detached under ``torch.no_grad()``, see :class:`GradModeForward`)."""
    if compiled is None or not compiled.serves(module):
        return pick(module(**kwargs))
    out = pick(compiled(**kwargs))
    return out if torch.is_grad_enabled() else out.detach()
