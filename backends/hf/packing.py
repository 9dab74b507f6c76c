"""Padding-free scoring: the sequences of a minibatch packed into rows without padding.

The update and the scoring of old log-probabilities and values see a minibatch as left-padded
queries followed by right-padded responses, so every row is as wide as the longest query plus
the longest response; on the embedded default a quarter of the positions the layers compute
are padding (``bench/update_floor.py``). Packed, each episode's tokens (its query and its
response but the last token) lie back to back in rows one to three times as wide as the longest
episode (whichever costs least, attention counted),
with position ids that restart at 0 for each; transformers then masks attention so no
sequence sees another (its packed-sequence detection: position ids given, no attention mask,
no cache). The model's body runs on the packed rows, and the outputs that predict response
tokens are gathered back into ``[B, R, …]``.

Only architectures whose body honours packed position ids are packed (:data:`PACKED_TYPES`,
each checked against the padded forward in ``tests/test_packing.py``); others, and
encoder-decoders, keep the padded forward. Positions past a response's end get the output of
the episode's last token (finite, masked out by every caller), so the scoring and the update,
which both go through :func:`plan`, see the same numbers and the PPO ratio at the first
minibatch stays exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: ``config.model_type`` of the decoder-only architectures whose body isolates packed
#: sequences given position ids alone (and whose logits are the output embedding of the
#: body's last hidden state: no soft-capping or scaling on top)
PACKED_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox", "olmo2"})


def packs(model) -> bool:
    """Whether ``model`` (a transformers model or body) is one :func:`plan` may pack for."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "_attn_implementation", None) not in (None, "eager", "sdpa"):
        return False
    return getattr(config, "model_type", None) in PACKED_TYPES


#: row widths tried, in multiples of the longest episode: rows of one width seldom take two
#: episodes (on the embedded default none: 16 × 45 positions hold 566 tokens, none under 23)
WIDTHS = (1, 2, 3)
#: a row of C positions costs its positions times (1 + C / this): attention grows with the row
#: (4·d·C FLOPs a position and layer against about 24·d² for the products, so d·6; SmolLM2: 3456)
ATTENTION_SCALE = 3456


@dataclass(frozen=True)
class Packing:
    """Packed rows of a minibatch and where each response position's output lies in them."""

    input_ids: torch.Tensor  # [P, C]
    position_ids: torch.Tensor  # [P, C]
    #: [B, R]: flat index into ``P·C`` of the position whose output predicts response token j
    index: torch.Tensor

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        """``[P, C, …]`` outputs of the packed rows → ``[B, R, …]`` at the response positions."""
        flat = out.reshape(-1, *out.shape[2:])
        return flat.index_select(0, self.index.reshape(-1)).reshape(*self.index.shape, *out.shape[2:])


def _spans(mask: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """Per row the first valid column and the number of valid columns; None when a row's
    valid columns are not one contiguous block (or a row has none)."""
    valid = mask.bool()
    counts = valid.sum(1)
    if bool((counts == 0).any()):
        return None
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(valid)
    first = torch.where(valid, cols, mask.shape[1]).min(1).values
    last = torch.where(valid, cols, -1).max(1).values
    if bool((last - first + 1 != counts).any()):
        return None
    return first.tolist(), counts.tolist()


def _bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: rows of at most ``capacity`` positions, longest sequences first
    (ties in index order, so the same lengths always pack the same way)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if free >= lengths[i]:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def plan(query_mask: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, n: int) -> Packing | None:
    """Pack ``ids``/``mask`` ``[B, Lq + n - 1]`` (left-padded queries, then the responses but
    their last token) so that the outputs predicting the ``n`` response tokens can be gathered.

    None where packing saves no position, a row's tokens are not contiguous, or a query is
    empty: the caller then runs the padded rows as they are.
    """
    spans = _spans(mask)
    query_lengths = query_mask.sum(1).tolist()
    if spans is None or n == 0 or min(query_lengths) == 0:
        return None
    first, lengths = spans
    capacity, rows = min(((k * max(lengths), _bins(lengths, k * max(lengths))) for k in WIDTHS),
                         key=lambda c: len(c[1]) * c[0] * (1 + c[0] / ATTENTION_SCALE))
    if len(rows) * capacity >= ids.numel():
        return None
    input_ids = torch.zeros(len(rows), capacity, dtype=ids.dtype)
    positions = torch.zeros(len(rows), capacity, dtype=torch.long)
    start = [0] * len(lengths)
    ids_cpu = ids.cpu()
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            s = lengths[i]
            input_ids[r, at:at + s] = ids_cpu[i, first[i]:first[i] + s]
            positions[r, at:at + s] = torch.arange(s)
            start[i] = r * capacity + at
            at += s
        positions[r, at:] = torch.arange(capacity - at)  # the row's tail: a sequence of its own, never read
    # response token j is predicted at the episode's local position (query length - 1 + j),
    # clamped to its last token past the response's end
    local = torch.tensor(query_lengths).unsqueeze(1) - 1 + torch.arange(n).unsqueeze(0)
    local = torch.minimum(local, torch.tensor(lengths).unsqueeze(1) - 1)
    index = torch.tensor(start).unsqueeze(1) + local
    dev = ids.device
    return Packing(input_ids.to(dev), positions.to(dev), index.to(dev))


def packed_hidden(compiled, body, query_mask: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                  n: int) -> torch.Tensor | None:
    """``body``'s last hidden states ``[B, n, H]`` at the positions predicting the ``n`` response
    tokens, computed on packed rows (through ``compiled`` where it serves ``body``); None where
    :func:`plan` does not pack (the caller runs the padded rows)."""
    from backends.hf.compiled import forward_through

    packing = plan(query_mask, ids, mask, n)
    if packing is None:
        return None
    hidden = forward_through(compiled, body, lambda out: out.last_hidden_state, input_ids=packing.input_ids,
                             position_ids=packing.position_ids, use_cache=False)
    return packing.gather(hidden)
