"""``rlgf serve`` on a production HTTP stack: a Starlette app on uvicorn around a
:class:`~rlgf_cli.serving.service.Service`.

The event loop only parses, checks and answers; each request's decoding runs in a worker
thread where it waits for the service's batcher, so requests that
arrive together share a batch. uvicorn stops gracefully on SIGINT / SIGTERM: it stops
accepting, lets the requests in flight finish (``drain_s`` at most; one still waiting then gets a
503) and returns. A request whose client hangs up while it waits leaves the batcher's queue. Errors are
OpenAI-style JSON, unknown routes and methods included. A request without the API key is
refused (401) before its body is read; bodies over
:data:`~rlgf_cli.serving.service.MAX_BODY_BYTES` are refused with 413 before they are read.

Every request waiting for its batch holds a worker thread, so the pool must be larger than
``--max-batch`` (anyio's default pool has 40 threads, which would cap a batch at 40 requests);
the requests get a pool of their own, :func:`worker_threads` of them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import threading

from rlgf_cli.serving.contract import ApiError
from rlgf_cli.serving.service import MAX_BODY_BYTES, Service


#: how often a request being answered checks that its client is still connected (s)
DISCONNECT_POLL_S = 0.1


def worker_threads(service: Service) -> int:
    """Threads for requests: two batches' worth (one decoding, the next gathering), at least
    anyio's default of 40."""
    return max(40, 2 * service.batcher.max_batch)


def build_app(service: Service):
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(err: ApiError) -> JSONResponse:
        service.bump(errors=1)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    def path_of(request) -> str:
        return request.url.path.rstrip("/") or "/"

    pool = {}

    async def in_worker(fn, *args):
        if "limiter" not in pool:  # made on the server's event loop, at the first request
            pool["limiter"] = anyio.CapacityLimiter(worker_threads(service))
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=pool["limiter"])

    async def get(request):
        service.bump(requests=1)
        path = path_of(request)
        if path != "/health" and not service.authorized(request.headers.get("authorization")):
            return error(service.auth_error(request.headers.get("authorization")))
        try:
            return JSONResponse(service.get(path))
        except ApiError as err:
            return error(err)

    async def post(request):
        with service.answering():
            service.bump(requests=1)
            if not service.authorized(request.headers.get("authorization")):
                return error(service.auth_error(request.headers.get("authorization")))
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                return error(ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes"))
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                return error(ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes"))
            try:
                payload = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                return error(ApiError(400, f"the request body is not valid JSON ({exc})"))
            gone = threading.Event()  # set when the client hangs up: its request leaves the queue
            watch = asyncio.ensure_future(watch_disconnect(request, gone))
            try:
                body = await in_worker(service.post, path_of(request), payload, gone.is_set)
            except ApiError as err:
                return error(err)
            except asyncio.CancelledError:  # shutting down, and the drain ran out: an answer, not a bare 500
                gone.set()  # if it still waits in the queue, it is not decoded after this answer
                return error(ApiError(503, "the server is shutting down and stopped waiting for this request",
                                      type_="server_error"))
            finally:
                watch.cancel()
            return JSONResponse(body)

    async def watch_disconnect(request, gone: threading.Event) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        gone.set()

    async def http_error(request, exc: HTTPException):
        service.bump(requests=1)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        what = f"no route {request.method} {path_of(request)}" if exc.status_code == 404 else \
            f"method {request.method} is not allowed"
        return error(ApiError(exc.status_code, what, type_=kind))

    routes = [
        Route("/health", get, methods=["GET"]),
        Route("/v1/models", get, methods=["GET"]),
        Route("/v1/models/{name:path}", get, methods=["GET"]),
        Route("/v1/completions", post, methods=["POST"]),
        Route("/v1/chat/completions", post, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: http_error, 405: http_error})


class AsgiServer:
    """uvicorn serving ``service`` on an already bound socket (port 0 picks a free one)."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000, *, drain_s: float = 60.0) -> None:
        import uvicorn

        self.service = service
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
            self.socket.listen(2048)  # connections wait in the backlog until uvicorn's loop accepts
        except OSError:
            self.socket.close()
            raise
        config = uvicorn.Config(build_app(service), log_level="warning", timeout_graceful_shutdown=drain_s,
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple:
        return self.socket.getsockname()

    def __repr__(self) -> str:  # never shows the key
        return f"AsgiServer({self.service.model_name!r} at {self.url}, auth={'on' if self.service.api_key else 'off'})"

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def run(self) -> None:
        """Serve until SIGINT / SIGTERM (uvicorn's handlers), then close everything; a second
        signal (uvicorn's forced exit) does not wait for the batch being decoded either."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.close(wait=not self.server.force_exit)

    def start_in_thread(self) -> "AsgiServer":
        """Serve on a daemon thread (tests, benchmarks); :meth:`stop` ends it."""
        # (uvicorn installs its signal handlers only on the main thread)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self.close()

    def close(self, wait: bool = True) -> None:
        self.service.close(timeout=30.0 if wait else 0.0)
        self.socket.close()
