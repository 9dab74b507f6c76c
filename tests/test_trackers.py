"""--log-to tensorboard: each iteration's metrics as TensorBoard scalars, read back with
TensorBoard's own event reader; resumed runs log no iteration twice; a missing package or an
unknown tracker is one [error] line before any work."""

from __future__ import annotations

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from rlgf_cli.training import trackers

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _args(learner, reward, out, *extra):
    return ["train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
            "--iterations", "2", "--episodes", "4", "--epochs", "1", "--max-new-tokens", "4",
            "--device", "cpu", "--quiet", "--lr", "1e-3", "--seed", "3", *extra]


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_parse_and_names():
    assert trackers.parse(None) == [] and trackers.parse("none") == [] and trackers.parse("") == []
    assert trackers.parse(" TensorBoard ,none,tensorboard") == ["tensorboard"]
    with pytest.raises(RlgfError) as err:
        trackers.parse("tensorbord")
    assert "unknown --log-to 'tensorbord'" in err.value.message and "did you mean 'tensorboard'" in err.value.hint
    assert [trackers.scalar_name(k) for k in ("reward_mean", "kl", "kl_exact", "pg_loss", "time_update_s", "time_s",
                                              "guide_api_requests", "bc_loss", "response_length")] == [
        "reward/mean", "kl/sampled", "kl/exact", "loss/pg_loss", "time/update_s", "time/iteration_s",
        "guide_api/requests", "bc/loss", "train/response_length"]


def test_train_logs_every_iteration_and_resume_continues(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--log-to", "tensorboard"))
    assert result.exit_code == 0, result.output
    scalars = _scalars(out / "tensorboard")
    metrics = _metrics(out)
    assert [step for step, _ in scalars["reward/mean"]] == [1, 2]
    assert [v for _, v in scalars["reward/mean"]] == pytest.approx([m["reward_mean"] for m in metrics])
    assert [v for _, v in scalars["loss/v_loss"]] == pytest.approx([m["v_loss"] for m in metrics])
    assert {"time/update_s", "kl/exact", "loss/approx_kl", "train/lr"} <= set(scalars)
    assert not [t for t in scalars if t.endswith("/iteration")]  # the step, not a scalar
    assert "log_to = \"tensorboard\"" in (out / "config.toml").read_text()

    result = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert f"tensorboard --logdir {out / 'tensorboard'}" in result.output.replace("\n", "")  # where to look
    scalars, metrics = _scalars(out / "tensorboard"), _metrics(out)
    assert [step for step, _ in scalars["reward/mean"]] == [1, 2, 3]
    assert [v for _, v in scalars["reward/mean"]] == pytest.approx([m["reward_mean"] for m in metrics])


def test_bc_logs_its_loss(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "bc"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--alg", "bc", "--log-to", "tensorboard"))
    assert result.exit_code == 0, result.output
    scalars = _scalars(out / "tensorboard")
    assert [v for _, v in scalars["bc/loss"]] == pytest.approx([m["bc_loss"] for m in _metrics(out)])
    assert [step for step, _ in scalars["time/iteration_s"]] == [1, 2]


def test_a_resumed_run_hides_what_its_interrupted_part_logged_after_the_checkpoint(tmp_path):
    first = trackers.Trackers("tensorboard", tmp_path, done=0, config_toml='task = "x"')
    for it in (1, 2, 3):  # iteration 3 was logged, then the run died before its checkpoint
        first.log({"iteration": it, "reward_mean": float(it)})
    first.close()
    again = trackers.Trackers("tensorboard", tmp_path, done=2, config_toml='task = "x"')
    again.log({"iteration": 3, "reward_mean": 30.0})
    again.close()
    assert _scalars(tmp_path / "tensorboard")["reward/mean"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_without_log_to_nothing_is_written(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--iterations", "1"))
    assert result.exit_code == 0, result.output
    assert not (out / "tensorboard").exists()


@pytest.mark.parametrize("value, needles", [
    ("tensorbord", ["unknown --log-to 'tensorbord'", "did you mean 'tensorboard'"]),
    ("tensorboard", ["needs the tensorboard package", "pip install tensorboard"]),
])
def test_bad_log_to_is_one_error_before_any_work(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch,
                                                 value, needles):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--log-to", value))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("[error] ") and "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[-1]
    assert not out.exists()  # failed before the run folder was made
