"""Helpers for :mod:`backends.hf.policy`: dtypes, hub reachability, padding, special tokens."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import torch

from backends.errors import RlgfError, first_line

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


def damaged_config(folder: Path, exc: BaseException) -> RlgfError | None:
    """The error for a model folder whose ``config.json`` is there but unreadable (a truncated
    or overwritten file), or None when it reads as JSON (``exc`` is then about something else)."""
    import json

    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        text = config.read_bytes()
        json.loads(text)
        return None
    except ValueError as bad:  # JSONDecodeError, UnicodeDecodeError
        what, detail = ("empty", "the file holds nothing") if not text.strip() else ("not valid JSON", str(bad))
    except OSError as bad:
        what, detail = "not readable", str(bad)
    if (Path(folder) / "trainer_state.json").is_file():  # an rlgf checkpoint (final/ or checkpoints/iter-N)
        hint = (f"{folder} is a checkpoint of an rlgf run: delete that folder and use another checkpoint "
                "of the run, or train again")
    else:
        hint = "restore config.json from a copy of the model (or save the model again with save_pretrained)"
    return RlgfError(f"{config} is damaged ({what}): {detail or first_line(exc)}", hint)


def _transformers_classes(*tables: str) -> set[str]:
    from transformers.models.auto import modeling_auto

    found: set[str] = set()
    for table in tables or [n for n in dir(modeling_auto) if n.startswith("MODEL_") and n.endswith("_MAPPING_NAMES")]:
        for value in getattr(modeling_auto, table, {}).values():
            found.update(value if isinstance(value, (tuple, list)) else [value])
    return found


def check_language_model(config, name: str) -> None:
    """Refuse a folder whose ``architectures`` are all transformers heads that do not generate text
    (a sequence classifier, a masked LM…): loaded as a causal LM it would fail much later with an
    unexplained error. Architectures transformers does not know (remote code) pass."""
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    if not archs:
        return
    try:
        known = _transformers_classes()
        generative = _transformers_classes(
            "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
            "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
            "MODEL_MAPPING_NAMES")  # a bare model (no head) is left to transformers
    except ImportError:  # pragma: no cover - another transformers layout: load as before
        return
    if any(a in generative or a not in known for a in archs):
        return
    arch = archs[0]
    hint = "pass a causal or seq2seq language model: a run's final/ folder, a hub id such as hf:gpt2, or smollm2"
    if arch.endswith("ForSequenceClassification"):
        hint = f"a classifier serves as a reward model (--reward-model {name}); as a policy, {hint}"
    raise RlgfError(f"{name} holds a {arch} (not a causal or seq2seq language model)", hint)


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
