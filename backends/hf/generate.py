"""Batched generation for :class:`~backends.hf.policy.HFPolicy`, with optional prefixes.

Generation goes through ``model.generate`` (sampling, greedy, beam search) under a neutral
generation config, so the model's own defaults (top-k 50, repetition penalties…) never change
the distribution silently: what is sampled is the raw model distribution shaped only by the
:class:`~backends.base.Sampling` given.

Prefixes (the roll-in of guided algorithms) are prefilled in one pass:

* causal models: each row is re-packed as ``prompt + prefix`` (left-padded) and becomes the
  generation input; a per-row logits processor keeps the minimum length right when the
  prefixes differ in length;
* seq2seq models and beam search: rows are grouped by prefix length, the decoder starts from
  ``start + prefix``.
"""

from __future__ import annotations

import torch

from backends.base import Sampling


def _row_lengths(mask) -> list[int]:
    return [int(n) for n in mask.long().sum(-1).tolist()]


def _generation_config(policy, *, max_new: int, min_new: int, sampling: Sampling, output_logits: bool):
    from transformers import GenerationConfig

    greedy = sampling.is_greedy
    kwargs = dict(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        num_beams=max(1, int(sampling.num_beams)),
        do_sample=not greedy,
        num_return_sequences=1,
        pad_token_id=policy.pad_id,
        eos_token_id=list(policy.eos_ids),
        return_dict_in_generate=True,
        output_logits=output_logits,
        use_cache=True,
    )
    if policy.bos_id is not None:
        kwargs["bos_token_id"] = policy.bos_id
    if policy.is_seq2seq:
        kwargs["decoder_start_token_id"] = policy.decoder_start_id
    if not greedy:  # greedy/beam search ignore the sampling knobs
        kwargs.update(
            temperature=float(sampling.temperature),
            top_k=int(sampling.top_k or 0),
            top_p=float(sampling.top_p),
        )
    return GenerationConfig(**kwargs)


def _neutral_defaults(policy):
    """A model-level generation config holding only the special token ids."""
    from transformers import GenerationConfig

    ids = dict(pad_token_id=policy.pad_id, eos_token_id=list(policy.eos_ids))
    if policy.bos_id is not None:
        ids["bos_token_id"] = policy.bos_id
    if policy.is_seq2seq:
        ids["decoder_start_token_id"] = policy.decoder_start_id
    return GenerationConfig(**ids)


def _make_row_min_processor(start_len: int, min_new, eos_ids):
    from transformers import LogitsProcessor

    class RowMinNewTokens(LogitsProcessor):
        """Forbid EOS in row ``i`` until ``min_new[i]`` tokens were generated."""

        def __call__(self, input_ids, scores):
            generated = input_ids.shape[1] - start_len
            block = (min_new.to(scores.device) > generated)
            if not bool(block.any()):
                return scores
            forbid = torch.zeros_like(scores, dtype=torch.bool)
            forbid[:, eos_ids] = True
            forbid &= block[:, None]
            return scores.masked_fill(forbid, float("-inf"))

    return RowMinNewTokens()


def _run_generate(policy, gen_config, processors, **inputs):
    model = policy.model
    saved = model.generation_config
    model.generation_config = _neutral_defaults(policy)
    try:
        return model.generate(**inputs, generation_config=gen_config, logits_processor=processors)
    finally:
        model.generation_config = saved


def _step_logprobs(out, new_tokens):
    """Raw log-probabilities of the generated tokens from ``output_logits``: ``[B, T]``."""
    if not out.logits:
        return torch.zeros(new_tokens.shape, dtype=torch.float32, device=new_tokens.device)
    logits = torch.stack(out.logits, dim=1).float()  # [B, T, V]
    t = logits.shape[1]
    tokens = new_tokens[:, :t]
    lp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return lp


