"""Periodic checkpoints written in the background: a snapshot of the moment they were asked
for, errors raised in the training thread, and a kill -9 in the middle of a write never leaving
a checkpoint that --resume would pick up half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_causal
from test_train_e2e import invoke, read_metrics, train_args

from backends.errors import RlgfError
from backends.hf.policy import HFPolicy
from rlgf_cli.training.checkpoint import TMP_PREFIX, is_checkpoint, read_state
from rlgf_cli.training.checkpoint_writer import CheckpointWriter
from rlgf_cli.training.run import latest_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _parts():
    tok = make_byte_tokenizer()
    policy = HFPolicy(make_tiny_causal(tok, seed=0)[0], tok)
    critic = policy.make_critic()
    params = list(policy.model.parameters()) + list(critic.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    loss = sum(p.sum() for p in params)
    loss.backward()
    opt.step()
    return policy, critic, opt


def test_background_write_is_a_snapshot_of_when_it_was_asked_for(tmp_path):
    from safetensors.torch import load_file

    policy, critic, opt = _parts()
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    writer = CheckpointWriter(background=True)
    state = {"iteration": 3, "sampler": {"order": [1, 2, 3]}}
    writer.submit(tmp_path / "iter-0003", policy=policy, critics={"learner": critic}, optimizer=opt, state=state,
                  config_toml="x = 1\n")
    with torch.no_grad():  # the training goes on while the write runs
        for p in policy.model.parameters():
            p.add_(1.0)
    state["sampler"]["order"].append(4)
    writer.wait()
    target = tmp_path / "iter-0003"
    assert is_checkpoint(target) and read_state(target)["sampler"]["order"] == [1, 2, 3]
    saved = load_file(target / "model.safetensors")
    for k, v in saved.items():
        assert torch.equal(v, before[k]), k
    assert (target / "optimizer.safetensors").is_file() or any(target.glob("optimizer*"))


def test_successive_snapshots_reuse_their_tensors_and_hold_each_moment(tmp_path):
    # the snapshot's 3 GB are refreshed in place (allocating them afresh faulted their pages in
    # again at every checkpoint); each checkpoint must still hold its own moment
    from safetensors.torch import load_file

    from rlgf_cli.training.resume_state import OPTIMIZER_TENSORS

    policy, critic, opt = _parts()
    writer = CheckpointWriter(background=True)
    written = []
    for it in (1, 2, 3):
        writer.submit(tmp_path / f"iter-{it}", policy=policy, critics={"learner": critic}, optimizer=opt,
                      state={"iteration": it}, config_toml="")
        written.append(({k: v.clone() for k, v in policy.model.state_dict().items()},
                        {k: v.clone() for k, v in critic.state_dict().items()},
                        [s["exp_avg"].clone() for s in opt.state.values()]))
        writer.wait()
        with torch.no_grad():  # what the next iteration's update does
            for p in [*policy.model.parameters(), *critic.parameters()]:
                p.add_(float(it))
        for s in opt.state.values():
            s["exp_avg"].mul_(0.5).add_(1.0)
    snap_model = writer._models[id(policy.model)]
    assert snap_model is not policy.model
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(snap_model.parameters(), policy.model.parameters()))
    for it, (model_state, critic_state, moments) in zip((1, 2, 3), written):
        folder = tmp_path / f"iter-{it}"
        assert is_checkpoint(folder) and read_state(folder)["iteration"] == it
        saved = load_file(folder / "model.safetensors")
        assert all(torch.equal(v, model_state[k]) for k, v in saved.items())
        saved_critic = load_file(next(folder.glob("critic/*.safetensors")))
        assert len(saved_critic) and all(torch.equal(v, critic_state[k]) for k, v in saved_critic.items() if k in critic_state)
        saved_opt = load_file(folder / OPTIMIZER_TENSORS)
        got = [saved_opt[f"state.{i}.exp_avg"] for i in range(len(moments))]
        assert all(torch.equal(a, b) for a, b in zip(got, moments))
    assert not torch.equal(written[0][0][next(iter(written[0][0]))], written[2][0][next(iter(written[2][0]))])


def test_a_failed_background_write_is_raised_by_wait(tmp_path):
    policy, critic, opt = _parts()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    writer = CheckpointWriter(background=True)
    writer.submit(blocker / "iter-0001", policy=policy, critics={"learner": critic}, optimizer=opt, state={},
                  config_toml="")
    with pytest.raises((RlgfError, OSError)):
        writer.wait()
    writer.wait()  # reported once


def test_training_writes_periodic_checkpoints_in_the_background(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, out, "--iterations", "3", "--save-every", "1",
                      "--keep-checkpoints", "1"))
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    assert all("time_checkpoint_s" in m for m in metrics) and metrics[1]["time_checkpoint_s"] > 0
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["iter-0002", "iter-0003"]  # the kept periodic one and the last; no temporary folder
    assert read_state(out / "checkpoints" / "iter-0002")["iteration"] == 2


SLOW_WRITER = """
import sys, time
import rlgf_cli.training.checkpoint as ckpt
real = ckpt.save_optimizer
def slow(optimizer, folder):
    real(optimizer, folder)
    time.sleep(0.8)  # half-written: the model and optimizer are there, the RNG and state are not
ckpt.save_optimizer = slow
from rlgf_cli.app import app
sys.argv = ["rlgf", *sys.argv[1:]]
app()
"""


def test_kill_during_a_background_write_never_leaves_a_half_checkpoint(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    args = train_args(tiny_causal_dir, tiny_reward_dir, out, "--iterations", "6", "--save-every", "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    killed_mid_write = False
    try:
        while time.time() < deadline and proc.poll() is None:
            ckpts = out / "checkpoints"
            # kill once the second checkpoint is being written (a complete first one exists)
            if ckpts.is_dir() and any(p.name.startswith(TMP_PREFIX + "iter-0002") for p in ckpts.iterdir()):
                proc.send_signal(signal.SIGKILL)
                killed_mid_write = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_mid_write, proc.stderr.read().decode()[-2000:]
    assert any(p.name.startswith(TMP_PREFIX) for p in (out / "checkpoints").iterdir())  # the cut write
    latest = latest_checkpoint(out)
    assert latest is not None and latest.name == "iter-0001" and is_checkpoint(latest)
    invoke(["train", "--resume", str(out), "--quiet"])
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert not any(p.name.startswith(TMP_PREFIX) for p in (out / "checkpoints").iterdir())
    assert json.loads((out / "summary.json").read_text())["iterations"] == 6


def test_a_snapshot_that_no_longer_fits_its_model_is_not_refreshed():
    from rlgf_cli.training.checkpoint_writer import _refresh_model

    snap = torch.nn.Linear(3, 4)
    before = snap.weight.detach().clone()
    assert not _refresh_model(snap, torch.nn.Linear(3, 5))  # another shape
    assert not _refresh_model(snap, torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4)))  # more tensors
    assert torch.equal(snap.weight, before)
    live = torch.nn.Linear(3, 4)
    assert _refresh_model(snap, live)
    assert torch.equal(snap.weight, live.weight) and torch.equal(snap.bias, live.bias)
    assert snap.weight.data_ptr() != live.weight.data_ptr()
