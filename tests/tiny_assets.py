"""Helpers for the eval / difficulty / distill tests: a tiny reward classifier, tiny
checkpoints, and a tiny transformers policy served on loopback as an ``openai:`` model."""

from __future__ import annotations

import contextlib
from pathlib import Path

from conftest import make_byte_tokenizer, make_tiny_causal


def make_tiny_reward(path: Path) -> Path:
    """A tiny randomly initialised sequence classifier (byte tokenizer) saved in ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = make_byte_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=2, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_checkpoint(path: Path, learner: Path, seed: int) -> Path:
    """A checkpoint folder (as `rlgf train` writes) holding a tiny model built with ``seed``."""
    from backends.hf.policy import HFPolicy
    from rlgf_cli.training.checkpoint import save_checkpoint

    model, tok = make_tiny_causal(seed=seed)
    policy = HFPolicy(model, tok, spec=str(path))
    return save_checkpoint(path, policy=policy, state={"iteration": 1, "learner": str(learner), "task": "rotten-tomatoes"})


@contextlib.contextmanager
def served(model_dir: Path, name: str = "tiny"):
    """``rlgf serve`` around the tiny model in ``model_dir`` on a free loopback port."""
    from backends.hf.policy import HFPolicy
    from rlgf_cli.serving.server import make_server, start_in_thread

    server = make_server(HFPolicy.load(str(model_dir)), "127.0.0.1", 0, model_name=name)
    start_in_thread(server)
    try:
        yield server
    finally:
        server.stop()


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tiny_chat(path: Path, template: str = CHATML) -> Path:
    """A tiny causal LM whose tokenizer has a ChatML template (its EOS stays ``</s>``), saved in ``path``."""
    from conftest import make_byte_tokenizer, make_tiny_causal

    tokenizer = make_byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = template
    model, tokenizer = make_tiny_causal(tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
