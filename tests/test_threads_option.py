"""``--threads N`` on the commands that run models: torch's CPU threads for the process."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from rlgf_cli.app import app

runner = CliRunner()


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_runs_with_the_threads_asked_for_and_records_them(tmp_path, tiny_causal_dir, tiny_reward_dir,
                                                                 restore_threads):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir), "--out", str(out),
        "--iterations", "1", "--episodes", "4", "--minibatch-size", "4", "--epochs", "1", "--max-new-tokens", "4",
        "--device", "cpu", "--quiet", "--threads", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((out / "summary.json").read_text())["threads"] == 2
    assert "threads" not in (out / "config.toml").read_text()  # not a setting of the run


@pytest.mark.parametrize("command", ["train", "eval", "difficulty", "distill", "serve"])
def test_threads_below_one_is_one_error_line(command, restore_threads):
    args = {"train": ["--print-config"], "eval": ["-p", "smollm2"], "difficulty": ["-p", "smollm2"],
            "distill": ["--guide", "smollm2"], "serve": ["--policy", "smollm2"]}[command]
    result = runner.invoke(app, [command, *args, "--threads", "0"])
    assert result.exit_code == 1
    assert "[error] --threads must be at least 1 (got 0)" in result.output and "Traceback" not in result.output


def test_more_threads_than_cores_warns_and_runs(tmp_path, tiny_causal_dir, restore_threads):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(3)))
    reward = tmp_path / "r.py"
    reward.write_text("def reward(prompts, completions, references):\n    return [1.0 for _ in completions]\n")
    many = len(os.sched_getaffinity(0)) + 1
    result = runner.invoke(app, [
        "eval", "-p", f"hf:{tiny_causal_dir}", "--task", "prompts", "--data", str(data), "--reward", f"{reward}:reward",
        "--split", "train", "--max-new-tokens", "3", "--device", "cpu", "--reference", "none", "--threads", str(many)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"--threads {many} is more than the {many - 1} CPUs" in result.output
    assert torch.get_num_threads() == many
