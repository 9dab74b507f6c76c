"""What --resume does with the flags given to it: settings the run's state was built from are
refused, the optimizer's and KL controller's hyperparameters take the new values, and a
smaller --iterations than the run has done is an error, not a silent no-op."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _args(learner, reward, out, *extra):
    return ["train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
            "--iterations", "2", "--episodes", "4", "--epochs", "1", "--max-new-tokens", "4",
            "--device", "cpu", "--quiet", "--lr", "1e-3", "--seed", "5", *extra]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path_factory.mktemp("resume-options") / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out))
    assert result.exit_code == 0, result.output
    return out


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("[error] ") and "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize("flag, value, was", [
    ("--seed", "6", "(5)"), ("--learner", "hf:gpt2", "(" ), ("--alpha", "0.5", "(its default)"),
    ("--init", "runs/other", "(its default)"),
])
def test_settings_the_run_was_built_from_are_refused(done_run, tmp_path, flag, value, was):
    before = (done_run / "config.toml").read_text()
    line = _error(runner.invoke(app, ["train", "--resume", str(done_run), "--iterations", "3", flag, value]))
    assert f"--resume continues the run with its own {flag} {was}" in line and f"not {value}" in line
    assert "drop " + flag in line
    assert (done_run / "config.toml").read_text() == before, "nothing is rewritten"


def test_fewer_iterations_than_done_is_an_error(done_run):
    before = sorted(p.name for p in done_run.rglob("*"))
    line = _error(runner.invoke(app, ["train", "--resume", str(done_run), "--iterations", "1"]))
    assert "--iterations 1 is fewer than the 2 this run has done" in line and "--iterations 12" in line
    assert sorted(p.name for p in done_run.rglob("*")) == before


def test_new_weight_decay_and_target_kl_take_effect_on_resume(done_run, tmp_path, monkeypatch):
    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    from rlgf_cli.training import trainer as trainer_module

    seen = {}
    real_step = trainer_module.Trainer.step

    def step(self):
        seen["weight_decay"] = [g["weight_decay"] for g in self.optimizer.param_groups]
        seen["target"] = self.kl_ctl.target
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "step", step)
    result = runner.invoke(app, ["train", "--resume", str(run), "--iterations", "3", "--weight-decay", "0.01",
                                 "--target-kl", "0.05", "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == {"weight_decay": [0.01], "target": 0.05}
    assert [json.loads(x)["iteration"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_prune_keeps_the_numerically_newest(tmp_path):
    from rlgf_cli.training.checkpoint import prune_checkpoints

    for n in (9998, 9999, 10000, 10001):
        (tmp_path / f"iter-{n:04d}").mkdir()
    prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter-10000", "iter-10001"]
