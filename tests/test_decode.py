"""rlgf's own decoding loop (:mod:`backends.hf.decode`).

Checked against ``model.generate`` (the same tokens for the same seed), against full forward
passes without a cache (the roll-out continues the right state, also after a rewind), and
statistically (restart points of roll-ins that end early are uniform over their length).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import (
    bias_lm_head,
    greedy_reference,
    make_byte_tokenizer,
    make_tiny_causal,
    make_tiny_gpt2,
    make_tiny_seq2seq,
)

from backends.hf import generate as hf_generate
from backends.base import GREEDY, Sampling
from backends.hf.decode import can_step, choose, lockstep_generate, warp
from backends.hf.policy import HFPolicy

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["hello there", "a", "the quick brown fox", "xy"]


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


ARCHS = {"llama": make_tiny_causal, "gpt2": make_tiny_gpt2}  # rotary / absolute positions
#: the equality tests also run on a GPU where there is one (bench/gpu_check.sh runs them there)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def policy(tokenizer, seed: int, *, eos_bias: float = 0.0, arch: str = "llama", device: str = "cpu") -> HFPolicy:
    """A random tiny Llama (or GPT-2); ``eos_bias`` adds to the EOS logit (so responses end early)."""
    model, _ = ARCHS[arch](tokenizer, seed=seed)
    if eos_bias:
        bias_lm_head(model, tokenizer.eos_token_id, eos_bias)
    model.to(device)
    return HFPolicy(model, tokenizer, spec=f"tiny-{seed}")


#: "graphs" needs CUDA; on CPU it is static mode with graphs asked for (and ignored)
MODES = ["dynamic", "static", "graphs"]


def run_mode(mode: str, roll_out, *args, roll_in=None, **kwargs):
    """``lockstep_generate`` in one of the loop's modes."""
    policies = [p for p in (roll_out, roll_in) if p is not None]
    for p in policies:
        p.cuda_graphs = mode == "graphs"
    try:
        return lockstep_generate(roll_out, *args, roll_in=roll_in, static=mode == "static", **kwargs)
    finally:
        for p in policies:
            p.cuda_graphs = False


SAMPLINGS = [GREEDY, Sampling(top_k=50), Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.3, top_k=5)]


@pytest.mark.usefixtures("generate_draws")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: s.describe())
def test_plain_loop_matches_generate(tokenizer, sampling, arch, device, mode):
    """Same seed, same tokens and lengths as ``model.generate`` (EOS-prone model, min length),
    in the default mode, in static mode and with CUDA graphs."""
    p = policy(tokenizer, 0, eos_bias=1.0, arch=arch, device=device)
    q, qm = p.encode_prompts(PROMPTS * 4)
    torch.manual_seed(11)
    ref, ref_mask = hf_generate.generate(p, q, qm, max_new_tokens=12, min_new_tokens=2, sampling=sampling)
    torch.manual_seed(11)
    out, mask, restart = run_mode(mode, p, q, qm, max_new_tokens=12, min_new_tokens=2, sampling=sampling)
    assert torch.equal(out, ref) and torch.equal(mask, ref_mask)
    assert restart.tolist() == [0] * len(q)
    lengths = mask.sum(1).tolist()
    assert min(lengths) >= 2 and lengths.count(12) < len(lengths)  # EOS ended rows, never before 2 tokens
    if sampling.do_sample:
        assert len(set(lengths)) > 1


@pytest.mark.usefixtures("generate_draws")
def test_hf_policy_generate_uses_the_loop(tokenizer):
    p = policy(tokenizer, 0)
    q, qm = p.encode_prompts(PROMPTS)
    calls = []
    original = p.model.generate
    p.model.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    torch.manual_seed(5)
    mine = p.generate(q, qm, max_new_tokens=6, sampling=Sampling(top_k=20))
    assert calls == []
    p.use_hf_generate = True
    torch.manual_seed(5)
    theirs = p.generate(q, qm, max_new_tokens=6, sampling=Sampling(top_k=20))
    assert calls == [1]
    assert torch.equal(mine[0], theirs[0])


def test_logprobs_are_the_generating_models(tokenizer):
    p = policy(tokenizer, 1, eos_bias=2.0)
    q, qm = p.encode_prompts(PROMPTS)
    torch.manual_seed(0)
    response, mask, lp = p.generate(q, qm, max_new_tokens=10, sampling=Sampling(top_k=30), output_logprobs=True)
    with torch.no_grad():
        scored = p.response_logprobs(q, qm, response, mask)
    assert torch.allclose(lp, scored * mask, atol=1e-5)


