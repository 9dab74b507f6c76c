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

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

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

    @property
    def is_greedy(self) -> bool:
        """No sampling: every step takes the most likely token (``num_beams`` > 1: beam search)."""
        return not self.do_sample or self.temperature == 0

    @property
    def is_deterministic(self) -> bool:
        """The same prompt always gives the same text (greedy decoding or beam search)."""
        return self.num_beams > 1 or self.is_greedy

    def describe(self) -> str:
        if self.num_beams > 1:
            return f"beam search ({self.num_beams} beams)"
        if self.is_greedy:
            return "greedy"
        parts = [f"sampling (temperature {self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k {self.top_k}")
        if self.top_p < 1.0:
            parts.append(f"top-p {self.top_p:g}")
        return ", ".join(parts) + ")"


GREEDY = Sampling(do_sample=False)

#: every decoding option a request can carry (``min_new_tokens`` is the minimum length)
SAMPLING_OPTIONS: frozenset[str] = frozenset({"temperature", "top_k", "top_p", "min_new_tokens"})


@dataclass(frozen=True)
class RunSettings:
    """What a run asks of a policy it loads, whatever the backend; each backend's
    :meth:`Policy.options_from` turns the settings that apply to it into its own options."""

    #: the run's seed (an API backend seeds its requests and cache keys with it)
    seed: int | None = None
    #: server of an API policy (None: the backend's default, e.g. ``$OPENAI_BASE_URL``)
    base_url: str | None = None
    #: cap on the tokens the policy may be paid for (0: no cap) and those already spent
    budget_tokens: int = 0
    budget_used: int = 0
    #: price per 1,000 tokens for the cost report (None: the backend's list prices)
    price_per_1k: float | None = None
    #: requests in flight at once, and prompts per request (None: the backend's defaults)
    max_concurrency: int | None = None
    prompts_per_request: int | None = None
    #: send ``top_k`` and ``min_tokens`` (vLLM, llama.cpp, SGLang, ``rlgf serve``): "auto" (probe), "on", "off"
    extensions: str | None = None
    #: a chat guide's system message and roll-in instruction (``{prompt}`` placeholder), and
    #: how it continues a partial reply (None: the backend's defaults; ``auto`` probes)
    guide_system: str | None = None
    guide_instruction: str | None = None
    guide_prefill: str | None = None


class Completion(str):
    """A continuation's text that also knows how it was generated: ``tokens`` generated for
    it (its EOS not counted) and whether the model ``ended`` it with EOS rather than the
    length limit — what an OpenAI-compatible server reports as ``usage`` and
    ``finish_reason``. Re-tokenizing the text can count otherwise (a sampled token sequence
    is not always the one the tokenizer would choose; bytes cut mid-character decode to
    U+FFFD). A policy may return plain strings instead; they are then counted from the text."""

    tokens: int | None
    ended: bool | None
    #: the generated token ids themselves (a local model's), for scoring exactly what was sampled
    token_ids: tuple[int, ...] | None

    def __new__(cls, text: str, tokens: int | None = None, ended: bool | None = None,
                token_ids: Sequence[int] | None = None):
        self = super().__new__(cls, text)
        self.tokens, self.ended = tokens, ended
        self.token_ids = tuple(token_ids) if token_ids is not None else None
        return self


class Policy:
    """Anything that continues text. Backends implement :meth:`complete`.

    What a policy is and can do are class attributes (:attr:`remote`, :attr:`trainable`,
    :attr:`can_beam_search`) and :attr:`sampling_options`, so callers ask the policy (or,
    before loading, the class :func:`backends.registry.policy_class` names) rather than its
    backend's name. :meth:`stats`, :meth:`validate` and :meth:`close` always exist.
    """

    #: backend name, e.g. ``"hf"`` (class attribute, set by subclasses; for display only)
    backend: ClassVar[str] = ""
    #: whether the backend needs an API key, and where it looks for it
    needs_key: ClassVar[bool] = False
    key_env_var: ClassVar[str | None] = None
    #: whether it runs elsewhere (an API model): nothing loads here and calls may be paid for
    remote: ClassVar[bool] = False
    #: whether the policy can be trained (has token-level operations)
    trainable: ClassVar[bool] = False
    #: whether it can beam-search (API models usually cannot)
    can_beam_search: ClassVar[bool] = False

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @classmethod
    def options_from(cls, settings: RunSettings) -> dict[str, Any]:
        """This backend's keyword options for :func:`backends.resolve` from a run's settings
        (called on the class, before anything loads); none by default."""
        return {}

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        """Checks of :meth:`options_from`'s options that need no model and no network (an API
        backend: its key), run before a training run loads or prepares anything; raise
        :class:`~backends.errors.RlgfError`. Nothing by default."""

    @property
    def sampling_options(self) -> frozenset[str]:
        """The decoding options this policy enforces (of :data:`SAMPLING_OPTIONS`); the others
        are dropped from its requests."""
        return SAMPLING_OPTIONS

    def honoured(self, sampling: Sampling) -> Sampling:
        """``sampling`` as this policy really decodes it (options it cannot enforce dropped)."""
        if sampling.top_k and "top_k" not in self.sampling_options:
            return replace(sampling, top_k=0)
        return sampling

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

    #: whether :meth:`continue_from` can continue a partial reply (a chat API without prefill cannot)
    can_continue: ClassVar[bool] = True

    def continue_from(self, prompts: Sequence[str], prefixes: Sequence[str], *, max_new_tokens: int,
                      min_new_tokens: int = 0, sampling: Sampling = Sampling()) -> list[str]:
        """Continue each prompt's partial reply ``prefixes[i]`` (a learner's roll-in), text only.
        A text model continues the two as one text; a chat model sends the prefix as the
        assistant's message to be continued."""
        return self.complete([p + x for p, x in zip(prompts, prefixes)], max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, sampling=sampling)

    def describe(self) -> str:
        return self.spec

    def stats(self) -> dict[str, Any]:
        """Usage counters (an API backend's requests, tokens, cost); empty by default."""
        return {}

    def validate(self) -> None:
        """Check, before a run spends anything, that the policy can answer (an API server is
        reachable, accepts the key and offers the model); nothing to check by default."""

    def use_cuda_graphs(self, on: bool) -> None:
        """Replay decoding steps as CUDA graphs where the backend can; ignored by default."""

    def use_compile(self, on: bool) -> bool:
        """Run scoring and training forward passes through ``torch.compile`` where the backend
        can; returns whether it does (not by default)."""
        return False

    def close(self) -> None:
        """Release resources (HTTP clients, caches); nothing by default."""


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
