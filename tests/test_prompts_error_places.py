"""An error in a prompts file names where the bad row is as its format numbers rows: a line of a
JSON Lines or CSV file (the header is line 1), a row of a Parquet file (from 1)."""

import csv
import json

import pytest

from backends.errors import RlgfError
from tasks.prompts import PromptsTask

ROWS = [{"prompt": "a fine film", "split": "train"}, {"prompt": "a dull one", "split": "train"},
        {"prompt": "what a mess", "split": "tset"}]


def _error(path) -> str:
    with pytest.raises(RlgfError) as err:
        PromptsTask(data=path, reward_url="http://127.0.0.1:9/").examples("train")
    return err.value.message


def test_a_bad_row_is_named_by_line_or_by_row(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    assert _error(jsonl) == f"{jsonl}, line 3: unknown split 'tset'"
    assert _error(f"hf:{jsonl}") == f"hf:{jsonl}, line 3: unknown split 'tset'"  # hf:FILE is the file, by line
    table = tmp_path / "p.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["prompt", "split"])
        writer.writeheader()
        writer.writerows(ROWS)
    assert _error(table) == f"{table}, line 4: unknown split 'tset'"
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({k: [r[k] for r in ROWS] for k in ("prompt", "split")}), parquet)
    assert _error(parquet) == f"{parquet}, row 3: unknown split 'tset'"
    assert _error(f"hf:{parquet}") == f"hf:{parquet}, row 3: unknown split 'tset'"
    pq.write_table(pa.table({"prompt": ["ok", "  "]}), parquet)  # a blank prompt, row 2
    assert _error(parquet).startswith(f"{parquet}, row 2: 'prompt'")
