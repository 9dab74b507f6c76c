"""Defects a new user hits first: small runs, offline evaluation, test-only data files."""

from __future__ import annotations

import json
import tomllib

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from rlgf_cli.config import build_config

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# -- 1. a minibatch size nobody asked for follows --episodes ------------------------------------


def test_an_unset_minibatch_size_follows_the_episodes():
    assert build_config(None).minibatch_size == 16  # the paper's default with its 64 episodes
    assert build_config(None, episodes=4).minibatch_size == 4
    assert build_config(None, episodes=40).minibatch_size == 16
    assert build_config(None, episodes=4, minibatch_size=2).minibatch_size == 2
    with pytest.raises(RlgfError, match="--minibatch-size 8 is larger than --episodes 4"):
        build_config(None, episodes=4, minibatch_size=8)  # given explicitly: still an error
    with pytest.raises(RlgfError, match="--minibatch-size must be >= 0"):
        build_config(None, minibatch_size=-1)


def test_a_config_file_minibatch_size_is_explicit(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("minibatch_size = 16\n")
    with pytest.raises(RlgfError, match="--minibatch-size 16 is larger than --episodes 4"):
        build_config(str(cfg), episodes=4)


def test_train_with_few_episodes_runs_and_records_the_resolved_minibatch(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--task", "rotten-tomatoes", "--alg", "ppo", "--iterations", "1", "--episodes", "4",
        "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir), "--out", str(out),
        "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((out / "config.toml").read_text())["train"]
    assert saved["minibatch_size"] == 4 and saved["episodes"] == 4
    line = _error(runner.invoke(app, [
        "train", "--episodes", "4", "--minibatch-size", "8", "--learner", str(tiny_causal_dir),
        "--reward-model", str(tiny_reward_dir), "--out", str(tmp_path / "other"), "--device", "cpu", "--quiet",
    ]))  # fmt: skip
    assert "--minibatch-size 8 is larger than --episodes 4" in line
    assert not (tmp_path / "other").exists()


def test_distill_and_then_configs_follow_their_episodes(tmp_path):
    from rlgf_cli.distill import DistillOptions, configs

    then_toml = tmp_path / "then.toml"
    then_toml.write_text("episodes = 4\n")  # no minibatch_size: the --then run follows these episodes
    bc, then = configs(DistillOptions(guide="hf:x", episodes=8, then="ppo++", then_config=str(then_toml),
                                      out=str(tmp_path / "d"), device="cpu"))
    assert bc.minibatch_size == 8 and then.minibatch_size == 4
    with pytest.raises(RlgfError, match="--minibatch-size 16 is larger than --episodes 8"):
        configs(DistillOptions(guide="hf:x", episodes=8, minibatch_size=16, out=str(tmp_path / "d")))
