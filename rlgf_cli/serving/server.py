"""An OpenAI-compatible HTTP server for any local :class:`~backends.base.Policy`.

``rlgf serve`` puts a local model behind ``POST /v1/completions`` and ``GET /v1/models``,
so another run (or any OpenAI client) can use it as a black-box guide with the ``openai:``
backend. Standard library HTTP (``http.server``, a thread per connection); requests that wait
together are decoded together in one batch (:mod:`rlgf_cli.serving.batcher`).

Request fields: ``model`` (must be the served name, else 404), ``prompt`` (a string or a
list of strings), ``max_tokens`` (default 16), ``temperature`` (default 1; 0 is greedy),
``top_p``, ``n``, ``stop`` (a string or up to 4), ``seed`` (re-seeds ``random`` and torch
before generating), ``echo``, ``logprobs`` (0–5 alternatives; :mod:`rlgf_cli.serving.logprobs`),
``user``; the extensions ``top_k`` and ``min_tokens`` (as in vLLM). Streaming, suffix,
penalties and logit bias are refused with 400 rather than silently ignored; unknown fields too. Replies carry ``choices`` (``index``, ``text``,
``finish_reason``: ``"stop"`` or ``"length"``) and ``usage`` counted with the policy's
tokenizer when it has one (else the offline tiktoken count / rough estimate).

With ``api_key`` every ``/v1`` request needs ``Authorization: Bearer <key>`` (401
otherwise). Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``.
The server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from backends.base import Policy
from backends.errors import RlgfError

from rlgf_cli.serving.batcher import Batcher
from rlgf_cli.serving.chat_contract import build_chat_reply, parse_chat_request
from rlgf_cli.serving.chat_contract import render as render_chat
from rlgf_cli.serving.contract import ApiError, CompletionRequest, build_reply, parse_completion_request
from rlgf_cli.serving.logprobs import choice_logprobs

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024


def token_counter_for(policy: Policy) -> Callable[[str], int]:
    """Count tokens as the policy does: its ``count_tokens``, its HF tokenizer, else offline tiktoken."""
    count = getattr(policy, "count_tokens", None)
    if callable(count):
        return count
    tok = getattr(policy, "tokenizer", None)
    if tok is not None:

        def count_hf(text: str) -> int:
            return len(tok(text, add_special_tokens=False)["input_ids"])

        try:
            count_hf("probe")
            return count_hf
        except Exception:  # noqa: BLE001 - not an HF tokenizer: fall through
            pass
    from backends.openai_api.token_budget import token_counter

    return token_counter()[0]


class CompletionServer(ThreadingHTTPServer):
    """The HTTP server; holds the policy, its lock and request counters."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, policy: Policy, *, api_key: str | None, model_name: str | None,
                 precision=None, max_batch: int = 64, batch_window_s: float = 0.005):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.policy = policy
        self.api_key = api_key or None
        self.model_name = model_name or policy.spec
        self.model_lock = threading.Lock()
        #: a :class:`~backends.precision.Precision` whose autocast each request enters (autocast is per thread)
        self.precision = precision
        self.count_tokens = token_counter_for(policy)
        #: decodes the requests that wait together in one batch (see :mod:`rlgf_cli.serving.batcher`)
        self.batcher = Batcher(policy, max_batch=max_batch, window_s=batch_window_s, lock=self.model_lock,
                               precision=precision)
        self.created = int(time.time())
        self._counts_lock = threading.Lock()
        self._flight = threading.Condition()
        self._flying = 0
        self.counts = dict.fromkeys(
            ("requests", "completion_requests", "completions", "prompt_tokens", "completion_tokens", "errors"), 0
        )

    @contextlib.contextmanager
    def answering(self):
        """Counts a request being answered, so a shutdown can wait for it (:meth:`drain`)."""
        with self._flight:
            self._flying += 1
        try:
            yield
        finally:
            with self._flight:
                self._flying -= 1
                self._flight.notify_all()

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until no request is being answered (at most ``timeout`` s); True if none is left."""
        deadline = time.monotonic() + timeout
        with self._flight:
            while self._flying and time.monotonic() < deadline:
                self._flight.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            return self._flying == 0

    def bump(self, **by: int) -> None:
        with self._counts_lock:
            for name, value in by.items():
                self.counts[name] += value

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall without DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def server_close(self) -> None:
        super().server_close()
        batcher = getattr(self, "batcher", None)  # absent when binding failed in __init__
        if batcher is not None:
            batcher.close()

    def handle_error(self, request, client_address) -> None:
        # a client that hangs up mid-request is routine; keep tracebacks out of the console
        log.debug("request from %s failed", client_address, exc_info=True)

    @property
    def url(self) -> str:
        """The base URL clients use (``OPENAI_BASE_URL``)."""
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/v1"

    def __repr__(self) -> str:  # never shows the key
        return f"CompletionServer({self.model_name!r} at {self.url}, auth={'on' if self.api_key else 'off'})"


class CompletionHandler(BaseHTTPRequestHandler):
    """Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``,
    ``POST /v1/chat/completions`` (:mod:`rlgf_cli.serving.chat_contract`), ``GET /health``."""

    protocol_version = "HTTP/1.1"
    server_version = "rlgf-serve"
    timeout = 300  # seconds a kept-alive or stalled connection may sit idle
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    server: CompletionServer

    # -- plumbing -----------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    def send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error_json(self, err: ApiError) -> None:
        self.server.bump(errors=1)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        self.send_json(err.status, err.body(), headers)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _authorized(self) -> bool:
        if self.server.api_key is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.server.api_key.encode())
        return ok

    def _auth_error(self) -> ApiError:
        given = self.headers.get("Authorization")
        msg = "Incorrect API key provided." if given else "You didn't provide an API key (Authorization: Bearer KEY)."
        return ApiError(401, msg, code="invalid_api_key")

    def _read_json(self) -> Any:
        """Read the whole body (always, so keep-alive stays in sync), then decode it."""
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "the Content-Length header is not a number") from None
        if size < 0 or size > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(size)
        if len(raw) < size:
            self.close_connection = True
            raise ApiError(400, "the request body ended early")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})") from None

    # -- routes -------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.bump(requests=1)
        path = self._path()
        if path == "/health":
            return self.send_json(200, {"status": "ok", "model": self.server.model_name})
        if not path.startswith("/v1/"):
            return self.send_error_json(ApiError(404, f"no route GET {path}", type_="not_found_error"))
        if not self._authorized():
            return self.send_error_json(self._auth_error())
        if path == "/v1/models":
            return self.send_json(200, {"object": "list", "data": [self._model_card()]})
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/") :]
            if name == self.server.model_name:
                return self.send_json(200, self._model_card())
            return self.send_error_json(self._unknown_model(name))
        return self.send_error_json(ApiError(404, f"no route GET {path}", type_="not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        with self.server.answering():
            self._do_post()

    def _do_post(self) -> None:
        self.server.bump(requests=1)
        path = self._path()
        try:
            payload = self._read_json()  # read before answering, so the connection stays in sync
        except ApiError as err:
            return self.send_error_json(err)
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return self.send_error_json(ApiError(404, f"no route POST {path}", type_="not_found_error"))
        if not self._authorized():
            return self.send_error_json(self._auth_error())
        try:
            chat = path == "/v1/chat/completions"
            req = parse_chat_request(payload) if chat else parse_completion_request(payload)
            if req.model != self.server.model_name:
                raise self._unknown_model(req.model)
            body = self.chat(req) if chat else self.complete(req)
        except ApiError as err:
            return self.send_error_json(err)
        self.send_json(200, body)

    def _method_not_allowed(self) -> None:
        self.server.bump(requests=1)
        self.close_connection = True
        self.send_error_json(ApiError(405, f"method {self.command} is not allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    # -- work ---------------------------------------------------------------------
    def _model_card(self) -> dict:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "rlgf"}

    def _unknown_model(self, name: str) -> ApiError:
        return ApiError(
            404,
            f"The model '{name}' does not exist; this server offers '{self.server.model_name}'.",
            param="model",
            code="model_not_found",
        )

    def chat(self, req) -> dict:
        """A chat request: the conversation rendered with the model's template, then decoded
        like a completions prompt (in the same batches)."""
        prompt = render_chat(self.server.policy, req)
        texts = self._decode([prompt] * req.completion.n, req.completion)
        body = build_chat_reply(req, prompt, texts, self.server.count_tokens, self.server.model_name)
        usage = body["usage"]
        self.server.bump(completion_requests=1, completions=len(texts), prompt_tokens=usage["prompt_tokens"],
                         completion_tokens=usage["completion_tokens"])
        return body

    def complete(self, req: CompletionRequest) -> dict:
        server = self.server
        expanded = [p for p in req.prompts for _ in range(req.n)]
        texts = self._decode(expanded, req)
        body = build_reply(req, texts, server.count_tokens, server.model_name)
        if req.logprobs is not None:
            with server.model_lock:
                for i, choice in enumerate(body["choices"]):
                    prompt = req.prompts[i // req.n]
                    completion = choice["text"][len(prompt):] if req.echo else choice["text"]
                    choice["logprobs"] = choice_logprobs(server.policy, prompt, completion, echo=req.echo,
                                                         top=req.logprobs)
        usage = body["usage"]
        server.bump(completion_requests=1, completions=len(texts), prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"])
        return body

    def _decode(self, expanded: list[str], req: CompletionRequest) -> list[str]:
        server = self.server
        sampling = req.sampling()
        try:
            texts = server.batcher.submit(
                expanded, max_new_tokens=req.max_tokens, min_new_tokens=min(req.min_tokens, req.max_tokens),
                sampling=sampling, seed=req.seed,
            ) if req.max_tokens > 0 else [""] * len(expanded)
        except RlgfError as exc:
            raise ApiError(400, f"the policy refused the request: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a policy bug must not kill the server
            log.exception("the policy failed on a completion request")
            raise ApiError(500, f"the policy failed: {type(exc).__name__}: {exc}", type_="server_error") from None
        if len(texts) != len(expanded):
            raise ApiError(500, "the policy returned the wrong number of completions", type_="server_error")
        return texts


def make_server(
    policy: Policy,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    *,
    handler_class: type[CompletionHandler] = CompletionHandler,
    precision=None,
    max_batch: int = 64,
    batch_window_s: float = 0.005,
) -> CompletionServer:
    """Bind (port 0 picks a free one) and return the server; run it with :func:`serve_forever`
    or :func:`start_in_thread`. Raises :class:`RlgfError` when the address cannot be bound."""
    try:
        return CompletionServer((host, port), handler_class, policy, api_key=api_key, model_name=model_name,
                                precision=precision, max_batch=max_batch, batch_window_s=batch_window_s)
    except OSError as exc:
        import errno

        if exc.errno in (errno.EADDRINUSE, errno.EACCES):  # the port is taken or privileged
            hint = "pick another --port (0 chooses a free one) or stop what uses it"
        else:  # an unknown name or an address this machine does not have
            hint = "pass a --host address of this machine (127.0.0.1 for this machine only, 0.0.0.0 for all)"
        raise RlgfError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint=hint) from None


def serve_forever(server: CompletionServer, poll_interval: float = 0.5, drain_s: float = 60.0) -> None:
    """Serve until Ctrl-C or SIGTERM (or :meth:`shutdown` from another thread); then stop
    accepting, let the requests in flight finish (at most ``drain_s``) and close the socket."""
    import signal

    def on_term(signum, frame) -> None:  # shutdown() waits for the loop: call it from another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        server.serve_forever(poll_interval=poll_interval)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not server.drain(drain_s):
            log.warning("stopping with requests still in flight after %.0f s", drain_s)
        server.server_close()


def start_in_thread(server: CompletionServer) -> threading.Thread:
    """Run ``server`` on a daemon thread; stop it with ``server.shutdown(); server.server_close()``."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread
