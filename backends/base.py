"""The policy abstraction shared by every backend.

A :class:`Policy` completes text. That one method (:meth:`Policy.complete`) is all a
black-box backend (an API model) implements. Local trainable backends subclass
:class:`TokenPolicy`, which adds the token-level operations the trainer needs:
encoding prompts, batched generation that can continue from given prefix tokens,
log-probabilities of given continuation tokens, and building a critic.

Token batches follow one convention everywhere:

* ``query`` / ``query_mask``: prompts, **left**-padded, shape ``[B, Lq]``;
* ``response`` / ``response_mask``: generated tokens, **right**-padded, ``[B, Lr]``.

Position ``t`` of a response is scored from the state "prompt + response[:t]", for
causal and seq2seq models alike, so policies and critics line up token by token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Sequence

if TYPE_CHECKING:  # keep `import backends` free of torch
    import torch


@dataclass(frozen=True)
class Sampling:
    """How to decode. ``do_sample=False`` with ``num_beams=1`` is greedy."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1

    def describe(self) -> str:
        if self.num_beams > 1:
            return f"beam search ({self.num_beams} beams)"
        if not self.do_sample or self.temperature == 0:
            return "greedy"
        parts = [f"sampling (temperature {self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k {self.top_k}")
        if self.top_p < 1.0:
            parts.append(f"top-p {self.top_p:g}")
        return ", ".join(parts) + ")"


GREEDY = Sampling(do_sample=False)


class Policy:
    """Anything that continues text. Backends implement :meth:`complete`."""

    #: backend name, e.g. ``"hf"`` (class attribute, set by subclasses)
    backend: ClassVar[str] = ""
    #: whether the backend needs an API key, and where it looks for it
    needs_key: ClassVar[bool] = False
    key_env_var: ClassVar[str | None] = None
    #: whether the policy can be trained (has token-level operations)
    trainable: ClassVar[bool] = False
    #: whether it can beam-search (API models usually cannot)
    can_beam_search: ClassVar[bool] = False

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def complete(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        sampling: Sampling = Sampling(),
    ) -> list[str]:
        """Return one continuation (text only, without the prompt) per prompt."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.spec

    def close(self) -> None:  # pragma: no cover - optional hook
        """Release resources (HTTP clients, caches)."""


class TokenPolicy(Policy):
    """A local policy with token-level access (the learner, a local guide, the reference)."""

    trainable: ClassVar[bool] = True
    can_beam_search: ClassVar[bool] = True

    tokenizer: object
    model: "torch.nn.Module"
    is_seq2seq: bool

    # -- tokens ---------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], max_length: int | None = None):
        """Tokenize prompts, left-truncated to ``max_length``; returns ``(query, query_mask)``."""
        raise NotImplementedError

    def encode_responses(self, texts: Sequence[str], max_length: int | None = None, *, append_eos: bool = False):
        """Tokenize continuation texts (no special tokens); returns ``(response, response_mask)``.
        With ``append_eos`` each row ends with the end-of-sequence token where it fits within
        ``max_length`` (supervised targets, so a cloned model learns to stop)."""
        raise NotImplementedError

    def response_logits(self, query, query_mask, response, response_mask):
        """Logits ``[B, R, V]`` predicting each response token (one forward pass); local
        models only."""
        raise NotImplementedError

    def decode(self, response, response_mask) -> list[str]:
        raise NotImplementedError

    # -- generation -----------------------------------------------------------
    def generate(
        self,
        query,
        query_mask,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        sampling: Sampling = Sampling(),
        prefix=None,
        prefix_mask=None,
    ):
        """Generate up to ``max_new_tokens`` response tokens.

        With ``prefix`` (right-padded ``[B, Lp]``), each row's response starts with its
        prefix tokens (prefilled in one pass, never re-decoded) and continues until the
        response holds ``max_new_tokens`` tokens in total. Returns ``(response, response_mask)``.
        """
        raise NotImplementedError

    # -- scoring --------------------------------------------------------------
    def response_logprobs(self, query, query_mask, response, response_mask, *, with_entropy=False,
                          entropy_grad=True):
        """Log-probabilities ``[B, Lr]`` of the response tokens (grad flows if enabled).

        With ``with_entropy=True`` returns ``(logprobs, entropy)``; ``entropy_grad=False``
        computes the entropy outside the autograd graph (a metric only: no ``[B, Lr, V]``
        tensors kept for the backward pass).
        """
        raise NotImplementedError

    def sequence_nll(self, contexts: Sequence[str], texts: Sequence[str], batch_size: int = 16):
        """Per-text ``(sum of token NLLs, number of tokens)`` of ``texts`` given ``contexts``.

        A context may be ``""``: the text is then scored from the model's start state
        (after BOS where the tokenizer has one; the first token is unscored otherwise).
        Used for perplexities. Runs without gradients.
        """
        raise NotImplementedError

    def make_critic(self):
        """A value model (a copy of this policy's transformer with a scalar head)."""
        raise NotImplementedError

    def save(self, path) -> None:
        """Write a plain ``save_pretrained`` folder (safetensors + tokenizer)."""
        raise NotImplementedError

    @property
    def device(self):
        return next(self.model.parameters()).device
