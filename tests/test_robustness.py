"""Kill -9 safety, NaN stops, and Ctrl-C: the run folder always holds a good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app

ROOT = Path(__file__).resolve().parents[1]


def _args(learner, reward, out, iterations):
    return ["train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
            "--iterations", str(iterations), "--episodes", "4", "--minibatch-size", "4", "--epochs", "1",
            "--max-new-tokens", "6", "--device", "cpu", "--quiet", "--lr", "1e-3"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_runs_each_iteration_once(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlgf_cli", *_args(tiny_causal_dir, tiny_reward_dir, out, 30)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "iter-0002").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no second checkpoint in time"
            time.sleep(0.05)
        time.sleep(0.3)  # kill somewhere in the middle of later work
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = len(_metrics(out)) if (out / "metrics.jsonl").exists() else 0
    assert killed_at >= 2
    result = CliRunner().invoke(app, ["train", "--resume", str(out), "--iterations", str(killed_at + 2), "--quiet"])
    assert result.exit_code == 0, result.output
    iterations = [m["iteration"] for m in _metrics(out)]
    assert iterations == list(range(1, killed_at + 3)), iterations
    assert not list(out.rglob(".tmp-*"))


def _reward_at_call(monkeypatch, third):
    """Every task the run builds passes its reward through ``third(values)`` at the reward's
    third call (inside iteration 3: prompts drawn, episodes sampled), unchanged otherwise."""
    import rlgf_cli.training.run as run

    real_build = run.build_task
    calls = {"n": 0}

    def build_task(cfg):
        task = real_build(cfg)
        real_reward = task.reward

        def reward(prompts, completions, examples):
            calls["n"] += 1
            values = real_reward(prompts, completions, examples)
            return third(values) if calls["n"] == 3 else values

        task.reward = reward
        return task

    monkeypatch.setattr(run, "build_task", build_task)


def test_nan_reward_stops_with_error_and_keeps_last_checkpoint(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    _reward_at_call(monkeypatch, lambda values: [float("nan")] + values[1:])
    out = tmp_path / "run"
    result = CliRunner().invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, 5))
    assert result.exit_code == 1
    assert "[error] the reward is nan for episode 0 of iteration 3" in result.output
    assert "Traceback" not in result.output
    assert [m["iteration"] for m in _metrics(out)] == [1, 2]
    good = out / "checkpoints" / "iter-0002"
    assert json.loads((good / "trainer_state.json").read_text())["iteration"] == 2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(good)  # intact and loadable
    assert not (out / "final").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_writes_a_checkpoint_and_exits_128_plus_the_signal(tmp_path, tiny_causal_dir,
                                                                             tiny_reward_dir, signum):
    """SIGTERM is how SLURM, Kubernetes and `kill` stop a job: it is handled as Ctrl-C is, and the
    exit status says which it was (130, 143), as a shell reports a process the signal killed."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [a for a in _args(tiny_causal_dir, tiny_reward_dir, out, 1000) if a != "--quiet"] + ["--save-every", "0"]
    # Ctrl-C's default action even where this test runs in the background of a shell (which
    # starts its children with SIGINT ignored)
    proc = subprocess.Popen([sys.executable, "-m", "rlgf_cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"{name}: stopping after this iteration" in err  # the first signal lets the iteration under way end
    assert "[error] interrupted after" in err and "--resume" in err and "Traceback" not in err
    saved = sorted((out / "checkpoints").glob("iter-*"))
    assert len(saved) == 1
    state = json.loads((saved[0] / "trainer_state.json").read_text())
    # the checkpoint is the end of a whole iteration: the last one the metrics record
    assert state["iteration"] >= 1 and state["iteration"] == len(_metrics(out))


def test_a_ctrl_c_inside_an_iteration_never_checkpoints_its_half_done_state(tmp_path, tiny_causal_dir,
                                                                          tiny_reward_dir, monkeypatch):
    """What a second Ctrl-C (or one outside the main thread's handler) does: the iteration under
    way is lost, and the checkpoint of the last whole one stands untouched."""

    def interrupt(values):
        raise KeyboardInterrupt

    _reward_at_call(monkeypatch, interrupt)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, 5) + ["--save-every", "1",
                                                                                        "--keep-checkpoints", "3"])
    assert result.exit_code == 130, result.output
    assert "[error] interrupted during iteration 3, which is lost" in result.output
    assert "the last checkpoint is" in result.output and "iter-0002" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (out / "checkpoints").glob("iter-*")) == ["iter-0001", "iter-0002"]
    assert json.loads((out / "checkpoints" / "iter-0002" / "trainer_state.json").read_text())["iteration"] == 2
    assert [m["iteration"] for m in _metrics(out)] == [1, 2]


def _signalled_at_finish(tmp_path, learner, reward, save_every: str, signals: int) -> subprocess.CompletedProcess:
    """``rlgf train`` of 2 iterations that sends itself ``signals`` SIGTERMs as the last checkpoint,
    final/ and summary.json start to be written (as a scheduler would, just after the last iteration)."""
    kills = "".join("    os.kill(os.getpid(), signal.SIGTERM)\n" for _ in range(signals))
    script = ("import os, signal, sys\n"
              "import rlgf_cli.training.run as run\n"
              "real = run.finish\n"
              "def finish(*args, **kwargs):\n" + kills +
              "    return real(*args, **kwargs)\n"
              "run.finish = finish\n"
              "sys.argv = ['rlgf', *sys.argv[1:]]\n"
              "from rlgf_cli.app import main\n"
              "main()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLGF_ALLOCATOR": "system"}  # no re-exec: keep the patch
    args = [a for a in _args(learner, reward, tmp_path / "run", 2) if a != "--quiet"] + ["--save-every", save_every]
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("save_every", ["0", "1"])
def test_a_sigterm_while_the_last_checkpoint_is_written_waits_for_it(tmp_path, tiny_causal_dir, tiny_reward_dir,
                                                                   save_every):
    """The signal handlers used to be restored before the last checkpoint, final/ and summary.json
    were written, so a SIGTERM then killed the run (with --save-every 0, all of it)."""
    out = tmp_path / "run"
    proc = _signalled_at_finish(tmp_path, tiny_causal_dir, tiny_reward_dir, save_every, signals=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SIGTERM: finishing the last checkpoint, final/ and summary.json first" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and (out / "final" / "config.json").is_file()
    assert summary["threads"] == 1  # the OMP_NUM_THREADS the process was started with
    assert not list(out.glob("**/.tmp-*"))  # no half-written folder left


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_second_signal_while_closing_stops_with_the_signals_status_and_a_resume_hint(tmp_path, tiny_causal_dir,
                                                                                      tiny_reward_dir):
    out = tmp_path / "run"
    proc = _signalled_at_finish(tmp_path, tiny_causal_dir, tiny_reward_dir, "1", signals=2)  # an impatient second
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "[error] interrupted after 2 iterations, while writing the last checkpoint" in proc.stderr
    assert "rlgf train --resume" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "checkpoints" / "iter-0001" / "trainer_state.json").is_file()  # the last whole one stands
