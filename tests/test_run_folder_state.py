"""What a run folder stands for and who may write it: an extended run stopped before its new end
stands for its newest checkpoint (not its older final/), a finished run resumed without more
iterations is left alone, and one process at a time trains a folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app
from test_bad_runs import _args, _error

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _iterations(out: Path) -> list[int]:
    return [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _snapshot(out: Path) -> dict:
    """Every file of a run folder with its bytes and modification time."""
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def _finished(tmp_path_factory, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path_factory.mktemp("finished") / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def finished_run(_finished, tmp_path):
    """A copy of a finished 2-iteration run (checkpoints/iter-0002 and final/ at iteration 2)."""
    out = tmp_path / "run"
    shutil.copytree(_finished, out)
    return out


def _stop_in_reward_call(monkeypatch, n: int, action) -> None:
    """The run's reward calls ``action()`` at its ``n``-th call (one call per iteration)."""
    import rlgf_cli.training.run as run

    real_build, calls = run.build_task, {"n": 0}

    def build_task(cfg):
        task = real_build(cfg)
        real_reward = task.reward

        def reward(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                action()
            return real_reward(*args, **kwargs)

        task.reward = reward
        return task

    monkeypatch.setattr(run, "build_task", build_task)


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


def test_an_extension_stopped_before_its_end_stands_for_its_newest_checkpoint(finished_run, monkeypatch,
                                                                              tiny_reward_dir, tmp_path):
    from backends import resolve
    from backends.registry import _parse, run_model

    final_before = (finished_run / "final" / "model.safetensors").read_bytes()
    # extended to 6 iterations, a checkpoint each, and stopped (Ctrl-C) inside iteration 4
    _stop_in_reward_call(monkeypatch, 2, _raise_keyboard_interrupt)
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "6", "--save-every", "1",
                                 "--quiet"])
    assert result.exit_code == 130, result.output
    assert "interrupted during iteration 4" in result.output
    newest = finished_run / "checkpoints" / "iter-0003"
    assert json.loads((newest / "trainer_state.json").read_text())["iteration"] == 3
    # final/ is kept whole until a new one replaces it
    assert json.loads((finished_run / "final" / "trainer_state.json").read_text())["iteration"] == 2
    assert (finished_run / "final" / "model.safetensors").read_bytes() == final_before

    # the run folder as a model (--init RUN, --guide RUN, eval -c RUN) is the newest model, and says so
    assert run_model(finished_run) == newest
    assert _parse(str(finished_run))[1] == str(newest)
    said = []
    resolve(str(finished_run), device="cpu", progress=said.append)
    assert any(f"using {newest} (the run's newest model, iteration 3: its final/ is older (iteration 2))" in s
               for s in said), said
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--checkpoint", str(finished_run), "--reward-model", str(tiny_reward_dir),
                                 "--device", "cpu", "--limit", "2", "--max-new-tokens", "4", "--reference", "none",
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert f"evaluating {newest} (the run's newest model, iteration 3" in result.output
    assert str(newest) in report.read_text() and str(finished_run / "final") not in report.read_text()

    # an unfinished run is pointed at --resume when a new run would write over it
    line = _error(runner.invoke(app, ["train", "--out", str(finished_run), "--quiet"]))
    assert "has not finished" in line and f"rlgf train --resume {finished_run}" in line

    # once the extension ends, its new final/ is the run's model again
    monkeypatch.undo()
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((finished_run / "final" / "trainer_state.json").read_text())["iteration"] == 6
    assert run_model(finished_run) == finished_run / "final"


def test_resuming_a_finished_run_without_more_iterations_changes_nothing(finished_run):
    before = _snapshot(finished_run)
    line = _error(runner.invoke(app, ["train", "--resume", str(finished_run), "--quiet"]))
    assert f"{finished_run} already has its 2 iterations" in line
    assert f"rlgf train --resume {finished_run} --iterations 12" in line
    assert _snapshot(finished_run) == before, "summary.json, metrics and config untouched"

    # killed after its last checkpoint, before summary.json: the resume finishes the run
    (finished_run / "summary.json").unlink()
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["last"]["iteration"] == 2 and "reward_mean" in summary["last"]
    assert _iterations(finished_run) == [1, 2]


