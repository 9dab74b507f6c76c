"""The one device resolver, the one seed derivation and the one greedy-decoding test."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from backends.base import GREEDY, Sampling
from backends.errors import RlgfError
from rlgf_cli.runtime import derive_seed, resolve_device, set_seed

# -- devices ------------------------------------------------------------------------------------


def test_auto_picks_cuda_only_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device(None) == expected


def test_explicit_devices_are_kept_and_named_as_torch_names_them():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"


def test_unknown_device_is_an_rlgf_error():
    with pytest.raises(RlgfError, match="unknown device 'nonsense'") as info:
        resolve_device("nonsense")
    assert "auto" in info.value.hint


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused(name):
    with pytest.raises(RlgfError, match="no CUDA device") as info:
        resolve_device(name)
    assert "--device cpu" in info.value.hint


def test_every_caller_uses_the_one_resolver():
    import backends.hf.policy
    import rlgf_cli.training.run
    import tasks.scoring.sentiment_reward
    from backends import device

    for module in (backends.hf.policy, rlgf_cli.training.run, tasks.scoring.sentiment_reward):
        assert module.resolve_device is device.resolve_device


# -- seeds --------------------------------------------------------------------------------------


def test_derive_seed_known_values():
    assert derive_seed(0) == 0
    assert derive_seed(12345) == 12345
    assert derive_seed(3, 7) == 3_000_016  # 3 · 1_000_003 + 7: the PPO minibatch order of iteration 7
    assert derive_seed(0, 5) == 5
    # a rollout part's seed (iteration 2, part 1 of seed 1), then its chunk at global index 32
    part = derive_seed(derive_seed(1, 2), 1, stride=16)
    assert part == 16_000_081
    assert derive_seed(part, 32) == 16_000_129_000_275


def test_derive_seed_matches_the_call_sites_formulas():
    """The numbers earlier versions computed inline, so runs (and their checkpoints) replay."""
    for seed in (0, 1, 7, 123_456):
        for it in (0, 1, 99):
            assert derive_seed(seed, it) == seed * 1000003 + it
            for part_index in range(3):
                part = derive_seed(derive_seed(seed, it), part_index, stride=16)
                assert part == (seed * 1_000_003 + it) * 16 + part_index
                for index in (0, 16, 1000):
                    assert derive_seed(part, index) == (part * 1_000_003 + index) % (2**63)


def test_derive_seed_stays_a_valid_torch_seed():
    huge = derive_seed(2**70 + 5, 3)
    assert 0 <= huge < 2**63
    torch.Generator().manual_seed(huge)  # would overflow without the modulus
    assert derive_seed(2**63 + 1) == 1


def test_set_seed_seeds_python_numpy_and_torch():
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    set_seed(11)
    first = draws()
    set_seed(11)
    assert draws() == first
    set_seed(12)
    assert draws() != first


# -- greedy decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampling, greedy, deterministic",
    [
        (Sampling(), False, False),
        (Sampling(temperature=0.7, top_k=50), False, False),
        (Sampling(do_sample=False), True, True),
        (Sampling(do_sample=True, temperature=0.0), True, True),
        (Sampling(do_sample=False, num_beams=5), True, True),
        (GREEDY, True, True),
    ],
)
def test_is_greedy_and_is_deterministic(sampling, greedy, deterministic):
    assert sampling.is_greedy is greedy
    assert sampling.is_deterministic is deterministic


def test_the_backends_and_the_cli_share_the_greedy_test():
    from backends.hf.decode import choose
    from backends.openai_api.payload import sampling_params
    from rlgf_cli.evaluation.decoding import resolve_sampling

    at_zero = Sampling(do_sample=True, temperature=0.0, top_k=5)
    assert at_zero.describe() == "greedy"
    assert sampling_params(at_zero) == {"temperature": 0}
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    assert choose(logits, at_zero).tolist() == [1, 0]
    assert resolve_sampling(Sampling(), "sample", temperature=0) == GREEDY
    assert resolve_sampling(GREEDY, "sample") == Sampling(do_sample=True)  # greedy base: plain sampling


def test_hf_generate_does_not_sample_at_temperature_zero():
    from types import SimpleNamespace

    from backends.hf.generate import _generation_config

    policy = SimpleNamespace(pad_id=0, eos_ids=[2], bos_id=1, is_seq2seq=False)
    cfg = _generation_config(policy, max_new=4, min_new=0, sampling=Sampling(temperature=0.0), output_logits=False)
    assert cfg.do_sample is False
    cfg = _generation_config(policy, max_new=4, min_new=0, sampling=Sampling(temperature=0.5, top_k=3),
                             output_logits=False)
    assert cfg.do_sample is True and cfg.top_k == 3
