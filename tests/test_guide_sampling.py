"""``--guide-temperature/--guide-top-k/--guide-top-p``: the guide samples its roll-ins with its
own settings, the learner keeps the task's; out-of-range values are one ``[error]`` line."""

from __future__ import annotations

import pytest
import torch
from conftest import greedy_reference, make_tiny_causal
from test_guided_training import TASK, L, build, tokenizer  # noqa: F401  (the fixture)
from typer.testing import CliRunner

from backends.hf.policy import HFPolicy
from rlgf_cli.app import app
from rlgf_cli.training.algorithms import PPO_PP

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def guide_prefixes(tokenizer, **options) -> tuple[list[tuple[str, list[int]]], HFPolicy, object]:
    """PPO++ at β = 1 (every episode rolls in) with a random tiny guide: per row, the prompt and
    the tokens the guide wrote."""
    guide = HFPolicy(make_tiny_causal(tokenizer, seed=4)[0], tokenizer)
    trainer = build("ppo++", tokenizer, guide=guide, beta=1.0, **options)
    examples = TASK.examples("train")[:12]
    torch.manual_seed(0)
    batch = trainer.engine.collect(examples, PPO_PP, 1.0, torch.Generator().manual_seed(3), 12)
    rows = []
    for i, k in enumerate(batch.restart.tolist()):
        assert batch.guide_mask[i, :k].all() and not batch.guide_mask[i, k:].any()
        rows.append((batch.prompts[i], batch.response[i, :k].tolist()))
    return rows, guide, trainer


def test_the_guide_samples_with_its_own_top_k(tokenizer):
    rows, guide, trainer = guide_prefixes(tokenizer, guide_top_k=1)
    assert trainer.engine.guide_sampling.top_k == 1
    assert trainer.engine.sampling == TASK.train_sampling  # the learner's stays the task's
    assert sum(len(prefix) for _, prefix in rows) > 12
    for prompt, prefix in rows:  # top-k 1: every roll-in token is the guide's most likely one
        assert prefix == greedy_reference(guide, prompt, [], len(prefix), min_new=L)


def test_without_the_options_the_guide_samples_as_the_learner(tokenizer):
    rows, guide, trainer = guide_prefixes(tokenizer)
    assert trainer.engine.guide_sampling == trainer.engine.sampling == TASK.train_sampling
    differs = [prefix != greedy_reference(guide, prompt, [], len(prefix), min_new=L) for prompt, prefix in rows]
    assert any(differs)  # the same check as above can fail: it tells sampling from top-k 1


@pytest.mark.parametrize("flag, value, message", [("--guide-top-p", "1.5", "top-p 1.5"),
                                                  ("--guide-temperature", "0", "temperature 0.0"),
                                                  ("--guide-top-k", "-1", "top-k -1")])
def test_out_of_range_guide_sampling_is_one_error_line(tmp_path, flag, value, message):
    result = CliRunner().invoke(app, ["train", "--alg", "ppo++", "--guide", "hf:gpt2", flag, value,
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert f"--guide-* sampling out of range: {message}" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_guide_sampling_without_a_guide_is_said_to_be_ignored():
    from rlgf_cli.commands.train import ignored_options
    from rlgf_cli.training.config import build_config

    notes = ignored_options(build_config(None, alg="ppo", guide_top_p=0.9, guide_top_k=40))
    assert notes == ["--alg ppo does not use --guide-top-k; it is ignored",
                     "--alg ppo does not use --guide-top-p; it is ignored"]
    assert ignored_options(build_config(None, alg="ppo++", guide="g", guide_top_p=0.9)) == []
