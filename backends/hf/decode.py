"""rlgf's own decoding loop for transformers LMs, with two models in lock-step.

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

Restart points uniform over {1 … m-1} for a roll-in of m tokens (its EOS counted). The caller
draws ``k`` uniformly over ``{1 … L-1}`` before the roll-in starts (rows that do not roll in
pass 0). A roll-in that ends (EOS) after ``m ≤ k`` tokens gets a fresh ``k`` uniform over
``{1 … m-1}`` (0 when its first token is its EOS), and the roll-out model's cache for that row is
rewound: the cached positions from ``k`` on are masked out of the attention and decoding resumes at
position ``k`` (an encoder-decoder model, whose relative positions count cache columns,
rolls such rows out in a second pass that replays their prefix). For a roll-in of length ``m``
this makes ``P(k = j) = 1/(L-1) + (L-m)/((L-1)·(m-1)) = 1/(m-1)`` for every ``0 < j < m``, so
it is exactly "k uniform over {1 … m-1}", without generating roll-in tokens that are thrown away.
Each policy thus writes at least one token of a switched episode, as in the authors' code.

Sampling follows ``generate``'s: EOS is forbidden until ``min_new_tokens``, then temperature,
top-k and top-p shape the raw logits, and ``torch.multinomial`` draws from the global RNG (among
the top-k candidates by default; ``DRAW = "generate"`` draws as ``generate`` does, token for
token).
"""

from __future__ import annotations

import torch

from backends.base import Sampling
from backends.hf.steppers import ForcedTokens, forward_params, make_stepper

#: the roll-in model's batch is compacted once at most this share of its rows still rolls in
#: (compacting after every finished row measured no faster on CPU)
COMPACT = 0.75
#: the roll-out model's batch is compacted once at most this share of its rows is unfinished
COMPACT_DONE = 0.5


def can_step(policy) -> bool:
    """Whether this loop can drive ``policy``: a causal transformers LM that takes explicit
    position ids, an attention mask and a KV cache (true of GPT-2, Llama, Qwen, SmolLM…), or
    an encoder-decoder one that takes encoder outputs and decoder inputs (T5, BART…)."""
    model = getattr(policy, "model", None)
    if model is None or not hasattr(policy, "is_seq2seq"):
        return False
    params = forward_params(model)
    if not {"cache", "past_key_values"} & params:
        return False
    if policy.is_seq2seq:
        return {"encoder_outputs", "decoder_input_ids"} <= params and hasattr(model, "get_encoder")
    return {"attention_mask", "position_ids"} <= params


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


#: how ``choose`` draws a sampled token. ``"candidates"`` (the default): with top-k, among the k
#: candidates only (temperature and top-p applied to them), the same distribution as warping the
#: whole vocabulary at a fraction of the cost: ``torch.multinomial`` over a 49k vocabulary draws
#: one exponential variate per token, which measured 46 ms of a batch-8 CPU step (4 ms among 50
#: candidates). Only exact ties at the k-th logit differ: the whole-vocabulary warp keeps them
#: all, this keeps k. ``"generate"``: over the whole vocabulary, as transformers' ``generate``
#: draws, so the loop's samples are ``generate``'s token for token (the tests check the loop
#: against ``generate`` that way; the random stream is not the candidates' one).
DRAW = "candidates"


def choose(logits: torch.Tensor, sampling: Sampling, generators=None) -> torch.Tensor:
    """One token per row: argmax (greedy) or a draw from the warped distribution (see ``DRAW``).

    ``generators`` (one ``torch.Generator`` per row) draw each row from its own random stream,
    so a row's tokens do not depend on which rows share its batch; without them every row
    draws from the global stream."""
    if sampling.is_greedy:
        return logits.argmax(-1)
    top_k = int(sampling.top_k or 0)
    if DRAW == "candidates" and 0 < top_k < logits.shape[-1]:
        values, index = torch.topk(logits, top_k, dim=-1)  # sorted, largest first
        kept = warp(values, Sampling(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p))
        pick = _draw(kept.softmax(-1), generators)
        return index.gather(-1, pick).squeeze(1)
    probs = warp(logits, sampling).softmax(-1)
    return _draw(probs, generators).squeeze(1)


