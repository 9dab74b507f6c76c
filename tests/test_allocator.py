"""The memory allocator: `rlgf` restarts itself under tcmalloc where it is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends import allocator
from backends.errors import RlgfError

ROOT = Path(__file__).resolve().parents[1]
LIB = "/opt/lib/libtcmalloc_minimal.so.4"


def test_the_choice_comes_from_the_environment():
    assert allocator.choice({}) == "auto"
    assert allocator.choice({"RLGF_ALLOCATOR": " System "}) == "system"
    with pytest.raises(RlgfError, match="RLGF_ALLOCATOR='fast' is not one of auto, tcmalloc, system"):
        allocator.choice({"RLGF_ALLOCATOR": "fast"})


def test_the_plan_restarts_the_same_command_with_tcmalloc_preloaded():
    argv, env = allocator.reexec_plan(["/venv/bin/python", "/venv/bin/rlgf", "train", "--out", "x y"],
                                      {"PATH": "/bin"}, platform="linux", library=LIB)
    assert argv == [sys.executable, "/venv/bin/rlgf", "train", "--out", "x y"]
    assert env["LD_PRELOAD"] == LIB and env["PATH"] == "/bin" and env[allocator.REEXEC_MARK] == "1"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40  # no "large alloc" noise
    # another preloaded library is kept, after tcmalloc; a user's own threshold wins
    _, env = allocator.reexec_plan(["rlgf"], {"LD_PRELOAD": "/x/libfoo.so", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"},
                                   platform="linux", library=LIB)
    assert env["LD_PRELOAD"] == f"{LIB} /x/libfoo.so" and env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"


@pytest.mark.parametrize("environ, platform", [
    ({"RLGF_ALLOCATOR": "system"}, "linux"),
    ({allocator.REEXEC_MARK: "1"}, "linux"),  # already restarted once: a preload the loader ignored cannot loop
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "linux"),  # the user chose an allocator
    ({"LD_PRELOAD": "libtcmalloc.so.4"}, "linux"),
    ({}, "darwin"),
])
def test_no_restart_when_not_wanted_or_not_possible(environ, platform):
    assert allocator.reexec_plan(["rlgf", "tasks"], environ, platform=platform, library=LIB) is None


def test_a_missing_tcmalloc_is_fine_unless_asked_for():
    assert allocator.reexec_plan(["rlgf"], {}, platform="linux", library=None) is None
    with pytest.raises(RlgfError, match="no tcmalloc library was found"):
        allocator.reexec_plan(["rlgf"], {"RLGF_ALLOCATOR": "tcmalloc"}, platform="linux", library=None)


def test_find_tcmalloc_looks_in_the_python_prefix_first(tmp_path):
    lib = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    assert allocator.find_tcmalloc([tmp_path]) == str(lib)


def test_preloaded_names_the_allocator_kind():
    assert allocator.preloaded({"LD_PRELOAD": "/a/libfoo.so:/b/libjemalloc.so.2"}) == "jemalloc"
    assert allocator.preloaded({"LD_PRELOAD": ""}) is None and allocator.preloaded({}) is None
    assert allocator.current() in ("tcmalloc", "jemalloc", "system")


def _train(tmp_path, name, learner, reward, **env):
    out = tmp_path / name
    base = {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "RLGF_ALLOCATOR", allocator.REEXEC_MARK)}
    proc = subprocess.run(
        [sys.executable, "-m", "rlgf_cli", "train", "--learner", str(learner), "--reward-model", str(reward),
         "--out", str(out), "--iterations", "1", "--episodes", "4", "--max-new-tokens", "4", "--device", "cpu",
         "--seed", "1", "--precision", "fp32", "--save-every", "0"],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=300,
    )
    return proc, out


def test_a_bad_choice_is_one_error_line(tmp_path, tiny_causal_dir, tiny_reward_dir):
    proc, out = _train(tmp_path, "bad", tiny_causal_dir, tiny_reward_dir, RLGF_ALLOCATOR="fastest")
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        "[error] RLGF_ALLOCATOR='fastest' is not one of auto, tcmalloc, system — "
        "unset it (auto: tcmalloc where installed) or set RLGF_ALLOCATOR=system"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator.find_tcmalloc() is None,
                    reason="tcmalloc is not installed (Debian: libtcmalloc-minimal4)")
def test_rlgf_runs_under_tcmalloc_with_the_same_numbers(tmp_path, tiny_causal_dir, tiny_reward_dir):
    fast, fast_out = _train(tmp_path, "auto", tiny_causal_dir, tiny_reward_dir)
    plain, plain_out = _train(tmp_path, "system", tiny_causal_dir, tiny_reward_dir, RLGF_ALLOCATOR="system")
    assert fast.returncode == 0 and plain.returncode == 0, fast.stderr + plain.stderr
    assert "memory allocator tcmalloc" in fast.stderr and "memory allocator system" in plain.stderr
    assert "large alloc" not in fast.stderr
    summaries = [json.loads((o / "summary.json").read_text()) for o in (fast_out, plain_out)]
    assert [s["allocator"] for s in summaries] == ["tcmalloc", "system"]
    metrics = [json.loads((o / "metrics.jsonl").read_text().splitlines()[0]) for o in (fast_out, plain_out)]
    for key in ("reward_mean", "pg_loss", "v_loss", "kl_exact"):  # an allocator does not change arithmetic
        assert metrics[0][key] == metrics[1][key], key
