"""``rlgf serve``: put a local policy behind an OpenAI-compatible API (uvicorn + Starlette)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Optional

import typer

from rlgf_cli.commands.options import Precision, Threads

SERVE_KEY_ENV = "RLGF_SERVE_API_KEY"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    policy: Annotated[str, typer.Option("--policy", "-p", help="The policy to serve: smollm2, hf:NAME_OR_PATH, or a checkpoint folder (e.g. OUT/final).", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to bind. Anything but loopback exposes the model to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar=SERVE_KEY_ENV, show_default=False, show_envvar=True, help="Require 'Authorization: Bearer KEY' on every request.")] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", show_default=False, help="Model id clients must ask for. Default: the policy spec.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Precision = "auto",
    max_batch: Annotated[int, typer.Option(help="Most prompts decoded together: requests that wait together share one batch (1: one request at a time).")] = 64,
    batch_window_ms: Annotated[float, typer.Option(help="How long the first waiting request waits for others to join its batch.")] = 5.0,
    threads: Threads = None,
) -> None:
    """Serve a local policy as an OpenAI-compatible API (POST /v1/completions, POST /v1/chat/completions, GET /v1/models) on uvicorn.

    Requests that arrive while the model is busy, or within --batch-window-ms of each other, are
    decoded together (up to --max-batch prompts) when they decode the same way.

    Another run can then use it as a black-box guide: OPENAI_BASE_URL=http://HOST:PORT/v1 and
    --guide openai:MODEL_NAME. Runs until Ctrl-C.

    [bold]Examples[/]

      rlgf serve --policy smollm2 --port 8000

      RLGF_SERVE_API_KEY=secret rlgf serve --policy hf:runs/ppo/final \\
        --model-name guide
    """
    from backends.errors import RlgfError

    from rlgf_cli.commands.console import err_console
    from rlgf_cli.serving.asgi import AsgiServer
    from rlgf_cli.serving.server import bind_error
    from rlgf_cli.serving.service import Service

    if not 0 <= port <= 65535:
        raise RlgfError(f"--port must be between 0 and 65535 (got {port})", "e.g. --port 8000, or 0 for any free port")
    if not host.strip():
        raise RlgfError("--host is empty", "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    if model_name is not None and not model_name.strip():
        raise RlgfError("--model-name is empty", "leave it out to use the policy spec, or give a name")
    if max_batch < 1:
        raise RlgfError(f"--max-batch must be at least 1 (got {max_batch})", "e.g. --max-batch 64, or 1 for no batching")
    if not 0 <= batch_window_ms <= 1000:
        raise RlgfError(f"--batch-window-ms must be between 0 and 1000 (got {batch_window_ms:g})", "e.g. 5")
    if api_key is not None and not api_key.strip():
        api_key = None
    from rlgf_cli.runtime import use_threads

    use_threads(threads)

    from backends.registry import policy_class, resolve

    if policy_class(policy).remote:  # before any model or key is touched
        raise RlgfError(f"rlgf serve serves a local policy, and {policy} is an API model",
                        "pass a local model (hf:NAME_OR_PATH, a folder, a run folder or smollm2); an API model "
                        "is already served by its provider")
    from backends.precision import freeze_in, resolve_precision
    from rlgf_cli.runtime import resolve_device

    prec = resolve_precision(precision, resolve_device(device))
    served = resolve(policy, device=device, progress=lambda msg: err_console.print(msg, markup=False))
    freeze_in(served, prec)
    service = Service(served, api_key=api_key, model_name=model_name, precision=prec, max_batch=max_batch,
                      batch_window_s=batch_window_ms / 1000)
    try:
        server = AsgiServer(service, host, port)
    except OSError as exc:
        service.close()
        raise bind_error(host, port, exc) from None
    name = service.model_name
    warning = "" if api_key or _is_loopback(host) else " — no --api-key on a non-loopback address: anyone who can reach it can use it"
    err_console.print(
        f"rlgf serve: {served.describe()} as model '{name}' at {server.url} "
        f"({prec.describe()}; guide: OPENAI_BASE_URL={server.url} --guide openai:{name}; auth {'on' if api_key else 'off'}; Ctrl-C stops){warning}",
        markup=False,
    )
    import signal

    def stopped(signum, frame):  # uvicorn re-raises the signal it stopped on, once it has stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stopped)
    try:
        server.run()  # uvicorn: until Ctrl-C or SIGTERM, answering the requests in flight first
    except KeyboardInterrupt:
        pass
    finally:
        served.close()
    # Stopped by Ctrl-C, everything closed: leave without the interpreter's teardown, where a
    # request thread still inside a native (torch) call can abort the process ("terminate
    # called without an active exception", exit -6) instead of exiting 0.
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
