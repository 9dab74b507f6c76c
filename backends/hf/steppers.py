"""Per-model decoding state for the loop in :mod:`backends.hf.decode`.

A stepper holds one model's state over some of the batch's rows: after construction (the
prefill) ``logits`` predicts each row's next token; ``feed(tokens)`` appends one token per row
and computes the next ``logits``; ``keep(local)`` drops rows.

* :class:`CausalStepper` — a causal LM with a KV cache; can rewind a row (attention mask +
  position ids), and has a static mode for CUDA graphs;
* :class:`Seq2SeqStepper` — an encoder-decoder LM: the encoder runs once, the decoder steps;
  it cannot rewind (its relative positions count cache columns), so the loop re-runs rows
  that need a rewind in a second pass;
* :class:`ForcedStepper` — no model: "predicts" given tokens (one-hot logits), which replays a
  known prefix through the loop.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import torch

from backends.hf.decode_graph import agrees, try_capture
from backends.hf.kv_cache import reserved_cache

_FORWARD_PARAMS: dict[type, frozenset] = {}


def forward_params(model) -> frozenset:
    cls = type(model)
    if cls not in _FORWARD_PARAMS:
        try:
            _FORWARD_PARAMS[cls] = frozenset(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):  # pragma: no cover
            _FORWARD_PARAMS[cls] = frozenset()
    return _FORWARD_PARAMS[cls]


class CausalStepper:
    """A causal LM over some of the batch's rows.

    ``static`` keeps every step's shapes fixed (a full-width KV cache written at a column held
    in a device tensor, a full-width additive attention mask, static input buffers) — what a
    CUDA graph needs; with ``graphs`` on a CUDA device the step is captured and replayed
    (:mod:`backends.hf.decode_graph`). Static steppers keep all their rows.
    """

    can_rewind = True

    def __init__(self, policy, query, qmask, rows: torch.Tensor, max_steps: int, *, static: bool = False,
                 graphs: bool = False) -> None:
        self.model = policy.model
        self.device = policy.device
        self.rows = rows.to(self.device)
        params = forward_params(self.model)
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        ids = query.to(self.device)[self.rows]
        mask = qmask.to(self.device)[self.rows].long()
        self.prompt_width = mask.shape[1]
        self.prompt_len = mask.sum(1)
        # one preallocated mask: prompt columns, then one column per decoding step
        self.mask = torch.zeros((len(self.rows), self.prompt_width + max_steps), dtype=torch.long,
                                device=self.device)
        self.mask[:, : self.prompt_width] = mask
        self.width = self.prompt_width
        self.next_pos = self.prompt_len.clone()
        # the last position a live row can feed (prompt + L - 1; max_steps = 2L + 1): finished rows
        # that stay in the batch are held there instead of running past the model's positions
        self.pos_cap = self.prompt_len + (max_steps - 1) // 2 - 1
        self.last_prompt_token = ids[:, -1].clone()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # room for the common case (prompt + L); a rewound row may need more, and the cache
        # grows — except a static cache, which reserves the worst case
        room = max_steps if static else (max_steps + 1) // 2
        cache = reserved_cache(self.model, self.prompt_width + room)
        extra = {self.cache_kw: cache} if cache is not None else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **self.keep_kw, **extra)
        self._take(out)
        # static mode passes a 4D additive mask, which sdpa and eager attention take as it is
        attention = getattr(self.model.config, "_attn_implementation", "sdpa")
        self.static = static and cache is not None and self.cache is cache and attention in ("sdpa", "eager")
        self.graph = None
        self._checks = 0  # captured steps still to be checked against the eager step
        if self.static:
            self._make_static(graphs and self.device.type == "cuda")

    def _take(self, out) -> None:
        self.cache = out[self.cache_kw] if self.cache_kw in out else out[1]
        self.logits = out.logits[:, -1].float()

    def _make_static(self, graphs: bool) -> None:
        b, width = self.mask.shape
        self.column = torch.zeros(1, dtype=torch.long, device=self.device)
        for layer in self.cache.layers:
            layer.make_static(self.column)
        on = self.device.type
        dtype = torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else next(self.model.parameters()).dtype
        self.blocked = torch.finfo(dtype).min
        self.mask4 = torch.zeros((b, 1, 1, width), dtype=dtype, device=self.device)
        self.ids = torch.zeros((b, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((b, 1), dtype=torch.long, device=self.device)
        self.want_graph = graphs

    def _static_forward(self) -> torch.Tensor:
        out = self.model(input_ids=self.ids, attention_mask=self.mask4, position_ids=self.pos, use_cache=True,
                         **self.keep_kw, **{self.cache_kw: self.cache})
        return out.logits[:, -1].float()

    def feed(self, tokens: torch.Tensor) -> None:
        """Append one token per row (to this model's rows) and compute the next logits."""
        self.mask[:, self.width] = 1
        if self.static:
            self.column.fill_(self.width)
            self.mask4.copy_(torch.where(self.mask.bool(), 0.0, self.blocked)[:, None, None, :])
            self.ids.copy_(tokens.to(self.device)[:, None])
            self.pos.copy_(torch.minimum(self.next_pos, self.pos_cap)[:, None])
            self.width += 1
            self.next_pos += 1
            self.logits = self._static_step()
            return
        self.width += 1
        out = self.model(input_ids=tokens.to(self.device)[:, None], attention_mask=self.mask[:, : self.width],
                         position_ids=torch.minimum(self.next_pos, self.pos_cap)[:, None], use_cache=True,
                         **{self.cache_kw: self.cache})
        self.next_pos += 1
        self._take(out)

    def _static_step(self) -> torch.Tensor:
        if self.graph is not None and not self._checks:
            return self.graph.run()
        eager = self._static_forward()
        if self.graph is not None:  # the second check: a later step, other host values
            self._checks -= 1
            if not agrees(self.graph.run(), eager):
                warnings.warn("a CUDA-graph decoding step disagreed with the eager step; decoding without graphs",
                              RuntimeWarning, stacklevel=2)
                self.graph = None
        elif self.want_graph:
            self.want_graph = False
            self.graph = try_capture(self._static_forward, eager, self.device)
            self._checks = 1 if self.graph is not None else 0
        return eager.clone()

    def keep(self, local: torch.Tensor) -> None:
        """Drop every row but ``local`` (indices into this model's rows) from the batch."""
        self.cache.batch_select_indices(local)
        self.rows, self.mask, self.next_pos = self.rows[local], self.mask[local], self.next_pos[local]
        self.prompt_len, self.last_prompt_token = self.prompt_len[local], self.last_prompt_token[local]
        self.pos_cap, self.logits = self.pos_cap[local], self.logits[local]

    def rewind(self, local: int, keep: int) -> None:
        """Forget row ``local``'s state from position ``prompt + keep - 1`` on: the row was never
        rewound before, so its response token ``j`` sits in column ``prompt_width + j``. The
        caller feeds the token at that position again, whose output predicts response token
        ``keep``."""
        start = self.prompt_width + keep - 1
        self.mask[local, start : self.width] = 0
        self.next_pos[local] = self.prompt_len[local] + keep - 1


class Seq2SeqStepper:
    """An encoder-decoder model: the encoder once, then one decoder token per step."""

    static = False
    can_rewind = False

    def __init__(self, policy, query, qmask, rows: torch.Tensor, max_steps: int, **_ignored) -> None:
        self.model = policy.model
        self.device = policy.device
        self.rows = rows.to(self.device)
        params = forward_params(self.model)
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.enc_mask = qmask.to(self.device)[self.rows]
        self.encoded = self.model.get_encoder()(input_ids=query.to(self.device)[self.rows],
                                                attention_mask=self.enc_mask)
        start = torch.full((len(self.rows), 1), int(policy.decoder_start_id), dtype=torch.long, device=self.device)
        self._step(start, None)

    def _step(self, ids, cache) -> None:
        extra = {self.cache_kw: cache} if cache is not None else {}
        out = self.model(encoder_outputs=self.encoded, attention_mask=self.enc_mask, decoder_input_ids=ids,
                         use_cache=True, **extra)
        self.cache = out[self.cache_kw] if self.cache_kw in out else out[1]
        self.logits = out.logits[:, -1].float()

    def feed(self, tokens: torch.Tensor) -> None:
        self._step(tokens.to(self.device)[:, None], self.cache)

    def keep(self, local: torch.Tensor) -> None:
        self.cache.batch_select_indices(local)
        self.encoded.last_hidden_state = self.encoded.last_hidden_state[local]
        self.rows, self.enc_mask, self.logits = self.rows[local], self.enc_mask[local], self.logits[local]


@dataclass
class ForcedTokens:
    """A stand-in policy that writes ``tokens[r, t]`` as row ``r``'s token ``t``."""

    tokens: torch.Tensor
    vocab_size: int
    eos_ids: list = field(default_factory=list)
    cuda_graphs: bool = False

    @property
    def device(self):
        return self.tokens.device


class ForcedStepper:
    """Replays :class:`ForcedTokens` (one-hot logits: greedy and sampling both pick the token)."""

    static = False
    can_rewind = False

    def __init__(self, forced: ForcedTokens, query, qmask, rows: torch.Tensor, max_steps: int, **_ignored) -> None:
        self.device = forced.device
        self.rows = rows.to(self.device)
        self.forced = forced.tokens[self.rows]
        self.vocab_size = forced.vocab_size
        self.t = 0
        self.logits = self._one_hot()

    def _one_hot(self) -> torch.Tensor:
        column = self.forced[:, min(self.t, self.forced.shape[1] - 1)]
        logits = torch.full((len(column), self.vocab_size), float("-inf"), device=self.device)
        return logits.scatter_(1, column[:, None], 0.0)

    def feed(self, tokens: torch.Tensor) -> None:
        self.t += 1
        self.logits = self._one_hot()

    def keep(self, local: torch.Tensor) -> None:
        self.rows, self.forced, self.logits = self.rows[local], self.forced[local], self.logits[local]


def make_stepper(policy, query, qmask, rows: torch.Tensor, max_steps: int, *, static: bool = False,
                 graphs: bool = False):
    if isinstance(policy, ForcedTokens):
        return ForcedStepper(policy, query, qmask, rows, max_steps)
    if getattr(policy, "is_seq2seq", False):
        return Seq2SeqStepper(policy, query, qmask, rows, max_steps)
    return CausalStepper(policy, query, qmask, rows, max_steps, static=static, graphs=graphs)
