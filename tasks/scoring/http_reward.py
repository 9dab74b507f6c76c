"""A reward from an HTTP service of yours (``--reward-url URL``).

rlgf POSTs ``{"prompts": [...], "completions": [...], "references": [[...], ...]}`` (JSON)
and reads ``{"rewards": [...]}``, one number per completion, in order — the shape OpenRLHF's
remote reward models use. A batch goes in requests of at most ``batch_size`` episodes,
``concurrency`` at a time. 429, 5xx, a dropped connection, a timeout or a reply that is not
the JSON above are retried with exponential backoff (honouring ``Retry-After``); after the
last try the run stops with one ``[error]`` saying what the service did. With the environment
variable ``RLGF_REWARD_API_KEY`` set, each request carries ``Authorization: Bearer KEY``;
the key is never logged, printed or written to a run folder.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from backends.errors import RlgfError

KEY_ENV = "RLGF_REWARD_API_KEY"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class HttpReward:
    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 5, backoff: float = 0.5,
                 batch_size: int = 64, concurrency: int = 4) -> None:
        if not str(url).startswith(("http://", "https://")):
            raise RlgfError(f"--reward-url {url!r} is not an http(s) URL", "e.g. --reward-url http://127.0.0.1:9000/score")
        self.url = str(url)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.batch_size = max(1, int(batch_size))
        self.concurrency = max(1, int(concurrency))

    def describe(self) -> str:
        return f"the reward service at {self.url}"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], examples) -> list[float]:
        references = [list(getattr(ex, "references", ()) or ()) for ex in examples] or [[] for _ in completions]
        if len(references) != len(completions):
            references = [[] for _ in completions]
        n = len(completions)
        chunks = [(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        if not chunks:
            return []

        def one(bounds):
            a, b = bounds
            return self._post({"prompts": list(prompts[a:b]), "completions": list(completions[a:b]),
                               "references": references[a:b]}, b - a)

        if len(chunks) == 1:
            return one(chunks[0])
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chunks))) as pool:
            return [x for part in pool.map(one, chunks) for x in part]

    def _post(self, body: dict, n: int) -> list[float]:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = "no reply"
        for attempt in range(self.retries + 1):
            wait = self.backoff * (2 ** attempt)
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    raw = reply.read()
                values, problem = _parse(raw, n)
                if problem is None:
                    return values
                last = problem
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}"
                if exc.code not in RETRY_STATUS:
                    hint = "check the key in $" + KEY_ENV if exc.code in (401, 403) else "check the service"
                    raise RlgfError(f"the reward service at {self.url} answered {last}", hint) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = max(wait, float(retry_after))
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt < self.retries:
                time.sleep(min(wait, 30.0))
        tries = self.retries + 1
        raise RlgfError(f"the reward service at {self.url} failed {tries} time{'s' if tries > 1 else ''} (last: {last})",
                        "check that it is running and answers {\"rewards\": [...]}, one number per completion")


def _parse(raw: bytes, n: int) -> tuple[list[float], str | None]:
    """The rewards of a reply, or ``([], what is wrong)``."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return [], "a reply that is not JSON"
    rewards = body.get("rewards") if isinstance(body, dict) else None
    if not isinstance(rewards, list):
        return [], "a reply without a \"rewards\" list"
    if len(rewards) != n:
        raise RlgfError(f"the reward service returned {len(rewards)} rewards for {n} completions",
                        "it must answer one number per completion, in order")
    out = []
    for value in rewards:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RlgfError(f"the reward service returned {value!r}, not a finite number",
                            "it must answer one number per completion")
        out.append(float(value))
    return out, None
