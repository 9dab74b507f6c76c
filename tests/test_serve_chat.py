"""``rlgf serve``'s ``/v1/chat/completions``: the model's template, vLLM's prefill form, the
``openai`` SDK's chat client, and an ``openai-chat:`` guide probing it (a tiny chat model)."""

from __future__ import annotations

import pytest

from backends import resolve
from backends.base import GREEDY
from backends.hf.policy import HFPolicy
from rlgf_cli.serving.chat_contract import parse_chat_request, render
from rlgf_cli.serving.contract import ApiError
from rlgf_cli.serving.server import make_server, start_in_thread
from tiny_assets import make_tiny_chat

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TURNS = [{"role": "user", "content": "Review the film."}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return make_tiny_chat(tmp_path_factory.mktemp("serve-chat"))


@pytest.fixture
def server(chat_dir):
    srv = make_server(HFPolicy.load(str(chat_dir)), "127.0.0.1", 0, model_name="tiny-chat")
    start_in_thread(srv)
    yield srv
    srv.stop()


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": TURNS, "continue_final_message": True, "add_generation_prompt": False}, "continue_final_message"),
    ({"model": "m", "messages": TURNS + [{"role": "assistant", "content": "It"}], "continue_final_message": True,
      "add_generation_prompt": True}, "continue_final_message"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"model": "m", "messages": TURNS, "stream": True}, "stream"),
    ({"model": "m", "messages": TURNS, "tools": []}, "tools"),
    ({"model": "m", "messages": TURNS, "frobnicate": 1}, "frobnicate"),
    ({"model": "m", "messages": TURNS, "max_completion_tokens": 10**7}, "max_tokens"),
    ({"model": "m", "messages": TURNS, "n": 1000}, "n"),
    ({"model": "m", "messages": TURNS, "seed": 2**64}, "seed"),
    ({"model": "m", "messages": TURNS, "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"model": "m", "messages": TURNS, "logit_bias": {"5": 1}}, "logit_bias"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages"),
    ({"model": "m", "messages": [{"role": ["user"], "content": "x"}]}, "messages"),  # unhashable: not a 500
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": ["x"]}]}, "messages"),
])
def test_bad_chat_requests_are_400_with_the_param(body, param):
    with pytest.raises(ApiError) as info:
        parse_chat_request(body)
    assert info.value.status == 400 and info.value.param == param


def test_what_openai_clients_send_by_default_is_read_as_openai_means_it():
    parts = [{"type": "text", "text": "Review "}, {"type": "text", "text": "the film."}]
    req = parse_chat_request({"model": "m", "messages": [{"role": "developer", "content": "Be brief."},
                                                          {"role": "user", "content": parts}],
                              "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "stream_options": None})
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review the film."}]
    assert not req.max_tokens_given and req.completion.max_tokens == 256
    assert parse_chat_request({"model": "m", "messages": TURNS, "max_tokens": 7}).max_tokens_given


def test_render_uses_the_template_and_leaves_a_prefill_open(chat_dir):
    policy = HFPolicy.load(str(chat_dir))
    plain = parse_chat_request({"model": "m", "messages": TURNS})
    assert render(policy, plain) == "<|im_start|>user\nReview the film.<|im_end|>\n<|im_start|>assistant\n"
    prefill = parse_chat_request({"model": "m", "messages": TURNS + [{"role": "assistant", "content": "It was"}],
                                  "continue_final_message": True, "add_generation_prompt": False})
    assert render(policy, prefill) == "<|im_start|>user\nReview the film.<|im_end|>\n<|im_start|>assistant\nIt was"


def test_the_openai_sdk_chat_client_against_rlgf_serve(server, chat_dir):
    import openai

    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="tiny-chat", messages=TURNS, max_tokens=5, temperature=0, n=2)
    assert reply.object == "chat.completion" and len(reply.choices) == 2
    assert reply.choices[0].message.role == "assistant" and reply.usage.prompt_tokens > 0
    expected = HFPolicy.load(str(chat_dir)).complete(
        ["<|im_start|>user\nReview the film.<|im_end|>\n<|im_start|>assistant\nIt was"], max_new_tokens=5,
        sampling=GREEDY)
    cont = client.chat.completions.create(
        model="tiny-chat", messages=TURNS + [{"role": "assistant", "content": "It was"}], max_tokens=5,
        temperature=0, extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert cont.choices[0].message.content == expected[0]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=TURNS, max_tokens=2)
    # no max_tokens: the default 256 is lowered to what the tiny model's context leaves, not a 400
    limit = HFPolicy.load(str(chat_dir))._max_positions()
    assert limit < 256 + reply.usage.prompt_tokens
    unbounded = client.chat.completions.create(model="tiny-chat", messages=TURNS, temperature=0, seed=1)
    assert 0 < unbounded.usage.completion_tokens <= limit - reply.usage.prompt_tokens - 1
    with pytest.raises(openai.BadRequestError, match="maximum context length"):  # asked for: still refused
        client.chat.completions.create(model="tiny-chat", messages=TURNS, max_tokens=limit)


def test_an_openai_chat_guide_probes_rlgf_serve_and_continues_prefixes(server, tmp_path):
    guide = resolve("openai-chat:tiny-chat", base_url=server.url, cache_path=False)
    assert guide.prefill == "continue"  # the first form rlgf serve accepts
    texts = guide.continue_from(["The film"], [" was"], max_new_tokens=4, sampling=GREEDY)
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert guide.complete(["The film"], max_new_tokens=3, sampling=GREEDY)[0] is not None
    guide.close()
