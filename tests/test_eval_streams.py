"""A seeded evaluation samples each prompt from its own random stream: its completions do not
depend on ``--batch-size`` or ``--limit`` (exactly so in float32)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from backends.base import Sampling
from backends.hf.decode import lockstep_generate
from rlgf_cli.app import app
from rlgf_cli.evaluation.evaluate import row_stream

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


def completions(tmp_path, tiny_causal_dir, tiny_reward_dir, *args) -> list[str]:
    out = tmp_path / f"samples-{'-'.join(args)}.jsonl"
    result = runner.invoke(app, [
        "eval", "-p", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir), "--max-new-tokens", "10",
        "--device", "cpu", "--precision", "fp32", "--reference", "none", "--quiet", "--samples", str(out), *args,
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    return [json.loads(line)["completion"] for line in out.read_text().splitlines()]


def test_completions_do_not_depend_on_the_batch_size_or_the_limit(tmp_path, tiny_causal_dir, tiny_reward_dir):
    one_batch = completions(tmp_path, tiny_causal_dir, tiny_reward_dir, "--limit", "6", "--batch-size", "6")
    assert completions(tmp_path, tiny_causal_dir, tiny_reward_dir, "--limit", "6", "--batch-size", "2") == one_batch
    assert completions(tmp_path, tiny_causal_dir, tiny_reward_dir, "--limit", "3", "--batch-size", "6") == one_batch[:3]
    other_seed = completions(tmp_path, tiny_causal_dir, tiny_reward_dir, "--limit", "6", "--seed", "1")
    assert other_seed != one_batch  # the seed still decides


def test_row_streams_are_distinct_and_reproducible():
    draws = {(s, i): torch.rand(1, generator=row_stream(s, i, "cpu")).item() for s in (0, 1) for i in (0, 1, 2)}
    assert len(set(draws.values())) == 6
    assert torch.rand(1, generator=row_stream(1, 2, "cpu")).item() == draws[(1, 2)]


def test_the_loop_takes_one_generator_per_row_and_only_without_a_roll_in(tiny_causal_dir):
    from backends.hf.policy import HFPolicy

    policy = HFPolicy.load(str(tiny_causal_dir), device="cpu")
    q, qm = policy.encode_prompts(["a b", "c d e"], 16)
    with pytest.raises(ValueError, match="one per row"):
        lockstep_generate(policy, q, qm, max_new_tokens=3, sampling=Sampling(do_sample=True, top_k=5),
                          row_generators=[row_stream(0, 0, "cpu")])
    with pytest.raises(ValueError, match="one per row"):
        lockstep_generate(policy, q, qm, max_new_tokens=3, sampling=Sampling(do_sample=True, top_k=5),
                          roll_in=policy, restart=torch.tensor([1, 1]),
                          row_generators=[row_stream(0, i, "cpu") for i in range(2)])