@pytest.mark.parametrize("sampling", SAMPLINGS[1:], ids=lambda s: s.describe())
def test_warp_matches_transformers_warpers(sampling):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3
    expected = logits
    if sampling.temperature != 1:
        expected = TemperatureLogitsWarper(sampling.temperature)(None, expected)
    if sampling.top_k:
        expected = TopKLogitsWarper(sampling.top_k)(None, expected)
    if sampling.top_p < 1:
        expected = TopPLogitsWarper(sampling.top_p)(None, expected)
    assert torch.equal(warp(logits, sampling), expected)


@pytest.mark.parametrize("sampling", [Sampling(top_k=4), Sampling(top_k=5, temperature=0.7, top_p=0.8),
                                      Sampling(top_k=3, temperature=1.6)], ids=lambda s: s.describe())
@pytest.mark.parametrize("draw", ["candidates", "generate"])
def test_draws_follow_the_warped_distribution(sampling, draw, monkeypatch):
    """``choose``'s frequencies match the probabilities of the warped distribution (within 4.5
    standard errors over 40,000 draws), and it never draws outside the kept tokens: drawing
    among the top-k candidates (the default) and over the whole vocabulary alike."""
    from backends.hf import decode

    monkeypatch.setattr(decode, "DRAW", draw)
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 1.2, -0.3, 2.6, 0.0, 1.9, -2.0])
    exact = warp(logits[None], sampling).softmax(-1)[0]
    torch.manual_seed(0)
    draws = choose(logits.expand(40_000, -1), sampling)
    freq = torch.bincount(draws, minlength=logits.numel()).double() / draws.numel()
    assert set(draws.unique().tolist()) == set(torch.nonzero(exact).flatten().tolist())
    se = (exact.double() * (1 - exact.double()) / draws.numel()).sqrt()
    assert torch.all((freq - exact.double()).abs() <= 4.5 * se + 1e-12), (freq, exact)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_roll_in_then_roll_out_continue_the_right_states(tokenizer, arch, device, mode):
    """Each row: the roll-in model's greedy tokens up to k, then the roll-out model's greedy
    continuation of prompt + that prefix (checked by full forward passes without a cache)."""
    guide, learner = policy(tokenizer, 2, arch=arch, device=device), policy(tokenizer, 3, arch=arch, device=device)
    prompts = PROMPTS * 2
    q, qm = learner.encode_prompts(prompts)
    restart = torch.tensor([0, 1, 3, 7, 5, 2, 0, 6])
    L = 8
    out, mask, k = run_mode(mode, learner, q, qm, max_new_tokens=L, sampling=GREEDY, roll_in=guide, restart=restart)
    assert k.tolist() == restart.tolist()  # no roll-in ended early
    for i, ki in enumerate(k.tolist()):
        n = int(mask[i].sum())
        row = out[i, :n].tolist()
        head = greedy_reference(guide, prompts[i], [], ki)
        assert row[:ki] == head
        assert row[ki:] == greedy_reference(learner, prompts[i], head, L - ki), f"row {i}, k={ki}"


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ARCHS)
def test_roll_in_that_ends_early_redraws_k_and_rewinds(tokenizer, arch, mode):
    """A guide that always ends after 4 tokens (min length 3, then EOS): every switch point
    drawn at 4 or later is redrawn uniformly over {1 … 3} (a row that rolls in keeps at least one
    roll-in token), so the final k is uniform over the roll-in's length less its first position,
    and the learner continues from the rewound state."""
    guide = policy(tokenizer, 4, eos_bias=40.0, arch=arch)
    learner = policy(tokenizer, 5, arch=arch)
    n, L, m = 400, 10, 4
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    q, qm = learner.encode_prompts(prompts)
    planned = torch.randint(1, L, (n,), generator=torch.Generator().manual_seed(0))
    out, mask, k = run_mode(mode, learner, q, qm, max_new_tokens=L, min_new_tokens=m - 1, sampling=GREEDY,
                            roll_in=guide, restart=planned, generator=torch.Generator().manual_seed(1))
    ks = k.tolist()
    assert min(ks) == 1 and max(ks) == m - 1
    assert all(a == b for a, b in zip(ks, planned.tolist()) if b < m)  # kept where the roll-in reached k
    counts = Counter(ks)
    assert all(100 <= counts[j] <= 167 for j in range(1, m)), counts  # expected 133 each (sd ≈ 9.4)
    # every row: guide prefix, then the learner's own continuation of it — checked on a sample
    for i in range(0, n, 37):
        ki, length = ks[i], int(mask[i].sum())
        row = out[i, :length].tolist()
        head = greedy_reference(guide, prompts[i], [], ki, min_new=m - 1)
        assert row[:ki] == head and guide.eos_id not in head
        assert row[ki:] == greedy_reference(learner, prompts[i], head, L - ki, min_new=m - 1), f"row {i}, k={ki}"


