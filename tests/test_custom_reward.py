"""``--reward module:function`` for every task: loading, checking results, errors, the CLI."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from tasks import get_task
from tasks.custom_reward import CustomReward, CustomRewardTask, is_custom_spec, load_custom_reward

runner = CliRunner()

MODULE = textwrap.dedent(
    '''
    import math

    CALLS = []

    def length(prompts, completions, references):
        CALLS.append((list(prompts), list(completions), [list(r) for r in references]))
        return [float(len(c)) for c in completions]

    def numpy_scores(prompts, completions, references):
        import numpy as np
        return np.arange(len(completions), dtype=np.float32)

    def tensor_scores(prompts, completions, references):
        import torch
        return torch.ones(len(completions))

    def too_few(prompts, completions, references):
        return [1.0] * (len(completions) - 1)

    def not_a_list(prompts, completions, references):
        return 3.0

    def strings(prompts, completions, references):
        return ["high"] * len(completions)

    def nan(prompts, completions, references):
        return [math.nan] * len(completions)

    def raises(prompts, completions, references):
        raise KeyError("boom")

    def two_args(prompts, completions):
        return []

    NOT_CALLABLE = 42
    '''
)


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("my_rewards", None)
    importlib.invalidate_caches()
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


@pytest.fixture
def imdb_file(tmp_path):
    path = tmp_path / "imdb.jsonl"
    texts = [f"review number {i} is rather long and has many words in it" for i in range(12)]
    path.write_text("\n".join(json.dumps({"text": t, "label": i % 2}) for i, t in enumerate(texts)))
    return path


def test_spec_syntax():
    assert is_custom_spec("pkg.mod:fn") and is_custom_spec("./r.py:score") and is_custom_spec("m:obj.method")
    assert not is_custom_spec("cider_d") and not is_custom_spec("m:") and not is_custom_spec(":f")


@pytest.mark.parametrize("task_name", ["rotten-tomatoes", "imdb", "commongen"])
def test_every_task_takes_a_custom_reward(task_name, reward_module, imdb_file, tmp_path):
    options = {"reward": f"{reward_module}:length"}
    if task_name == "imdb":
        options["data"] = str(imdb_file)
    if task_name == "commongen":
        cg = tmp_path / "cg.jsonl"
        cg.write_text("\n".join(json.dumps({"concepts": [f"c{i}"], "targets": [f"s {i}", f"t {i}"]}) for i in range(10)))
        options["data"] = str(cg)
    task = get_task(task_name, **options)
    assert task.name == task_name
    ex = task.examples("train")[:3]
    rewards = task.reward([e.prompt for e in ex], ["a", "bb", "ccc"], ex)
    assert rewards == [1.0, 2.0, 3.0]
    import my_rewards

    prompts, completions, references = my_rewards.CALLS[-1]
    assert prompts == [e.prompt for e in ex] and completions == ["a", "bb", "ccc"]
    assert references == [list(e.references) for e in ex]
    assert task.info()["reward"] == f"custom: {reward_module}:length"


def test_a_custom_reward_task_is_still_an_instance_of_its_task(reward_module, imdb_file):
    from tasks.base import Task
    from tasks.imdb import ImdbTask

    plain = get_task("imdb", data=str(imdb_file))
    task = get_task("imdb", data=str(imdb_file), reward=f"{reward_module}:length")
    assert isinstance(task, ImdbTask) and isinstance(task, Task) and isinstance(task, CustomRewardTask)
    assert type(task).__name__ == "ImdbTaskWithCustomReward" and type(task) is type(plain.with_reward(task.custom_reward))
    assert task.max_new_tokens == 48 and task.default_learner == "hf:gpt2" and task.name == "imdb"
    assert type(task).metrics is ImdbTask.metrics and type(task).reward is CustomRewardTask.reward
    with pytest.raises(AttributeError):
        task.no_such_attribute  # noqa: B018 — a typo is an AttributeError, not a lookup on some inner object
    task.max_new_tokens = 12
    assert task.max_new_tokens == 12 and plain.max_new_tokens == 48


def test_with_reward_leaves_the_task_as_it_was(reward_module, imdb_file):
    from tasks.imdb import ImdbTask

    plain = get_task("imdb", data=str(imdb_file))
    custom = plain.with_reward(f"{reward_module}:length")
    assert type(plain) is ImdbTask and plain.custom_reward is None and "custom" not in repr(plain)
    ex = plain.examples("train")[:2]
    assert custom.examples("train")[:2] == ex and custom.reward([e.prompt for e in ex], ["a", "bbb"], ex) == [1.0, 3.0]
    again = custom.with_reward(f"{reward_module}:numpy_scores")  # a second custom reward replaces the first
    assert type(again) is type(custom) and again.reward(["p", "q"], ["a", "b"], ex) == [0.0, 1.0]
    custom.check_reward()  # nothing to check: the custom reward was checked when loaded


@pytest.mark.usefixtures("torch_one_thread")
def test_the_sentiment_metric_stays_the_classifiers(tmp_path, reward_module):
    data, clf = _rt_data_and_classifier(tmp_path)
    task = get_task("rotten-tomatoes", data=str(data), reward_model=str(clf), reward=f"{reward_module}:length")
    ex = task.examples("test")[:2]
    prompts, completions = [e.prompt for e in ex], [" a long continuation", " another one"]
    assert task.reward(prompts, completions, ex) == [float(len(c)) for c in completions]
    classifier = task.reward_model().score([p + c for p, c in zip(prompts, completions)])
    assert task.metrics(prompts, completions, ex)["sentiment"] == pytest.approx(sum(classifier) / 2)


def test_numpy_and_tensor_results_are_accepted(reward_module):
    assert CustomReward(f"{reward_module}:numpy_scores")(["p", "q"], ["a", "b"], [["r"], ["s"]]) == [0.0, 1.0]
    assert CustomReward(f"{reward_module}:tensor_scores")(["p"], ["a"], [["r"]]) == [1.0]


def test_a_file_path_works(tmp_path):
    path = tmp_path / "score_file.py"
    path.write_text("def score(p, c, r):\n    return [0.5] * len(c)\n")
    assert CustomReward(f"{path}:score")(["p"], ["c"], [["r"]]) == [0.5]


@pytest.mark.parametrize(
    "name, message",
    [
        ("too_few", "returned 1 values for 2 completions"),
        ("not_a_list", "returned float, not a list of 2 numbers"),
        ("strings", "returned str 'high' at index 0, not a number"),
        ("nan", "returned nan at index 0"),
        ("raises", "raised KeyError: 'boom'"),
    ],
)
def test_broken_results_are_clear_errors(reward_module, name, message):
    reward = CustomReward(f"{reward_module}:{name}")
    with pytest.raises(RlgfError) as err:
        reward(["p", "q"], ["a", "b"], [["r"], ["s"]])
    assert f"custom reward {reward_module}:{name}" in err.value.message and message in err.value.message


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", "is not callable"),
        ("{mod}:two_args", "cannot be called with three arguments"),
        ("/nonexistent/file.py:f", "file not found"),
        ("not a spec", "bad custom reward"),
    ],
)
def test_import_problems_are_clear_errors(reward_module, spec, message):
    with pytest.raises(RlgfError) as err:
        load_custom_reward(spec.format(mod=reward_module))
    assert message in err.value.message


def test_named_rewards_only_where_a_task_has_them(imdb_file):
    with pytest.raises(RlgfError) as err:
        get_task("imdb", data=str(imdb_file), reward="cider_d")
    assert "imdb has no reward named 'cider_d'" in err.value.message and "module:function" in err.value.hint


def test_cli_broken_reward_fails_before_anything_is_written(tmp_path, imdb_file, tiny_causal_dir):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--task", "imdb", "--data", str(imdb_file), "--learner", str(tiny_causal_dir),
        "--reward-model", str(tmp_path), "--reward", "no_such_module_xyz:score", "--out", str(out), "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 1
    errors = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert len(errors) == 1 and "no module named 'no_such_module_xyz'" in errors[0]
    assert not out.exists()


def _rt_data_and_classifier(tmp_path):
    data = tmp_path / "rt.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"snippet {i} about a film we saw", "label": i % 2}) for i in range(20)))
    from conftest import make_byte_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    tok = make_byte_tokenizer()
    clf = tmp_path / "clf"
    BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(clf)  # fmt: skip
    tok.save_pretrained(clf)
    return data, clf


@pytest.mark.usefixtures("torch_one_thread")
def test_cli_eval_reports_the_custom_reward(tmp_path, reward_module, tiny_causal_dir):
    """It used to be accepted and ignored: eval printed 'reward: custom: …' but never called it."""
    data, clf = _rt_data_and_classifier(tmp_path)
    report, samples = tmp_path / "eval.json", tmp_path / "s.jsonl"
    result = runner.invoke(app, [
        "eval", "--task", "rotten-tomatoes", "--data", str(data), "--reward-model", str(clf),
        "--policy", str(tiny_causal_dir), "--reward", f"{reward_module}:length", "--limit", "3",
        "--max-new-tokens", "4", "--device", "cpu", "--quiet", "--json", str(report), "--samples", str(samples),
    ])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    data_out = json.loads(report.read_text())
    assert data_out["metric_names"] == ["sentiment", "perplexity", "output_perplexity", "reward"]
    (res,) = data_out["results"]
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    lengths = [len(r["completion"]) for r in rows]
    assert res["metrics"]["reward"] == pytest.approx(sum(lengths) / len(lengths))
    assert 0.0 <= res["metrics"]["sentiment"] <= 1.0, "the task's own metrics stay"
    broken = runner.invoke(app, [
        "eval", "--task", "rotten-tomatoes", "--data", str(data), "--reward-model", str(clf),
        "--policy", str(tiny_causal_dir), "--reward", f"{reward_module}:raises", "--limit", "2",
        "--max-new-tokens", "2", "--device", "cpu", "--quiet",
    ])  # fmt: skip
    assert broken.exit_code == 1 and "custom reward my_rewards:raises raised KeyError" in broken.output


@pytest.mark.usefixtures("torch_one_thread")
def test_cli_trains_rotten_tomatoes_on_a_custom_reward(tmp_path, reward_module, tiny_causal_dir, monkeypatch):
    """The task's classifier still loads (its metrics use it), so the test gives it a tiny one."""
    data, clf = _rt_data_and_classifier(tmp_path)
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--task", "rotten-tomatoes", "--data", str(data), "--reward-model", str(clf),
        "--learner", str(tiny_causal_dir), "--reward", f"{reward_module}:length", "--out", str(out),
        "--iterations", "1", "--episodes", "4", "--minibatch-size", "2", "--epochs", "1",
        "--max-new-tokens", "4", "--device", "cpu", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["reward_mean"] > 0  # lengths of the completions, not probabilities
