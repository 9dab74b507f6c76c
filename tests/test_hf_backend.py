"""HFPolicy and Critic on tiny random models (causal Llama and seq2seq T5)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import bias_lm_head, make_tiny_causal, make_tiny_gpt2, make_tiny_seq2seq

from backends.base import GREEDY, Sampling
from backends.hf.critic import Critic
from backends.errors import RlgfError
from backends.hf.policy import HFPolicy

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["the quick brown fox", "hi", "a somewhat longer prompt, with a comma"]
SAMPLE = Sampling(do_sample=True, top_k=50)


@pytest.fixture(scope="module")
def causal(tiny_causal_dir):
    return HFPolicy.load(str(tiny_causal_dir))


@pytest.fixture(scope="module")
def seq2seq(tiny_seq2seq_dir):
    return HFPolicy.load(str(tiny_seq2seq_dir))


@pytest.fixture(params=["causal", "seq2seq", "gpt2"])
def policy(request, causal, seq2seq, gpt2):
    return {"causal": causal, "seq2seq": seq2seq, "gpt2": gpt2}[request.param]


@pytest.fixture(scope="module")
def gpt2():
    return HFPolicy(*make_tiny_gpt2(), spec="tiny-gpt2")


def with_eos_bias(make, bias: float):
    """A policy whose model prefers EOS (lm_head gets a bias on the EOS row)."""
    model, tokenizer = make()
    return HFPolicy(bias_lm_head(model, tokenizer.eos_token_id, bias), tokenizer, spec="eos-biased")


# -- loading and tokens -----------------------------------------------------------------
def test_load_kinds(causal, seq2seq):
    assert not causal.is_seq2seq and seq2seq.is_seq2seq
    assert causal.trainable and causal.can_beam_search and causal.backend == "hf"
    assert causal.dtype == torch.float32 and causal.device.type == "cpu"
    assert "causal" in causal.describe() and "seq2seq" in seq2seq.describe()
    assert seq2seq.decoder_start_id == 0 and causal.decoder_start_id is None


@pytest.mark.filterwarnings("ignore:.*lose their start")  # the cut itself is what this test checks
def test_encode_prompts_left_pad_and_truncate(causal, seq2seq):
    tok = causal.tokenizer
    bos = tok.bos_token_id
    query, mask = causal.encode_prompts(["abcdefgh", "xy"], max_length=5)
    body = tok("abcdefgh", add_special_tokens=False)["input_ids"]
    assert query.shape == (2, 5)
    assert query[0].tolist() == [bos] + body[-4:]  # BOS kept, the end of the prompt kept
    assert mask[1].tolist() == [0, 0, 1, 1, 1]
    assert query[1, :2].tolist() == [causal.pad_id] * 2
    assert query[1, 2:].tolist() == [bos] + tok("xy", add_special_tokens=False)["input_ids"]
    # seq2seq: the encoder input ends with EOS, as the tokenizer adds it
    q2, m2 = seq2seq.encode_prompts(["abcdefgh", "xy"], max_length=5)
    assert q2[0, -1].item() == seq2seq.eos_id and m2.sum(-1).tolist() == [5, 3]
    assert q2[0, :-1].tolist() == seq2seq.tokenizer("efgh", add_special_tokens=False)["input_ids"]


def test_causal_without_bos_drops_eos_suffix():
    from transformers import ByT5Tokenizer

    model, tokenizer = make_tiny_causal(ByT5Tokenizer())
    policy = HFPolicy(model, tokenizer)
    query, mask = policy.encode_prompts(["ab", ""])
    # ByT5 appends </s> to every text; a causal prompt must not end with it
    assert query[0].tolist() == tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert query[1, -1].item() == policy.eos_id and mask[1].sum() == 1  # empty prompt → start token


def test_encode_decode_roundtrip(policy):
    texts = ["hello world", "", "ünïcode ok"]
    response, mask = policy.encode_responses(texts)
    assert mask.sum(-1).tolist()[1] == 0
    assert policy.decode(response, mask) == texts
    short, short_mask = policy.encode_responses(texts, max_length=3)
    assert short.shape[1] == 3
    assert policy.decode(short, short_mask)[0] == "hel"


def test_decode_stops_at_eos(policy):
    response, mask = policy.encode_responses(["abcdef"])
    response[0, 3] = policy.eos_id
    assert policy.decode(response, mask) == ["abc"]


# -- generation -----------------------------------------------------------------------------
def test_generation_logprobs_match_scoring(policy):
    query, qmask = policy.encode_prompts(PROMPTS)
    torch.manual_seed(0)
    response, rmask, gen_lp = policy.generate(
        query, qmask, max_new_tokens=7, min_new_tokens=7, sampling=SAMPLE, output_logprobs=True
    )
    with torch.no_grad():
        scored = policy.response_logprobs(query, qmask, response, rmask)
    assert response.shape == (3, 7)
    torch.testing.assert_close(scored * rmask, gen_lp * rmask, atol=1e-5, rtol=0)


def test_prefix_continuation_matches_full_scoring(policy):
    """Prefilled prefixes of different lengths + left-padded prompts score like one sequence."""
    query, qmask = policy.encode_prompts(PROMPTS)
    assert len(set(qmask.sum(-1).tolist())) == 3  # really different prompt lengths
    torch.manual_seed(1)
    roll_in, roll_mask = policy.generate(query, qmask, max_new_tokens=6, min_new_tokens=6, sampling=SAMPLE)
    lengths = [0, 2, 5]
    prefix = roll_in.clone()
    prefix_mask = torch.zeros_like(roll_mask)
    for i, n in enumerate(lengths):
        prefix_mask[i, :n] = 1
        prefix[i, n:] = policy.pad_id
    torch.manual_seed(2)
    response, rmask, gen_lp = policy.generate(
        query, qmask, max_new_tokens=9, min_new_tokens=9, sampling=SAMPLE,
        prefix=prefix, prefix_mask=prefix_mask, output_logprobs=True,
    )
    assert response.shape == (3, 9) and rmask.sum().item() == 27
    for i, n in enumerate(lengths):
        assert response[i, :n].tolist() == roll_in[i, :n].tolist()
    with torch.no_grad():
        scored = policy.response_logprobs(query, qmask, response, rmask)
    for i, n in enumerate(lengths):
        assert torch.all(gen_lp[i, :n] == 0)
        torch.testing.assert_close(scored[i, n:], gen_lp[i, n:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [make_tiny_causal, make_tiny_seq2seq], ids=["causal", "seq2seq"])
def test_min_and_max_new_tokens(make):
    policy = with_eos_bias(make, bias=4.0)
    query, qmask = policy.encode_prompts(PROMPTS * 2)
    torch.manual_seed(0)
    response, rmask = policy.generate(query, qmask, max_new_tokens=8, min_new_tokens=8, sampling=SAMPLE)
    assert response.shape == (6, 8) and bool(rmask.all())
    assert not torch.isin(response[:, :-1], torch.tensor(policy.eos_ids)).any()
    # without a minimum, EOS comes early: it is kept (mask 1), what follows is masked and padded
    torch.manual_seed(0)
    response, rmask = policy.generate(query, qmask, max_new_tokens=8, min_new_tokens=0, sampling=SAMPLE)
    assert response.shape[1] <= 8
    lengths = rmask.sum(-1)
    assert (lengths < 8).any()
    for row, mask, n in zip(response, rmask, lengths.tolist()):
        assert mask[:n].all() and not mask[n:].any()
        if n < response.shape[1]:
            assert row[n - 1].item() in policy.eos_ids
            assert (row[n:] == policy.pad_id).all()
    # min_new_tokens counts the prefix: a 3-token prefix + at least 2 more
    prefix = torch.full((6, 3), 5 + policy.eos_id)
    response, rmask = policy.generate(
        query, qmask, max_new_tokens=8, min_new_tokens=5, sampling=SAMPLE, prefix=prefix, prefix_mask=torch.ones_like(prefix)
    )
    assert (rmask.sum(-1) >= 5).all()
    assert not torch.isin(response[:, :4], torch.tensor(policy.eos_ids)).any()


def test_min_tokens_per_row_with_mixed_prefixes():
    policy = with_eos_bias(make_tiny_causal, bias=5.0)
    query, qmask = policy.encode_prompts(PROMPTS)
    prefix = torch.tensor([[10, 11, 12, 13], [20, 0, 0, 0], [30, 31, 0, 0]])
    prefix_mask = (prefix > 0).long()
    for seed in range(3):
        torch.manual_seed(seed)
        response, rmask = policy.generate(
            query, qmask, max_new_tokens=6, min_new_tokens=6, sampling=SAMPLE, prefix=prefix, prefix_mask=prefix_mask
        )
        assert response.shape == (3, 6) and bool(rmask.all())
        assert response[0, :4].tolist() == [10, 11, 12, 13] and response[2, :2].tolist() == [30, 31]


def test_prefix_with_eos_or_longer_than_budget(causal):
    query, qmask = causal.encode_prompts(PROMPTS[:2])
    prefix = torch.tensor([[7, causal.eos_id, 8], [9, 10, 11]])
    response, rmask = causal.generate(
        query, qmask, max_new_tokens=2, sampling=SAMPLE, prefix=prefix, prefix_mask=torch.ones_like(prefix)
    )
    assert response.tolist() == [[7, causal.eos_id], [9, 10]]
    assert rmask.tolist() == [[1, 1], [1, 1]]


def test_greedy_is_deterministic_and_seeds_reproduce(policy):
    query, qmask = policy.encode_prompts(PROMPTS)
    a = policy.generate(query, qmask, max_new_tokens=6, sampling=GREEDY)[0]
    torch.manual_seed(123)
    b = policy.generate(query, qmask, max_new_tokens=6, sampling=GREEDY)[0]
    assert torch.equal(a, b)
    # greedy picks the argmax of the scored distribution at every step
    logits = policy.response_logits(query, qmask, a, torch.ones_like(a))
    assert torch.equal(logits.argmax(-1), a)
    torch.manual_seed(7)
    s1 = policy.generate(query, qmask, max_new_tokens=6, min_new_tokens=6, sampling=SAMPLE)[0]
    torch.manual_seed(7)
    s2 = policy.generate(query, qmask, max_new_tokens=6, min_new_tokens=6, sampling=SAMPLE)[0]
    torch.manual_seed(8)
    s3 = policy.generate(query, qmask, max_new_tokens=6, min_new_tokens=6, sampling=SAMPLE)[0]
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)


def test_top_k_one_equals_greedy(causal):
    query, qmask = causal.encode_prompts(PROMPTS)
    greedy = causal.generate(query, qmask, max_new_tokens=5, sampling=GREEDY)[0]
    torch.manual_seed(0)
    top1 = causal.generate(query, qmask, max_new_tokens=5, sampling=Sampling(top_k=1, temperature=0.7))[0]
    assert torch.equal(greedy, top1)


def test_beam_search(policy):
    query, qmask = policy.encode_prompts(PROMPTS)
    beam = Sampling(do_sample=False, num_beams=3)
    r1, m1 = policy.generate(query, qmask, max_new_tokens=5, min_new_tokens=5, sampling=beam)
    r2, _ = policy.generate(query, qmask, max_new_tokens=5, min_new_tokens=5, sampling=beam)
    assert r1.shape == (3, 5) and bool(m1.all()) and torch.equal(r1, r2)
    prefix = torch.tensor([[40, 41], [50, 0], [60, 61]])
    r3, m3 = policy.generate(
        query, qmask, max_new_tokens=5, min_new_tokens=5, sampling=beam, prefix=prefix, prefix_mask=(prefix > 0).long()
    )
    assert r3[0, :2].tolist() == [40, 41] and r3[1, 0].item() == 50 and r3[2, :2].tolist() == [60, 61]
    assert bool(m3.all())


def test_complete(policy):
    torch.manual_seed(0)
    texts = policy.complete(PROMPTS, max_new_tokens=4, min_new_tokens=4, sampling=SAMPLE)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert policy.complete([], max_new_tokens=3) == []


# -- scoring ----------------------------------------------------------------------------------
def test_scoring_is_padding_invariant_and_has_gradients(policy):
    query, qmask = policy.encode_prompts(PROMPTS)
    response, rmask = policy.encode_responses([" one", " two three", " four five six"])
    policy.model.zero_grad()
    lp, ent = policy.response_logprobs(query, qmask, response, rmask, with_entropy=True)
    assert lp.shape == response.shape and lp.requires_grad
    (lp * rmask).sum().backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    policy.model.zero_grad()
    vocab = policy.model.config.get_text_config().vocab_size
    assert bool(((ent >= 0) & (ent <= math.log(vocab) + 1e-4)).all())
    with torch.no_grad():
        for i in range(3):  # each row alone (no padding) scores the same
            q1, m1 = policy.encode_prompts(PROMPTS[i : i + 1])
            n = int(rmask[i].sum())
            alone = policy.response_logprobs(q1, m1, response[i : i + 1, :n], rmask[i : i + 1, :n])
            torch.testing.assert_close(alone[0], lp[i, :n].detach(), atol=1e-5, rtol=0)


def test_entropy_without_grad_is_the_same_metric(policy):
    """``entropy_grad=False`` (no entropy bonus): the same values, outside the autograd graph,
    while the log-probabilities still carry gradients."""
    query, qmask = policy.encode_prompts(PROMPTS)
    response, rmask = policy.encode_responses([" one", " two three", " four five six"])
    lp, ent = policy.response_logprobs(query, qmask, response, rmask, with_entropy=True)
    lp2, ent2 = policy.response_logprobs(query, qmask, response, rmask, with_entropy=True, entropy_grad=False)
    assert ent.requires_grad and not ent2.requires_grad and lp2.requires_grad
    torch.testing.assert_close(ent2, ent.detach())
    torch.testing.assert_close(lp2, lp)


def test_sequence_nll_matches_manual_causal(causal):
    tok = causal.tokenizer
    contexts, texts = ["once upon", "", "x"], [" a time", "hello", ""]
    scored = causal.sequence_nll(contexts, texts, batch_size=2)
    assert [n for _, n in scored] == [7, 5, 0]
    for ctx, text, (nll, n) in zip(contexts, texts, scored):
        if not n:
            assert nll == 0
            continue
        ids = tok(ctx, add_special_tokens=True)["input_ids"] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = causal.model(torch.tensor([ids])).logits[0].log_softmax(-1)
        target = torch.tensor(ids[1:])
        manual = -logits[:-1].gather(-1, target[:, None]).squeeze(-1)[-n:].sum().item()
        assert nll == pytest.approx(manual, abs=1e-4)
    ppl = causal.perplexity(contexts, texts)
    assert ppl == pytest.approx(math.exp(sum(s for s, _ in scored) / 12), rel=1e-6)


def test_sequence_nll_batches_by_length_but_answers_in_input_order(causal):
    # mixed lengths in a shuffled order: each score is the text scored alone, in input order
    contexts = ["a", "the long and winding road goes on", "", "xy", "once upon a time there"]
    texts = [" b c d e f g", " z", "hello there", " q", " was a"]
    batched = causal.sequence_nll(contexts, texts, batch_size=2)
    alone = [causal.sequence_nll([c], [t], batch_size=1)[0] for c, t in zip(contexts, texts)]
    assert [n for _, n in batched] == [n for _, n in alone]
    for (nll, _), (want, _) in zip(batched, alone):
        assert nll == pytest.approx(want, abs=1e-4)


def test_sequence_nll_without_bos_skips_first_token():
    from transformers import ByT5Tokenizer

    model, tokenizer = make_tiny_causal(ByT5Tokenizer())
    policy = HFPolicy(model, tokenizer)
    assert policy.sequence_nll([""], ["abcd"]) [0][1] == 3


def test_sequence_nll_seq2seq(seq2seq):
    scored = seq2seq.sequence_nll(["concepts: dog, ball", ""], ["a dog", "b"])
    assert [n for _, n in scored] == [5, 1] and all(s > 0 for s, _ in scored)


# -- critic ------------------------------------------------------------------------------------
def test_critic_alignment_and_gradients(policy, tmp_path):
    critic = policy.make_critic()
    assert isinstance(critic, Critic)
    assert not any(p is q for p in critic.parameters() for q in policy.model.parameters())
    query, qmask = policy.encode_prompts(PROMPTS)
    response, rmask = policy.encode_responses(["abcdef", "ghijkl", "mnopqr"])
    values = critic.values(query, qmask, response, rmask)
    assert values.shape == (3, 6) and values.dtype == torch.float32
    # value t sees prompt + response[:t]: changing token 3 changes values 4.. only
    changed = response.clone()
    changed[:, 3] = changed[:, 3] + 1
    other = critic.values(query, qmask, changed, rmask)
    torch.testing.assert_close(values[:, :4], other[:, :4])
    assert (values[:, 4:] - other[:, 4:]).abs().max() > 0
    values.sum().backward()
    assert critic.value_head.weight.grad.abs().sum() > 0
    body_grads = [p.grad for p in critic.body.parameters() if p.grad is not None]
    assert body_grads and any(g.abs().sum() > 0 for g in body_grads)
    assert all(p.grad is None for p in policy.model.parameters())
    # checkpoint round trip
    critic.save(tmp_path / "critic")
    again = Critic.load(tmp_path / "critic")
    with torch.no_grad():
        torch.testing.assert_close(again.values(query, qmask, response, rmask), values.detach())


def test_critic_load_rejects_other_folders(tmp_path):
    with pytest.raises(RlgfError, match="not a critic checkpoint"):
        Critic.load(tmp_path)


# -- saving and errors ------------------------------------------------------------------------------
def test_save_loads_with_plain_transformers(policy, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    policy.save(tmp_path / "final")
    auto = AutoModelForSeq2SeqLM if policy.is_seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(tmp_path / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    assert tokenizer("some text")["input_ids"] == policy.tokenizer("some text")["input_ids"]
    ids = torch.tensor([policy.tokenizer("some text")["input_ids"]])
    kwargs = {"decoder_input_ids": ids[:, :4]} if policy.is_seq2seq else {}
    with torch.no_grad():
        assert torch.equal(model(ids, **kwargs).logits, policy.model(ids, **kwargs).logits)
    reloaded = HFPolicy.load(str(tmp_path / "final"))
    query, qmask = policy.encode_prompts(PROMPTS)
    response, rmask = policy.encode_responses(["ab", "cde", "f"])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.response_logprobs(query, qmask, response, rmask),
            policy.response_logprobs(query, qmask, response, rmask),
        )


def test_load_errors(tmp_path, monkeypatch):
    import backends.hf.policy as hf

    with pytest.raises(RlgfError, match="no such folder"):
        HFPolicy.load(str(tmp_path / "missing" / "model"))
    with pytest.raises(RlgfError, match="config.json missing") as info:
        HFPolicy.load(str(tmp_path))
    assert info.value.hint
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(RlgfError, match="not a model folder"):
        HFPolicy.load(str(tmp_path / "weights.bin"))
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(RlgfError, match="not a transformers model"):
        HFPolicy.load(str(tmp_path))
    monkeypatch.setattr(hf, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(RlgfError, match="could not be downloaded") as info:
        HFPolicy.load("no-such-org/no-such-model-rlgf")
    assert "local" in info.value.hint


def test_device_and_dtype_resolution():
    from backends.device import resolve_device
    from backends.hf.policy import resolve_dtype

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(RlgfError):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(RlgfError):
        resolve_device("nonsense-device")


def test_prompt_shorter_than_the_limit_is_kept_whole(tiny_causal_dir):
    """Left truncation only cuts prompts longer than the limit (regression: a prompt between
    half the limit and the limit lost its start)."""
    from backends.hf.policy import HFPolicy

    from backends.errors import RlgfWarning

    policy = HFPolicy.load(str(tiny_causal_dir))
    text = "x" * 40  # 40 byte tokens + BOS, limit 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kept whole: nothing to warn about
        query, mask = policy.encode_prompts([text, "x" * 63], max_length=64)
    assert mask.sum(1).tolist() == [41, 64]
    with pytest.warns(RlgfWarning, match="longer than 64 tokens lose their start .*1 of the 2 in the first batch"):
        long_query, long_mask = policy.encode_prompts(["y" * 10 + text + "z" * 30, text], max_length=64)
    kept = long_query[0][long_mask[0].bool()].tolist()
    assert len(kept) == 64 and kept[0] == policy.bos_id
    assert policy.tokenizer.decode(kept[1:]).endswith("z" * 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per policy: the rest of a run cuts the same prompts
        policy.encode_prompts(["y" * 100], max_length=64)