def _draw(probs: torch.Tensor, generators) -> torch.Tensor:
    if generators is None:
        return torch.multinomial(probs, 1)
    if len(generators) != probs.shape[0]:
        raise ValueError(f"{len(generators)} generators for {probs.shape[0]} rows")
    return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generators)])


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
    row_generators=None,
):
    """Generate ``max_new_tokens`` response tokens per row (fewer after an EOS).

    A policy whose ``cuda_graphs`` attribute is true decodes in static mode with its step
    captured in a CUDA graph where it runs on a GPU; ``static=True`` asks for static mode
    without graphs (the tests compare it with the default mode on CPU).

    ``restart`` (``[B]``, default all 0) gives each row's planned switch point; rows with
    ``restart > 0`` roll in with ``roll_in`` (same vocabulary) first. ``generator`` draws the
    new switch points of roll-ins that end early, uniformly over ``{1 … m-1}`` for a roll-in of
    ``m`` tokens with its EOS (so a row that rolls in keeps at least one roll-in token; 0 only
    where the roll-in's first token was its EOS). Returns ``(response, response_mask,
    restart)`` — right-padded, EOS included in the mask, ``restart`` the final switch points —
    plus the raw log-probabilities of the tokens under the model that generated each one
    when ``output_logprobs`` (0 for a roll-in prefix replayed in a second pass).

    ``row_generators`` (one ``torch.Generator`` per row, plain generation only) give every row
    its own random stream (:func:`choose`): a seeded evaluation then samples the same tokens
    for a prompt whatever ``--batch-size`` puts beside it (up to the float rounding of batched
    products).
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
    if row_generators is not None and (roll_in is not None or len(row_generators) != batch):
        raise ValueError("row_generators: one per row, and only for a plain generation (no roll-in)")
    in_sampling = roll_in_sampling or sampling
    max_steps = 2 * L + 1  # a rewound row needs at most L more steps
    rolling_in = (k > 0).nonzero().flatten()
    inner = None
    if roll_in is not None and len(rolling_in):
        graphs = _graphs(roll_in)
        inner = make_stepper(roll_in, query, query_mask, rolling_in, max_steps, static=static or graphs,
                             graphs=graphs)
    graphs = _graphs(roll_out)
    outer = make_stepper(roll_out, query, query_mask, torch.arange(batch, device=device), max_steps,
                         static=static or graphs, graphs=graphs)
    deferred: list[tuple[int, int]] = []  # (row, k): rewinds the roll-out model cannot do in place
    count = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)
    # each model ends (and is kept from ending before min_new) on its own EOS tokens
    vocab = _vocab(outer, inner)
    eos_out = _eos_table(roll_out, vocab, device)
    eos_in = _eos_table(roll_in, vocab, device) if inner is not None else None
    forced = isinstance(roll_in, ForcedTokens)
    # Every step samples for all rows of each model and merges with torch.where: no boolean
    # indexing, so the loop's own bookkeeping syncs with the host once per step (the flags below)
    # however the rows are split.
    # Finished rows leave the roll-out model's batch once half of it has finished; they keep
    # drawing from their last logits (``scores``), so the RNG use per step does not change.
    scores = None  # the full batch's logits once the roll-out model's batch is compacted
    local_of = None  # row → its index in the compacted roll-out batch
    while True:
        in_phase = (count < k) & ~done
        active = ~done
        young = count < min_new if min_new > 0 else None  # rows where EOS is not allowed yet
        # finished and roll-in rows draw too (and are ignored), so a plain generation consumes
        # the RNG exactly as ``generate`` does and gives the same tokens for the same seed
        if scores is not None:
            scores[outer.rows] = outer.logits
        nxt, lp = _pick(outer.logits if scores is None else scores, sampling, young, eos_out, output_logprobs,
                        row_generators)
        from_inner = None
        if inner is not None:
            mine = inner.rows.to(device)
            # only rows still rolling in are kept from ending (a replayed prefix is given, not drawn)
            young_in = None if young is None or forced else young[mine] & in_phase[mine]
            tok_in, lp_in = _pick(inner.logits.to(device), in_sampling, young_in, eos_in, output_logprobs)
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
        hit_eos = eos_out[nxt] if from_inner is None else torch.where(from_inner, eos_in[nxt], eos_out[nxt])
        hit_eos = hit_eos & active
        early = hit_eos & in_phase  # a roll-in ended before its switch point
        done = done | (active & ~early & (hit_eos | (count >= L)))
        flags = [early.any().long(), done.all().long(), (~done)[outer.rows].sum()]
        if inner is not None:
            needed = ((count < k) & ~done & ~early)[inner.rows.to(device)]
            flags.append(needed.sum())
        any_early, all_done, live, *left = torch.stack(flags).tolist()
        feed = nxt
        if any_early:  # draw k again over the roll-in's length, rewind the roll-out model's row
            feed = nxt.clone()
            for r in early.nonzero().flatten().tolist():
                m = int(count[r])  # the roll-in's tokens, its EOS included: k over {1 … m-1}
                new_k = int(torch.randint(min(1, m - 1), m, (1,), generator=generator))
                k[r] = new_k
                count[r] = new_k
                tokens[r, new_k:] = pad
                if logprobs is not None:
                    logprobs[r, new_k:] = 0
                if outer.can_rewind:
                    local = r if local_of is None else int(local_of[r])
                    outer.rewind(local, new_k)
                    feed[r] = tokens[r, new_k - 1] if new_k > 0 else outer.last_prompt_token[local]
                else:  # finished in a second pass that replays the prefix
                    deferred.append((r, new_k))
                    done[r] = True
            all_done = bool(done.all())
            live = int((~done)[outer.rows].sum())
        if all_done:
            break
        if live <= COMPACT_DONE * len(outer.rows) and not outer.static:
            if scores is None:
                scores = outer.logits.clone()
            outer.keep((~done)[outer.rows].nonzero().flatten())
            local_of = torch.full((batch,), -1, dtype=torch.long, device=device)
            local_of[outer.rows] = torch.arange(len(outer.rows), device=device)
        outer.feed(feed if local_of is None else feed[outer.rows])
        if inner is not None:
            if left[0] == 0:
                inner = None  # every roll-in is over: the roll-in model is done
                continue
            if left[0] <= COMPACT * len(needed) and not inner.static:  # rows whose roll-in is over leave
                inner.keep(needed.nonzero().flatten().to(inner.device))
            inner.feed(feed[inner.rows.to(device)])
    if deferred:
        _second_pass(deferred, roll_out, query, query_mask, tokens, count, logprobs, outer.logits.shape[-1],
                     max_new_tokens=L, min_new_tokens=min_new, sampling=sampling, output_logprobs=output_logprobs)
    width = int(count.max())
    response = tokens[:, :width].clone()
    mask = (torch.arange(width, device=device)[None, :] < count[:, None]).long()
    response = response.masked_fill(mask == 0, pad)
    result = (response, mask, k)
    if output_logprobs:
        return result + (logprobs[:, :width] * mask,)
    return result


def _second_pass(deferred, roll_out, query, query_mask, tokens, count, logprobs, vocab_size: int, **kwargs) -> None:
    """Roll out the rows whose roll-in ended early (a model that cannot rewind in place): the
    loop again, replaying each row's kept prefix through the roll-out model's ordinary steps."""
    device = tokens.device
    rows = torch.tensor([r for r, _ in deferred], dtype=torch.long, device=device)
    restart = torch.tensor([kr for _, kr in deferred], dtype=torch.long)
    forced = ForcedTokens(tokens=tokens[rows, : max(1, int(restart.max()))].clone(), vocab_size=vocab_size)
    on_query = rows.to(query.device)
    out = lockstep_generate(roll_out, query[on_query], query_mask[on_query], roll_in=forced, restart=restart,
                            **kwargs)
    response, mask = out[0], out[1]
    width = response.shape[1]
    tokens[rows] = int(roll_out.pad_id)
    tokens[rows, :width] = response
    count[rows] = mask.sum(1)
    if logprobs is not None:  # the replayed prefix has no log-probabilities (only the roll-out's)
        logprobs[rows] = 0
        logprobs[rows, :width] = out[3]


def _graphs(policy) -> bool:
    """CUDA graphs where the policy asks for them and runs on a GPU."""
    return bool(getattr(policy, "cuda_graphs", False)) and getattr(policy.device, "type", "") == "cuda"


def _eos_table(policy, vocab: int, device) -> torch.Tensor:
    table = torch.zeros(vocab, dtype=torch.bool, device=device)
    ids = [int(i) for i in (getattr(policy, "eos_ids", None) or []) if 0 <= int(i) < vocab]
    if ids:
        table[ids] = True
    return table


def _vocab(*steppers) -> int:
    return max(st.logits.shape[-1] for st in steppers if st is not None)


def _pick(logits, sampling, young, is_eos, with_logprobs: bool, generators=None):
    """One token per row, and its raw log-probability; the tokens of ``is_eos`` (the generating
    model's EOS table) are forbidden in the rows where ``young``."""
    shaped = logits
    if young is not None:
        shaped = logits.masked_fill(young[:, None] & is_eos[None, : logits.shape[-1]], float("-inf"))
    chosen = choose(shaped, sampling, generators)
    if not with_logprobs:
        return chosen, None
    return chosen, logits.gather(-1, chosen[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