def test_a_run_being_trained_is_refused_to_a_second_process(finished_run, tiny_causal_dir, tiny_reward_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlgf_cli", "train", "--resume", str(finished_run),
                             "--iterations", "1000", "--save-every", "0", "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(_iterations(finished_run)) < 3:  # the first process is training iteration 4 or later
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the first process trained nothing in time"
            time.sleep(0.05)
        kept = {p.name for p in (finished_run / "checkpoints").iterdir()}
        config = (finished_run / "config.toml").read_text()
        final = (finished_run / "final" / "trainer_state.json").read_text()
        for second in (["train", "--resume", str(finished_run), "--iterations", "5", "--quiet"],
                       _args(tiny_causal_dir, tiny_reward_dir, finished_run, "--overwrite")):
            line = _error(runner.invoke(app, second))
            assert line.startswith(f"[error] {finished_run} is being trained by another process (pid {proc.pid})")
            # ... and touched nothing: the first run's config, checkpoints and final/ stand
            assert (finished_run / "config.toml").read_text() == config and "iterations = 1000" in config
            assert {p.name for p in (finished_run / "checkpoints").iterdir()} == kept
            assert (finished_run / "final" / "trainer_state.json").read_text() == final
        assert proc.poll() is None, "the first process goes on"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # a killed process's lock goes with it; the file it leaves is nobody's and nothing lists it
    from rlgf_cli.files import LOCK_FILE, clear_run

    assert (finished_run / LOCK_FILE).is_file()
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert _iterations(finished_run) == [1, 2, 3]
    assert not (finished_run / LOCK_FILE).exists(), "a run that ends removes its lock file"
    (finished_run / LOCK_FILE).write_text("99999\n")
    assert clear_run(finished_run) == [] and (finished_run / LOCK_FILE).is_file()


@pytest.fixture(scope="module")
def _stopped(tmp_path_factory, tiny_causal_dir, tiny_reward_dir):
    """A run of 5 iterations stopped by a Ctrl-C during its first: (folder, the command's output)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _stop_in_reward_call(monkeypatch, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
        result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--iterations", "5"))
    assert result.exit_code == 130, result.output
    assert (out / "checkpoints" / "iter-0001").is_dir() and not (out / "final").exists()
    return out, result.output


@pytest.fixture
def stopped_run(_stopped, tmp_path):
    out = tmp_path / "stopped"
    shutil.copytree(_stopped[0], out)
    return out


def test_a_run_stopped_after_one_iteration_says_one_iteration(_stopped):
    assert "[error] interrupted after 1 iteration —" in _stopped[1], _stopped[1]


def test_resume_with_overwrite_is_refused_as_a_contradiction(stopped_run):
    before = _snapshot(stopped_run)
    line = _error(runner.invoke(app, ["train", "--resume", str(stopped_run), "--overwrite", "--quiet"]))
    assert "--resume and --overwrite contradict each other" in line and _snapshot(stopped_run) == before


def test_a_new_run_into_an_unfinished_one_is_pointed_at_resume(stopped_run, tiny_causal_dir, tiny_reward_dir):
    before = _snapshot(stopped_run)
    line = _error(runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, stopped_run)))
    assert "has not finished" in line and f"rlgf train --resume {stopped_run}" in line and "--overwrite" in line
    assert _snapshot(stopped_run) == before


def test_a_metrics_file_that_is_not_text_is_one_error_before_anything_is_written(stopped_run):
    metrics = stopped_run / "metrics.jsonl"
    metrics.write_bytes(b'{"iteration": 1, "reward_mean": 0.5}\n\xff\xfe\x00 damaged\n')
    before = _snapshot(stopped_run)
    line = _error(runner.invoke(app, ["train", "--resume", str(stopped_run), "--quiet"]))
    assert f"{metrics} is damaged: it is not UTF-8 text" in line and f"mv {metrics} {metrics}.bad" in line
    assert _snapshot(stopped_run) == before
    # following the hint works: the metrics start again at the resumed iteration
    metrics.rename(metrics.with_name("metrics.jsonl.bad"))
    result = runner.invoke(app, ["train", "--resume", str(stopped_run), "--iterations", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert _iterations(stopped_run) == [2]


def _holding_the_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock (as a training process does) until killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from rlgf_cli.training.run_lock import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(folder)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_file_no_one_holds_names_no_trainer(finished_run):
    """A killed run leaves its lock file; the pid in it may belong to another process by now (here:
    pid 1, always alive): the lock decides, so the folder is not taken for one being trained."""
    from backends.registry import training_pid

    (finished_run / ".rlgf-lock").write_text("1\n")
    assert training_pid(finished_run) is None


def _extended_copy_of(finished_run: Path) -> Path:
    """The run as an extension leaves it when stopped before its new end: a checkpoint newer than
    final/ (a copy of the last one, its iteration moved on)."""
    last = finished_run / "checkpoints" / "iter-0002"
    newer = finished_run / "checkpoints" / "iter-0005"
    shutil.copytree(last, newer)
    state = json.loads((newer / "trainer_state.json").read_text())
    (newer / "trainer_state.json").write_text(json.dumps({**state, "iteration": 5}))
    return newer


def test_a_run_being_trained_stands_for_its_final_model(finished_run):
    """While another process trains the run on, its checkpoints come and go (pruned as it saves):
    the run folder stands for its finished final/; once that process is gone, for the newest."""
    from backends.registry import run_model_choice

    newer = _extended_copy_of(finished_run)
    trainer = _holding_the_lock(finished_run)
    try:
        chosen, why = run_model_choice(finished_run)
        assert chosen == finished_run / "final" and f"process {trainer.pid} is training" in why
    finally:
        trainer.kill()
        trainer.wait()
    assert run_model_choice(finished_run)[0] == newer  # the lock file of a process that is gone


def test_a_run_started_from_a_run_folder_keeps_its_reference(finished_run, tmp_path, tiny_reward_dir):
    """--init RUN records the model RUN stood for then: after RUN is extended, a resume (and eval's
    output_perplexity) still take that model as the reference, not RUN's newer checkpoint."""
    from rlgf_cli.training.checkpoint import read_state

    out = tmp_path / "from-run"
    args = _args("unused", tiny_reward_dir, out)
    args[1:3] = ["--init", str(finished_run)]  # instead of --learner
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_state(out / "final")["learner"] == str(finished_run / "final")
    _extended_copy_of(finished_run)
    result = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_state(out / "final")["learner"] == str(finished_run / "final")


def test_a_run_its_guide_budget_stopped_is_pointed_at_resume(finished_run, tiny_causal_dir, tiny_reward_dir):
    """A run whose guide budget ran out has its final/ at the stop (nothing newer), yet --resume
    with a larger --guide-budget-tokens continues it: --out into it says so."""
    summary = json.loads((finished_run / "summary.json").read_text())
    (finished_run / "summary.json").write_text(json.dumps({**summary, "stopped": "guide budget exhausted after 2 "
                                                           "iterations"}))
    line = _error(runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, finished_run)))
    assert "has not finished" in line and f"rlgf train --resume {finished_run}" in line


