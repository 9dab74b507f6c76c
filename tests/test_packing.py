"""Padding-free scoring (backends/hf/packing.py): packed rows give what the padded ones give."""

from __future__ import annotations

import pytest
import torch

from backends.hf.compiled import GradModeForward
from backends.hf.packing import PACKED_TYPES, packs, plan
from backends.hf.policy import HFPolicy
from tests.conftest import make_tiny_causal, make_tiny_gpt2

# query lengths 2, 6, 4, 3 (left-padded to 6) and response lengths 1, 5, 3, 5 (right-padded to 5)
QUERY_LENGTHS = (2, 6, 4, 3)
RESPONSE_LENGTHS = (1, 5, 3, 5)


def padded_batch(vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, lq, lr = len(QUERY_LENGTHS), max(QUERY_LENGTHS), max(RESPONSE_LENGTHS)
    query = torch.randint(3, vocab, (b, lq), generator=gen)
    response = torch.randint(3, vocab, (b, lr), generator=gen)
    qmask = torch.zeros(b, lq, dtype=torch.long)
    rmask = torch.zeros(b, lr, dtype=torch.long)
    for i, (q, r) in enumerate(zip(QUERY_LENGTHS, RESPONSE_LENGTHS)):
        qmask[i, lq - q:] = 1
        rmask[i, :r] = 1
    return query * qmask, qmask, response * rmask, rmask


@pytest.fixture
def plans(monkeypatch):
    """The packings :func:`packed_hidden` made (so a test knows packing took place)."""
    import backends.hf.packing as packing

    made, real = [], packing.plan
    monkeypatch.setattr(packing, "plan", lambda *a: made.append(real(*a)) or made[-1])
    return made


def both_ways(fn, obj):
    obj.packed = True
    packed = fn()
    obj.packed = False
    padded = fn()
    obj.packed = True
    return packed, padded


def tiny(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(vocab_size=64, num_hidden_layers=2, num_attention_heads=4)
    extra = {"gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=64),
             "gpt_neox": dict(common, hidden_size=32, intermediate_size=64)}
    kw = extra.get(model_type, dict(common, hidden_size=32, intermediate_size=64, num_key_value_heads=2, head_dim=8))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, pad_token_id=0, **kw)).eval()


@pytest.mark.parametrize("model_type", sorted(PACKED_TYPES))
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_every_packed_architecture_isolates_its_sequences(model_type, attention):
    """The list of packed architectures is what this test checks: the body on packed rows and the
    output embedding on the gathered states give the padded forward's logits at every response
    token (each architecture, both attention implementations)."""
    from backends.hf.packing import packed_hidden

    model = tiny(model_type)
    model.config._attn_implementation = attention
    assert packs(model)
    query, qmask, response, rmask = padded_batch(64)
    ids = torch.cat([query, response[:, :-1]], 1)
    mask = torch.cat([qmask, rmask[:, :-1]], 1)
    n = response.shape[1]
    with torch.no_grad():
        hidden = packed_hidden(None, model.base_model, qmask, ids, mask, n)
        packed = model.get_output_embeddings()(hidden)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -n:]
    valid = rmask.bool()
    assert packed.shape == padded.shape
    torch.testing.assert_close(packed[valid], padded[valid], atol=1e-5, rtol=1e-5)


def test_an_architecture_not_checked_is_not_packed():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                                     num_attention_heads=4, word_embed_proj_dim=32))
    assert not packs(model)  # learned positions with an offset: packed ids would shift them
    llama, _ = make_tiny_causal()
    assert packs(llama) and packs(llama.base_model)
    llama.config._attn_implementation = "flash_attention_2"
    assert not packs(llama)


