"""``--prompt-max-tokens``: prompts longer than the limit lose their start with one warning per
policy; the limit is the run's, and ``rlgf eval -c RUN`` keeps it."""

from __future__ import annotations

import json
import tomllib

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app
from tasks import get_task

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def long_prompts(tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": f"Item {i}: " + "x" * 40, "split": "train" if i < 8 else "test"} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "length_reward.py").write_text(
        "def reward(prompts, completions, references):\n    return [len(c) / 10 for c in completions]\n")
    return path


def cut_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning:") and "lose their start" in line]


def test_long_prompts_are_cut_with_one_warning_and_eval_keeps_the_run_s_limit(tmp_path, tiny_causal_dir, long_prompts):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--task", "prompts", "--data", str(long_prompts), "--reward", f"{tmp_path / 'length_reward.py'}:reward",
        "--learner", str(tiny_causal_dir), "--iterations", "2", "--episodes", "4", "--epochs", "1",
        "--max-new-tokens", "4", "--device", "cpu", "--prompt-max-tokens", "16", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    said = cut_warnings(result.output)
    assert len(said) == 1 and "longer than 16 tokens lose their start" in said[0] and "4 of the 4" in said[0], result.output
    assert tomllib.loads((out / "config.toml").read_text())["train"]["prompt_max_tokens"] == 16
    result = runner.invoke(app, ["eval", "-c", str(out / "final"), "--device", "cpu", "--reference", "none",
                                 "--quiet", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert "longer than 16 tokens" in cut_warnings(result.output)[0]
    result = runner.invoke(app, ["eval", "-c", str(out / "final"), "--device", "cpu", "--reference", "none",
                                 "--prompt-max-tokens", "256", "--quiet", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0 and not cut_warnings(result.output), result.output


@pytest.mark.parametrize("command", [["train"], ["eval", "-p", "smollm2"]])
def test_a_limit_below_one_is_one_error(tmp_path, long_prompts, command):
    result = runner.invoke(app, [*command, "--task", "prompts", "--data", str(long_prompts), "--prompt-max-tokens", "0"])
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1 and "prompt-max-tokens" in lines[0].replace("_", "-")


def test_every_task_takes_the_limit():
    assert get_task("rotten-tomatoes", prompt_max_tokens=20).prompt_max_tokens == 20  # its constructor's
    assert get_task("imdb", prompt_max_tokens=30).prompt_max_tokens == 30  # set after construction
