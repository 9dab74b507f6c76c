"""An OpenAI-compatible HTTP server for any local :class:`~backends.base.Policy`.

``rlgf serve`` puts a local model behind ``POST /v1/completions`` and ``GET /v1/models``,
so another run (or any OpenAI client) can use it as a black-box guide with the ``openai:``
backend. This is the standard-library HTTP stack (``http.server``, a thread per connection),
which the tests' fault-injecting servers extend; ``rlgf serve`` itself runs the same
:class:`~rlgf_cli.serving.service.Service` on uvicorn (:mod:`rlgf_cli.serving.asgi`). Requests
that wait together are decoded together in one batch (:mod:`rlgf_cli.serving.batcher`).

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
import json
import logging
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from backends.base import Policy
from backends.errors import RlgfError

from rlgf_cli.serving.contract import ApiError, CompletionRequest
from rlgf_cli.serving.service import MAX_BODY_BYTES, POST_ROUTES, Service, token_counter_for  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

class CompletionServer(ThreadingHTTPServer):
    """The HTTP server; holds the policy, its lock and request counters."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, policy: Policy, *, api_key: str | None, model_name: str | None,
                 precision=None, max_batch: int = 64, batch_window_s: float = 0.005):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        #: what the server answers (policy, batcher, key, counters); the attributes below are its
        self.service = Service(policy, api_key=api_key, model_name=model_name, precision=precision,
                               max_batch=max_batch, batch_window_s=batch_window_s)
        svc = self.service
        self.policy, self.api_key, self.model_name, self.precision = svc.policy, svc.api_key, svc.model_name, precision
        self.model_lock, self.count_tokens, self.batcher, self.created = svc.model_lock, svc.count_tokens, svc.batcher, svc.created
        self._counts_lock, self.counts, self.bump = svc._counts_lock, svc.counts, svc.bump
        self.answering, self.drain = svc.answering, svc.drain

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall without DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def server_close(self) -> None:
        super().server_close()
        service = getattr(self, "service", None)  # absent when binding failed in __init__
        if service is not None:
            service.close()

    def process_request(self, request, client_address) -> None:
        """As ``ThreadingMixIn``'s, but remembering the thread, so that :meth:`stop` can wait for it."""
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        live = [(t, conn) for t, conn in getattr(self, "request_threads", []) if t.is_alive()]
        self.request_threads = live + [(thread, request)]
        thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop a server run by :func:`start_in_thread`: end its loop, close it, and wait for its
        thread and its requests' threads.

        Waiting matters at exit: each of those threads' last act drops its reference to the server,
        and so maybe the last one to the policy; freeing tensors on a daemon thread while the
        interpreter shuts down aborted the process ("terminate called without an active exception")."""
        deadline = time.monotonic() + timeout
        self.shutdown()
        self.drain(timeout)  # the requests being answered finish
        self.service.close(max(0.0, deadline - time.monotonic()))  # within the same deadline
        for _, conn in getattr(self, "request_threads", []):
            with contextlib.suppress(OSError):  # a kept-alive connection waiting for its next request
                conn.shutdown(socket.SHUT_RD)  # reads end of file: the handler closes it
        self.server_close()
        threads = [getattr(self, "serve_thread", None), *(t for t, _ in getattr(self, "request_threads", []))]
        for thread in threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

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
        return self.server.service.authorized(self.headers.get("Authorization"))

    def _auth_error(self) -> ApiError:
        return self.server.service.auth_error(self.headers.get("Authorization"))

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
        if path != "/health" and path.startswith("/v1/") and not self._authorized():
            return self.send_error_json(self._auth_error())
        try:
            return self.send_json(200, self.server.service.get(path))
        except ApiError as err:
            return self.send_error_json(err)

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
        if path not in POST_ROUTES:
            return self.send_error_json(ApiError(404, f"no route POST {path}", type_="not_found_error"))
        if not self._authorized():
            return self.send_error_json(self._auth_error())
        try:
            body = self.server.service.post(path, payload)
        except ApiError as err:
            return self.send_error_json(err)
        self.send_json(200, body)

    def _method_not_allowed(self) -> None:
        self.server.bump(requests=1)
        self.close_connection = True
        self.send_error_json(ApiError(405, f"method {self.command} is not allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    # -- work (the service's) ----------------------------------------------------------
    def complete(self, req: CompletionRequest) -> dict:
        return self.server.service.complete(req)


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
        raise bind_error(host, port, exc) from None


def bind_error(host: str, port: int, exc: OSError) -> RlgfError:
    """The error a user sees when ``host:port`` cannot be bound."""
    import errno

    if exc.errno in (errno.EADDRINUSE, errno.EACCES):  # the port is taken or privileged
        hint = "pick another --port (0 chooses a free one) or stop what uses it"
    else:  # an unknown name or an address this machine does not have
        hint = "pass a --host address of this machine (127.0.0.1 for this machine only, 0.0.0.0 for all)"
    return RlgfError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint=hint)


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
    """Run ``server`` on a daemon thread; stop it with :meth:`CompletionServer.stop`."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    server.serve_thread = thread
    thread.start()
    return thread
