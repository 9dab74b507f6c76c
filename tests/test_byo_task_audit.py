"""Bring-your-own-task audit: the data files, rewards and plug-ins a new user brings.

Prompts files as people write them (a ``.json`` array, semicolon or tab separated CSV, a
``.txt`` of prompts, a long CSV cell, a UTF-16 file, a ``Split`` column, a CSV without a
header, a ``save_to_disk`` folder, ``hf:FILE``); Python rewards that exit, print, or import
something missing; a plug-in whose name clashes; and ``--data`` CSV / Parquet / ``save_to_disk``
for the built-in ``imdb`` and ``commongen`` tasks."""

from __future__ import annotations

import csv
import json
import logging
import sys
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from tasks.prompts import PromptsTask

runner = CliRunner()


def _write_csv(path, header, rows, delimiter=","):
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


PROMPTS = [f"Write about item {i}:" for i in range(20)]


# -- prompts files ---------------------------------------------------------------------------
def test_a_json_file_holding_one_array_is_read_and_its_errors_name_the_line(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": p, "reference": "ok"} for p in PROMPTS], indent=2), encoding="utf-8")
    task = PromptsTask(data=path)
    assert sum(len(v) for v in task.splits().values()) == 20
    assert sorted(ex.prompt for v in task.splits().values() for ex in v) == sorted(PROMPTS)
    assert task.examples("train")[0].references == ("ok",)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"prompt": "a"},\n  "just text"\n]\n', encoding="utf-8")
    with pytest.raises(RlgfError, match=r"bad.json, line 3: a JSON str in the array, not an object"):
        PromptsTask(data=bad).splits()
    trailing = tmp_path / "trailing.json"
    trailing.write_text('[{"prompt": "a"}]\n{"prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(RlgfError, match=r"line 2: not valid JSON \(more text after the array"):
        PromptsTask(data=trailing).splits()


def test_a_jsonl_file_is_json_lines_whatever_its_first_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('[1, 2]\n{"prompt": "a"}\n', encoding="utf-8")
    with pytest.raises(RlgfError, match="line 1: a JSON list, not an object"):
        PromptsTask(data=path).splits()


@pytest.mark.parametrize("name, delimiter", [("semicolons.csv", ";"), ("tabs.csv", "\t"), ("tabs.tsv", "\t")])
def test_semicolon_and_tab_separated_files_are_read(tmp_path, name, delimiter):
    path = _write_csv(tmp_path / name, ["prompt", "reference"], [[p, "a, b"] for p in PROMPTS], delimiter)
    task = PromptsTask(data=path)
    examples = [ex for v in task.splits().values() for ex in v]
    assert sorted(ex.prompt for ex in examples) == sorted(PROMPTS)
    assert {ex.references for ex in examples} == {("a, b",)}


def test_a_csv_cell_over_128_kib_is_read(tmp_path):
    long = "word " * 40_000  # 200,000 characters: csv's default limit is 131,072
    path = _write_csv(tmp_path / "long.csv", ["prompt"], [[long]] + [[p] for p in PROMPTS])
    prompts = {ex.prompt for v in PromptsTask(data=path).splits().values() for ex in v}
    assert long in prompts and len(prompts) == 21


@pytest.mark.parametrize("name", ["u16.csv", "u16.jsonl"])
def test_a_utf16_file_is_named_as_such(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(("prompt\nhello\n" if name.endswith(".csv") else '{"prompt": "hello"}\n').encode("utf-16"))
    with pytest.raises(RlgfError) as err:
        PromptsTask(data=path).splits()
    assert "not UTF-8 text (it is UTF-16, by its byte-order mark)" in err.value.message
    assert err.value.hint == "save the file as UTF-8"


def test_split_and_difficulty_columns_in_any_case_are_read(tmp_path):
    path = _write_csv(tmp_path / "p.csv", ["Prompt", "Split", "Difficulty"],
                      [[p, "test" if i < 5 else "train", i] for i, p in enumerate(PROMPTS)])
    task = PromptsTask(data=path)
    assert len(task.examples("test")) == 5 and len(task.examples("train")) == 15
    assert task.prompt_difficulty(task.examples("test")).values == (0, 1, 2, 3, 4)


def test_a_csv_without_a_header_line_is_told_so(tmp_path):
    path = tmp_path / "noheader.csv"
    path.write_text("".join(f"{p}\n" for p in PROMPTS), encoding="utf-8")
    with pytest.raises(RlgfError) as err:
        PromptsTask(data=path).splits()
    assert "no 'prompt' field" in err.value.message
    assert "first line is its header" in err.value.hint


def test_a_csv_header_that_names_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("prompt,reference,prompt,,\n" + "".join(f"{p},r,other,,\n" for p in PROMPTS), encoding="utf-8")
    with pytest.raises(RlgfError) as err:
        PromptsTask(data=path).splits()
    assert err.value.message == f"{path}, line 1: the header names 'prompt' more than once"
    assert "its own name" in err.value.hint
    path.write_text("prompt,reference,,\n" + "".join(f"{p},r,,\n" for p in PROMPTS), encoding="utf-8")
    assert sum(len(v) for v in PromptsTask(data=path).splits().values()) == len(PROMPTS)  # unnamed columns may repeat


def test_a_text_file_is_one_prompt_per_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\ufeff" + "\n\n".join(PROMPTS) + "\r\n  \n", encoding="utf-8")
    task = PromptsTask(data=path)
    examples = [ex for v in task.splits().values() for ex in v]
    assert sorted(ex.prompt for ex in examples) == sorted(PROMPTS)
    assert all(ex.references == () for ex in examples)


def test_a_saved_dataset_folder_and_hf_file_are_read(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": p, "reference": "r"} for p in PROMPTS]
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:15]),
                          "test": datasets.Dataset.from_list(rows[15:])}).save_to_disk(str(folder))
    task = PromptsTask(data=folder)  # without hf:, as a file is given
    assert [ex.prompt for ex in task.examples("test")] == PROMPTS[15:]
    assert len(task.examples("train")) == 15
    with pytest.raises(RlgfError) as err:
        PromptsTask(data=f"hf:{folder}:validation").splits()
    assert err.value.message == f"hf:{folder} has no split 'validation' (its splits: train, test)"
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = PromptsTask(data=f"hf:{jsonl}")  # a file given with hf: is that file
    assert sorted(ex.prompt for v in task.splits().values() for ex in v) == sorted(PROMPTS)