def test_roll_in_model_only_runs_its_rows_and_steps(tokenizer):
    guide, learner = policy(tokenizer, 6), policy(tokenizer, 7)
    q, qm = learner.encode_prompts(PROMPTS * 2)
    seen = {"guide": [], "learner": []}
    hooks = [m.model.register_forward_hook(lambda mod, args, kwargs, out, who=who: seen[who].append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True) for who, m in (("guide", guide), ("learner", learner))]
    try:
        restart = torch.tensor([0, 0, 2, 0, 5, 0, 0, 3])
        lockstep_generate(learner, q, qm, max_new_tokens=8, min_new_tokens=8, sampling=GREEDY, roll_in=guide,
                          restart=restart)
    finally:
        for h in hooks:
            h.remove()
    # the learner: one prefill and L − 1 one-token steps over all rows, as a plain generation
    assert seen["learner"] == [(8, q.shape[1])] + [(8, 1)] * 7
    # the guide: its 3 rows only, for max(k) = 5 positions; a row leaves once its roll-in is over
    # (k = 2, 3, 5: the prompt, then token 0 for three rows, token 1 for two, tokens 2 and 3 for one)
    assert seen["guide"] == [(3, q.shape[1]), (3, 1), (2, 1), (1, 1), (1, 1)]


def test_can_step(tokenizer):
    from backends.base import Policy

    assert can_step(policy(tokenizer, 0))
    model, tok = make_tiny_seq2seq()
    assert can_step(HFPolicy(model, tok))
    assert not can_step(Policy("text-only"))  # an API model: text in, text out


def test_static_mode_keeps_shapes_and_addresses(tokenizer):
    """What a CUDA graph needs: after the prefill every step feeds the same shapes, and the KV
    cache and the mask live at the same addresses throughout (rewinds included)."""
    guide = policy(tokenizer, 4, eos_bias=40.0)  # ends after 3 tokens: rows get rewound
    learner = policy(tokenizer, 5)
    q, qm = learner.encode_prompts(PROMPTS * 2)
    seen = []

    def hook(module, args, kwargs, out):
        layer = kwargs["cache"].layers[0] if "cache" in kwargs else kwargs["past_key_values"].layers[0]
        mask = kwargs["attention_mask"]
        seen.append((tuple(kwargs["input_ids"].shape), tuple(mask.shape), mask.data_ptr(),
                     layer._keys.data_ptr() if layer._keys is not None else None))

    handle = learner.model.register_forward_hook(hook, with_kwargs=True)
    try:
        restart = torch.tensor([0, 6, 2, 7, 0, 5, 1, 3])
        lockstep_generate(learner, q, qm, max_new_tokens=8, min_new_tokens=3, sampling=GREEDY, roll_in=guide,
                          restart=restart, generator=torch.Generator().manual_seed(0), static=True)
    finally:
        handle.remove()
    steps = seen[1:]  # after the prefill
    assert len(steps) > 7  # rewound rows made the loop run past L steps
    assert len(set(steps)) == 1  # one shape, one mask buffer, one cache buffer
    (ids_shape, mask_shape, _, _), = set(steps)
    assert ids_shape == (8, 1) and mask_shape == (8, 1, 1, q.shape[1] + 2 * 8 + 1)


def test_cuda_graphs_are_ignored_on_cpu(tiny_causal_dir, tiny_reward_dir):
    from backends import resolve
    from rlgf_cli.training.config import build_config
    from rlgf_cli.training.run import build_task
    from rlgf_cli.training.trainer import Trainer

    cfg = build_config(None, learner=str(tiny_causal_dir), reward_model=str(tiny_reward_dir), device="cpu",
                       cuda_graphs=True)
    assert cfg.cuda_graphs is True
    policy, reference = resolve(str(tiny_causal_dir)), resolve(str(tiny_causal_dir))
    Trainer(cfg, build_task(cfg), policy, reference, policy.make_critic())
    assert policy.cuda_graphs is False  # CPU: nothing to capture


