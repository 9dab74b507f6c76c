"""The roll-in / roll-out engine (:class:`rlgf_cli.training.guided.GuidedRollout`).

Who generated each token is proved with deterministic policies: tiny models whose LM head
carries a large bias on one token, so the learner always writes ``a`` and the guide always
writes ``b``. A response then spells out its own provenance (``bbbaaaaa``: the guide rolled
in three tokens, the learner rolled out the rest) and every mask and restart point can be
checked against it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import bias_lm_head, greedy_reference, make_byte_tokenizer, make_tiny_causal, make_tiny_seq2seq

from backends.base import GREEDY, Policy, Sampling
from backends.hf.policy import HFPolicy
from rlgf_cli.training.algorithms import AGGREVATED, PPO, PPO_PP
from rlgf_cli.training.guided import GuidedRollout, same_vocabulary
from tasks.base import Example, Task

pytestmark = pytest.mark.usefixtures("torch_one_thread")

L = 8  # continuation length in learner tokens
SAMPLE = Sampling(do_sample=True)


class PromptsTask(Task):
    """Just prompts; the engine needs nothing else from a task."""

    name = "prompts"
    prompt_max_tokens = 16
    max_new_tokens = L
    min_new_tokens = L

    def __init__(self, n: int = 16) -> None:
        self.n = n

    def examples(self, split: str) -> list[Example]:
        return [Example(prompt=f"prompt {i}:", references=()) for i in range(self.n)]


def token_of(tokenizer, char: str) -> int:
    (tid,) = tokenizer(char, add_special_tokens=False)["input_ids"]
    return int(tid)


def always(char: str, *, seed: int = 0, tokenizer=None, seq2seq: bool = False, bias: float = 60.0) -> HFPolicy:
    """A tiny policy that (greedy or sampled) always writes ``char``: its LM head gets a bias."""
    model, tokenizer = make_tiny_seq2seq(seed) if seq2seq else make_tiny_causal(tokenizer, seed=seed)
    return HFPolicy(bias_lm_head(model, token_of(tokenizer, char), bias), tokenizer, spec=f"always-{char}")


def record_generate(policy) -> list[dict]:
    """Record every ``generate`` call of ``policy`` (its rows, prefix lengths and output)."""
    calls: list[dict] = []
    original = policy.generate

    def generate(query, query_mask, **kwargs):
        out = original(query, query_mask, **kwargs)
        pmask = kwargs.get("prefix_mask")
        calls.append({
            "rows": query.shape[0],
            "prefix_lengths": None if pmask is None else pmask.sum(1).tolist(),
            "max_new_tokens": kwargs["max_new_tokens"],
            "out": out,
        })
        return out

    policy.generate = generate
    return calls


class Refuses(Policy):
    """A guide that must never be asked."""

    def complete(self, prompts, **kwargs):  # pragma: no cover - failing is the point
        raise AssertionError("the guide was called")


class TextGuide(Policy):
    """A text-only guide (an API model's shape): always continues with ``é`` characters.

    ``é`` is two bytes, so two tokens of the learner's byte-level tokenizer: the guide's own
    token count and the learner's differ, and the engine must count in learner tokens.
    """

    def __init__(self) -> None:
        super().__init__("text-guide")
        self.calls: list[tuple[list[str], int]] = []

    def complete(self, prompts, *, max_new_tokens, min_new_tokens=0, sampling=Sampling()):
        self.calls.append((list(prompts), max_new_tokens))
        return ["é" * max_new_tokens for _ in prompts]


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


@pytest.fixture(scope="module")
def learner_a(tokenizer):
    return always("a", seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def guide_b(tokenizer):
    return always("b", seed=1, tokenizer=make_byte_tokenizer())  # same vocabulary, another tokenizer object


def engine(learner, guide, *, min_new: int = L, sampling=GREEDY, n: int = 16, lockstep: bool = True) -> GuidedRollout:
    return GuidedRollout(learner, guide, PromptsTask(n), max_new_tokens=L, min_new_tokens=min_new, sampling=sampling,
                         lockstep=lockstep)


def collect(eng: GuidedRollout, scheme, beta: float, *, seed: int = 0, batch_size: int = 8):
    return eng.collect(eng.task.examples("train"), scheme, beta, torch.Generator().manual_seed(seed), batch_size)


def assert_provenance(batch, first: int, second: int, first_is_guide: bool) -> None:
    """Each row is ``first`` × k then ``second`` × (L − k), k = restart; masks agree with that."""
    k = batch.restart.tolist()
    assert batch.response.shape[1] == L
    assert batch.response_mask.sum(1).tolist() == [L] * len(batch)
    for i, ki in enumerate(k):
        assert 0 <= ki < L
        assert batch.response[i].tolist() == [first] * ki + [second] * (L - ki), f"row {i}, k={ki}"
        head = [1] * ki + [0] * (L - ki)
        tail = [0] * ki + [1] * (L - ki)
        guide_row, learner_row = (head, tail) if first_is_guide else (tail, head)
        assert batch.guide_mask[i].tolist() == guide_row
        assert batch.learner_mask[i].tolist() == learner_row
    assert torch.equal(batch.guide_mask + batch.learner_mask, batch.response_mask)
    assert batch.stats["learner_tokens"] == int(batch.learner_mask.sum())
    assert batch.stats["guide_tokens"] == int(batch.guide_mask.sum())


# -- who generated what -------------------------------------------------------------------
@pytest.mark.parametrize("fixed_length", [True, False], ids=["fixed-length", "variable-length"])
def test_ppo_pp_beta_one_guide_rolls_in_learner_rolls_out(learner_a, guide_b, tokenizer, fixed_length):
    a, b = token_of(tokenizer, "a"), token_of(tokenizer, "b")
    assert same_vocabulary(learner_a, guide_b)
    eng = engine(learner_a, guide_b, min_new=L if fixed_length else 1)
    batch = collect(eng, PPO_PP, 1.0)
    assert batch.scheme == "ppo++"
    # guide tokens exactly before the restart point k, learner tokens from k on
    assert_provenance(batch, b, a, first_is_guide=True)
    assert batch.completions == ["b" * k + "a" * (L - k) for k in batch.restart.tolist()]
    assert batch.guide_mask.sum(1).tolist() == batch.restart.tolist()
    # every episode switched (β = 1), the guide was asked where it had tokens to write, and k
    # really varies over the roll-in
    assert batch.stats["switched_episodes"] == 16
    assert batch.stats["guide_calls"] == sum(k > 0 for k in batch.restart.tolist())
    assert len(set(batch.restart.tolist())) >= 4


def test_aggrevated_beta_one_learner_rolls_in_guide_rolls_out(learner_a, guide_b, tokenizer):
    a, b = token_of(tokenizer, "a"), token_of(tokenizer, "b")
    for fixed_length in (True, False):
        batch = collect(engine(learner_a, guide_b, min_new=L if fixed_length else 1), AGGREVATED, 1.0, seed=3)
        assert batch.scheme == "aggrevated"
        assert_provenance(batch, a, b, first_is_guide=False)
        assert batch.learner_mask.sum(1).tolist() == batch.restart.tolist()
        assert len(set(batch.restart.tolist())) >= 4


@pytest.mark.parametrize("lockstep", [True, False], ids=["lockstep", "two-pass"])
@pytest.mark.parametrize("fixed_length", [True, False], ids=["fixed-length", "variable-length"])
def test_a_switched_episode_has_tokens_of_both_policies(learner_a, guide_b, lockstep, fixed_length):
    """k is uniform over {1 … L-1}, as in the authors' code: an AggreVaTeD episode always has a
    learner token to credit (k = 0 made one without any) and the guide always writes one (k = L
    would leave it nothing); a PPO++ episode the same the other way round."""
    eng = engine(learner_a, guide_b, n=96, min_new=L if fixed_length else 1, lockstep=lockstep)
    for scheme in (PPO_PP, AGGREVATED):
        batch = collect(eng, scheme, 1.0, seed=7, batch_size=96)
        ks = batch.restart.tolist()
        assert min(ks) == 1 and max(ks) == L - 1 and len(set(ks)) == L - 1
        assert int(batch.learner_mask.sum(1).min()) >= 1 and int(batch.guide_mask.sum(1).min()) >= 1


def test_ppo_pp_beta_zero_is_ppo(tokenizer):
    """β = 0: no episode switches, no guide call, and the very same episodes as plain PPO."""
    model, _ = make_tiny_causal(tokenizer, seed=2)
    learner = HFPolicy(model, tokenizer)  # random, sampled: the responses depend on the RNG
    eng = engine(learner, Refuses("refuses"), sampling=SAMPLE)
    torch.manual_seed(11)
    pp = collect(eng, PPO_PP, 0.0, seed=5)
    torch.manual_seed(11)
    ppo = collect(eng, PPO, 0.0, seed=5)
    assert torch.equal(pp.response, ppo.response)
    assert torch.equal(pp.response_mask, ppo.response_mask)
    for batch in (pp, ppo):
        assert int(batch.guide_mask.sum()) == 0
        assert torch.equal(batch.learner_mask, batch.response_mask)
        assert batch.restart.tolist() == [0] * len(batch)
        assert batch.stats["guide_calls"] == 0 and batch.stats["switched_episodes"] == 0
    assert eng.guide_calls == 0
    # PPO ignores β altogether: its roll-in is its roll-out
    torch.manual_seed(11)
    assert torch.equal(collect(eng, PPO, 1.0, seed=5).response, ppo.response)


def test_aggrevated_beta_zero_is_all_guide(tokenizer, guide_b):
    learner = always("a", seed=0, tokenizer=tokenizer)
    learner_calls = record_generate(learner)
    batch = collect(engine(learner, guide_b), AGGREVATED, 0.0)
    b = token_of(tokenizer, "b")
    assert batch.response.tolist() == [[b] * L] * len(batch)
    assert torch.equal(batch.guide_mask, batch.response_mask)
    assert int(batch.learner_mask.sum()) == 0
    assert batch.restart.tolist() == [0] * len(batch)
    assert learner_calls == []  # the learner generated nothing


def test_beta_is_a_per_episode_coin(learner_a, guide_b):
    eng = engine(learner_a, guide_b, n=64)
    batch = collect(eng, PPO_PP, 0.5, seed=1, batch_size=64)
    has_guide = batch.guide_mask.sum(1) > 0
    switched = batch.stats["switched_episodes"]
    assert 16 <= switched <= 48
    assert int(has_guide.sum()) == switched  # k ≥ 1: every switched episode has a guide token
    # an episode that did not switch is the learner's alone
    for i in (~has_guide).nonzero().flatten().tolist():
        assert torch.equal(batch.learner_mask[i], batch.response_mask[i])
    assert batch.stats["guide_calls"] == int(has_guide.sum())  # the guide is asked only where k > 0


# -- the roll-out continues the roll-in -----------------------------------------------------
def test_two_pass_roll_out_continues_from_the_roll_in_prefix(tokenizer):
    """Two passes, random (context-dependent) policies: the response starts with exactly the
    roll-in's first k tokens, and the learner's continuation is the one it computes from
    prompt + that prefix."""
    guide = HFPolicy(make_tiny_causal(tokenizer, seed=4)[0], tokenizer)
    learner = HFPolicy(make_tiny_causal(tokenizer, seed=5)[0], tokenizer)
    roll_ins = record_generate(guide)
    eng = GuidedRollout(learner, guide, PromptsTask(6), max_new_tokens=L, min_new_tokens=L,
                        sampling=GREEDY, guide_sampling=SAMPLE, lockstep=False)
    torch.manual_seed(0)
    batch = collect(eng, PPO_PP, 1.0, seed=2, batch_size=6)
    (call,) = roll_ins
    roll_in, _ = call["out"]
    k = batch.restart.tolist()
    assert call["max_new_tokens"] == max(k)  # fixed length: the roll-in stops at the last restart point
    assert any(ki > 0 for ki in k)
    for i, ki in enumerate(k):
        assert batch.response[i, :ki].tolist() == roll_in[i, :ki].tolist()
        expected = greedy_reference(learner, batch.prompts[i], roll_in[i, :ki].tolist(), L - ki, min_new=L)
        assert batch.response[i, ki:L].tolist() == expected, f"row {i}, k={ki}"


@pytest.mark.parametrize("scheme", [PPO_PP, AGGREVATED], ids=lambda s: s.name)
def test_two_pass_roll_out_prefills_the_prefix_instead_of_re_decoding(learner_a, guide_b, scheme):
    """Two passes: one forward pass consumes prompt + prefix, the roll-out policy runs L − k
    decoding steps, not L (one episode per chunk, so each generate call has one restart point)."""
    roll_out = learner_a if scheme is PPO_PP else guide_b
    forwards: list[int] = []
    hook = roll_out.model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        calls = record_generate(roll_out)
        batch = collect(engine(learner_a, guide_b, n=8, lockstep=False), scheme, 1.0, seed=7, batch_size=1)
    finally:
        hook.remove()
        del roll_out.generate  # drop the recording wrapper
    k = batch.restart.tolist()
    prefixed = [c for c in calls if c["prefix_lengths"] is not None]
    assert [c["prefix_lengths"] for c in prefixed] == [[ki] for ki in k]
    # forwards of the roll-out policy = its roll-in steps (AggreVaTeD's learner is the guide here
    # and vice versa) + Σ (L − k) roll-out steps
    roll_in_steps = sum(c["max_new_tokens"] for c in calls if c["prefix_lengths"] is None)
    assert len(forwards) == roll_in_steps + sum(L - ki for ki in k)
    assert sum(k) > 0


def test_seq2seq_learner_and_guide(tokenizer):
    """Encoder-decoder policies hand over decoder tokens the same way."""
    learner = always("a", seed=0, seq2seq=True)
    guide = always("b", seed=1, seq2seq=True)
    a, b = token_of(learner.tokenizer, "a"), token_of(learner.tokenizer, "b")
    eng = GuidedRollout(learner, guide, PromptsTask(8), max_new_tokens=L, min_new_tokens=L, sampling=GREEDY)
    assert eng.token_guide
    assert_provenance(collect(eng, PPO_PP, 1.0, seed=1), b, a, first_is_guide=True)
    assert_provenance(collect(eng, AGGREVATED, 1.0, seed=1), a, b, first_is_guide=False)


# -- a guide with another tokenizer: text-level hand-off, k in learner tokens ---------------
def test_guide_with_another_tokenizer(learner_a, tokenizer):
    """Learner: byte-level BPE (Llama); guide: T5 with the ByT5 tokenizer, another vocabulary."""
    guide = always("b", seed=1, seq2seq=True)
    assert not same_vocabulary(learner_a, guide)
    a, b = token_of(tokenizer, "a"), token_of(tokenizer, "b")
    for fixed_length in (True, False):
        eng = engine(learner_a, guide, min_new=L if fixed_length else 1)
        assert not eng.token_guide
        pp = collect(eng, PPO_PP, 1.0, seed=4)
        assert_provenance(pp, b, a, first_is_guide=True)
        ag = collect(eng, AGGREVATED, 1.0, seed=4)
        assert_provenance(ag, a, b, first_is_guide=False)
        assert ag.completions == ["a" * k + "b" * (L - k) for k in ag.restart.tolist()]
    assert eng.guide_calls > 0


def test_text_only_guide_counts_k_in_learner_tokens(learner_a, tokenizer):
    guide = TextGuide()
    a = token_of(tokenizer, "a")
    e_bytes = tokenizer("é" * L, add_special_tokens=False)["input_ids"]
    assert len(e_bytes) == 2 * L  # two learner tokens per guide character
    eng = engine(learner_a, guide)
    # PPO++: the guide's text is re-tokenized by the learner and cut to the roll-in length
    pp = collect(eng, PPO_PP, 1.0, seed=6, batch_size=16)
    (roll_in_prompts, roll_in_len), = guide.calls
    assert roll_in_prompts == pp.prompts
    assert roll_in_len == max(pp.restart.tolist())
    for i, k in enumerate(pp.restart.tolist()):
        assert pp.response[i].tolist() == e_bytes[:k] + [a] * (L - k)  # k may split a character
        assert pp.guide_mask[i].tolist() == [1] * k + [0] * (L - k)
    assert pp.response_mask.sum(1).tolist() == [L] * len(pp)
    assert pp.restart.tolist().count(0) < len(pp) and any(k % 2 for k in pp.restart.tolist())
    # AggreVaTeD: the guide continues prompt + the decoded learner prefix, asked for L − k tokens
    guide.calls.clear()
    ag = collect(eng, AGGREVATED, 1.0, seed=6, batch_size=16)
    asked = {p: n for prompts, n in guide.calls for p in prompts}
    for i, k in enumerate(ag.restart.tolist()):
        assert asked[ag.prompts[i] + "a" * k] == L - k
        assert ag.response[i].tolist() == [a] * k + e_bytes[: L - k]
        assert ag.learner_mask[i].tolist() == [1] * k + [0] * (L - k)
        assert ag.guide_mask[i].tolist() == [0] * k + [1] * (L - k)
        assert ag.completions[i].startswith("a" * k)
    assert ag.stats["guide_calls"] == len(ag)