def test_hf_without_a_name_is_told_so(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RlgfError, match="--data hf: needs a dataset name"):
        PromptsTask(data="hf:").splits()


# -- Python rewards ----------------------------------------------------------------------------
REWARDS = '''
import sys

def exits(prompts, completions, references):
    sys.exit(3)

def chatty(prompts, completions, references):
    print("scoring", len(completions))
    return [0.5] * len(completions)
'''


def test_a_reward_that_calls_sys_exit_is_one_error(tmp_path, tiny_causal_dir):
    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS, encoding="utf-8")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    result = runner.invoke(app, ["train", "--task", "prompts", "--data", str(data), "--reward", f"{rewards}:exits",
                                 "--learner", str(tiny_causal_dir), "--iterations", "1", "--episodes", "2",
                                 "--max-new-tokens", "2", "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"])
    line = _error(result)
    assert f"custom reward {rewards}:exits called sys.exit(3)" in line


def test_a_reward_module_that_exits_at_import_is_one_error(tmp_path):
    from tasks.custom_reward import CustomReward

    path = tmp_path / "script.py"
    path.write_text('import sys\nsys.exit("usage: script.py FILE")\ndef reward(p, c, r):\n    return []\n')
    with pytest.raises(RlgfError) as err:
        CustomReward(f"{path}:reward")
    assert "called sys.exit('usage: script.py FILE')" in err.value.message
    assert 'if __name__ == "__main__"' in err.value.hint


def test_a_reward_s_prints_go_to_stderr(tmp_path, capsys):
    from tasks.custom_reward import CustomReward

    path = tmp_path / "chatty.py"
    path.write_text('print("loading my reward")\n' + REWARDS, encoding="utf-8")
    reward = CustomReward(f"{path}:chatty")
    assert reward(["p", "q"], ["a", "b"], [[], []]) == [0.5, 0.5]
    out, err = capsys.readouterr()
    assert out == "" and "loading my reward" in err and "scoring 2" in err


