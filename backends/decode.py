"""rlgf's own decoding loop for causal transformers models, with two models in lock-step.

One loop generates a batch token by token with a KV cache, like ``model.generate`` with
sampling or greedy search, minus its per-step machinery. It also runs a *roll-in* model and a
*roll-out* model side by side, which is how the guided algorithms collect episodes cheaply:

* every row ``r`` has a switch point ``k[r]``; its response tokens ``0 … k[r]-1`` come from
  the roll-in model, the rest from the roll-out model (``k[r] = 0``: roll-out only);
* at each step both models decode one position: the roll-in model for the rows still in their
  roll-in, the roll-out model for *every* row. The roll-out model reads each roll-in token in
  the same batched step that decodes the other rows, so when a row switches its state
  (prompt + the ``k`` roll-in tokens) is already in the roll-out model's cache: the prefix is
  neither re-decoded nor prefilled separately, and no row is padded to another's prefix;
* the roll-in model only takes the rows that roll in; rows leave its batch as their roll-ins
  end, and it stops after ``max(k)`` steps.

Restart points uniform over the roll-in's length. The caller draws ``k`` uniformly over
``{0 … L-1}`` before the roll-in starts. A roll-in that ends (EOS) after ``m ≤ k`` tokens gets a
fresh ``k`` uniform over ``{0 … m-1}``, and the roll-out model's cache for that row is rewound:
the cached positions from ``k`` on are masked out of the attention and decoding resumes at
position ``k``. For a roll-in of length ``m`` this makes ``P(k = j) = 1/L + (L-m)/(L·m) = 1/m``
for every ``j < m``, so it is exactly "k uniform over the roll-in's generated length", without
generating roll-in tokens that are thrown away.

Sampling matches ``generate``'s: EOS is forbidden until ``min_new_tokens``, then temperature,
top-k and top-p shape the raw logits, and ``torch.multinomial`` draws from the global RNG.
"""

from __future__ import annotations

import inspect
import warnings

import torch

from .base import Sampling
from .decode_graph import agrees, try_capture
from .kv_cache import reserved_cache

_FORWARD_PARAMS: dict[type, frozenset] = {}


def _forward_params(model) -> frozenset:
    cls = type(model)
    if cls not in _FORWARD_PARAMS:
        try:
            _FORWARD_PARAMS[cls] = frozenset(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):  # pragma: no cover
            _FORWARD_PARAMS[cls] = frozenset()
    return _FORWARD_PARAMS[cls]


def can_step(policy) -> bool:
    """Whether this loop can drive ``policy``: a causal transformers LM that takes explicit
    position ids, an attention mask and a KV cache (true of GPT-2, Llama, Qwen, SmolLM…)."""
    model = getattr(policy, "model", None)
    if model is None or getattr(policy, "is_seq2seq", True):
        return False
    params = _forward_params(model)
    return {"attention_mask", "position_ids"} <= params and bool({"cache", "past_key_values"} & params)


def is_greedy(sampling: Sampling) -> bool:
    return (not sampling.do_sample) or sampling.temperature == 0


