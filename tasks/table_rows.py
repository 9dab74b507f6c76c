"""Rows of tabular task data that is not JSON Lines: CSV (or tab-separated), Parquet, a JSON
array, and a ``datasets`` ``save_to_disk`` folder.

:mod:`tasks.prompts` reads its ``--data`` through these readers; ``imdb`` and ``commongen`` read
their ``--data`` through :func:`table_rows` when it is not a JSON Lines file (or, for imdb, an
``aclImdb`` folder). Every reader yields ``(number, row)`` pairs: the line an editor shows for
text files, the row (from 1) for Parquet and datasets. Problems are one
:class:`~backends.errors.RlgfError` naming the file (and line).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from backends.errors import RlgfError

#: the file types :func:`table_rows` reads (JSON Lines is each task's own reader)
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
#: the files ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write into their folder
SAVED_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_MARKERS)


def place(path, n: int) -> str:
    """Where row ``n`` of ``path`` is, for an error: ``PATH, line N`` in a file read line by line
    (JSON Lines, JSON, CSV, text), ``PATH, row N`` in a Parquet file or a dataset (``hf:``, a
    ``save_to_disk`` folder), which number rows from 1."""
    text = str(path)
    local = Path(text[3:]).expanduser() if text.startswith("hf:") else Path(path)
    if text.startswith("hf:") and not local.is_file():  # a hub dataset or a dataset folder
        by_row = True
    else:  # hf:FILE is the file itself, read as --data FILE reads it
        by_row = local.suffix.lower() == ".parquet" or is_saved_dataset(local)
    return f"{path}, {'row' if by_row else 'line'} {n}"


def not_utf8(path: Path, exc: UnicodeDecodeError) -> RlgfError:
    """The error for a data file that is not UTF-8; it names UTF-16 (what Windows tools write as
    "Unicode": PowerShell's ``>``, Notepad) when the file starts with its byte-order mark."""
    try:
        with open(path, "rb") as fh:
            utf16 = fh.read(2) in _UTF16_BOMS
    except OSError:
        utf16 = False
    reason = "it is UTF-16, by its byte-order mark" if utf16 else \
        f"byte 0x{exc.object[exc.start]:02x} cannot be decoded"
    return RlgfError(f"{path}: not UTF-8 text ({reason})", "save the file as UTF-8")


# -- CSV ------------------------------------------------------------------------------
def _raise_field_limit() -> None:
    """csv's default refuses a field over 128 KiB (a long document in one cell) as 'field larger
    than field limit', which reads like a broken file; allow any field that fits in memory."""
    limit = 2**31 - 1  # the largest a C long takes everywhere (sys.maxsize overflows on Windows)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _delimiter(header: str, suffix: str) -> str:
    """The field separator of a CSV file, read from its header line: ``,``, or tab or ``;`` (what
    spreadsheets write in locales whose decimal mark is a comma) when the header has no comma."""
    outside = "".join(part for i, part in enumerate(header.split('"')) if i % 2 == 0)  # not in quotes
    if suffix == ".tsv" and "\t" in outside:
        return "\t"
    for candidate in (",", "\t", ";"):
        if candidate in outside:
            return candidate
    return "\t" if suffix == ".tsv" else ","


def csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of a CSV (or TSV) file with a header line; blank lines are skipped."""
    _raise_field_limit()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        delimiter = _delimiter(first, path.suffix.lower())
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        # strict: a quote left open must not swallow the rest of the file
        try:
            header = [name.strip() for name in next(reader, [])]
            twice = sorted({name for name in header if name and header.count(name) > 1})
            if twice:  # a row's dict would keep the last such column and drop the others unseen
                raise RlgfError(f"{path}, line 1: the header names {', '.join(map(repr, twice))} more than once",
                                "give each column its own name")
            for cells in reader:
                if not cells:  # a blank line
                    continue
                if len(cells) != len(header):
                    raise RlgfError(f"{path}, line {reader.line_num}: {len(cells)} fields, the header names "
                                    f"{len(header)} ({', '.join(header)})",
                                    f"quote a field that holds a {_NAMES[delimiter]}: "
                                    f"\"Hello{delimiter} my friend\"")
                yield reader.line_num, dict(zip(header, cells))
        except csv.Error as exc:
            raise RlgfError(f"{path}, line {reader.line_num}: not valid CSV ({exc})",
                            "check the quotes: a quoted field must be closed, and a closing quote followed by a "
                            "comma or the end of the line") from None


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's header line."""
    _raise_field_limit()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
        try:
            return [name.strip() for name in next(csv.reader([first], delimiter=_delimiter(first, path.suffix.lower())), [])]
        except csv.Error:
            return []


# -- Parquet ----------------------------------------------------------------------------
def _parquet_table(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RlgfError(f"{path}: reading Parquet needs pyarrow", "pip install pyarrow, or convert it to JSONL") from None
    try:
        return pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise RlgfError(f"{path}: not a readable Parquet file ({exc})",
                        "check that the file was copied whole, or pass it as JSONL or CSV") from None


def parquet_rows(path: Path, table=None) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, row in enumerate((table if table is not None else _parquet_table(path)).to_pylist(), 1):
        yield n, row


# -- a JSON array -------------------------------------------------------------------------
def starts_json_array(path: Path) -> bool:
    """Whether ``path`` is a ``.json`` file whose first character that is not white space (or a
    byte-order mark) is ``[``: one JSON array of rows (what ``json.dump`` of a list writes), not
    JSON Lines (a ``.jsonl`` file is JSON Lines by its name, whatever its first line holds)."""
    if path.suffix.lower() != ".json":
        return False
    with path.open(encoding="utf-8-sig") as fh:
        while chunk := fh.read(4096):
            text = chunk.lstrip()
            if text:
                return text.startswith("[")
    return False


def json_array_rows(path: Path, hint: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of a JSON file holding one array of objects (``[{...}, {...}]``), each row
    numbered by the line its object starts on."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()

    seen = [0, 1]  # (position, its line): rows come in order, so count the newlines since the last one

    def line_of(pos: int) -> int:
        last, line = seen if pos >= seen[0] else (0, 1)
        seen[:] = [pos, line + text.count("\n", last, pos)]
        return seen[1]

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        return pos

    pos = skip(0) + 1  # past "["
    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise RlgfError(f"{path}, line {line_of(exc.pos)}: not valid JSON ({exc.msg})", hint) from None
        if not isinstance(row, dict):
            raise RlgfError(f"{path}, line {line_of(pos)}: a JSON {type(row).__name__} in the array, not an object", hint)
        yield line_of(pos), row
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if not text[pos + 1:].strip():
                return
            raise RlgfError(f"{path}, line {line_of(skip(pos + 1))}: not valid JSON (more text after the array's "
                            "closing ']')", hint)
        raise RlgfError(f"{path}, line {line_of(pos)}: not valid JSON (expected ',' or ']' after an object)", hint)


# -- a datasets save_to_disk folder ------------------------------------------------------------
def _load_saved(path: Path):
    try:
        import datasets
    except ImportError:
        raise RlgfError(f"{path} is a folder saved by the datasets library, which is not installed",
                        'pip install datasets (or "rlgf[hub]"), or export the rows to a JSON Lines, CSV or '
                        "Parquet file") from None
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a damaged folder
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise RlgfError(f"{path}: not a readable saved dataset ({type(exc).__name__}: {first})",
                        "pass the folder that Dataset.save_to_disk or DatasetDict.save_to_disk wrote") from None


def saved_dataset(path: Path) -> tuple[list[str], list[tuple[str | None, Any]]]:
    """``(columns, [(split name or None, rows), ...])`` of a ``save_to_disk`` folder: a
    ``DatasetDict``'s splits by name, a single ``Dataset`` as one part without a name."""
    data = _load_saved(path)
    parts = list(data.items()) if hasattr(data, "items") else [(None, data)]
    columns = list(dict.fromkeys(c for _, part in parts for c in part.column_names))
    return columns, parts


def saved_dataset_rows(path: Path, parts=None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row, row dict)`` of a ``save_to_disk`` folder (or of its ``parts``, from
    :func:`saved_dataset`); a ``DatasetDict``'s rows without a ``split`` column get their split's
    name (``train``, ``validation``, ``test``…)."""
    if parts is None:
        _, parts = saved_dataset(path)
    n = 0
    for name, rows in parts:
        for row in rows:
            n += 1
            row = dict(row)
            if name is not None and row.get("split") in (None, ""):
                row["split"] = name
            yield n, row


# -- any of them ----------------------------------------------------------------------------
def table_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, str, dict[str, Any]]]]:
    """``(columns, rows)`` of a CSV/TSV or Parquet file or a ``save_to_disk`` folder, rows as
    ``(number, "PATH line N" or "PATH row N", row)``. An empty ``split`` cell counts as none."""
    suffix = path.suffix.lower()
    if is_saved_dataset(path):  # each read once: the columns and the rows come from one load
        columns, parts = saved_dataset(path)
        source, unit = saved_dataset_rows(path, parts), "row"
    elif suffix == ".parquet":
        table = _parquet_table(path)
        columns, source, unit = list(table.column_names), parquet_rows(path, table), "row"
    elif suffix in (".csv", ".tsv"):
        try:
            columns = csv_header(path)
        except UnicodeDecodeError as exc:
            raise not_utf8(path, exc) from None
        source, unit = csv_rows(path), "line"
    else:
        raise RlgfError(f"{path}: not a CSV, TSV or Parquet file, nor a saved dataset folder")

    def rows():
        try:
            for number, row in source:
                if row.get("split") == "":
                    del row["split"]
                yield number, f"{path} {unit} {number}", row
        except UnicodeDecodeError as exc:
            raise not_utf8(path, exc) from None

    return columns, rows()


def check_columns(path: Path, columns: list[str], needed: list[tuple[str, ...]], what: str) -> None:
    """Raise one :class:`RlgfError` when ``columns`` lack any of ``needed`` (each a tuple of
    names, one of which will do); ``what`` says in the hint what the data needs."""
    for names in needed:
        if not any(name in columns for name in names):
            wanted = " or ".join(repr(n) for n in names)
            near = [c for c in columns if str(c).strip().lower() in names]
            also = f"; rename {near[0]!r} to {names[0]!r} (names are case-sensitive)" if near else ""
            raise RlgfError(f"{path}: no {wanted} column (its columns: {', '.join(map(str, columns)) or 'none'})",
                            f"{what}{also}")
