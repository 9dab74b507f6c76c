"""The guide cache knows which weights answered: a local server that serves other weights under
the same name and port gets fresh requests, and the same weights again come from the cache
(real servers on loopback, the real openai SDK, real tiny transformers models)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_causal
from fault_server import EchoPolicy, running

from backends.base import GREEDY
from backends.hf.policy import HFPolicy
from backends.openai_api.completion_cache import server_fingerprint
from backends.openai_api.policy import OpenAIPolicy
from backends.precision import Precision, hold_frozen
from rlgf_cli.serving.server import make_server
from rlgf_cli.serving.service import Service, weights_digest

PROMPTS = ["the movie was", "a quiet film about", "worst plot ever"]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))


def test_the_fingerprint_reads_only_fields_that_identify_the_weights():
    openai_card = {"id": "davinci-002", "object": "model", "created": 1692634301, "owned_by": "system"}
    assert server_fingerprint(openai_card) is None and server_fingerprint(None) is None
    vllm = {"id": "guide", "object": "model", "created": 1, "owned_by": "vllm", "root": "/models/a",
            "parent": None, "max_model_len": 2048, "permission": [{"id": "modelperm-1", "created": 1}]}
    restarted = {**vllm, "created": 2, "permission": [{"id": "modelperm-2", "created": 2}]}
    assert server_fingerprint(vllm) == server_fingerprint(restarted)  # a restart changes nothing
    assert server_fingerprint(vllm) != server_fingerprint({**vllm, "root": "/models/b"})
    llama_cpp = {"id": "m.gguf", "object": "model", "owned_by": "llamacpp", "meta": {"n_params": 135, "size": 9}}
    assert server_fingerprint(llama_cpp) != server_fingerprint({**llama_cpp, "meta": {"n_params": 135, "size": 10}})


class Shouting(EchoPolicy):
    """Other weights behind the same name: the echo in capitals."""

    def complete(self, prompts, **kwargs):
        return [text.upper() for text in super().complete(prompts, **kwargs)]


def serve(policy, port: int):
    return running(make_server(policy, "127.0.0.1", port, model_name="guide"))


def ask(url: str, cache) -> list[str]:
    with OpenAIPolicy("openai:guide", base_url=url, cache_path=cache, timeout=5.0) as guide:
        return guide.complete(PROMPTS, max_new_tokens=8, sampling=GREEDY)


def test_other_weights_under_the_same_name_and_port_are_asked_again(tmp_path):
    cache = tmp_path / "guide.sqlite"
    with serve(EchoPolicy("runs/a/final"), 0) as first:
        port, url = first.server_address[1], first.url
        quiet = ask(url, cache)
    assert quiet == [(" " + p[::-1])[:8] for p in PROMPTS]
    with serve(Shouting("runs/b/final"), port) as second:  # same name, same port, other weights
        assert ask(url, cache) == [text.upper() for text in quiet]
        assert second.service.counts["completion_requests"] == len(PROMPTS)
    with serve(EchoPolicy("runs/a/final"), port) as again:  # the first weights again: all cached
        assert ask(url, cache) == quiet
        assert again.service.counts["completion_requests"] == 0


def test_rlgf_serve_names_its_weights_and_precision_in_the_model_card():
    tokenizer = make_byte_tokenizer()
    model, _ = make_tiny_causal(tokenizer, seed=0)
    a, same = HFPolicy(model, tokenizer), HFPolicy(copy.deepcopy(model), tokenizer)
    assert weights_digest(a) == weights_digest(same)
    with torch.no_grad():
        next(same.model.parameters())[0, 0] += 1e-3  # one weight moved
    assert weights_digest(a) != weights_digest(same)
    held = HFPolicy(copy.deepcopy(model), tokenizer)
    hold_frozen(held.model, Precision("bf16", "test"))  # what `serve --precision bf16` runs
    assert weights_digest(held) != weights_digest(a)
    assert weights_digest(EchoPolicy()) is None  # no local model: the card names the spec alone
    service = Service(a, model_name="guide")
    try:
        card = service.model_card()
        assert card["root"] == a.spec and card["rlgf"]["weights"] == weights_digest(a)
        assert server_fingerprint(card) is not None
    finally:
        service.close()
