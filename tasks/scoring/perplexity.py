"""Corpus perplexity from per-text negative log-likelihoods.

The RL4LMs definition the paper reports: ``exp(total NLL / total tokens)`` over a whole
set of texts (token-weighted, not a mean of per-text perplexities). The scores come from
:meth:`backends.base.TokenPolicy.sequence_nll`, which returns one ``(sum NLL, n_tokens)``
pair per text; any object with that method works (tests use a tiny fake).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def perplexity_from_nll(pairs: Iterable[tuple[float, int]]) -> float:
    """``exp(sum of NLLs / sum of token counts)``; ``nan`` when there are no tokens."""
    total_nll = 0.0
    total_tokens = 0
    for nll, n_tokens in pairs:
        total_nll += float(nll)
        total_tokens += int(n_tokens)
    if total_tokens <= 0:
        return float("nan")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return float("inf")


def corpus_perplexity(
    policy, contexts: Sequence[str], texts: Sequence[str], batch_size: int | None = None
) -> float:
    """Perplexity of ``texts`` (each scored after its context) under ``policy``.

    ``contexts[i]`` may be ``""`` to score ``texts[i]`` from the model's start state, as the
    RL4LMs perplexity of a policy on reference texts does.
    """
    contexts, texts = list(contexts), list(texts)
    if len(contexts) != len(texts):
        raise ValueError(f"{len(contexts)} contexts for {len(texts)} texts")
    if not texts:
        return float("nan")
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    pairs = policy.sequence_nll(contexts, texts, **kwargs)
    return perplexity_from_nll(pairs)


def can_score(policy) -> bool:
    """Whether ``policy`` offers token scores (black-box API policies do not)."""
    return policy is not None and callable(getattr(policy, "sequence_nll", None))
