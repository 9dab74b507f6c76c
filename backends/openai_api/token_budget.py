"""Counting tokens before a call, and a cap on how many an API guide may spend.

Counting never touches the network. ``tiktoken.get_encoding`` downloads its BPE file on
first use (and fails, or hangs, offline), so this module only builds a tiktoken encoding
from a file already on disk: tiktoken's own cache (``$TIKTOKEN_CACHE_DIR``,
``$DATA_GYM_CACHE_DIR`` or ``<tmp>/data-gym-cache``), or the GPT-2 BPE shipped inside the
``openai-whisper`` package. Each file is checked against tiktoken's published SHA-256
before use. With no file it falls back to a rough count, ``ceil(utf8 bytes / 3)``, which
over-estimates English BPE counts (≈ 4 bytes per token) on purpose.

:class:`TokenBudget` is thread-safe: callers *reserve* an estimate before a request, then
*settle* it with what the server reports. A reservation that would pass the cap raises
:class:`GuideBudgetExhausted` before anything is sent.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import logging
import math
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Callable

from backends.errors import RlgfError

log = logging.getLogger(__name__)

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# SHA-256 of the BPE files, as pinned by tiktoken itself (tiktoken_ext/openai_public.py).
_KNOWN_SHA256 = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_SPECIALS = {
    "r50k_base": {"<|endoftext|>": 50256},
    "p50k_base": {"<|endoftext|>": 50256},
    "cl100k_base": {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
}
_PATTERNS = {"r50k_base": _R50K_PAT, "p50k_base": _R50K_PAT, "cl100k_base": _CL100K_PAT}
#: the encoding assumed for models tiktoken does not know (local servers, new names)
DEFAULT_ENCODING = "cl100k_base"


def rough_token_count(text: str) -> int:
    """A deliberately generous estimate: one token per 3 UTF-8 bytes (at least 1 for non-empty text)."""
    n = len(text.encode("utf-8"))
    return math.ceil(n / 3) if n else 0


def _tiktoken_cache_dir() -> str:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _candidate_files(name: str) -> list[Path]:
    files = []
    cache = _tiktoken_cache_dir()
    if cache:
        files.append(Path(cache) / hashlib.sha1(_BLOB.format(name=name).encode()).hexdigest())
    if name == "r50k_base":  # openai-whisper ships GPT-2's BPE as whisper/assets/gpt2.tiktoken
        spec = importlib.util.find_spec("whisper")
        if spec is not None and spec.origin:
            files.append(Path(spec.origin).parent / "assets" / "gpt2.tiktoken")
    return files


def _parse_bpe(data: bytes) -> dict[bytes, int]:
    ranks = {}
    for line in data.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=None)
def load_encoding_offline(name: str):
    """A ``tiktoken.Encoding`` built from a verified local file, or ``None``; never downloads."""
    if name not in _KNOWN_SHA256:
        return None
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - tiktoken is a dependency
        return None
    for path in _candidate_files(name):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != _KNOWN_SHA256[name]:
            log.debug("ignoring %s: not the published %s file", path, name)
            continue
        try:
            return tiktoken.Encoding(
                name=name,
                pat_str=_PATTERNS[name],
                mergeable_ranks=_parse_bpe(data),
                special_tokens=_SPECIALS[name],
            )
        except Exception as exc:  # a broken file must not break counting
            log.debug("could not build %s from %s: %s", name, path, exc)
    return None


def encoding_name_for(model: str) -> str:
    """tiktoken's encoding for an OpenAI model name; :data:`DEFAULT_ENCODING` when unknown."""
    try:
        import tiktoken

        return tiktoken.encoding_name_for_model(model)
    except Exception:
        return DEFAULT_ENCODING


def token_counter(model: str | None = None) -> tuple[Callable[[str], int], str]:
    """``(count, source)``: a function counting tokens of a text, and what it uses.

    ``source`` is the tiktoken encoding name, or ``"rough"`` when no BPE file is on disk.
    """
    name = encoding_name_for(model) if model else DEFAULT_ENCODING
    enc = load_encoding_offline(name)
    if enc is None:
        return rough_token_count, "rough"

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    return count, name


class GuideBudgetExhausted(RlgfError):
    """The guide's token budget would be passed by the next call; nothing was sent.

    The trainer catches this to stop (or continue without the guide) cleanly.
    """


class TokenBudget:
    """A cap on tokens (prompt + completion) spent on API calls, shared by threads.

    ``used`` counts tokens the server reported (or, where it may have billed without
    reporting, e.g. a timed-out request, the estimate). ``reserved`` counts estimates of
    requests in flight. A request goes out only if ``used + reserved + estimate <= max_tokens``.
    """

    def __init__(self, max_tokens: int) -> None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise RlgfError(
                f"token budget must be a non-negative whole number, got {max_tokens!r}",
                hint="e.g. --guide-budget 200000",
            )
        self.max_tokens = max_tokens
        self.used = 0
        self.reserved = 0
        self.exhausted = False
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        with self._lock:
            return max(0, self.max_tokens - self.used - self.reserved)

    def reserve(self, tokens: int, what: str = "the next guide call") -> int:
        """Hold ``tokens`` for a request, or raise :class:`GuideBudgetExhausted`."""
        with self._lock:
            if self.used + self.reserved + tokens > self.max_tokens:
                self.exhausted = True
                left = max(0, self.max_tokens - self.used - self.reserved)
                raise GuideBudgetExhausted(
                    f"guide token budget exhausted: {what} needs up to {tokens} tokens, "
                    f"{left} of {self.max_tokens} are left ({self.used} used)",
                    hint="raise the guide budget, or continue without the guide",
                )
            self.reserved += tokens
            return tokens

    def settle(self, reserved: int, actual: int) -> None:
        """Release a reservation and record what the request really cost."""
        with self._lock:
            self.reserved = max(0, self.reserved - reserved)
            self.used += max(0, actual)

    def release(self, reserved: int) -> None:
        """Give back a reservation that was never sent."""
        self.settle(reserved, 0)

    def charge(self, tokens: int) -> None:
        """Record tokens that may have been billed (a reply lost after sending)."""
        with self._lock:
            self.used += max(0, tokens)

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "budget_max_tokens": self.max_tokens,
                "budget_used_tokens": self.used,
                "budget_remaining_tokens": max(0, self.max_tokens - self.used - self.reserved),
                "budget_exhausted": self.exhausted,
            }

    def __repr__(self) -> str:
        return f"TokenBudget(max_tokens={self.max_tokens}, used={self.used})"
