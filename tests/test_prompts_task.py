"""``--task prompts``: a JSONL or CSV prompts file of the user's, with a Python reward, trains
(PPO and PPO++ with a tiny model) and evaluates; bad files and rewards are one [error] line."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from tasks import get_task
from tasks.prompts import PromptsTask

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")

REWARD = '''
def reward(prompts, completions, references):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]

def broken(prompts, completions, references):
    raise ValueError("the reward service is down")

def short(prompts, completions, references):
    return [0.0]
'''


def rows(n: int = 30, split: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        row = {"prompt": f"Write about item {i}:", "reference": f" item {i} is a fine thing"}
        if split:
            row["split"] = "test" if i < 4 else "val" if i < 8 else "train"
        out.append(row)
    return out


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows()) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "prompts.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["question", "answer", "split"])
        writer.writeheader()
        for r in rows(split=True):
            writer.writerow({"question": r["prompt"], "answer": r["reference"], "split": r["split"]})
    return path


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD, encoding="utf-8")
    return path


def _train(tmp_path, learner, data, reward, *extra, alg="ppo", out="run"):
    args = ["train", "--task", "prompts", "--data", str(data), "--reward", f"{reward}:reward", "--learner",
            str(learner), "--alg", alg, "--iterations", "2", "--episodes", "4", "--epochs", "1", "--max-new-tokens",
            "6", "--device", "cpu", "--lr", "1e-3", "--out", str(tmp_path / out), "--quiet", *extra]
    if alg != "ppo":
        args += ["--guide", str(learner)]
    return runner.invoke(app, args)


def _error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_seeded_split_and_the_file_s_own_split(jsonl, csv_file):
    task = PromptsTask(data=jsonl)
    sizes = {k: len(v) for k, v in task.splits().items()}
    assert sizes == {"train": 24, "val": 3, "test": 3}
    assert PromptsTask(data=jsonl).examples("test") == task.examples("test")  # seeded
    assert {k: len(v) for k, v in PromptsTask(data=jsonl, seed=1).splits().items()} == sizes
    assert PromptsTask(data=jsonl, seed=1).examples("test") != task.examples("test")
    mapped = PromptsTask(data=csv_file, prompt_field="question", reference_field="answer")
    assert {k: len(v) for k, v in mapped.splits().items()} == {"train": 22, "val": 4, "test": 4}
    first = mapped.examples("test")[0]
    assert first.prompt == "Write about item 0:" and first.references == (" item 0 is a fine thing",)
    assert first.target == " item 0 is a fine thing"


@pytest.mark.parametrize("alg", ["ppo", "ppo++"])
def test_jsonl_trains_and_evaluates(tmp_path, tiny_causal_dir, jsonl, reward_file, alg):
    result = _train(tmp_path, tiny_causal_dir, jsonl, reward_file, alg=alg)
    assert result.exit_code == 0, result.output
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2] and all(0 <= m["reward_mean"] <= 1 for m in metrics)
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--task", "prompts", "--data", str(jsonl), "--reward", f"{reward_file}:reward",
                                 "--checkpoint", str(tmp_path / "run" / "final"), "--max-new-tokens", "6",
                                 "--device", "cpu", "--quiet", "--json", str(report)])
    assert result.exit_code == 0, result.output
    got = json.loads(report.read_text())["results"][0]["metrics"]
    assert set(got) == {"reward", "length", "bleu4", "rouge_l", "perplexity", "output_perplexity"}
    assert 0 <= got["reward"] <= 1 and got["perplexity"] > 1


@pytest.mark.parametrize("alg", ["ppo", "ppo++"])
def test_csv_with_mapped_columns_trains_and_evaluates(tmp_path, tiny_causal_dir, csv_file, reward_file, alg):
    result = _train(tmp_path, tiny_causal_dir, csv_file, reward_file, "--prompt-field", "question",
                    "--reference-field", "answer", alg=alg)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task_info"]["splits"] == {"train": 22, "val": 4, "test": 4}
    result = runner.invoke(app, ["eval", "--task", "prompts", "--data", str(csv_file), "--prompt-field", "question",
                                 "--reference-field", "answer", "--reward", f"{reward_file}:reward", "--checkpoint",
                                 str(tmp_path / "run" / "final"), "--max-new-tokens", "6", "--device", "cpu",
                                 "--quiet", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "e.json").read_text())["results"][0]
    assert got["n"] == 4 and {"reward", "bleu4", "rouge_l", "perplexity"} <= set(got["metrics"])


def test_eval_of_a_checkpoint_keeps_the_run_s_data_reward_and_length(tmp_path, tiny_causal_dir, csv_file,
                                                                       reward_file):
    """`rlgf eval -c RUN` with no task flags evaluates as the run trained: its prompts file and
    columns, its reward and its --max-new-tokens (6 here, against the task's 24) — the same numbers
    as with every flag given again; a flag given still wins."""
    result = _train(tmp_path, tiny_causal_dir, csv_file, reward_file, "--prompt-field", "question",
                    "--reference-field", "answer")
    assert result.exit_code == 0, result.output
    final = str(tmp_path / "run" / "final")

    def evaluate(*flags):
        out, samples = (tmp_path / f"{kind}{len(list(tmp_path.glob('e*.json')))}" for kind in ("e", "s"))
        result = runner.invoke(app, ["eval", "--checkpoint", final, "--device", "cpu", "--json", f"{out}.json",
                                     "--samples", f"{samples}.jsonl", *flags])
        assert result.exit_code == 0, result.output
        texts = [json.loads(x)["completion"] for x in open(f"{samples}.jsonl", encoding="utf-8")]
        return result.output, json.loads(open(f"{out}.json", encoding="utf-8").read())["results"][0], texts

    said, bare, bare_texts = evaluate()
    _, explicit, texts = evaluate("--task", "prompts", "--data", str(csv_file), "--prompt-field", "question",
                                  "--reference-field", "answer", "--reward", f"{reward_file}:reward",
                                  "--max-new-tokens", "6")
    assert "reward" in bare["metrics"] and bare["metrics"] == explicit["metrics"] and bare["n"] == 4
    assert bare_texts == texts
    assert "as " in said and "was trained" in said and "max-new-tokens 6" in said
    _, _, longer = evaluate("--max-new-tokens", "12")  # the byte-level tiny model: more tokens, longer texts
    assert sum(map(len, longer)) > sum(map(len, bare_texts))


def test_a_test_only_file_evaluates(tmp_path, tiny_causal_dir, reward_file):
    path = tmp_path / "test_only.jsonl"
    path.write_text("\n".join(json.dumps({**r, "split": "test"}) for r in rows(5)), encoding="utf-8")
    result = runner.invoke(app, ["eval", "--task", "prompts", "--data", str(path), "--reward", f"{reward_file}:reward",
                                 "--policy", str(tiny_causal_dir), "--max-new-tokens", "4", "--device", "cpu",
                                 "--reference", "none", "--quiet", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["results"][0]["n"] == 5


@pytest.mark.parametrize("content, message", [
    ("", "holds no rows"),
    ('{"prompt": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
    ('{"text": "a"}\n', "no 'prompt' field (fields: text)"),
    ('{"prompt": ""}\n', "line 1: 'prompt' (or 'messages') is not a text"),
    ('{"prompt": "a", "split": "holdout"}\n', "unknown split 'holdout'"),
    ('[1, 2]\n', "line 1: a JSON list, not an object"),
])
def test_bad_files_are_one_clear_error(tmp_path, tiny_causal_dir, reward_file, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    line = _error(_train(tmp_path, tiny_causal_dir, path, reward_file))
    assert message in line and str(path) in line


def test_a_csv_quote_left_open_is_one_clear_error(tmp_path, tiny_causal_dir, reward_file):
    """csv's default reads an unclosed quote to the end of the file as one field: the prompts after
    it would silently vanish into the first one."""
    path = tmp_path / "open_quote.csv"
    path.write_text('prompt,reference\n"Write about x, y\nWrite about z,fine\n' + "Tell me,ok\n" * 20, encoding="utf-8")
    line = _error(_train(tmp_path, tiny_causal_dir, path, reward_file))
    assert "not valid CSV" in line and "unexpected end of data" in line and "check the quotes" in line


@pytest.mark.parametrize("name, raw", [("latin1.csv", b"prompt\n\xe9t\xe9 film\n"),
                                       ("utf16.jsonl", '{"prompt": "a"}\n'.encode("utf-16"))])
def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path, tiny_causal_dir, reward_file, name, raw):
    path = tmp_path / name
    path.write_bytes(raw)
    line = _error(_train(tmp_path, tiny_causal_dir, path, reward_file))
    assert "not UTF-8 text" in line and "save the file as UTF-8" in line and str(path) in line


def test_bad_options_and_rewards_are_one_clear_error(tmp_path, tiny_causal_dir, jsonl, reward_file):
    assert "no 'question' field" in _error(_train(tmp_path, tiny_causal_dir, jsonl, reward_file,
                                                  "--prompt-field", "question"))
    assert "raised ValueError: the reward service is down" in _error(runner.invoke(app, [
        "train", "--task", "prompts", "--data", str(jsonl), "--reward", f"{reward_file}:broken", "--learner",
        str(tiny_causal_dir), "--iterations", "1", "--episodes", "4", "--max-new-tokens", "4", "--device", "cpu",
        "--out", str(tmp_path / "b"), "--quiet"]))
    assert "returned 1 values for 4 completions" in _error(runner.invoke(app, [
        "train", "--task", "prompts", "--data", str(jsonl), "--reward", f"{reward_file}:short", "--learner",
        str(tiny_causal_dir), "--iterations", "1", "--episodes", "4", "--max-new-tokens", "4", "--device", "cpu",
        "--out", str(tmp_path / "c"), "--quiet"]))
    no_reward = runner.invoke(app, ["train", "--task", "prompts", "--data", str(jsonl), "--learner",
                                    str(tiny_causal_dir), "--iterations", "1", "--device", "cpu",
                                    "--out", str(tmp_path / "d"), "--quiet"])
    assert "no reward of its own" in _error(no_reward)
    assert not (tmp_path / "d").exists()
    assert "needs --data" in _error(runner.invoke(app, ["train", "--task", "prompts", "--reward",
                                                        f"{reward_file}:reward", "--quiet"]))


def test_an_empty_split_says_which(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({**r, "split": "train"}) for r in rows(12)), encoding="utf-8")
    task = get_task("prompts", data=str(path))
    assert len(task.examples("train")) == 12
    with pytest.raises(RlgfError, match="no test rows") as err:
        task.examples("test")
    assert "80/10/10" in err.value.hint
    # too few rows to split: the hint must not suggest what was already done
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(json.dumps(r) for r in rows(6)), encoding="utf-8")
    task = get_task("prompts", data=str(few))
    assert len(task.examples("train")) == 6
    with pytest.raises(RlgfError, match="no test rows") as err:
        task.examples("test")
    assert "under 10 rows without a split" in err.value.hint and "leave the split column out" not in err.value.hint


def test_the_shipped_example_loads_and_its_reward_scores():
    from pathlib import Path

    from tasks.custom_reward import CustomReward

    root = Path(__file__).resolve().parents[1] / "tasks" / "examples"
    task = get_task("prompts", data=str(root / "critic_snippets.jsonl"), reward=f"{root / 'upbeat.py'}:reward")
    assert {k: len(v) for k, v in task.splits().items()} == {"train": 240, "val": 30, "test": 30}
    reward = CustomReward(f"{root / 'upbeat.py'}:reward")
    good, bad, flat = reward(["a"] * 3, ["a wonderful, moving film", "a dull and boring mess", "a film"], [[]] * 3)
    assert good > flat == 0.5 > bad


def test_a_run_made_with_relative_paths_resumes_from_any_folder(tmp_path, tiny_causal_dir, jsonl, reward_file,
                                                                monkeypatch):
    import tomllib

    monkeypatch.chdir(tmp_path)  # --data prompts.jsonl --reward my_reward.py:reward, as typed in that folder
    result = _train(tmp_path, tiny_causal_dir, jsonl.name, reward_file.name, "--iterations", "1")
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())["train"]
    assert saved["data"] == str(jsonl) and saved["reward"] == f"{reward_file}:reward"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--iterations", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    # the same file named another way is the run's own --data, not a change
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--iterations", "3", "--quiet",
                                 "--data", "../prompts.jsonl"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["iteration"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resuming_a_run_whose_config_left_the_lr_to_the_algorithm_keeps_that_lr(tmp_path, tiny_causal_dir, jsonl,
                                                                               reward_file):
    """Before config.toml recorded it, a --task prompts run trained at PPO's own lr (1e-6); the task's
    later default (5e-5) must not apply to it on --resume."""
    import re
    import tomllib

    assert _train(tmp_path, tiny_causal_dir, jsonl, reward_file, "--iterations", "1").exit_code == 0
    config = tmp_path / "run" / "config.toml"
    old = re.sub(r"(?m)^lr = .*$", "# lr = (default: 1e-6; BC 1e-5; the default task, rotten-tomatoes, 5e-05)",
                 config.read_text())
    config.write_text(old)
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--iterations", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(config.read_text())["train"]["lr"] == 1e-6


def test_eval_of_checkpoints_trained_on_different_data_asks_for_the_task(tmp_path, tiny_causal_dir, jsonl,
                                                                          csv_file, reward_file):
    """Two runs on different prompts files: which one's prompts to score both on is the user's call."""
    assert _train(tmp_path, tiny_causal_dir, jsonl, reward_file, "--iterations", "1", out="a").exit_code == 0
    assert _train(tmp_path, tiny_causal_dir, csv_file, reward_file, "--iterations", "1", "--prompt-field", "question",
                  "--reference-field", "answer", out="b").exit_code == 0
    a, b = str(tmp_path / "a" / "final"), str(tmp_path / "b" / "final")
    line = _error(runner.invoke(app, ["eval", "-c", a, "-c", b, "--device", "cpu", "--quiet"]))
    assert "were trained with a different data, prompt-field, reference-field" in line and "pass --task" in line
    result = runner.invoke(app, ["eval", "-c", a, "-c", b, "--device", "cpu", "--quiet", "--task", "prompts",
                                 "--data", str(jsonl), "--reward", f"{reward_file}:reward", "--json", "-"])
    assert result.exit_code == 0, result.output
    # the named task (the runs' own) with only the options given: run a's data, not b's columns
    assert [r["n"] for r in json.loads(result.stdout)["results"]] == [3, 3]
