"""Helpers for :mod:`backends.hf.policy`: dtypes, hub reachability, padding, special tokens."""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import torch

from backends.errors import RlgfError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """``None`` → float32; ``"auto"`` → bfloat16 on a GPU that supports it, else float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise RlgfError(f"unknown dtype {dtype!r}", "use float32, bfloat16, float16 or auto")
    return _DTYPES[name]


def looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


@contextlib.contextmanager
def quiet_progress():
    """No "Loading weights" bars from transformers while we load (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether downloading from the hub can work (so offline runs fail fast, not after retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may reach what we cannot: let the hub client try
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool, device=None):
    """Pad lists of token ids into ``(ids, mask)`` long tensors."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        if n == 0:
            continue
        if left:
            ids[i, width - n :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - n :] = 1
        else:
            ids[i, :n] = torch.as_tensor(row, dtype=torch.long)
            mask[i, :n] = 1
    return ids.to(device), mask.to(device)


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text by default."""
    probe = "a b"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start : start + n] == plain:
            return full[:start], full[start + n :]
    return [], []


def without_prefix(body: list[int], prefix: list[int]) -> list[int]:
    """``body`` less a leading copy of ``prefix``: a text that already begins with the
    tokenizer's BOS (a chat template that writes ``{{ bos_token }}``, as Llama 3's, Gemma's and
    Mistral's do) must not be read with a second one."""
    return body[len(prefix):] if prefix and body[: len(prefix)] == prefix else body


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, with_entropy: bool = False,
                   entropy_grad: bool = True):
    """``log softmax(logits)`` at ``tokens`` (``[B, R, V]`` logits, ``[B, R]`` tokens), in float32;
    with ``with_entropy`` also the entropy per position, outside the autograd graph unless
    ``entropy_grad``. The one computation behind a policy's response log-probabilities, so
    every caller (the scoring of old log-probabilities, the update) gets the same numbers."""
    logits = logits.float()
    norm = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - norm
    if not with_entropy:
        return logprobs
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        source, log_norm = (logits, norm) if entropy_grad else (logits.detach(), norm.detach())
        entropy = log_norm - (torch.softmax(source, dim=-1) * source).sum(-1)
    return logprobs, entropy