def test_plan_packs_whole_episodes_with_positions_from_zero():
    query, qmask, response, rmask = padded_batch(50)
    ids = torch.cat([query, response[:, :-1]], 1)
    mask = torch.cat([qmask, rmask[:, :-1]], 1)
    packing = plan(qmask, ids, mask, response.shape[1])
    # the rows read the responses but their last column: 3, 10, 7, 7 tokens
    lengths = [q + min(r, max(RESPONSE_LENGTHS) - 1) for q, r in zip(QUERY_LENGTHS, RESPONSE_LENGTHS)]
    assert packing.input_ids.shape == (3, max(lengths))  # 10 | 7 + 3 | 7: 30 positions, not 4 × 10 = 40
    assert packing.input_ids.numel() < ids.numel()
    # every episode's tokens, in order, with positions from 0
    flat_ids, flat_pos = packing.input_ids.reshape(-1), packing.position_ids.reshape(-1)
    for i, (q, s) in enumerate(zip(QUERY_LENGTHS, lengths)):
        start = int(packing.index[i, 0]) - (q - 1)
        assert flat_ids[start:start + s].tolist() == ids[i][mask[i].bool()].tolist()
        assert flat_pos[start:start + s].tolist() == list(range(s))
    # the same lengths pack the same way
    again = plan(qmask, ids, mask, response.shape[1])
    assert torch.equal(again.index, packing.index) and torch.equal(again.input_ids, packing.input_ids)


def test_plan_leaves_alone_what_packing_would_not_shorten_or_cannot_read():
    ids = torch.ones(3, 5, dtype=torch.long)
    full = torch.ones(3, 5, dtype=torch.long)
    assert plan(torch.ones(3, 2, dtype=torch.long), ids, full, 4) is None  # no padding: nothing saved
    holes = full.clone()
    holes[1, 2] = 0
    assert plan(torch.ones(3, 2, dtype=torch.long), ids, holes, 4) is None  # not one contiguous block
    empty_query = torch.ones(3, 2, dtype=torch.long)
    empty_query[0] = 0
    gappy = full.clone()
    gappy[0, :2] = 0
    assert plan(empty_query, ids, gappy, 4) is None


def test_policy_and_critic_score_the_same_packed_as_padded_with_the_same_gradients(plans):
    model, tokenizer = make_tiny_causal()
    policy = HFPolicy(model, tokenizer)
    critic = policy.make_critic()
    args = padded_batch(len(tokenizer))
    valid = args[3].bool()

    def score(obj, fn):
        obj_params = [p for p in (policy.model if obj is policy else critic).parameters()]
        for p in obj_params:
            p.grad = None
        out = fn(*args)
        (out[valid].float().square().sum()).backward()
        return out.detach(), [p.grad.clone() for p in obj_params if p.grad is not None]

    for obj, fn in ((policy, policy.response_logits), (critic, critic.values)):
        (packed, g_packed), (padded, g_padded) = both_ways(lambda: score(obj, fn), obj)
        torch.testing.assert_close(packed[valid], padded[valid], atol=1e-5, rtol=1e-5)
        assert len(g_packed) == len(g_padded) > 0
        for a, b in zip(g_packed, g_padded):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert len(plans) == 2 and all(p is not None for p in plans)  # one packed pass each, none padded


def test_gpt2_absolute_positions_restart_for_each_packed_episode(plans):
    model, tokenizer = make_tiny_gpt2()
    policy = HFPolicy(model, tokenizer)
    args = padded_batch(len(tokenizer), seed=3)
    with torch.no_grad():
        packed, padded = both_ways(lambda: policy.response_logits(*args), policy)
    valid = args[3].bool()
    torch.testing.assert_close(packed[valid], padded[valid], atol=1e-5, rtol=1e-5)
    assert len(plans) == 1 and plans[0] is not None


def test_compiled_blocks_serve_the_body_the_packed_scoring_runs():
    model, _ = make_tiny_causal()
    forward = GradModeForward.__new__(GradModeForward)  # serves() only: no compiler needed
    forward.module, forward.whole = model, None
    assert forward.serves(model) and forward.serves(model.base_model)
    forward.whole = object()  # a model compiled whole: its body alone is not
    assert not forward.serves(model.base_model)
