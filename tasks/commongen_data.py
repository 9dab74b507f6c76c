"""CommonGen's data: concept sets with their references, from a JSON lines, CSV or Parquet file,
a ``datasets`` ``save_to_disk`` folder, or the hub (see :mod:`tasks.commongen` for the formats
and how splits are made)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from backends.errors import RlgfError

from tasks.base import SPLITS
from tasks.jsonl import iter_jsonl
from tasks.table_rows import TABLE_SUFFIXES

_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "dev": "val", "test": "test"}


@dataclass
class ConceptSet:
    concepts: tuple[str, ...]
    targets: list[str]
    first_line: int = 0


def _concepts(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c.strip() for c in value):
        raise RlgfError(f"{where}: \"concepts\" must be a non-empty list of strings")
    return tuple(c.strip() for c in value)


def _targets(row: dict, where: str) -> list[str]:
    if "targets" in row:
        value = row["targets"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise RlgfError(f"{where}: \"targets\" must be a list of strings")
        return [" ".join(t.split()) for t in value if t.strip()]
    if "target" in row:
        if not isinstance(row["target"], str):
            raise RlgfError(f"{where}: \"target\" must be a string")
        text = " ".join(row["target"].split())
        return [text] if text else []
    raise RlgfError(f"{where}: missing field \"targets\" (or \"target\")",
                    hint='each line needs {"concepts": [...], "targets": [...]} or {"concepts": [...], "target": "..."}')  # fmt: skip


def read_jsonl(path: Path, seed: int = 42) -> dict[str, list[ConceptSet]]:
    """Concept sets per split from a JSON lines file (see the module docstring)."""
    return sets_from_rows(iter_jsonl(path, 'with "concepts" and "targets"',
                                     'each line needs {"concepts": [...], "targets": [...]}'), path, seed)


#: what a CSV, Parquet or saved-dataset --data needs, said when a column is missing
_TABLE_HINT = ('commongen --data takes columns "concepts" (a list, or words separated by spaces) and "targets" '
               '(a list of sentences) or "target" (one sentence), optionally "split" (train, validation, test)')


def read_table(path: Path, seed: int = 42) -> dict[str, list[ConceptSet]]:
    """As :func:`read_jsonl`, from a CSV/TSV or Parquet file or a ``datasets`` ``save_to_disk``
    folder (the hub's ``common_gen`` saved to disk fits: a ``DatasetDict``'s split names are the
    rows' splits, and its test rows, without targets, are skipped). A CSV cell holding a JSON list
    (``["dog", "frisbee"]``) is that list."""
    from tasks.table_rows import check_columns, table_rows

    columns, rows = table_rows(path)
    check_columns(path, columns, [("concepts",), ("targets", "target")], _TABLE_HINT)
    text_cells = path.suffix.lower() in (".csv", ".tsv") and not path.is_dir()
    return sets_from_rows(((n, where, _list_cells(row) if text_cells else row) for n, where, row in rows), path, seed)


def _list_cells(row: dict) -> dict:
    """A CSV row's ``concepts``/``targets`` cells that hold a JSON list, as that list."""
    out = dict(row)
    for key in ("concepts", "targets"):
        value = out.get(key)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                pass  # read as text: a concepts cell splits on spaces, a targets cell is one sentence
    return out


def sets_from_rows(rows, path: Path, seed: int = 42) -> dict[str, list[ConceptSet]]:
    """Concept sets per split from ``(number, where, row)`` rows (see the module docstring)."""
    groups: dict[str, dict[tuple, ConceptSet]] = {}
    with_split = without_split = 0
    for number, where, row in rows:
        if "concepts" not in row:
            raise RlgfError(f"{where}: missing field \"concepts\"",
                            hint='each line needs {"concepts": [...], "targets": [...]}')  # fmt: skip
        concepts = _concepts(row["concepts"], where)
        targets = _targets(row, where)
        split = row.get("split")
        if split is None:
            without_split += 1
            name = "all"
        else:
            name = _SPLIT_NAMES.get(str(split).strip().lower())
            if name is None:
                raise RlgfError(f"{where}: split {split!r} is not train, validation or test")
            with_split += 1
        if with_split and without_split:
            raise RlgfError(f"{where}: some rows have a \"split\" field and some do not",
                            hint="give every row a split, or none")  # fmt: skip
        if not targets:
            continue
        key = tuple(sorted(c.lower() for c in concepts))
        group = groups.setdefault(name, {}).get(key)
        if group is None:
            groups[name][key] = ConceptSet(concepts, list(targets), number)
        else:
            group.targets.extend(targets)
    if "all" in groups:
        sets = list(groups["all"].values())
        if len(sets) < 3:
            raise RlgfError(f"{path} has {len(sets)} concept sets with targets: a train/val/test split needs at least 3",
                            hint='add rows, or give each a "split"')  # fmt: skip
        order = list(range(len(sets)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(0.1 * len(sets)))
        n_test = max(1, round(0.1 * len(sets)))
        n_train = len(sets) - n_val - n_test
        return {
            "train": [sets[i] for i in order[:n_train]],
            "val": [sets[i] for i in order[n_train : n_train + n_val]],
            "test": [sets[i] for i in order[n_train + n_val :]],
        }
    out = {name: list(groups.get(name, {}).values()) for name in SPLITS}
    if not out["test"]:
        out["test"] = out["val"]
    if not out["val"]:
        out["val"] = out["test"]
    if not any(out.values()):
        raise RlgfError(f"{path} has no concept sets with targets", hint='add rows with "concepts" and "targets"')
    return out  # a split may be empty: evaluation needs no train rows (see CommonGenTask.examples)


def load_hf_common_gen() -> dict[str, list[ConceptSet]]:
    """``common_gen`` from the Hugging Face hub: train → train, validation → val and test."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise RlgfError(
            "the commongen task needs the `datasets` package to fetch CommonGen from the Hugging Face hub",
            hint="`pip install datasets` (online), or pass --data PATH to a JSONL file",
        ) from None
    try:
        from tasks.hub_rows import offline_unless_reachable

        with offline_unless_reachable():
            data = load_dataset("common_gen")
    except Exception as exc:
        raise RlgfError(
            f"could not load the common_gen dataset from the Hugging Face hub: {exc}",
            hint="check the network, or pass --data PATH to a JSONL file",
        ) from exc
    return common_gen_from_hub(data)


def common_gen_from_hub(data) -> dict[str, list[ConceptSet]]:
    """Concept sets of the hub's ``common_gen`` (rows of concept_set_idx, concepts, target)."""
    out = {}
    for hub, name in (("train", "train"), ("validation", "val")):
        sets: dict = {}
        for i, row in enumerate(data[hub]):
            target = " ".join(str(row["target"]).split())
            group = sets.setdefault(row["concept_set_idx"], ConceptSet(tuple(row["concepts"]), [], i))
            if target:
                group.targets.append(target)
        out[name] = [s for s in sets.values() if s.targets]
    out["test"] = out["val"]
    return out


_CACHE: dict[tuple, dict[str, list[ConceptSet]]] = {}


def load_splits(data: Path | None, seed: int) -> dict[str, list[ConceptSet]]:
    if data is None:
        key: tuple = ("hf:common_gen",)
    else:
        stat = data.stat()
        key = (str(data.resolve()), stat.st_size, stat.st_mtime_ns, seed)
    if key not in _CACHE:
        if data is None:
            _CACHE[key] = load_hf_common_gen()
        elif data.is_dir() or data.suffix.lower() in TABLE_SUFFIXES:  # (the task refuses other folders)
            _CACHE[key] = read_table(data, seed)
        else:
            _CACHE[key] = read_jsonl(data, seed)
    return _CACHE[key]