def test_a_reward_module_in_the_current_folder_with_a_missing_import(tmp_path, monkeypatch):
    from tasks.custom_reward import CustomReward

    (tmp_path / "myscore_zz.py").write_text("import not_installed_zz\ndef reward(p, c, r):\n    return []\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "myscore_zz", raising=False)
    with pytest.raises(RlgfError) as err:
        CustomReward("myscore_zz:reward")
    assert "no module named 'myscore_zz'" not in err.value.message
    assert "No module named 'not_installed_zz'" in err.value.message
    assert "install the package that provides 'not_installed_zz'" in err.value.hint


def test_a_reward_file_shadowed_by_a_module_of_its_name(tmp_path, monkeypatch):
    from tasks.custom_reward import CustomReward

    (tmp_path / "signal.py").write_text("def reward(p, c, r):\n    return [0.0] * len(c)\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RlgfError) as err:
        CustomReward("signal:reward")
    import signal

    assert f"signal ({signal.__file__}) has no attribute 'reward'" in err.value.message
    assert "--reward signal.py:reward" in err.value.hint


# -- plug-ins ------------------------------------------------------------------------------------
def test_a_plugin_whose_name_clashes_is_named_with_its_package(monkeypatch, caplog):
    from importlib import metadata

    import tasks.registry as registry

    point = SimpleNamespace(name="imdb", value="zz_pkg.tasks:Mine", dist=SimpleNamespace(name="zz-pkg"))
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [point])
    monkeypatch.setattr(registry, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="tasks.registry"):
        assert registry.registered()["imdb"]["target"] == "tasks.imdb:ImdbTask"
    assert "ignoring the task entry point imdb = zz_pkg.tasks:Mine of zz-pkg" in caplog.text
    assert "rename the entry point" in caplog.text


# -- imdb --data -----------------------------------------------------------------------------------
REVIEWS = [(f"review {i} says the film was {'good' if i % 2 else 'bad'} in every way", i % 2) for i in range(30)]


def _texts(parts):
    return {k: [(r.text, r.label) for r in v] for k, v in parts.items()}


def test_imdb_reads_csv_and_parquet_as_json_lines(tmp_path):
    from tasks.imdb import ImdbTask, load_splits

    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in REVIEWS), encoding="utf-8")
    expected = _texts(load_splits(jsonl, 42))
    table = _write_csv(tmp_path / "r.csv", ["text", "label", "split"],
                       [[t, "pos" if y else "neg", ""] for t, y in REVIEWS])  # an empty split cell: none
    assert _texts(load_splits(table, 42)) == expected
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "r.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in REVIEWS], "label": [y for _, y in REVIEWS]}), parquet)
    assert _texts(load_splits(parquet, 42)) == expected
    assert len(ImdbTask(data=parquet).examples("train")) == len(expected["train"])


def test_imdb_data_with_the_wrong_columns_is_one_error(tmp_path):
    from tasks.imdb import ImdbTask

    table = _write_csv(tmp_path / "r.csv", ["review", "sentiment"], [[t, y] for t, y in REVIEWS])
    with pytest.raises(RlgfError) as err:
        ImdbTask(data=table).examples("train")
    assert err.value.message == f"{table}: no 'text' column (its columns: review, sentiment)"
    assert '"text"' in err.value.hint and '"label"' in err.value.hint
    cased = _write_csv(tmp_path / "cased.csv", ["text", "Label"], [[t, y] for t, y in REVIEWS])
    with pytest.raises(RlgfError) as err:
        ImdbTask(data=cased).examples("train")
    assert "no 'label' column" in err.value.message and "rename 'Label' to 'label'" in err.value.hint


def test_imdb_reads_the_hub_s_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from tasks.imdb import ImdbTask, imdb_parts_from_hub, load_splits, split_parts

    def part(rows):
        return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})

    hub = datasets.DatasetDict({"train": part(REVIEWS[:20]), "test": part(REVIEWS[20:]),
                                "unsupervised": part([("no label here at all", -1)] * 3)})
    folder = tmp_path / "imdb"  # has train/ and test/ folders, as an aclImdb folder does
    hub.save_to_disk(str(folder))
    from_hub = imdb_parts_from_hub(hub)
    assert _texts(load_splits(folder, 42)) == _texts(split_parts(from_hub["train"], from_hub["test"], 42))
    assert len(ImdbTask(data=folder).examples("test")) == 10
    single = tmp_path / "single"  # one Dataset: its rows are split as a file's without a split column
    part(REVIEWS).save_to_disk(str(single))
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in REVIEWS), encoding="utf-8")
    assert [ex.prompt for ex in ImdbTask(data=single).examples("train")] == \
        [ex.prompt for ex in ImdbTask(data=jsonl).examples("train")]


def test_imdb_json_lines_with_a_byte_order_mark_and_unsupervised_rows(tmp_path):
    from tasks.imdb import load_splits

    path = tmp_path / "r.jsonl"
    rows = [{"text": t, "label": y, "split": "train"} for t, y in REVIEWS[:10]]
    rows.append({"text": "an unlabelled review", "label": -1, "split": "unsupervised"})  # as the hub's
    path.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    splits = load_splits(path, 42)
    assert len(splits["train"]) + len(splits["val"]) == 10


