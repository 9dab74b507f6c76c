"""Runs that stop early or checkpoints that are damaged: one clear error and a way on."""

import json

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _args(learner, reward, out, *extra):
    return ["train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
            "--iterations", "2", "--episodes", "4", "--minibatch-size", "4", "--epochs", "1",
            "--max-new-tokens", "4", "--device", "cpu", "--quiet", "--lr", "1e-3", *extra]


def _error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "unexpected" not in lines[0] and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def finished_run(tmp_path_factory, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--save-every", "1"))
    assert result.exit_code == 0, result.output
    assert (out / "final").is_dir() and (out / "checkpoints" / "iter-0001").is_dir()
    assert (out / "checkpoints" / "iter-0002").is_dir(), "the last iteration is resumable"
    return out


@pytest.mark.parametrize("damage", [
    ("trainer_state.json", b'{"iteration": '),
    ("trainer_state.json", b'{"iteration": "x"}'),
    ("model.safetensors", None),  # truncated
    ("optimizer.safetensors", b"\xf5 not safetensors"),
    ("optimizer.json", b'{"format": 1, "param_groups": "x"'),
    ("optimizer.json", b'{"format": 1, "param_groups": [], "state": {}}'),  # not this run's optimizer
    ("rng.safetensors", None),
    ("rng.json", b'{"format": 1, "python": [1, 2]}'),
    ("rng.json", b"\xcd junk"),
])
def test_resume_from_a_damaged_checkpoint_is_one_clear_error(finished_run, damage):
    name, content = damage
    last = finished_run / "checkpoints" / "iter-0002"
    path = last / name
    damaged = content if content is not None else path.read_bytes()[:100]
    path.unlink()  # a new file: final/ links the checkpoint's model, and must stay whole
    path.write_bytes(damaged)
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"])
    line = _error(result)
    assert f"checkpoint {last} is damaged" in line and "delete that folder" in line
    # and following the hint works: the previous checkpoint takes over
    import shutil

    shutil.rmtree(last)
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]


def test_a_run_that_fails_before_its_first_iteration_leaves_nothing_behind(tmp_path, tiny_causal_dir, tiny_reward_dir,
                                                                      monkeypatch):
    (tmp_path / "flaky_reward.py").write_text(
        "def score(prompts, completions, references):\n    raise ValueError('kaboom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    line = _error(runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--reward", "flaky_reward:score")))
    assert "kaboom" in line and f"nothing was kept in {out}; run the same command again" in line
    assert not out.exists(), "a run that learned nothing leaves no folder to block the retry"
    line = _error(runner.invoke(app, ["train", "--resume", str(out), "--quiet"]))
    assert "holds no rlgf run" in line
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out))  # the same --out, no --overwrite
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert (out / "final" / "model.safetensors").is_file()


def test_an_unexpected_failure_in_the_first_iteration_leaves_nothing_behind(tmp_path, tiny_causal_dir,
                                                                           tiny_reward_dir, monkeypatch):
    from rlgf_cli.training.trainer import Trainer

    def broken_step(self):
        raise TypeError("a bug")

    monkeypatch.setattr(Trainer, "step", broken_step)
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out))
    assert result.exit_code == 1 and "unexpected TypeError: a bug" in result.output
    assert not out.exists(), "nothing learned: no folder to block the retry"


def test_a_failure_after_a_checkpoint_points_to_resume(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    (tmp_path / "late_reward.py").write_text(
        "CALLS = [0]\n"
        "def score(prompts, completions, references):\n"
        "    CALLS[0] += 1\n"
        "    if CALLS[0] > 1:\n"
        "        raise ValueError('late failure')\n"
        "    return [1.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    line = _error(runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--reward", "late_reward:score")))
    assert "late failure" in line
    assert f"the last checkpoint is {out / 'checkpoints' / 'iter-0001'}" in line and "--resume" in line


def test_reward_model_must_be_a_sequence_classifier(tmp_path, tiny_causal_dir):
    from backends.errors import RlgfError
    from tasks.rotten_tomatoes import RottenTomatoesTask

    with pytest.raises(RlgfError, match="is a LlamaForCausalLM, not a sequence classifier"):
        RottenTomatoesTask(reward_model=tiny_causal_dir)
    with pytest.raises(RlgfError, match="not found"):
        RottenTomatoesTask(reward_model=tmp_path / "nowhere")