@pytest.mark.usefixtures("generate_draws")
@pytest.mark.parametrize("arch", ARCHS)
def test_finished_rows_leave_the_batch_without_changing_the_samples(tokenizer, arch):
    """Once half the rows have ended, the model decodes only the others — and every row's tokens
    are still exactly ``generate``'s for the same seed (finished rows keep drawing)."""
    p = policy(tokenizer, 0, eos_bias=2.0, arch=arch)
    q, qm = p.encode_prompts(PROMPTS * 6)
    sampling = Sampling(temperature=1.3, top_k=5)
    widths = []
    handle = p.model.register_forward_hook(lambda m, args, kwargs, out: widths.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        torch.manual_seed(2)
        out, mask, _ = lockstep_generate(p, q, qm, max_new_tokens=16, sampling=sampling)
    finally:
        handle.remove()
    torch.manual_seed(2)
    ref, ref_mask = hf_generate.generate(p, q, qm, max_new_tokens=16, sampling=sampling)
    assert torch.equal(out, ref) and torch.equal(mask, ref_mask)
    assert widths[0] == 24 and min(widths) < 12  # compacted at least once, to at most half
    assert widths == sorted(widths, reverse=True)


def test_rewinds_after_finished_rows_left_the_batch(tokenizer):
    """A learner that ends as soon as it may (so its rows leave the batch early) and a guide whose
    roll-ins end later: rows rewound after the compaction still continue from the right state."""
    learner = policy(tokenizer, 5, eos_bias=40.0)
    n, L, min_new = 48, 10, 2
    prompts = [PROMPTS[i % len(PROMPTS)] + f" {i % 7}" for i in range(n)]
    q, qm = learner.encode_prompts(prompts)
    guide = policy(tokenizer, 6)  # unbiased: its greedy roll-ins end (EOS) at different points
    lengths = [len(greedy_reference(guide, p, [], L, min_new=min_new)) for p in prompts]
    # rows whose roll-in ends after the learner's own rows have (after the compaction) but before
    # the switch point roll in to L - 1; all the others roll out at once and end after min_new
    late = [min_new + 1 < m < L for m in lengths]
    assert sum(late) >= 3
    planned = torch.tensor([L - 1 if is_late else 0 for is_late in late])
    out, mask, k = lockstep_generate(learner, q, qm, max_new_tokens=L, min_new_tokens=min_new, sampling=GREEDY,
                                     roll_in=guide, restart=planned, generator=torch.Generator().manual_seed(4))
    for i, ki in enumerate(k.tolist()):
        row = out[i, : int(mask[i].sum())].tolist()
        head = greedy_reference(guide, prompts[i], [], ki, min_new=min_new)
        assert row[:ki] == head
        assert row[ki:] == greedy_reference(learner, prompts[i], head, L - ki, min_new=min_new), f"row {i}, k={ki}"


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_finished_rows_stay_within_the_models_positions(tokenizer, mode):
    """Rewinds make the loop run past L steps; rows that finished meanwhile must not be fed
    positions beyond prompt + L (GPT-2 has 128 learned positions here: prompt + L = 128)."""
    learner, guide = policy(tokenizer, 5, arch="gpt2"), policy(tokenizer, 4, eos_bias=40.0, arch="gpt2")
    L, min_new = 20, 15
    q, qm = learner.encode_prompts(["x" * 107] * 6)
    assert q.shape[1] + L == learner.model.config.n_positions
    restart = torch.tensor([0, 19, 19, 19, 19, 19])  # five roll-ins end at 16 tokens and are rewound
    out, mask, k = run_mode(mode, learner, q, qm, max_new_tokens=L, min_new_tokens=min_new, sampling=GREEDY,
                            roll_in=guide, restart=restart, generator=torch.Generator().manual_seed(0))
    assert k[0] == 0 and all(ki < 16 for ki in k.tolist()[1:])
    assert mask.sum(1).tolist() == [L] * 6


def test_each_model_ends_on_its_own_eos(tokenizer):
    """A guide that treats "a" as an end token must not end (or shape) the learner's rows."""
    a = tokenizer.convert_tokens_to_ids("a")
    learner = policy(tokenizer, 5)
    bias_lm_head(learner.model, a, 30.0)  # the learner writes "a"
    guide = policy(tokenizer, 4)
    guide.eos_ids = [tokenizer.eos_token_id, a]
    q, qm = learner.encode_prompts(PROMPTS)
    plain, plain_mask, _ = lockstep_generate(learner, q, qm, max_new_tokens=6, sampling=GREEDY)
    out, mask, _ = lockstep_generate(learner, q, qm, max_new_tokens=6, sampling=GREEDY, roll_in=guide,
                                     restart=torch.tensor([0, 0, 0, 3]))
    assert plain_mask[0].sum() == 6 and torch.equal(out[:3], plain[:3]) and torch.equal(mask[:3], plain_mask[:3])
