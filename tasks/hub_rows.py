"""Rows of a Hugging Face dataset for ``--task prompts --data hf:NAME[:SPLIT]``.

``NAME`` is a hub dataset (downloaded once, then read from the datasets cache, offline too)
or a local folder that ``datasets.load_dataset`` reads (a saved dataset or data files).
Without ``:SPLIT`` every split is read and rows without a ``split`` column get their
dataset split's name (``train``, ``validation``, ``test``…), which the prompts task maps onto
train/val/test.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from backends.errors import RlgfError


@contextlib.contextmanager
def offline_unless_reachable():
    """Around ``datasets.load_dataset`` of a hub name: when the hub cannot be reached, load in
    offline mode, so a dataset already in the cache still loads and any other fails at once,
    without the hub client's retries (about 25 s and a screen of warnings)."""
    from backends.hf.util import hub_reachable

    if hub_reachable():
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``NAME[:SPLIT]`` → ``(NAME, SPLIT or None)``; an existing local path is taken whole."""
    if spec.strip() and Path(spec).expanduser().exists():  # ("" is the current folder: not a name)
        return spec, None
    name, _, split = spec.partition(":")
    if not name.strip():
        raise RlgfError("--data hf: needs a dataset name", "e.g. --data hf:cornell-movie-review-data/rotten_tomatoes:test")
    return name.strip(), (split.strip() or None)


def _load(name: str, split: str | None):
    try:
        import datasets
    except ImportError:
        raise RlgfError("--data hf:… needs the datasets library", "pip install datasets") from None
    local = Path(name).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
            data = datasets.load_from_disk(str(local))
            if split and hasattr(data, "keys") and split not in data:
                raise RlgfError(f"hf:{name} has no split {split!r} (its splits: {', '.join(data.keys())})",
                                f"pass one of them after the colon, or none for all: --data hf:{name}")
            return data[split] if split else data
        if local.exists():
            return datasets.load_dataset(str(local), split=split)
        with offline_unless_reachable():
            return datasets.load_dataset(name, split=split)
    except RlgfError:
        raise
    except (KeyError, ValueError) as exc:
        raise RlgfError(f"hf:{name}: {exc}", "check the split name (e.g. train, validation, test)") from None
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, bad files: datasets raises many types
        raise RlgfError(f"could not load the dataset hf:{name}{':' + split if split else ''}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        "check the name, or use a local JSONL/CSV/Parquet file (offline, only datasets already "
                        "in the cache load)") from None


def hub_rows(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    from tasks.prompts import SPLIT_ALIASES

    name, split = parse_spec(spec)
    data = _load(name, split)
    parts = [(split, data)] if split or not hasattr(data, "items") else list(data.items())
    if not split:  # the dataset's own splits; others (IMDB's "unsupervised"…) are left out
        parts = [(part, rows) for part, rows in parts if str(part).lower() in SPLIT_ALIASES] or parts
    n = 0
    for part, rows in parts:
        for row in rows:
            n += 1
            row = dict(row)
            if part is not None and not split and "split" not in row:
                row["split"] = part
            yield n, row
