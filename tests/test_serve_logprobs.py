"""``logprobs`` and ``echo`` on ``rlgf serve``'s completions, as evaluation harnesses use them
(the openai SDK against a real tiny model on loopback)."""

from __future__ import annotations

import math

import openai
import pytest

from backends.hf.policy import HFPolicy
from tiny_assets import served

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def client(tiny_causal_dir):
    with served(tiny_causal_dir) as server:
        yield openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def test_echo_with_no_new_tokens_scores_the_prompt_as_the_model_does(client, tiny_causal_dir):
    prompt = "The film was long"
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    (choice,) = out.choices
    lp = choice.logprobs
    assert choice.text == prompt and "".join(lp.tokens) == prompt
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    nll, n = HFPolicy.load(str(tiny_causal_dir)).sequence_nll([""], [prompt])[0]
    scored = [v for v in lp.token_logprobs if v is not None]
    assert len(scored) == n and math.isclose(-sum(scored), nll, rel_tol=1e-4, abs_tol=1e-4)
    for alts, token, value in zip(lp.top_logprobs, lp.tokens, lp.token_logprobs):
        assert token in alts and alts[token] == pytest.approx(value) and len(alts) <= 3
        assert max(alts.values()) >= value - 1e-6  # the top alternatives are at least as likely


def test_logprobs_under_bf16_score_with_the_frozen_bf16_weights(tiny_causal_dir):
    """`rlgf serve --precision auto` is bf16 on AMX CPUs and bf16 GPUs: its frozen policy holds bf16
    matrices, so scoring outside the precision's autocast failed with a dtype error (HTTP 500)."""
    from backends.precision import freeze_in, resolve_precision
    from rlgf_cli.serving.server import make_server, start_in_thread

    prec = resolve_precision("bf16", "cpu", flags={"avx512_bf16"})  # the test machine's own flags do not matter
    policy = HFPolicy.load(str(tiny_causal_dir))
    freeze_in(policy, prec)
    server = make_server(policy, "127.0.0.1", 0, model_name="tiny", precision=prec)
    start_in_thread(server)
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        prompt = "The film was long"
        lp = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1).choices[0].logprobs
    finally:
        server.stop()
    nll, n = HFPolicy.load(str(tiny_causal_dir)).sequence_nll([""], [prompt])[0]  # float32
    scored = [v for v in lp.token_logprobs if v is not None]
    assert len(scored) == n and -sum(scored) == pytest.approx(nll, rel=0.05)  # bf16 rounding, not another model


def test_logprobs_of_a_generated_completion(client, tiny_causal_dir):
    out = client.completions.create(model="tiny", prompt="A story", max_tokens=4, temperature=0, logprobs=0)
    (choice,) = out.choices
    tokens = choice.logprobs.tokens
    assert len(tokens) == out.usage.completion_tokens >= 1  # the tokens sampled, not the text re-encoded
    if choice.text.isascii():  # a byte token of a multi-byte character decodes to U+FFFD alone
        assert "".join(tokens) == choice.text
    assert all(v <= 0 for v in choice.logprobs.token_logprobs)
    assert choice.logprobs.text_offset[0] == len("A story")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=1, logprobs=9)


def test_logprobs_score_the_sampled_tokens_even_when_they_split_a_character(client):
    """The tiny model's tokens are bytes: sampled freely it cuts characters in pieces, which
    re-encoding the decoded text (U+FFFD) would count and score as other tokens."""
    split_a_character = 0
    for seed in range(6):
        out = client.completions.create(model="tiny", prompt="Hi", max_tokens=6, logprobs=0, seed=seed)
        (choice,) = out.choices
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == out.usage.completion_tokens, seed
        assert all(v is not None and v <= 0 for v in lp.token_logprobs)
        split_a_character += "\ufffd" in choice.text
    assert split_a_character, "no sample cut a character: the case this test is for did not occur"


def test_a_sampled_special_token_is_scored_but_shows_no_text(tiny_causal_dir):
    """The reply's text is decoded without special tokens; its tokens and offsets must agree with it
    while the special token sampled in between is still scored."""
    from rlgf_cli.serving.logprobs import choice_logprobs

    policy = HFPolicy.load(str(tiny_causal_dir))
    tok = policy.tokenizer
    ids = tok("ab", add_special_tokens=False)["input_ids"] + [tok.unk_token_id] + tok("c", add_special_tokens=False)["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)
    assert text == "abc"
    lp = choice_logprobs(policy, "Hi", text, echo=False, top=0, completion_ids=ids)
    assert "".join(lp["tokens"]) == text and len(lp["token_logprobs"]) == len(ids)
    assert lp["tokens"][2] == "" and lp["token_logprobs"][2] <= 0
    assert lp["text_offset"] == [2, 3, 4, 4]


def test_characters_split_across_tokens_show_as_bytes_at_their_character_s_offset(client):
    """OpenAI's form: a token holding part of a character is `bytes:\\x..`; offsets index the text."""
    text = "café 日"
    lp = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=5).choices[0].logprobs
    shown = [t for t in lp.tokens if t != "<s>"]
    assert shown == ["c", "a", "f", "bytes:\\xc3", "bytes:\\xa9", " ", "bytes:\\xe6", "bytes:\\x97", "bytes:\\xa5"]
    assert lp.text_offset[-len(shown):] == [0, 1, 2, 3, 3, 4, 5, 5, 5]
    assert lp.text_offset == sorted(lp.text_offset) and max(lp.text_offset) < len(text)
    for token, value, alts in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        if value is not None:  # the token itself is among its alternatives, with its own score
            assert alts[token] == pytest.approx(value) and len(alts) >= 5


def test_a_prompt_past_the_context_is_a_400_before_any_decoding(client):
    """The tiny model has 256 positions: 200 tokens of prompt and 100 new ones do not fit."""
    long_prompt = " ".join(["word"] * 400)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=long_prompt, max_tokens=100)
    body = err.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "max_tokens"
    assert "maximum context length is 256 tokens" in body["message"]
    # a request that fits is still served by the same server
    assert client.completions.create(model="tiny", prompt="A story", max_tokens=2).choices


def test_stop_waits_for_the_serving_thread(tiny_causal_dir):
    """The thread's last act drops the server (and maybe the policy): a test process that exited
    while it was still freeing tensors aborted ("terminate called without an active exception")."""
    from rlgf_cli.serving.server import make_server, start_in_thread

    server = make_server(HFPolicy.load(str(tiny_causal_dir)), "127.0.0.1", 0, model_name="tiny")
    thread = start_in_thread(server)
    assert server.serve_thread is thread and thread.is_alive()
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)  # keeps its connection open
    client.completions.create(model="tiny", prompt="The film", max_tokens=2)
    handlers = [t for t, _ in server.request_threads]
    assert handlers and any(t.is_alive() for t in handlers)  # waiting on the kept-alive connection
    server.stop(timeout=20)
    assert not thread.is_alive() and not any(t.is_alive() for t in handlers)
