"""A loopback OpenAI-style chat server for tests: checks each request's shape, records it, and
accepts only the prefill forms it is told to (others answer 400, as strict servers do).

``ChatServer(accepts={"trailing"})`` serves ``POST /v1/chat/completions`` and ``GET /v1/models``
on 127.0.0.1; ``server.requests`` holds every chat body; ``server.faults`` is a queue of
``"429"``, ``"500"``, ``"malformed"``, ``"drop"``, ``"slow"`` served one per request first.
A reply is ``"good "`` repeated (at most ``max_tokens`` words); a prefilled one starts with
``" fine"`` so tests can tell continuations apart.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FORMS = ("continue", "prefix", "trailing")


def form_of(body: dict) -> str | None:
    """The prefill form of a request (None: no final assistant message)."""
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        return None
    if body.get("continue_final_message"):
        return "continue"
    if messages[-1].get("prefix"):
        return "prefix"
    return "trailing"


class _Handler(BaseHTTPRequestHandler):
    server: "ChatServer"

    def log_message(self, *args) -> None:
        return None

    def _send(self, status: int, obj, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.auth.append(self.headers.get("Authorization"))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": "only chat here"}})
            return
        with self.server.lock:
            fault = self.server.faults.pop(0) if self.server.faults else None
            self.server.requests.append(body)
        if fault == "429":
            self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0.05"})
            return
        if fault == "500":
            self._send(500, {"error": {"message": "boom"}})
            return
        if fault == "malformed":
            self._send(200, None, raw=b'{"choices": [')
            return
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if fault == "slow":
            time.sleep(self.server.slow_s)
        problems = check_shape(body)
        if problems:
            self._send(422, {"error": {"message": "; ".join(problems)}})
            return
        form = form_of(body)
        if form is not None and form not in self.server.accepts:
            message = self.server.refusal or f"prefill form {form} is not supported"
            self._send(400, {"error": {"message": message, "type": "invalid_request"}})
            return
        words = max(1, min(3, int(body.get("max_completion_tokens") or body.get("max_tokens") or 3)))
        content = ("fine " if form else "") + " ".join(["good"] * words)
        self._send(200, {"id": "c", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "length",
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words}})


def check_shape(body: dict) -> list[str]:
    problems = []
    if not isinstance(body.get("model"), str):
        problems.append("no model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return problems + ["no messages"]
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            problems.append(f"bad message {m}")
    if "prompt" in body:
        problems.append("a chat request has no 'prompt'")
    return problems


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, accepts=FORMS, model: str = "chatty") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.accepts = set(accepts)
        self.model = model
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.faults: list[str] = []
        self.slow_s = 0.3
        self.refusal: str | None = None  # the 400's message for a prefill form it does not accept
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
