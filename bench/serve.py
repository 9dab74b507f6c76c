"""Benchmark: ``rlgf serve`` with dynamic batching against one-request-at-a-time serving.

16 concurrent clients each send one completions request (one prompt, 24 new tokens, the
tasks' top-k 50 sampling) to a loopback server (uvicorn, as ``rlgf serve`` runs it); the same
model is served twice in the same run — batching on (``--max-batch 64``) and off
(``--max-batch 1``) — and the completions per
second of each (median of ``--rounds`` rounds) and their ratio are printed::

    .venv/bin/python bench/serve.py                    # the embedded SmolLM2 (cached)
    .venv/bin/python bench/serve.py --model PATH --clients 32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = ["The film opens with", "I expected very little from", "Its second half", "The cast, led by",
           "Few directors would dare", "What the script lacks", "By the final act", "The photography"]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as reply:
        return json.loads(reply.read())


def one_round(url: str, clients: int, tokens: int) -> float:
    """Seconds for ``clients`` concurrent requests to all come back."""
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            body = {"model": "bench", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens,
                    "min_tokens": tokens, "temperature": 1.0, "top_k": 50}
            assert len(post(url, body)["choices"]) == 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def measure(policy, max_batch: int, args) -> dict:
    """One serving of ``policy`` on the stack ``rlgf serve`` runs (uvicorn), timed."""
    from rlgf_cli.serving.asgi import AsgiServer
    from rlgf_cli.serving.service import Service

    server = AsgiServer(Service(policy, model_name="bench", max_batch=max_batch), "127.0.0.1", 0).start_in_thread()
    batcher = server.service.batcher
    try:
        one_round(server.url, 2, 2)  # warm-up
        batcher.batches.clear()
        times = [one_round(server.url, args.clients, args.tokens) for _ in range(args.rounds)]
        batches = list(batcher.batches)
    finally:
        server.stop()
    wall = statistics.median(times)
    return {"max_batch": max_batch, "seconds": times, "median_s": wall, "completions_per_s": args.clients / wall,
            "mean_batch": statistics.fmean(batches) if batches else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a model spec or folder (default: the embedded SmolLM2)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from backends import resolve

    policy = resolve(args.model, device=args.device)
    batched = measure(policy, 64, args)
    single = measure(policy, 1, args)
    ratio = batched["completions_per_s"] / single["completions_per_s"]
    print(f"# rlgf serve: {args.clients} concurrent clients × 1 prompt × {args.tokens} tokens, {policy.describe()}")
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print("| serving | median s per round | completions/s | mean prompts per batch |")
    print("|---|---:|---:|---:|")
    for name, r in (("batched (--max-batch 64)", batched), ("one at a time (--max-batch 1)", single)):
        print(f"| {name} | {r['median_s']:.2f} | {r['completions_per_s']:.2f} | {r['mean_batch']:.1f} |")
    print(f"\nbatched / one at a time: **{ratio:.2f}×** the completions per second")
    if args.json:
        Path(args.json).write_text(json.dumps({"batched": batched, "single": single, "ratio": ratio,
                                               "model": policy.describe(), "clients": args.clients,
                                               "tokens": args.tokens}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
