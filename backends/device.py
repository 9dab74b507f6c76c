"""The one device resolver: what ``--device auto|cpu|cuda|cuda:N|mps`` means on this machine.

It lives in ``backends`` because backends place models on devices; ``rlgf_cli.runtime``
re-exports it for the CLI and the trainer (``backends`` never imports ``rlgf_cli``).
"""

from __future__ import annotations

from backends.errors import RlgfError


def resolve_device(device=None) -> str:
    """A concrete device name: ``None`` or ``"auto"`` → ``"cuda"`` when CUDA is available, else
    ``"cpu"``; anything else as torch names it (``torch.device`` objects too).

    An unknown name, or a CUDA (or MPS) device on a machine without one, raises :class:`RlgfError`.
    """
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RlgfError(f"unknown device {str(device)!r}", "use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RlgfError(f"--device {device} was asked for but no CUDA device is available", "use --device cpu or auto")
    if dev.type == "mps" and not _mps_available(torch):
        raise RlgfError(f"--device {device} was asked for but this machine (or this torch build) has no MPS device",
                        "use --device cpu or auto")
    return str(dev)


def _mps_available(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except RuntimeError:  # a build without MPS support
        return False
