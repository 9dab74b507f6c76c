"""Reading task data files of JSON lines, with errors that name the file and line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from backends.errors import RlgfError


def iter_jsonl(path: Path, shape: str, hint: str) -> Iterator[tuple[int, str, dict]]:
    """``(line number, "PATH line N", row)`` for each non-blank line holding a JSON object (or
    each object of a file that holds one JSON array of them).

    ``shape`` describes the expected object in errors; ``hint`` says what each line needs.
    A missing or unreadable file, bad JSON, a non-object row, non-UTF-8 bytes and a file
    without rows all raise :class:`RlgfError` naming the file (and line).
    """
    from tasks.table_rows import json_array_rows, not_utf8, starts_json_array

    try:
        if starts_json_array(path):  # one JSON array of rows (json.dump of a list), not JSON Lines
            for number, row in json_array_rows(path, f"--data takes JSON Lines here, or one JSON array: {hint}"):
                yield number, f"{path} line {number}", row
            return
    except FileNotFoundError:
        raise RlgfError(f"data file not found: {path}", hint="pass an existing file to --data") from None
    except OSError as exc:
        raise RlgfError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise RlgfError(not_utf8(path, exc).message,
                        hint=f"--data reads a file without a .csv, .tsv or .parquet suffix as JSON Lines text "
                             f"(not Parquet or Arrow): {hint}") from None
    try:
        handle = open(path, encoding="utf-8-sig")  # -sig: a byte-order mark (Notepad's, Excel's) is not text
    except FileNotFoundError:
        raise RlgfError(f"data file not found: {path}", hint="pass an existing file to --data") from None
    except OSError as exc:
        raise RlgfError(f"cannot read {path}: {exc}") from exc
    rows = 0
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                rows += 1
                where = f"{path} line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RlgfError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})",
                                    hint=f"--data takes JSON Lines here (or a .csv, .tsv or .parquet file): "
                                         f"{hint}") from None
                if not isinstance(row, dict):
                    raise RlgfError(f"{where}: expected an object {shape}")
                yield number, where, row
        except UnicodeDecodeError as exc:
            raise RlgfError(not_utf8(path, exc).message,
                            hint=f"--data reads a file without a .csv, .tsv or .parquet suffix as JSON Lines text "
                                 f"(not Parquet or Arrow): {hint}") from None
    if rows == 0:
        raise RlgfError(f"{path} is empty (line 1: no JSON rows)", hint=hint)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars for the duration (restored after)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