def generate(
    policy,
    query,
    query_mask,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    sampling: Sampling = Sampling(),
    prefix=None,
    prefix_mask=None,
    output_logprobs: bool = False,
):
    """Implementation of :meth:`HFPolicy.generate` (see there and :meth:`TokenPolicy.generate`)."""
    from transformers import LogitsProcessorList

    if max_new_tokens < 0 or min_new_tokens < 0:
        raise ValueError("max_new_tokens and min_new_tokens must be >= 0")
    min_new_tokens = min(min_new_tokens, max_new_tokens)
    beams = max(1, int(sampling.num_beams))
    if output_logprobs and beams > 1:
        raise ValueError("output_logprobs is not available with beam search")
    device = query.device
    batch = query.shape[0]
    if prefix is not None and prefix_mask is None:
        prefix_mask = torch.ones_like(prefix)
    if prefix is None or prefix.shape[1] == 0:
        plens = [0] * batch
        prefix = torch.zeros((batch, 0), dtype=torch.long, device=device)
    else:
        plens = [min(n, max_new_tokens) for n in _row_lengths(prefix_mask)]
    queries = [query[i][query_mask[i].bool()] for i in range(batch)]
    prefixes = [prefix[i, : plens[i]] for i in range(batch)]

    # new tokens (and their raw log-probs) per row
    new_rows: list[torch.Tensor] = [None] * batch  # type: ignore[list-item]
    new_lps: list[torch.Tensor | None] = [None] * batch

    def run(rows: list[int], plen_min: int, row_min=None):
        budget = max_new_tokens - plen_min
        if budget <= 0:
            for i in rows:
                new_rows[i] = query.new_zeros((0,))
            return
        uniform_min = max(0, min_new_tokens - plen_min) if row_min is None else 0
        gen_config = _generation_config(
            policy, max_new=budget, min_new=uniform_min, sampling=sampling, output_logits=output_logprobs
        )
        processors = LogitsProcessorList()
        if policy.is_seq2seq:
            enc_ids, enc_mask = _pack([queries[i] for i in rows], policy.pad_id, device)
            dec = torch.stack(
                [torch.cat([prefix.new_full((1,), policy.decoder_start_id), prefixes[i]]) for i in rows]
            )
            out = _run_generate(
                policy, gen_config, processors, input_ids=enc_ids, attention_mask=enc_mask, decoder_input_ids=dec
            )
            start = dec.shape[1]
        else:
            ids, mask = _pack([torch.cat([queries[i], prefixes[i]]) for i in rows], policy.pad_id, device)
            start = ids.shape[1]
            if row_min is not None:
                processors.append(_make_row_min_processor(start, row_min, list(policy.eos_ids)))
            out = _run_generate(policy, gen_config, processors, input_ids=ids, attention_mask=mask)
        new = out.sequences[:, start:]
        lps = _step_logprobs(out, new) if output_logprobs else None
        for j, i in enumerate(rows):
            keep = max_new_tokens - plens[i]
            new_rows[i] = new[j, :keep]
            if lps is not None:
                new_lps[i] = lps[j, :keep]

    distinct = sorted(set(plens))
    if len(distinct) == 1:
        run(list(range(batch)), distinct[0])
    elif not policy.is_seq2seq and beams == 1:
        row_min = torch.tensor([max(0, min_new_tokens - n) for n in plens], dtype=torch.long, device=device)
        run(list(range(batch)), distinct[0], row_min=row_min)
    else:
        for n in distinct:
            run([i for i in range(batch) if plens[i] == n], n)

    return _assemble(policy, prefixes, new_rows, new_lps if output_logprobs else None, device)


def _pack(rows: list[torch.Tensor], pad_id: int, device):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
    return ids, mask


def _assemble(policy, prefixes, new_rows, new_lps, device):
    """Right-padded ``prefix + new`` rows; everything after the first EOS masked and padded."""
    eos = torch.tensor(policy.eos_ids, device=device)
    rows = [torch.cat([p.to(device), n.to(device)]) for p, n in zip(prefixes, new_rows)]
    lengths = []
    for r in rows:
        hits = torch.isin(r, eos).nonzero()
        lengths.append(int(hits[0, 0]) + 1 if len(hits) else len(r))
    width = max(lengths, default=0)
    batch = len(rows)
    response = torch.full((batch, width), policy.pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, width), dtype=torch.float32, device=device) if new_lps is not None else None
    for i, (r, n) in enumerate(zip(rows, lengths)):
        response[i, :n] = r[:n]
        mask[i, :n] = 1
        if logprobs is not None and new_lps[i] is not None:
            p = len(prefixes[i])
            lp = new_lps[i][: max(0, n - p)]
            logprobs[i, p : p + len(lp)] = lp
    if logprobs is not None:
        return response, mask, logprobs
    return response, mask