def test_overwrite_leaves_a_nested_run_another_process_trains(tmp_path):
    """`--overwrite` of a folder holding a nested run (distill's bc/) that a live process is
    training: refused before anything is removed."""
    from backends.errors import RlgfError
    from rlgf_cli.files import RUN_HEADER, clear_run

    out = tmp_path / "distill"
    (out / "bc").mkdir(parents=True)
    (out / "bc" / "config.toml").write_text(RUN_HEADER + "\n")
    (out / "summary.json").write_text("{}")
    trainer = _holding_the_lock(out / "bc")
    try:
        with pytest.raises(RlgfError, match=f"which process {trainer.pid} is training"):
            clear_run(out)
        assert (out / "summary.json").is_file() and (out / "bc").is_dir()
    finally:
        trainer.kill()
        trainer.wait()
    assert clear_run(out) == [] and not (out / "bc").exists()  # its process gone: removed as before


def test_pinning_reads_a_spec_as_the_registry_does(tmp_path, monkeypatch, finished_run):
    """Only a folder spec is pinned to the model it stands for: `smollm2` stays the embedded model
    even beside a run folder of that name, and `hf:` specs stay as given."""
    from rlgf_cli.training.run_folder import pinned_model

    monkeypatch.chdir(tmp_path)
    shutil.copytree(finished_run, tmp_path / "smollm2")
    assert pinned_model("smollm2") == "smollm2"
    assert pinned_model("./smollm2") == os.path.abspath(Path("smollm2") / "final")  # absolute: resumable from elsewhere
    assert pinned_model(f"hf:{finished_run}") == f"hf:{finished_run}"


def test_a_guide_run_folder_is_pinned_like_the_reference(finished_run, tmp_path, tiny_causal_dir, tiny_reward_dir):
    """--guide RUN loads the model RUN stood for when the run started, on every resume, while the
    --guide given stays the same (RUN extended meanwhile)."""
    from rlgf_cli.training.checkpoint import read_state
    from rlgf_cli.training.run_folder import latest_checkpoint

    out = tmp_path / "guided"
    args = _args(tiny_causal_dir, tiny_reward_dir, out, "--alg", "ppo++", "--guide", str(finished_run))
    assert runner.invoke(app, args).exit_code == 0
    assert read_state(latest_checkpoint(out))["guide"] == str(finished_run / "final")
    _extended_copy_of(finished_run)
    result = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert f"loading guide {finished_run / 'final'} (--guide {finished_run}, as it stood when the run started)" \
        in result.output
    assert read_state(latest_checkpoint(out))["guide"] == str(finished_run / "final")


def test_a_pinned_checkpoint_that_is_gone_is_said_and_the_run_goes_on(finished_run, tmp_path, tiny_reward_dir):
    """--init RUN pinned RUN's newest checkpoint, which RUN's next save pruned: the resume says so
    and goes on from what RUN stands for now (it used to fail after loading, with a hint to pass hf:)."""
    from rlgf_cli.training.checkpoint import read_state

    newer = _extended_copy_of(finished_run)
    out = tmp_path / "from-run"
    args = _args("unused", tiny_reward_dir, out)
    args[1:3] = ["--init", str(finished_run)]
    assert runner.invoke(app, args).exit_code == 0
    assert read_state(out / "final")["learner"] == str(newer)
    shutil.rmtree(newer)
    result = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert f"the initial learner {newer} (what {finished_run} stood for when this run started) is gone; " \
           f"using what it stands for now: {finished_run / 'final'}" in " ".join(result.output.split())
