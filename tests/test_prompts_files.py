"""Prompts files as people write them: references read row by row, CSV cells holding JSON lists,
a byte-order mark, names that differ in case or spaces; rows that cannot be read are one [error]."""

from __future__ import annotations

import json
import re

import pytest

from backends.errors import RlgfError
from tasks.prompts import PromptsTask


def task_of(path, text: str, **options) -> PromptsTask:
    path.write_text(text, encoding="utf-8")
    return PromptsTask(data=path, **options)


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_references_are_read_row_by_row(tmp_path):
    task = task_of(tmp_path / "p.jsonl", jsonl(
        {"prompt": "no reference here", "split": "train"},
        {"prompt": "one", "reference": "ref one", "split": "train"},
        {"prompt": "two", "references": ["ref a", "ref b"], "split": "train"},
    ))
    assert [ex.references for ex in task.examples("train")] == [(), ("ref one",), ("ref a", "ref b")]
    assert [ex.target for ex in task.bc_examples()] == ["ref one", "ref a"]


def test_csv_cells_may_hold_json_lists_and_headers_may_differ_in_case_and_spaces(tmp_path):
    task = task_of(tmp_path / "refs.csv", 'Prompt, References,split\nfirst,"[""a"", ""b""]",test\n'
                                          'second,just one text,test\n')
    assert [(ex.prompt, ex.references) for ex in task.examples("test")] == [("first", ("a", "b")),
                                                                            ("second", ("just one text",))]
    chat = task_of(tmp_path / "chat.csv", 'messages,reference,split\n'
                                          '"[{""role"": ""user"", ""content"": ""hi""}]",ok,test\n')
    (ex,) = chat.examples("test")
    assert ex.meta["messages"] == ({"role": "user", "content": "hi"},) and ex.references == ("ok",)


@pytest.mark.parametrize("name, text", [
    ("bom.jsonl", "\ufeff" + jsonl({"prompt": "hello", "split": "test"})),
    ("bom.csv", "\ufeffprompt,split\nhello,test\n"),
])
def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path, name, text):
    assert [ex.prompt for ex in task_of(tmp_path / name, text).examples("test")] == ["hello"]


@pytest.mark.parametrize("name, text, message", [
    ("comma.csv", "prompt,reference\nHello, my friend,a greeting\nPrompt 2,ref 2\n",
     "line 2: 3 fields, the header names 2 (prompt, reference)"),
    ("short.csv", "prompt,reference,split\nHello,there\n", "line 2: 2 fields, the header names 3"),
    ("surrogate.jsonl", '{"prompt": "fine"}\n{"prompt": "emoji cut \\ud83d here"}\n',
     "line 2: 'prompt' holds '\\ud83d', half of a UTF-16 pair"),
    ("surrogate-ref.jsonl", '{"prompt": "fine", "references": ["ok", "bad \\udc00"]}\n', "line 1: 'references'"),
])
def test_rows_that_cannot_be_read_are_refused_with_their_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(RlgfError, match="^" + re.escape(f"{path}, {message}")):
        PromptsTask(data=path).splits()


def test_columns_named_by_the_user_keep_their_names_and_both_reference_columns_mix_in_csv(tmp_path):
    task = task_of(tmp_path / "named.csv", "Prompt,Reference,split\nhello,hi there,test\n",
                   prompt_field="Prompt", reference_field="Reference")
    assert [(ex.prompt, ex.references) for ex in task.examples("test")] == [("hello", ("hi there",))]
    mixed = task_of(tmp_path / "mixed.csv", 'prompt,reference,references,split\none,ref one,,test\n'
                                            'two,,"[""a"", ""b""]",test\n')
    assert [ex.references for ex in mixed.examples("test")] == [("ref one",), ("a", "b")]


def test_a_named_reference_column_may_be_missing_from_some_rows_but_not_all(tmp_path):
    text = jsonl({"prompt": "a", "answer": "x", "split": "test"}, {"prompt": "b", "split": "test"})
    task = task_of(tmp_path / "p.jsonl", text, reference_field="answer")
    assert [ex.references for ex in task.examples("test")] == [("x",), ()]
    with pytest.raises(RlgfError, match="no row has a 'solution' field"):
        task_of(tmp_path / "q.jsonl", text, reference_field="solution").splits()