def warp(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, then top-k, then top-p, as ``generate`` applies them (float logits)."""
    if sampling.temperature not in (0, 1):
        logits = logits / float(sampling.temperature)
    vocab = logits.shape[-1]
    top_k = int(sampling.top_k or 0)
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1.0 - float(sampling.top_p)
        drop[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def choose(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """One token per row: argmax (greedy) or a draw from the warped distribution."""
    if is_greedy(sampling):
        return logits.argmax(-1)
    probs = warp(logits, sampling).softmax(-1)
    return torch.multinomial(probs, 1).squeeze(1)


class _Stepper:
    """The incremental state of one model over a subset of the batch's rows.

    ``static`` keeps every step's shapes fixed (a full-width KV cache written at a column held
    in a device tensor, a full-width additive attention mask, static input buffers) — what a
    CUDA graph needs; with ``graphs`` on a CUDA device the step is captured and replayed
    (:mod:`backends.decode_graph`). Static steppers keep all their rows.
    """

    def __init__(self, policy, query, qmask, rows: torch.Tensor, max_steps: int, *, static: bool = False,
                 graphs: bool = False) -> None:
        self.model = policy.model
        self.device = policy.device
        self.rows = rows.to(self.device)
        params = _forward_params(self.model)
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
        self.static = static and cache is not None and self.cache is cache
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
            self.pos.copy_(self.next_pos[:, None])
            self.width += 1
            self.next_pos += 1
            self.logits = self._static_step()
            return
        self.width += 1
        out = self.model(input_ids=tokens.to(self.device)[:, None], attention_mask=self.mask[:, : self.width],
                         position_ids=self.next_pos[:, None], use_cache=True, **{self.cache_kw: self.cache})
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
        self.logits = self.logits[local]

    def rewind(self, local: int, keep: int) -> None:
        """Forget row ``local``'s state from position ``prompt + keep - 1`` on: the row was never
        rewound before, so its response token ``j`` sits in column ``prompt_width + j``. The
        caller feeds the token at that position again, whose output predicts response token
        ``keep``."""
        start = self.prompt_width + keep - 1
        self.mask[local, start : self.width] = 0
        self.next_pos[local] = self.prompt_len[local] + keep - 1


@torch.no_grad()
def lockstep_generate(
    roll_out,
    query,
    query_mask,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    sampling: Sampling = Sampling(),
    roll_in=None,
    restart: torch.Tensor | None = None,
    roll_in_sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    output_logprobs: bool = False,
    static: bool = False,
):
    """Generate ``max_new_tokens`` response tokens per row (fewer after an EOS).

    A policy whose ``cuda_graphs`` attribute is true decodes in static mode with its step
    captured in a CUDA graph where it runs on a GPU; ``static=True`` asks for static mode
    without graphs (the tests compare it with the default mode on CPU).

    ``restart`` (``[B]``, default all 0) gives each row's planned switch point; rows with
    ``restart > 0`` roll in with ``roll_in`` (same vocabulary) first. ``generator`` draws the
    new switch points of roll-ins that end early. Returns ``(response, response_mask,
    restart)`` — right-padded, EOS included in the mask, ``restart`` the final switch points —
    plus the raw log-probabilities of the tokens under the model that generated each one
    when ``output_logprobs``.
    """
    device = roll_out.device
    batch, L = query.shape[0], int(max_new_tokens)
    min_new = min(int(min_new_tokens), L)
    pad = int(roll_out.pad_id)
    k = torch.zeros(batch, dtype=torch.long) if restart is None else restart.detach().to("cpu", torch.long).clone()
    k = k.clamp(0, max(L - 1, 0)).to(device)
    if roll_in is None:
        k.zero_()
    tokens = torch.full((batch, max(L, 1)), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros(tokens.shape, dtype=torch.float32, device=device) if output_logprobs else None
    if batch == 0 or L == 0:
        empty = tokens[:, :0]
        out = (empty, empty.clone(), k)
        return out + (logprobs[:, :0],) if output_logprobs else out
    eos_ids = sorted(set(roll_out.eos_ids) | set(getattr(roll_in, "eos_ids", []) or []))
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    in_sampling = roll_in_sampling or sampling
    max_steps = 2 * L + 1  # a rewound row needs at most L more steps
    rolling_in = (k > 0).nonzero().flatten()
    inner = None
    if roll_in is not None and len(rolling_in):
        graphs = bool(getattr(roll_in, "cuda_graphs", False))
        inner = _Stepper(roll_in, query, query_mask, rolling_in, max_steps, static=static or graphs, graphs=graphs)
    graphs = bool(getattr(roll_out, "cuda_graphs", False))
    outer = _Stepper(roll_out, query, query_mask, torch.arange(batch, device=device), max_steps,
                     static=static or graphs, graphs=graphs)
    count = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)
    is_eos = torch.zeros(_vocab(outer, inner), dtype=torch.bool, device=device)
    is_eos[eos] = True
    # Every step samples for all rows of each model and merges with torch.where: no boolean
    # indexing, so a step has one host sync (the flags below) however the rows are split.
    while True:
        in_phase = (count < k) & ~done
        active = ~done
        young = count < min_new if min_new > 0 else None  # rows where EOS is not allowed yet
        # finished and roll-in rows draw too (and are ignored), so a plain generation consumes
        # the RNG exactly as ``generate`` does and gives the same tokens for the same seed
        nxt, lp = _pick(outer.logits, sampling, young, is_eos, output_logprobs)
        if inner is not None:
            mine = inner.rows.to(device)
            tok_in, lp_in = _pick(inner.logits.to(device), in_sampling, None if young is None else young[mine],
                                  is_eos, output_logprobs)
            from_inner = torch.zeros_like(in_phase)
            from_inner[mine] = in_phase[mine]
            full = nxt.clone()
            full[mine] = tok_in
            nxt = torch.where(from_inner, full, nxt)
            if lp is not None:
                full_lp = lp.clone()
                full_lp[mine] = lp_in
                lp = torch.where(from_inner, full_lp, lp)
        nxt = nxt.masked_fill(done, pad)
        # record the chosen tokens (finished rows write their pad over the last column: ignored)
        at = count.clamp(max=L - 1)
        tokens[rows, at] = torch.where(active, nxt, tokens[rows, at])
        if lp is not None:
            logprobs[rows, at] = torch.where(active, lp, logprobs[rows, at])
        count = count + active.long()
        hit_eos = is_eos[nxt] & active
        early = hit_eos & in_phase  # a roll-in ended before its switch point
        done = done | (active & ~early & (hit_eos | (count >= L)))
        flags = [early.any().long(), done.all().long()]
        if inner is not None:
            needed = ((count < k) & ~done & ~early)[inner.rows.to(device)]
            flags.append(needed.sum())
        any_early, all_done, *left = torch.stack(flags).tolist()
        feed = nxt
        if any_early:  # draw k again over the roll-in's length, rewind the roll-out model's row
            feed = nxt.clone()
            for r in early.nonzero().flatten().tolist():
                m = int(count[r])
                new_k = int(torch.randint(0, m, (1,), generator=generator))
                k[r] = new_k
                count[r] = new_k
                tokens[r, new_k:] = pad
                if logprobs is not None:
                    logprobs[r, new_k:] = 0
                outer.rewind(r, new_k)
                feed[r] = tokens[r, new_k - 1] if new_k > 0 else outer.last_prompt_token[r]
        if all_done:
            break
        outer.feed(feed)
        if inner is not None:
            if left[0] == 0:
                inner = None  # every roll-in is over: the roll-in model is done
                continue
            if left[0] <= 0.75 * len(needed) and not inner.static:  # rows whose roll-in is over leave
                inner.keep(needed.nonzero().flatten().to(inner.device))
            inner.feed(feed[inner.rows.to(device)])
    width = int(count.max())
    response = tokens[:, :width].clone()
    mask = (torch.arange(width, device=device)[None, :] < count[:, None]).long()
    response = response.masked_fill(mask == 0, pad)
    result = (response, mask, k)
    if output_logprobs:
        return result + (logprobs[:, :width] * mask,)
    return result


def _vocab(*steppers) -> int:
    return max(st.logits.shape[-1] for st in steppers if st is not None)


def _pick(logits, sampling, young, is_eos, with_logprobs: bool):
    """One token per row (EOS forbidden where ``young``), and its raw log-probability."""
    shaped = logits
    if young is not None:
        shaped = logits.masked_fill(young[:, None] & is_eos[None, : logits.shape[-1]], float("-inf"))
    chosen = choose(shaped, sampling)
    if not with_logprobs:
        return chosen, None
    return chosen, logits.gather(-1, chosen[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
