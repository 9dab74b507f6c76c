"""The value model: a copy of a policy's transformer body with a scalar head.

``values(query, query_mask, response, response_mask)[:, t]`` is read at the same state as the
policy's logit for response token ``t`` (prompt + response[:t]), so advantages line up with
log-probabilities token by token.

Checkpoints are a folder with ``config.json`` (the transformers config of the body),
``critic.json`` (what kind of body, head size, dtype) and ``critic.safetensors`` (weights).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from backends.errors import RlgfError
from backends.hf.compiled import forward_through

FORMAT = "rlgf-critic"
VERSION = 1
WEIGHTS = "critic.safetensors"
META = "critic.json"


class Critic(nn.Module):
    """A transformer body (no LM head) and ``Linear(hidden, 1)``."""

    #: the body's forward compiled with ``torch.compile`` (``--compile``), or None
    compiled = None

    def __init__(self, body: nn.Module, *, hidden_size: int, is_seq2seq: bool, decoder_start_id: int | None = None):
        super().__init__()
        self.body = body
        self.is_seq2seq = is_seq2seq
        self.decoder_start_id = decoder_start_id
        self.value_head = nn.Linear(hidden_size, 1)
        # small weights: values start near 0 and gradients still reach the body
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size**0.5) * 1e-2)
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(torch.float32)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_policy(cls, policy) -> "Critic":
        """A deep copy of ``policy.model``'s body (the policy is left untouched)."""
        model = policy.model
        body = _body_of(copy.deepcopy(model), policy.is_seq2seq)
        hidden = _hidden_size(model.config)
        critic = cls(body, hidden_size=hidden, is_seq2seq=policy.is_seq2seq, decoder_start_id=policy.decoder_start_id)
        return critic.to(policy.device)

    @property
    def config(self):
        return self.body.config

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    # -- values -------------------------------------------------------------------
    def values(self, query, query_mask, response, response_mask):
        """``[B, Lr]`` float32 values, one per response position."""
        n = response.shape[1]
        if n == 0:
            return torch.zeros(response.shape, dtype=torch.float32, device=response.device)
        if self.is_seq2seq:
            start = torch.full_like(response[:, :1], self.decoder_start_id)
            dec_in = torch.cat([start, response[:, :-1]], dim=1)
            dec_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
            enc = self.body.get_encoder()(input_ids=query, attention_mask=query_mask).last_hidden_state
            hidden = self.body.get_decoder()(
                input_ids=dec_in,
                attention_mask=dec_mask,
                encoder_hidden_states=enc,
                encoder_attention_mask=query_mask,
                use_cache=False,
            ).last_hidden_state
        else:
            ids = torch.cat([query, response[:, :-1]], dim=1)
            mask = torch.cat([query_mask, response_mask[:, :-1]], dim=1)
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden = forward_through(self.compiled, self.body, lambda out: out.last_hidden_state[:, -n:], input_ids=ids,
                                     attention_mask=mask, position_ids=positions, use_cache=False)
        return self.value_head(hidden.float()).squeeze(-1)

    forward = values

    def use_compile(self, on: bool) -> bool:
        """Run the body through ``torch.compile`` (:mod:`backends.hf.compiled`); causal bodies
        only. Returns whether it is on."""
        from backends.hf.compiled import GradModeForward

        self.compiled = GradModeForward(self.body) if on and not self.is_seq2seq else None
        return self.compiled is not None

    # -- checkpoints --------------------------------------------------------------
    def save(self, path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.body.config.save_pretrained(path)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "kind": "seq2seq" if self.is_seq2seq else "causal",
            "hidden_size": self.value_head.in_features,
            "decoder_start_id": self.decoder_start_id,
            "dtype": str(next(self.body.parameters()).dtype).removeprefix("torch."),
        }
        (path / META).write_text(json.dumps(meta, indent=2) + "\n")
        save_model(self, str(path / WEIGHTS))

    @classmethod
    def load(cls, path, *, device="cpu") -> "Critic":
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        path = Path(path)
        if not (path / META).is_file() or not (path / WEIGHTS).is_file():
            raise RlgfError(f"not a critic checkpoint: {path}", f"expected {META} and {WEIGHTS} in the folder")
        meta = json.loads((path / META).read_text())
        if meta.get("format") != FORMAT:
            raise RlgfError(f"not a critic checkpoint: {path / META}")
        seq2seq = meta["kind"] == "seq2seq"
        config = AutoConfig.from_pretrained(path)
        dtype = getattr(torch, meta.get("dtype", "float32"))
        auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        body = _body_of(auto.from_config(config, dtype=dtype), seq2seq)
        critic = cls(body, hidden_size=meta["hidden_size"], is_seq2seq=seq2seq, decoder_start_id=meta.get("decoder_start_id"))
        load_model(critic, str(path / WEIGHTS), strict=True)
        return critic.to(device)


def _hidden_size(config) -> int:
    text = config.get_text_config()
    for name in ("hidden_size", "d_model", "n_embd"):
        value = getattr(text, name, None)
        if isinstance(value, int):
            return value
    raise RlgfError("cannot tell the hidden size of this model for the critic head")


def _body_of(model: nn.Module, seq2seq: bool) -> nn.Module:
    """The transformer without its LM head."""
    if seq2seq:
        # keep the encoder-decoder (get_encoder()/get_decoder() stay usable), drop the head
        if hasattr(model, "lm_head"):
            model.lm_head = nn.Identity()
        return model
    body = model.base_model
    if body is model:
        raise RlgfError(f"cannot find the transformer body of {type(model).__name__} for the critic")
    return body
