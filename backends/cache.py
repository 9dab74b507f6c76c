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
