"""The decoding loop with encoder-decoder models (the paper's CommonGen learner is T5).

T5's decoder cannot rewind a row in place (its relative positions count cache columns), so
rows whose roll-in ends early are rolled out in a second pass that replays their prefix; the
tests check that against full forward passes without a cache.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import bias_lm_head, greedy_reference, make_tiny_seq2seq

from backends.hf import generate as hf_generate
from backends.base import GREEDY, Sampling
from backends.hf.decode import lockstep_generate
from backends.hf.policy import HFPolicy

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["dog frisbee catch", "a", "mountain climb rope top", "xy"]


def t5(seed: int, *, eos_bias: float = 0.0) -> HFPolicy:
    model, tokenizer = make_tiny_seq2seq(seed)
    if eos_bias:
        bias_lm_head(model, tokenizer.eos_token_id, eos_bias)
    return HFPolicy(model, tokenizer, spec=f"tiny-t5-{seed}")


@pytest.mark.parametrize("sampling", [GREEDY, Sampling(top_k=50), Sampling(temperature=0.7, top_p=0.9)],
                         ids=lambda s: s.describe())
@pytest.mark.usefixtures("generate_draws")
def test_plain_loop_matches_generate(sampling):
    p = t5(0, eos_bias=1.0)
    q, qm = p.encode_prompts(PROMPTS * 3)
    torch.manual_seed(3)
    ref, ref_mask = hf_generate.generate(p, q, qm, max_new_tokens=10, min_new_tokens=2, sampling=sampling)
    torch.manual_seed(3)
    out, mask, _ = lockstep_generate(p, q, qm, max_new_tokens=10, min_new_tokens=2, sampling=sampling)
    assert torch.equal(out, ref) and torch.equal(mask, ref_mask)


def test_roll_in_then_roll_out():
    guide, learner = t5(1), t5(2)
    prompts = PROMPTS * 2
    q, qm = learner.encode_prompts(prompts)
    restart = torch.tensor([0, 1, 3, 7, 5, 2, 0, 6])
    out, mask, k = lockstep_generate(learner, q, qm, max_new_tokens=8, sampling=GREEDY, roll_in=guide, restart=restart)
    assert k.tolist() == restart.tolist()
    for i, ki in enumerate(k.tolist()):
        row = out[i, : int(mask[i].sum())].tolist()
        head = greedy_reference(guide, prompts[i], [], ki)
        assert row[:ki] == head
        assert row[ki:] == greedy_reference(learner, prompts[i], head, 8 - ki), f"row {i}, k={ki}"


def test_roll_in_that_ends_early_is_rolled_out_in_a_second_pass():
    guide = t5(3, eos_bias=40.0)  # writes EOS as soon as it may: after 3 tokens
    learner = t5(4)
    n, L, m = 240, 8, 4
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    q, qm = learner.encode_prompts(prompts)
    planned = torch.randint(1, L, (n,), generator=torch.Generator().manual_seed(0))
    out, mask, k = lockstep_generate(learner, q, qm, max_new_tokens=L, min_new_tokens=m - 1, sampling=GREEDY,
                                     roll_in=guide, restart=planned, generator=torch.Generator().manual_seed(1))
    ks = k.tolist()
    assert min(ks) == 1 and max(ks) == m - 1
    assert sum(b >= m for b in planned.tolist()) > 50  # many rows took the second pass
    assert all(a == b for a, b in zip(ks, planned.tolist()) if b < m)
    counts = Counter(ks)
    assert all(55 <= counts[j] <= 105 for j in range(1, m)), counts  # 80 expected each (sd ≈ 7.3)
    for i in range(0, n, 23):
        ki, length = ks[i], int(mask[i].sum())
        row = out[i, :length].tolist()
        head = greedy_reference(guide, prompts[i], [], ki, min_new=m - 1)
        assert row[:ki] == head
        assert row[ki:] == greedy_reference(learner, prompts[i], head, L - ki, min_new=m - 1), f"row {i}, k={ki}"


def test_second_pass_with_pad_equal_to_eos():
    """Tokenizers without a pad token pad with EOS: the replayed prefixes are padded with it, and
    the second pass must not forbid the only token a replayed row can take."""
    learner, guide = t5(5), t5(4, eos_bias=40.0)
    for p in (learner, guide):
        p.pad_id = p.eos_id
    prompts = PROMPTS * 8
    q, qm = learner.encode_prompts(prompts)
    planned = torch.randint(0, 10, (len(prompts),), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out, mask, k = lockstep_generate(learner, q, qm, max_new_tokens=10, min_new_tokens=5, sampling=Sampling(top_k=20),
                                     roll_in=guide, restart=planned, generator=torch.Generator().manual_seed(1))
    assert max(k.tolist()) <= 5 and int(mask.sum(1).min()) >= 5
