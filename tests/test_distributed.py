"""Data parallelism: two gloo processes equal one process with twice the episodes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _common(learner, reward, out, alg_args):
    return ["train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
            "--iterations", "2", "--epochs", "2", "--max-new-tokens", "6", "--device", "cpu", "--quiet",
            "--lr", "1e-3", "--seed", "3", "--rollout-batch-size", "2", *alg_args,
            # fp32 on every machine: under bf16 (what auto picks on an AMX CPU) the two layouts'
            # different batch shapes round differently, beyond the 1e-5 compared here
            "--precision", "fp32"]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None
                    and shutil.which("torchrun") is None, reason="torchrun not installed")
@pytest.mark.parametrize("alg_args", [[], ["--alg", "lols", "--guide", "GUIDE"]], ids=["ppo", "lols"])
def test_two_ranks_equal_one_process_with_twice_the_episodes(tmp_path, tiny_causal_dir, tiny_reward_dir, alg_args):
    alg_args = [str(tiny_causal_dir) if a == "GUIDE" else a for a in alg_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    one = subprocess.run(
        [sys.executable, "-m", "rlgf_cli", *_common(tiny_causal_dir, tiny_reward_dir, single, alg_args),
         "--episodes", "8", "--minibatch-size", "4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert one.returncode == 0, one.stderr
    multi = tmp_path / "multi"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "rlgf_cli",
         *_common(tiny_causal_dir, tiny_reward_dir, multi, alg_args), "--episodes", "4", "--minibatch-size", "2",
         "--json", "-"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-4000:]
    assert json.loads(two.stdout)["iterations"] == 2, "one summary for scripts, from rank 0, not one per rank"
    a, b = _metrics(single), _metrics(multi)
    assert [m["iteration"] for m in b] == [1, 2], "rank 0 alone logs each iteration once"
    for ma, mb in zip(a, b):
        for key in ("reward_mean", "kl", "pg_loss", "v_loss", "learner_tokens", "guide_tokens", "response_length"):
            if key in ma:
                assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-5), key
    from safetensors.torch import load_file

    # the updates agree (Adam turns float noise in near-zero gradients into ±lr steps, so
    # compare the change from the start weights as a whole, not element by element)
    w0 = load_file(Path(tiny_causal_dir) / "model.safetensors")
    wa = load_file(single / "final" / "model.safetensors")
    wb = load_file(multi / "final" / "model.safetensors")
    diff = sum(float(((wa[k] - wb[k]) ** 2).sum()) for k in wa) ** 0.5
    step = sum(float(((wa[k] - w0[k]) ** 2).sum()) for k in wa) ** 0.5
    print(f"relative difference of the updates: {diff / step:.2e}")
    assert step > 0 and diff / step < 0.05, (diff, step)
    assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == ["iter-0001", "iter-0002"]
