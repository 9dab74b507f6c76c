"""``logprobs`` (and ``echo``) on ``rlgf serve``'s ``/v1/completions``, for evaluation harnesses.

The legacy completions shape: per choice ``{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}`` over the completion's tokens, or with ``echo`` over the prompt's and then the
completion's (``max_tokens: 0`` with ``echo`` scores a prompt alone — what lm-eval's
log-likelihood requests send). A token with no context before it (the first one, when the
tokenizer has no BOS) has ``null`` log-probability and no alternatives, as OpenAI's API does.
The scores come from one forward pass of the served causal model over prompt + completion.
"""

from __future__ import annotations

import torch

from rlgf_cli.serving.contract import ApiError

MAX_LOGPROBS = 5


def can_score(policy) -> bool:
    return (getattr(policy, "tokenizer", None) is not None and getattr(policy, "model", None) is not None
            and not getattr(policy, "is_seq2seq", True))


@torch.no_grad()
def choice_logprobs(policy, prompt: str, completion: str, *, echo: bool, top: int,
                    completion_ids=None) -> dict:
    """The ``logprobs`` object of one choice (see the module docstring). ``completion_ids``, the
    tokens the policy sampled for ``completion``, are scored as they are: re-encoding the text can
    give other tokens (a character whose bytes were sampled as separate tokens, say)."""
    if not can_score(policy):
        raise ApiError(400, "logprobs need a local causal model (this one cannot score tokens)", param="logprobs")
    tok = policy.tokenizer
    prefix = list(getattr(policy, "_prefix_ids", []) or [])
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if prefix and list(p_ids[: len(prefix)]) == prefix:  # the prompt writes its own BOS (a chat template's)
        prefix = []
    if completion_ids is not None:
        c_ids = list(completion_ids)
    else:
        c_ids = tok(completion, add_special_tokens=False)["input_ids"] if completion else []
    ids = prefix + list(p_ids) + list(c_ids)
    if not ids:
        return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    limit = getattr(policy.model.config, "max_position_embeddings", None)
    if limit is not None and len(ids) > limit:
        raise ApiError(400, f"prompt + completion are {len(ids)} tokens; this model takes {limit}", param="prompt")
    x = torch.tensor([ids], device=policy.device)
    logits = policy.model(input_ids=x).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    start = len(prefix) if echo else len(prefix) + len(p_ids)
    tokens, token_lps, tops, offsets = [], [], [], []
    offset = 0 if echo else len(prompt)
    sampled_from = len(prefix) + len(p_ids) if completion_ids is not None else len(ids)
    for pos in range(start, len(ids)):
        # a sampled special token is not in the reply's text (decoded without them): nor in its tokens'
        text = tok.decode([ids[pos]], skip_special_tokens=pos >= sampled_from)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if pos == 0:  # nothing before it: no score
            token_lps.append(None)
            tops.append(None)
            continue
        row = lp[pos - 1]
        token_lps.append(float(row[ids[pos]]))
        if top > 0:
            values, index = torch.topk(row, top)
            alts = {tok.decode([int(i)]): float(v) for v, i in zip(values.tolist(), index.tolist())}
            alts.setdefault(text, float(row[ids[pos]]))
            tops.append(alts)
        else:
            tops.append({text: float(row[ids[pos]])})
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