def test_a_guide_given_to_ppo_is_reported_unused(tmp_path, tiny_causal_dir, tiny_reward_dir):
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, tmp_path / "run", "--iterations", "1",
                                      "--guide", str(tiny_causal_dir)))
    assert result.exit_code == 0, result.output
    assert "warning: --alg ppo does not use a guide" in result.output
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["guide_tokens"] == 0


def test_eval_of_a_run_folder_evaluates_its_final_model_then_its_latest_checkpoint(finished_run, tiny_reward_dir,
                                                                                   tmp_path):
    import shutil

    def evaluate(folder, report):
        result = runner.invoke(app, ["eval", "--checkpoint", str(folder), "--reward-model", str(tiny_reward_dir),
                                     "--device", "cpu", "--limit", "2", "--max-new-tokens", "4", "--reference", "none",
                                     "--json", str(report)])
        assert result.exit_code == 0, result.output
        return result.output, json.loads(report.read_text())

    output, report = evaluate(finished_run, tmp_path / "final.json")
    assert f"{finished_run} is a run folder: evaluating {finished_run / 'final'} (the run's final model)" in output
    assert str(finished_run / "final") in json.dumps(report)
    # a run that has not finished (no final/ yet) stands for its latest complete checkpoint
    shutil.rmtree(finished_run / "final")
    output, report = evaluate(finished_run, tmp_path / "latest.json")
    latest = finished_run / "checkpoints" / "iter-0002"
    assert f"evaluating {latest} (the run has no final/ yet: its latest checkpoint)" in output
    assert str(latest) in json.dumps(report)


def test_a_run_folder_as_a_model_spec_is_its_final_model(finished_run, tmp_path):
    from backends.registry import _parse

    assert _parse(str(finished_run)) == ("hf", str(finished_run / "final"), str(finished_run))
    assert _parse(str(finished_run / "final"))[1] == str(finished_run / "final")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _parse(str(plain))[1] == str(plain)  # any other folder is itself


def test_a_run_folder_is_read_once_to_load_it(finished_run, monkeypatch):
    """resolve() chose the model and, for its message, chose it again: the checkpoints were read
    twice, and a checkpoint written in between could make the message name another model."""
    from backends import registry

    reads = []
    real = registry._saved_iteration
    monkeypatch.setattr(registry, "_saved_iteration", lambda path: reads.append(path) or real(path))
    registry.run_model_choice(finished_run)
    once = len(reads)
    assert once >= 1
    reads.clear()
    said = []
    registry.resolve(str(finished_run), device="cpu", progress=said.append)
    assert len(reads) == once
    assert said[0] == f"{finished_run} is a run folder: using {finished_run / 'final'} (the run's final model)"


def test_a_user_data_file_that_does_not_parse_says_what_shape_it_needs(tmp_path):
    from backends.errors import RlgfError
    from tasks.rotten_tomatoes import read_labelled_file

    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"txt": "no text key", "label": 1}\n')
    with pytest.raises(RlgfError) as err:
        read_labelled_file(bad)
    assert '"text"' in err.value.hint and "reinstall" not in err.value.hint


