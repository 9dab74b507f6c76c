"""What a user meets around the runtime: processes launched by hand, devices, and the environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.errors import RlgfError

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rlgf(args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "rlgf_cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("[error]")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "frame #" not in stderr and "unexpected" not in errors[0], stderr[-3000:]
    return errors[0]


# -- ranks launched without torchrun ---------------------------------------------------------


def test_a_rank_whose_rank_0_failed_before_joining_stops_in_bounded_time(tmp_path, tiny_causal_dir, tiny_reward_dir):
    """Rank 0 stops at once (its --out is being trained by another live process); rank 1, started
    by hand (no torchrun to stop it), used to wait in init_process_group for 30 minutes."""
    from rlgf_cli.training.run_lock import RunLock

    out = tmp_path / "run"
    out.mkdir()
    holder = RunLock(out)
    assert holder.acquire()  # "another rlgf train" (this test process) holds the folder
    port = _free_port()
    common = ["train", "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir), "--out", str(out),
              "--iterations", "1", "--episodes", "2", "--max-new-tokens", "4", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "RLGF_RENDEZVOUS_TIMEOUT": "3"}
    for key in ("TORCHELASTIC_RUN_ID", "RLGF_DEBUG"):
        env.pop(key, None)
    try:
        rank0 = _rlgf(common, {**env, "RANK": "0", "LOCAL_RANK": "0"})
        assert rank0.returncode == 1
        assert "being trained by another process" in _one_error_line(rank0.stderr)
        started = time.monotonic()
        rank1 = _rlgf(common, {**env, "RANK": "1", "LOCAL_RANK": "1"})  # TimeoutExpired: it hung
        took = time.monotonic() - started
    finally:
        holder.release()
    assert rank1.returncode == 1, rank1.stderr[-3000:]
    line = _one_error_line(rank1.stderr)
    assert "rank 1 of 2 could not join rank 0 at 127.0.0.1:" in line and "within 3 s" in line, line
    assert "torchrun" in line and "RLGF_RENDEZVOUS_TIMEOUT" in line, line
    assert took < 90, took
    assert sorted(p.name for p in out.iterdir()) == [], "rank 1 wrote nothing into the folder"


@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number >= 1"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not a whole number >= 1"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "-1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK='-1' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1"}, "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h"}, "MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "x"}, "MASTER_PORT='x'"),
])
def test_bad_launch_variables_are_refused_before_any_wait(env, says):
    from rlgf_cli.training.distributed import launch_from_env

    started = time.monotonic()
    with pytest.raises(RlgfError) as info:
        launch_from_env(env)  # what init_from_env checks first, before it waits for anyone
    assert says in info.value.message
    assert "torchrun" in info.value.hint
    assert time.monotonic() - started < 1
    assert launch_from_env({}) == (1, 0, 0) and launch_from_env({"WORLD_SIZE": "1"}) == (1, 0, 0)
    assert launch_from_env({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}) == (2, 1, 0)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_rendezvous_timeout_is_refused(monkeypatch, value):
    from rlgf_cli.training.distributed import RENDEZVOUS_ENV, rendezvous_timeout

    monkeypatch.setenv(RENDEZVOUS_ENV, value)
    with pytest.raises(RlgfError, match=RENDEZVOUS_ENV):
        rendezvous_timeout()
    monkeypatch.setenv(RENDEZVOUS_ENV, "2.5")
    assert rendezvous_timeout() == 2.5


def test_a_junk_world_size_is_one_error_line_from_the_cli(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "many"}
    env.pop("TORCHELASTIC_RUN_ID", None)
    env.pop("RLGF_DEBUG", None)
    done = _rlgf(["train", "--out", str(tmp_path / "run"), "--device", "cpu", "--iterations", "1"], env)
    assert done.returncode == 1
    assert "WORLD_SIZE='many' is not a whole number" in _one_error_line(done.stderr)
    assert not (tmp_path / "run").exists()


# -- devices and caches ----------------------------------------------------------------------


def test_mps_without_mps_is_an_rlgf_error():
    import torch

    from backends.device import resolve_device

    if torch.backends.mps.is_available():
        pytest.skip("needs a machine without MPS")
    with pytest.raises(RlgfError, match="no MPS device") as info:
        resolve_device("mps")
    assert "--device cpu" in info.value.hint


def test_compile_cache_under_a_cache_dir_that_is_a_file_is_an_rlgf_error(tmp_path, monkeypatch):
    from backends.hf.compiled import INDUCTOR_ENV, inductor_cache

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(blocker))
    with pytest.raises(RlgfError, match="cannot make the cache folder") as info:
        inductor_cache()
    assert "RLGF_CACHE_DIR" in info.value.hint
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))
    assert inductor_cache() == tmp_path / "cache" / "inductor"


def test_an_inductor_cache_dir_that_is_a_file_is_one_error_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(blocker)}
    env.pop("RLGF_DEBUG", None)
    done = _rlgf(["train", "--out", str(tmp_path / "run"), "--device", "cpu", "--iterations", "1"], env)
    assert done.returncode == 1
    assert "TORCHINDUCTOR_CACHE_DIR" in _one_error_line(done.stderr)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, on", [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False),
                                       ("False", False), ("off", False), ("", False)])
def test_rlgf_debug_reads_words_as_people_write_them(monkeypatch, value, on):
    from backends.errors import debug_on

    monkeypatch.setenv("RLGF_DEBUG", value)
    assert debug_on() is on


@pytest.mark.parametrize("value, says", [("nan", "finite number > 0"), ("inf", "finite number > 0"),
                                         ("0", "finite number > 0"), ("-1", "finite number > 0")])
def test_guide_timeouts_that_cannot_be_waited_for_are_refused(monkeypatch, value, says):
    from backends.openai_api.policy import guide_env_options

    monkeypatch.setenv("RLGF_GUIDE_TIMEOUT", value)
    with pytest.raises(RlgfError, match=says):
        guide_env_options()
    monkeypatch.setenv("RLGF_GUIDE_TIMEOUT", "2.5")
    monkeypatch.setenv("RLGF_GUIDE_MAX_RETRIES", "0")  # no retries is a choice, not an error
    assert guide_env_options() == {"timeout": 2.5, "max_retries": 0}


def test_a_cache_dir_that_cannot_be_made_names_the_variable(tmp_path, monkeypatch):
    from backends.cache import cache_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RLGF_CACHE_DIR", str(blocker))
    with pytest.raises(RlgfError, match="cannot make the cache folder") as err:
        cache_dir("models")
    assert "RLGF_CACHE_DIR" in err.value.hint


def test_once_joined_the_store_waits_as_long_as_the_process_group(monkeypatch):
    """The join waits RLGF_RENDEZVOUS_TIMEOUT; later store reads (NCCL's set-up at the first
    collective) must not inherit that short wait."""
    import socket
    from datetime import timedelta

    import torch.distributed as dist

    from rlgf_cli.training.distributed import _rendezvous

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("RLGF_RENDEZVOUS_TIMEOUT", "7")
    _rendezvous(dist, "gloo", 1, 0)
    try:
        assert dist.distributed_c10d._get_default_store().timeout == timedelta(minutes=30)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("env, shown", [({}, True), ({"WORLD_SIZE": "2", "RANK": "0"}, True),
                                        ({"WORLD_SIZE": "2", "RANK": "1"}, False), ({"RANK": "1"}, True),
                                        ({"WORLD_SIZE": "2", "RANK": "x"}, True)])
def test_rlgf_warnings_are_said_once_by_rank_0(monkeypatch, capsys, env, shown):
    from backends.errors import RlgfWarning
    from rlgf_cli.commands import console

    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(console, "err_console", console.Console(stderr=True, highlight=False))
    console._show_warning(RlgfWarning("prompts longer than 64 tokens lose their start"), RlgfWarning, "x.py", 1)
    assert ("warning: prompts longer than 64 tokens" in capsys.readouterr().err) is shown
