"""A SQLite store of API completions, so a repeated run never pays for the same call twice.

A row is keyed by a SHA-256 of ``(model, endpoint, prompt, max_tokens, decoding params,
sample index)``. ``endpoint`` is the base URL's host, port and path (no scheme, no
credentials), so two servers that serve the same model name stay apart; the decoding params
also carry :func:`server_fingerprint` where the server describes its weights, so one server
that serves other weights under the same name does too. The API key is never part of a key or
a row.

One connection is shared by the backend's threads behind a lock; WAL mode and a busy
timeout let several processes (parallel runs) share one file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from backends.errors import RlgfError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    prompt TEXT NOT NULL,
    max_tokens INTEGER NOT NULL,
    params TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    created REAL NOT NULL
)
"""


def endpoint_of(base_url: str) -> str:
    """``host[:port]/path`` of a base URL, without scheme, user info, query or trailing slash."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if parts.port:
        host = f"{host}:{parts.port}"
    return host + parts.path.rstrip("/")


def cache_key(
    model: str, endpoint: str, prompt: str, max_tokens: int, params: Mapping[str, Any], sample_index: int
) -> str:
    blob = json.dumps(
        [model, endpoint, prompt, int(max_tokens), dict(params), int(sample_index)],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


#: fields of a ``GET /v1/models`` entry that say which weights a server runs under a name and
#: stay the same across restarts: vLLM's and SGLang's ``root`` / ``parent`` / ``max_model_len``,
#: llama.cpp's ``meta`` (parameter count, vocabulary, file size), ``rlgf serve``'s ``root`` and
#: ``rlgf`` (a digest of the weights and the precision). OpenAI's entries carry none of them.
FINGERPRINT_FIELDS = ("root", "parent", "max_model_len", "meta", "rlgf")


def server_fingerprint(card: Mapping[str, Any] | None) -> str | None:
    """A short digest of the fields of a model's ``/v1/models`` entry that identify what the
    server runs (:data:`FINGERPRINT_FIELDS`), or None where it has none of them. Part of the
    cache key, so a local server that serves other weights under the same name and port does
    not get the old server's completions back from the cache."""
    fields = {k: card[k] for k in FINGERPRINT_FIELDS if card and card.get(k) not in (None, "", {}, [])}
    if not fields:
        return None
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class CompletionCache:
    """Get and put completions by key; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except (sqlite3.Error, OSError) as exc:
            raise RlgfError(
                f"cannot open the guide completion cache {self.path}: {exc}",
                hint="delete the file, or pass another cache path",
            ) from None

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """``{key: (text, finish_reason)}`` for the keys that are stored."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, tuple[str, str | None]] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, text, finish_reason FROM completions WHERE key IN ({marks})", chunk
                )
                for key, text, reason in rows:
                    found[key] = (text, reason)
        return found

    def put_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Store rows with fields key, model, endpoint, prompt, max_tokens, params, sample_index, text, finish_reason."""
        now = time.time()
        values = [
            (
                r["key"],
                r["model"],
                r["endpoint"],
                r["prompt"],
                int(r["max_tokens"]),
                json.dumps(dict(r["params"]), sort_keys=True),
                int(r["sample_index"]),
                r["text"],
                r.get("finish_reason"),
                now,
            )
            for r in rows
        ]
        if not values:
            return
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO completions VALUES (?,?,?,?,?,?,?,?,?,?)", values
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"CompletionCache({str(self.path)!r})"
