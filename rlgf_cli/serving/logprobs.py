"""``logprobs`` (and ``echo``) on ``rlgf serve``'s ``/v1/completions``, for evaluation harnesses.

The legacy completions shape: per choice ``{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}`` over the completion's tokens, or with ``echo`` over the prompt's and then the
completion's (``max_tokens: 0`` with ``echo`` scores a prompt alone — what lm-eval's
log-likelihood requests send). A token with no context before it (the first one, when the
tokenizer has no BOS) has ``null`` log-probability and no alternatives, as OpenAI's API does.
A token that holds part of a character is shown as ``bytes:`` and its bytes, as OpenAI writes
them; ``text_offset`` indexes the text (prompt + completion), a partial token at its
character's start.
The scores come from one forward pass of the served causal model over prompt + completion.
"""

from __future__ import annotations

import torch

from rlgf_cli.serving.contract import ApiError

MAX_LOGPROBS = 5
#: tokens decoded before each one to learn what it added to the text (linear in the length)
OFFSET_WINDOW = 8


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
    base = 0 if echo else len(prompt)  # offsets index prompt + completion, as OpenAI's do without echo too
    sampled_from = len(prefix) + len(p_ids) if completion_ids is not None else len(ids)

    def shown(a: int, b: int) -> int:
        """Whole characters of tokens ``a:b`` as the text shows them (the reply without special tokens)."""
        text = tok.decode(ids[a:min(b, sampled_from)], skip_special_tokens=False) + \
            tok.decode(ids[max(a, sampled_from):b], skip_special_tokens=True)
        return len(whole_characters(text))

    offset = base
    for pos in range(start, len(ids)):
        # a sampled special token is not in the reply's text (decoded without them): nor in its tokens'
        text = token_text(tok, ids[pos], skip_special=pos >= sampled_from)
        tokens.append(text)
        if pos > start:  # what the token before added to the text, decoded in a window of a few tokens
            window = max(start, pos - 1 - OFFSET_WINDOW)  # (a character spans at most 4 byte tokens)
            offset += shown(window, pos) - shown(window, pos - 1)
        offsets.append(offset)
        if pos == 0:  # nothing before it: no score
            token_lps.append(None)
            tops.append(None)
            continue
        row = lp[pos - 1]
        token_lps.append(float(row[ids[pos]]))
        alts = {text: float(row[ids[pos]])}
        if top > 0:
            values, index = torch.topk(row, top)
            for v, i in zip(values.tolist(), index.tolist()):
                alts.setdefault(token_text(tok, int(i)), float(v))  # most likely first: a shared text keeps it
        tops.append(alts)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def whole_characters(text: str) -> str:
    """``text`` less the replacement characters a decoding ends with when its last token stops
    inside a character (the rest of that character's bytes come with the next tokens)."""
    return text.rstrip("\ufffd")


def token_text(tok, token_id: int, *, skip_special: bool = False) -> str:
    """How a token is shown in ``tokens`` and ``top_logprobs``: its text, or — a token holding
    part of a character, which has no text alone — ``bytes:`` and its bytes (``bytes:\\xe6\\x97``), as
    OpenAI's API writes them, so that distinct byte tokens stay distinct keys."""
    text = tok.decode([int(token_id)], skip_special_tokens=skip_special)
    if "\ufffd" not in text:
        return text
    raw = token_bytes(tok, int(token_id))
    if raw is None:
        return text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def token_bytes(tok, token_id: int) -> bytes | None:
    """The bytes a token stands for, where its vocabulary entry says: a byte-fallback piece
    (``<0xE6>``, SentencePiece) or a byte-level BPE piece (GPT-2's printable stand-ins for the
    256 bytes); None for other vocabularies."""
    piece = tok.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str) or not piece:
        return None
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            return None
    table = byte_level_table()
    return bytes(table[ch] for ch in piece) if all(ch in table for ch in piece) else None


_BYTE_LEVEL: dict[str, int] = {}


def byte_level_table() -> dict[str, int]:
    """Byte-level BPE's character for each byte, reversed: the printable Latin-1 bytes stand for
    themselves, the other 68 are written as the characters from U+0100 on, in byte order."""
    if not _BYTE_LEVEL:
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        others = [b for b in range(256) if b not in printable]
        _BYTE_LEVEL.update({chr(b): b for b in printable})
        _BYTE_LEVEL.update({chr(256 + n): b for n, b in enumerate(others)})
    return _BYTE_LEVEL
