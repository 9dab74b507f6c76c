"""A run continues after its files moved, and with fewer episodes than it started with.

``config.toml`` records the data file and the reward file as absolute paths, and the minibatch
size as resolved (16, or the episodes when fewer). A user who moves the data, or resumes with a
smaller ``--episodes``, must not be stuck with an error about a flag that cannot be changed or
was never given."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from rlgf_cli.training.config import build_config

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")

REWARD = '''
def reward(prompts, completions, references):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


def _error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _iterations(run) -> list[int]:
    return [json.loads(x)["iteration"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_causal_dir):
    """A one-iteration ``--task prompts`` run of 8 episodes (so config.toml records minibatches of
    8) with its data and reward files in ``work``."""
    work = tmp_path_factory.mktemp("work")
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}:"}) + "\n" for i in range(12)),
                                        encoding="utf-8")
    (work / "vowels.py").write_text(REWARD, encoding="utf-8")
    out = tmp_path_factory.mktemp("runs") / "run"
    result = runner.invoke(app, ["train", "--task", "prompts", "--data", str(work / "prompts.jsonl"),
                                 "--reward", f"{work / 'vowels.py'}:reward", "--learner", str(tiny_causal_dir),
                                 "--iterations", "1", "--episodes", "8", "--epochs", "1", "--max-new-tokens", "4",
                                 "--device", "cpu", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert tomllib.loads((out / "config.toml").read_text())["train"]["minibatch_size"] == 8
    return out, work


@pytest.fixture
def moved(base_run, tmp_path):
    """A copy of the run, its data and reward files moved to ``tmp_path/moved``."""
    out, work = base_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    files = tmp_path / "files"
    shutil.copytree(work, files)
    saved = tomllib.loads((run / "config.toml").read_text())["train"]
    text = (run / "config.toml").read_text()
    # the copy's config names the copied files, which are then moved away
    text = text.replace(saved["data"], str(files / "prompts.jsonl")).replace(saved["reward"],
                                                                                f"{files / 'vowels.py'}:reward")
    (run / "config.toml").write_text(text, encoding="utf-8")
    new = tmp_path / "moved"
    shutil.move(str(files), str(new))
    return run, files, new


def test_a_resume_whose_data_moved_says_so_and_how(moved):
    run, old, _ = moved
    line = _error(runner.invoke(app, ["train", "--resume", str(run), "--iterations", "2", "--quiet"]))
    assert "--data" in line and str(old / "prompts.jsonl") in line and "is gone" in line, line
    assert "put it back" in line and "new place" in line, line
    assert _iterations(run) == [1]


def test_a_resume_takes_the_moved_files_at_their_new_place(moved):
    run, old, new = moved
    result = runner.invoke(app, ["train", "--resume", str(run), "--iterations", "2", "--quiet",
                                 "--data", str(new / "prompts.jsonl"), "--reward", f"{new / 'vowels.py'}:reward"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "is gone; it continues with" in result.output
    assert _iterations(run) == [1, 2]
    saved = tomllib.loads((run / "config.toml").read_text())["train"]
    assert saved["data"] == str(new / "prompts.jsonl") and saved["reward"] == f"{new / 'vowels.py'}:reward"


def test_a_resume_still_refuses_another_data_file_while_the_old_one_exists(base_run, tmp_path):
    out, work = base_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    other = tmp_path / "other.jsonl"
    shutil.copy(work / "prompts.jsonl", other)
    line = _error(runner.invoke(app, ["train", "--resume", str(run), "--iterations", "2", "--quiet",
                                      "--data", str(other)]))
    assert "continues the run with its own --data" in line, line


def test_a_resume_with_fewer_episodes_takes_minibatches_that_fit(base_run, tmp_path):
    out, _ = base_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    result = runner.invoke(app, ["train", "--resume", str(run), "--iterations", "2", "--episodes", "4", "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "warning: the minibatch size 8 of" in result.output and "minibatches of 4" in result.output
    saved = tomllib.loads((run / "config.toml").read_text())["train"]
    assert (saved["episodes"], saved["minibatch_size"]) == (4, 4)
    assert _iterations(run) == [1, 2]


def test_a_config_file_with_fewer_episodes_on_the_command_line(base_run):
    out, _ = base_run
    config = str(out / "config.toml")
    with pytest.warns(Warning, match="minibatch size 8 of .* is more than --episodes 4"):
        assert build_config(config, episodes=4).minibatch_size == 4
    assert build_config(config, episodes=12).minibatch_size == 8  # fits: the file's value stays
    with pytest.raises(RlgfError, match="--minibatch-size 8 is larger than --episodes 4"):
        build_config(config, episodes=4, minibatch_size=8)  # given on the command line: still an error