def test_resume_with_an_emptied_config_refuses_instead_of_using_defaults(finished_run):
    kept = finished_run / "checkpoints" / "iter-0002" / "rlgf.toml"
    (finished_run / "config.toml").write_text("[train\n")  # not TOML: no hint about --config, never given
    line = _error(runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"]))
    assert "is not valid TOML" in line and f"cp {kept}" in line and "--config" not in line
    (finished_run / "config.toml").write_text("")
    line = _error(runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"]))
    assert "is empty or damaged" in line and f"cp {kept}" in line
    (finished_run / "config.toml").write_text(kept.read_text())
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3] and rows[-1]["learner_tokens"] == 4 * 4


def test_out_of_memory_on_resume_is_not_called_damage(finished_run, monkeypatch):
    import torch

    import rlgf_cli.training.run as run

    def no_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run, "load_policy", no_memory)
    line = _error_any(runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"]))
    assert line.startswith("[error] out of device memory") and "damaged" not in line


def _error_any(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


def test_resume_refuses_another_algorithm_or_task(finished_run):
    line = _error(runner.invoke(app, ["train", "--resume", str(finished_run), "--alg", "bc", "--quiet"]))
    assert "--resume continues the run's --alg ppo, not bc" in line and f"--init {finished_run}/final" in line
    line = _error(runner.invoke(app, ["train", "--resume", str(finished_run), "--task", "imdb", "--quiet"]))
    assert "--task rotten-tomatoes, not imdb" in line
    same = runner.invoke(app, ["train", "--resume", str(finished_run), "--alg", "PPO", "--iterations", "3", "--quiet"])
    assert same.exit_code == 0, same.output


def test_options_the_algorithm_ignores_are_named():
    from rlgf_cli.commands.train import ignored_options
    from rlgf_cli.training.config import build_config

    notes = ignored_options(build_config(None, alg="ppo", beta=0.3, alpha=0.5, ppopp_beta=0.1))
    assert notes == ["--alg ppo does not use --alpha; it is ignored", "--alg ppo does not use --beta; it is ignored",
                     "--alg ppo does not use --ppopp-beta; it is ignored"]
    assert ignored_options(build_config(None, alg="lols", guide="g", alpha=0.5, ppopp_beta=0.1,
                                        aggrevated_beta=0.9)) == []
    assert ignored_options(build_config(None, alg="ppo++", guide="g", beta=0.5)) == []
    late = ignored_options(build_config(None, alg="d2lols", guide="g", iterations=10, switch_iteration=50))
    assert late == ["--switch-iteration 50 is not before --iterations 10: d2lols never switches (it runs AggreVaTeD "
                    "throughout)"]
    assert ignored_options(build_config(None, alg="d2lols", guide="g", iterations=10)) == []  # ⌈0.2·10⌉ = 2


@pytest.mark.parametrize("command", ["eval", "difficulty"])
def test_a_damaged_final_model_is_one_clear_error(tmp_path, finished_run, tiny_reward_dir, command):
    """`rlgf eval -c RUN` on a run whose final weights were cut short (a full disk, a copy that
    stopped): the model folder is named and called damaged, not an 'unexpected' error."""
    import shutil

    final = tmp_path / "final"
    shutil.copytree(finished_run / "final", final)
    weights = final / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = _error(runner.invoke(app, [command, "--checkpoint", str(final), "--reward-model", str(tiny_reward_dir),
                                      "--device", "cpu", "--limit", "4", "--quiet"]))
    assert "could not load the model" in line and str(final) in line and "damaged" in line


def test_overwrite_replaces_what_rlgf_wrote_and_keeps_the_rest(tmp_path, tiny_causal_dir, tiny_reward_dir):
    """--overwrite on a run folder the user also keeps notes in (or reaches through a symlink):
    the run is replaced, the notes stay, and the run says what it kept."""
    out = tmp_path / "run"
    assert runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out)).exit_code == 0
    (out / "notes.txt").write_text("keep\n")
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.py").write_text("print(1)\n")
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    result = runner.invoke(app, [a for a in _args(tiny_causal_dir, tiny_reward_dir, link, "--overwrite",
                                                  "--seed", "1") if a != "--quiet"])
    assert result.exit_code == 0, result.output
    assert "kept what rlgf did not write" in result.output and "analysis, notes.txt" in result.output
    assert (out / "notes.txt").read_text() == "keep\n" and (out / "analysis" / "plot.py").is_file()
    assert link.is_symlink() and (out / "final" / "model.safetensors").is_file()
    assert "seed = 1" in (out / "config.toml").read_text()


@pytest.mark.parametrize("debug, shows_traceback", [("0", False), ("", False), ("1", True)])
def test_rlgf_debug_0_is_off(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch, debug, shows_traceback):
    from rlgf_cli.training.trainer import Trainer

    def broken_step(self):
        raise TypeError("a bug")

    monkeypatch.setattr(Trainer, "step", broken_step)
    monkeypatch.setenv("RLGF_DEBUG", debug)
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, tmp_path / "run"))
    assert result.exit_code == 1
    assert isinstance(result.exception, TypeError) == shows_traceback  # re-raised: the traceback is shown
    assert ("unexpected TypeError: a bug" in result.output) != shows_traceback
