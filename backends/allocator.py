"""The memory allocator rlgf's processes run with: tcmalloc where the machine has it.

Training a 135M-parameter model on a CPU allocates and frees hundreds of tensors of tens to
hundreds of MB per minibatch (logits alone are 16 × 44 × 49,152 floats). glibc's malloc
hands every block over 32 MB back to the kernel when it is freed, so the next minibatch
faults the same memory in again, page by page, at a cost that varies widely from run to run.
Measured on a 2-core AMD EPYC with ``make demo``'s settings, 2 iterations, 7 runs on
2026-12-03: under glibc 154–243 s of iterations with 54–193 s of system time, under
tcmalloc (which keeps freed memory for reuse) 123–165 s with 40–48 s; in ``bench/allocator.py``'s
paired run the means were 204 against 159 s (1.28×), though its first pair tied (166 against
165 s). The numbers are the same to the last bit (an allocator does not change arithmetic),
and the peak is lower (7.6 against 8.7 GB). jemalloc did not help (173 s of wall time against
glibc's 173–181 s).

An allocator can only be chosen before a process starts, so the ``rlgf`` command re-executes
itself once (the same command line, the same process id) with ``LD_PRELOAD`` naming tcmalloc when it finds the library (Debian:
``libtcmalloc-minimal4``; ``make setup`` installs it where it can) and the environment does
not already preload an allocator. ``RLGF_ALLOCATOR`` picks: ``auto`` (the default: tcmalloc
if found, else the C library's), ``tcmalloc`` (an error when it is not found) or ``system``
(never re-execute). Child processes (data-parallel ranks, reproduction workers) inherit the
environment and so the allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

from backends.errors import RlgfError

ENV = "RLGF_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "system")
#: set in the re-executed process, so a preload the loader ignored cannot loop
REEXEC_MARK = "RLGF_ALLOCATOR_REEXEC"
NAMES = ("tcmalloc_minimal", "tcmalloc")
#: where distributions put shared libraries, besides what ``ldconfig`` knows
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib", "/opt/homebrew/lib")
#: gperftools reports every allocation over 1 GiB on stderr unless told otherwise
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def choice(environ=None) -> str:
    environ = os.environ if environ is None else environ
    value = (environ.get(ENV) or "auto").strip().lower()
    if value not in CHOICES:
        raise RlgfError(f"{ENV}={environ.get(ENV)!r} is not one of {', '.join(CHOICES)}",
                        hint=f"unset it (auto: tcmalloc where installed) or set {ENV}=system")
    return value


def find_tcmalloc(prefixes=None) -> str | None:
    """The path of a tcmalloc shared library on this machine, or None."""
    prefixes = [sys.prefix, sys.base_prefix] if prefixes is None else prefixes
    dirs = [Path(p) / "lib" for p in prefixes] + [Path(d) for d in _LIB_DIRS]
    for name in NAMES:
        for folder in dirs:
            for suffix in (".so.4", ".so"):
                candidate = folder / f"lib{name}{suffix}"
                if candidate.is_file():
                    return str(candidate)
        found = ctypes.util.find_library(name)  # a soname: the loader finds it on its own path
        if found:
            return found
    return None


def preloaded(environ=None) -> str | None:
    """The allocator ``LD_PRELOAD`` already names (tcmalloc or jemalloc), or None."""
    environ = os.environ if environ is None else environ
    for entry in (environ.get("LD_PRELOAD") or "").replace(":", " ").split():
        base = Path(entry).name
        for kind in ("tcmalloc", "jemalloc"):
            if kind in base:
                return kind
    return None


def reexec_plan(argv: list[str], environ: dict, *, platform: str = sys.platform,
                library: str | None | bool = False) -> tuple[list[str], dict] | None:
    """How to restart this process under tcmalloc: ``(argv, environment)``, or None to go on.

    ``argv``: the interpreter's own command line (``sys.orig_argv``), restarted as it was given
    (``python /venv/bin/rlgf train …``, ``python -m rlgf_cli …``, ``python bench/iteration.py …``).
    ``library``: the tcmalloc path to use (None: not installed; False: look for it)."""
    wanted = choice(environ)
    if wanted == "system" or environ.get(REEXEC_MARK) or preloaded(environ) or not platform.startswith("linux"):
        return None
    path = find_tcmalloc() if library is False else library
    if path is None:
        if wanted == "tcmalloc":
            raise RlgfError(f"{ENV}=tcmalloc but no tcmalloc library was found on this machine",
                            hint="install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4) "
                                 f"or set {ENV}=auto")
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(x for x in (path, environ.get("LD_PRELOAD", "").strip()) if x)
    env[REEXEC_MARK] = "1"
    for key, value in _QUIET.items():
        env.setdefault(key, value)
    return [sys.executable, *argv[1:]], env


def maybe_reexec(argv: list[str] | None = None) -> None:
    """Restart this process, as it was started, under tcmalloc when :func:`reexec_plan` says so.

    Call it first thing, before work that should run under the new allocator."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    plan = reexec_plan(argv, dict(os.environ))
    if plan is None:
        return
    new_argv, env = plan
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(new_argv[0], new_argv, env)
    except OSError:  # could not restart: carry on with the allocator this process has
        return


def current() -> str:
    """The allocator this process runs with: ``tcmalloc``, ``jemalloc`` or ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return preloaded() or "system"
    for kind in ("tcmalloc", "jemalloc"):
        if f"lib{kind}" in maps:
            return kind
    return "system"
