"""Where rlgf keeps what is expensive to prepare (converted models, trained rewards, guide caches)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RLGF_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``$RLGF_CACHE_DIR`` or the platform's user cache folder for ``rlgf``, joined with ``parts``.

    The folder is created on demand.
    """
    root = os.environ.get(CACHE_ENV)
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("rlgf", appauthor=False)
    path = Path(root).expanduser().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from backends.errors import RlgfError

        raise RlgfError(f"cannot make the cache folder {path}: {exc.strerror or exc}",
                        f"point {CACHE_ENV} at a folder you can write (it holds converted models, reward "
                        "classifiers and the guide cache)") from None
    return path


#: torch's compile cache folder variable (Inductor's)
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def check_inductor_cache_env(environ=None) -> None:
    """``$TORCHINDUCTOR_CACHE_DIR`` naming something that is not a folder breaks torch's own import
    (every command then fails at its first model load, blaming the model): one :class:`RlgfError`."""
    environ = os.environ if environ is None else environ
    value = environ.get(INDUCTOR_CACHE_ENV)
    if value and os.path.exists(value) and not os.path.isdir(value):
        from backends.errors import RlgfError

        raise RlgfError(f"${INDUCTOR_CACHE_ENV} ({value}) is not a folder (torch makes its compile cache there)",
                        f"point {INDUCTOR_CACHE_ENV} at a folder you can write, or unset it (rlgf then uses its "
                        "cache folder)")