# -- commongen --data ---------------------------------------------------------------------------------
SETS = [(["dog", "frisbee", "catch"], ["A dog catches a frisbee.", "The dog caught it."]),
        (["boat", "lake", "row"], ["They row a boat on the lake."]),
        (["guitar", "sing", "stage"], ["She sings with a guitar on stage."]),
        (["cook", "pan", "egg"], ["He cooks an egg in a pan."]),
        (["ball", "kick", "field"], ["Kids kick a ball on the field."])]


def _sets(splits):
    return {k: sorted((tuple(s.concepts), tuple(s.targets)) for s in v) for k, v in splits.items()}


def test_commongen_reads_csv_and_parquet_as_json_lines(tmp_path):
    from tasks.commongen import CommonGenTask
    from tasks.commongen_data import load_splits

    jsonl = tmp_path / "cg.jsonl"
    jsonl.write_text("".join(json.dumps({"concepts": c, "targets": t}) + "\n" for c, t in SETS), encoding="utf-8")
    expected = _sets(load_splits(jsonl, 42))
    words = _write_csv(tmp_path / "words.csv", ["concepts", "targets"], [[" ".join(c), json.dumps(t)] for c, t in SETS])
    assert _sets(load_splits(words, 42)) == expected
    listed = _write_csv(tmp_path / "listed.csv", ["concepts", "target"],
                        [[json.dumps(c), target] for c, t in SETS for target in t])
    assert _sets(load_splits(listed, 42)) == expected
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "cg.parquet"
    pq.write_table(pa.table({"concepts": [c for c, _ in SETS], "targets": [t for _, t in SETS]}), parquet)
    assert _sets(load_splits(parquet, 42)) == expected
    assert len(CommonGenTask(data=parquet, reward="cider_d").examples("train")) == 3


def test_commongen_reads_the_hub_s_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from tasks.commongen import CommonGenTask
    from tasks.commongen_data import common_gen_from_hub

    def part(sets, start):
        rows = [(start + i, c, t) for i, (c, ts) in enumerate(sets) for t in ts]
        return datasets.Dataset.from_dict({"concept_set_idx": [r[0] for r in rows],
                                           "concepts": [r[1] for r in rows], "target": [r[2] for r in rows]})

    hub = datasets.DatasetDict({"train": part(SETS[:3], 0), "validation": part(SETS[3:], 3),
                                "test": part([(["a", "b"], [""])], 9)})  # the hub's test targets are hidden
    folder = tmp_path / "common_gen"
    hub.save_to_disk(str(folder))
    task = CommonGenTask(data=folder, reward="cider_d")
    assert _sets(task.splits()) == _sets(common_gen_from_hub(hub))
    assert [ex.meta["concepts"] for ex in task.examples("test")] == [c for c, _ in SETS[3:]]


def test_commongen_data_with_the_wrong_columns_is_one_error_in_the_cli(tmp_path, tiny_causal_dir):
    table = _write_csv(tmp_path / "cg.csv", ["concept_set", "sentence"], [[" ".join(c), t[0]] for c, t in SETS])
    result = runner.invoke(app, ["eval", "--task", "commongen", "--data", str(table), "--reward", "cider_d",
                                 "--policy", str(tiny_causal_dir), "--limit", "2", "--max-new-tokens", "2",
                                 "--device", "cpu"])
    line = _error(result)
    assert f"{table}: no 'concepts' column (its columns: concept_set, sentence)" in line
    assert '"targets"' in line


def test_a_misspelt_column_is_named_and_other_columns_stay_silent(tmp_path):
    import warnings

    from backends.errors import RlgfWarning
    from tasks.prompts import split_rows

    rows = [(1, {"prompt": "a b c", "refernce": "x", "id": 1}), (2, {"prompt": "d e f", "Splt": "train", "notes": ""})]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split_rows(rows, tmp_path / "p.jsonl")
    texts = sorted(str(w.message) for w in caught if issubclass(w.category, RlgfWarning))
    assert len(texts) == 2
    assert "the column 'Splt' is not read — did you mean 'split'?" in texts[0]
    assert "the column 'refernce' is not read — did you mean 'reference'?" in texts[1]
    with warnings.catch_warnings(record=True) as caught:  # named with --reference-field: read, no warning
        warnings.simplefilter("always")
        split_rows([(1, {"prompt": "a b c", "refernce": "x"})], tmp_path / "p.jsonl", reference_field="refernce")
    assert not [w for w in caught if issubclass(w.category, RlgfWarning)]
