"""A full disk: the run refuses up front, or a failed checkpoint write is one clear error."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.training import checkpoint
from rlgf_cli.app import app

ROOT = Path(__file__).resolve().parents[1]


def _args(learner, reward, out, iterations=2):
    return ["train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
            "--iterations", str(iterations), "--episodes", "4", "--minibatch-size", "4", "--epochs", "1",
            "--max-new-tokens", "6", "--device", "cpu", "--quiet", "--lr", "1e-3"]


def test_estimate_matches_what_a_checkpoint_takes(tmp_path, tiny_causal_dir):
    from backends.hf.policy import HFPolicy

    policy = HFPolicy.load(str(tiny_causal_dir), device="cpu")
    critic = policy.make_critic()
    params = [*policy.model.parameters(), *critic.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    before = checkpoint.checkpoint_bytes(policy, {"learner": critic}, optimizer)  # no AdamW state yet
    sum(p.sum() for p in params).backward()
    optimizer.step()
    after = checkpoint.checkpoint_bytes(policy, {"learner": critic}, optimizer)
    path = checkpoint.save_checkpoint(tmp_path / "ck", policy=policy, critics={"learner": critic}, optimizer=optimizer)
    tensors = after - checkpoint.SMALL_FILES_BYTES
    written = checkpoint.folder_bytes(path)
    assert abs(before - after) <= 0.02 * tensors  # AdamW's moments counted before they exist
    assert 0.9 * written <= tensors <= written  # the files hold the tensors plus headers and configs
    assert written <= after


def test_train_refuses_up_front_when_the_checkpoints_cannot_fit(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[error] not enough disk space for this run's checkpoints")
    assert "GiB are free" in lines[0] and "--out" in lines[0] and "Traceback" not in result.output
    assert not out.exists(), "nothing may be written before the check"


def test_bc_refuses_up_front_too(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    out = tmp_path / "bc"
    args = _args(tiny_causal_dir, tiny_reward_dir, out, 1)
    args[args.index("--learner"):args.index("--learner")] = ["--alg", "bc"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "not enough disk space for the final checkpoint" in result.output
    assert not out.exists()


def test_save_checkpoint_checks_before_writing(tmp_path, tiny_causal_dir, monkeypatch):
    from backends.hf.policy import HFPolicy

    policy = HFPolicy.load(str(tiny_causal_dir), device="cpu")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(RlgfError, match="not enough disk space for checkpoint ck"):
        checkpoint.save_checkpoint(tmp_path / "ck", policy=policy)
    assert list(tmp_path.iterdir()) == []


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_that_fails_midway_is_one_error_and_keeps_the_results(tmp_path, tiny_causal_dir, tiny_reward_dir):
    """A real failed write (a file-size limit, as a full disk fails): torch.save's zip writer errors out."""
    out = tmp_path / "run"
    weights = (Path(tiny_causal_dir) / "model.safetensors").stat().st_size
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlgf_cli", *_args(tiny_causal_dir, tiny_reward_dir, out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_limit_file_size(int(1.5 * weights)),  # the weights fit, AdamW's two moments do not
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1 and "could not write checkpoint" in errors[0], proc.stderr
    assert "iter-0001" in errors[0] and "--out" in errors[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the checkpoint of iteration 1 is written in the background while iteration 2 runs, so its
    # failure is reported when iteration 2 is done: every finished iteration's metrics are kept
    assert [r["iteration"] for r in rows] == [1, 2], "the finished iterations' metrics are kept"
    assert not list(out.rglob(".tmp-*")), "no half-written checkpoint may be left"
    assert not (out / "checkpoints" / "iter-0001").exists()


def test_an_older_checkpoint_survives_a_failed_overwrite(tmp_path, tiny_causal_dir):
    code = f"""
import resource, signal, sys
from pathlib import Path
import torch
from backends.hf.policy import HFPolicy
from rlgf_cli.training.checkpoint import save_checkpoint
from backends.errors import RlgfError
policy = HFPolicy.load({str(tiny_causal_dir)!r}, device="cpu")
target = Path({str(tmp_path / "final")!r})
save_checkpoint(target, policy=policy, state={{"iteration": 1}})
opt = torch.optim.AdamW(policy.model.parameters())
sum(p.sum() for p in policy.model.parameters()).backward()
opt.step()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = (target / "model.safetensors").stat().st_size * 3 // 2
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    save_checkpoint(target, policy=policy, optimizer=opt, state={{"iteration": 2}})
except RlgfError as exc:
    print("ERROR", exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERROR could not write checkpoint"), proc.stdout
    assert "unchanged" in proc.stdout
    assert json.loads((tmp_path / "final" / "trainer_state.json").read_text()) == {"iteration": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    shutil.rmtree(tmp_path / "final")


def test_how_many_checkpoints_must_fit_at_once(tmp_path):
    from rlgf_cli.training.config import TrainConfig
    from rlgf_cli.training.run import extra_checkpoints

    def cfg(**kw):
        return TrainConfig(**{"iterations": 10, "save_every": 1, "keep_checkpoints": 1, **kw})

    assert extra_checkpoints(cfg(save_every=0), 0) == 0  # only the final one
    assert extra_checkpoints(cfg(), 0) == 1  # the kept periodic one while the final is written
    assert extra_checkpoints(cfg(keep_checkpoints=3), 0) == 3
    assert extra_checkpoints(cfg(iterations=2, save_every=5), 0) == 0  # no periodic save before the end
    run = tmp_path / "run"
    (run / "checkpoints" / "iter-0002").mkdir(parents=True)
    assert extra_checkpoints(cfg(), 2, run) == 0, "a resume reuses the room of the checkpoint it will prune"
    assert extra_checkpoints(cfg(keep_checkpoints=3), 2, run) == 2


def test_up_front_check_counts_the_kept_checkpoints(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    import rlgf_cli.training.run as run

    sizes = []
    real = run.checkpoint_bytes
    monkeypatch.setattr(run, "checkpoint_bytes", lambda *a: sizes.append(real(*a)) or sizes[-1])
    usage = namedtuple("usage", "total used free")
    # room for one and a half checkpoints: the final alone fits, the final beside a periodic one does not
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**12, 0, int(1.5 * sizes[0])))
    refused = CliRunner().invoke(app, _args(tiny_causal_dir, tiny_reward_dir, tmp_path / "a", 2))
    assert refused.exit_code == 1 and "not enough disk space for this run's checkpoints" in refused.output
    ok = CliRunner().invoke(app, [*_args(tiny_causal_dir, tiny_reward_dir, tmp_path / "b", 2), "--save-every", "0"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "b" / "final" / "model.safetensors").is_file()
