"""``bench/iteration.py --preset embedded``: one training iteration of the embedded default in
float32 and in bf16, in the same run.

The embedded default as ``make demo`` trains it: the cached SmolLM2-135M learner (a frozen
copy as reference, a critic of the same size), the Rotten Tomatoes task with its MiniLM
reward classifier, PPO with 32 episodes × 24 new tokens, 2 epochs of minibatches of 16. Each
precision runs in a child process of its own (so each peak memory is its own); the parent
prints one table with the two side by side and the ratios.

Per phase (rollout, reward, forward scoring, update, checkpoint) it prints seconds and the
achieved GFLOP/s, counting 2 FLOPs per weight per token for a forward pass and 6 for a
forward and backward pass (attention's own products are left out: at 40-token episodes they
are under 3 % of the total). Beside them, a matrix-product roofline measured in the same
child: a 1440×576×1536 product (the shape of SmolLM2's MLP over an update minibatch) in that
precision, so the distance to what the machine can do is visible. The checkpoint phase is
what the training thread spends on a periodic checkpoint (the snapshot; the write itself runs
in the background), next to the time a foreground write takes.

The phases are those of the iteration after ``--warmup`` untimed ones (default 1): the first pays
one-time costs (the process's first touch of its ~8 GB, the optimizer's state, the kernels'
first calls) that ``make demo``'s other five iterations do not, and its total is shown on a row
of its own. Likewise the checkpoint is taken twice and the second snapshot reported (it
refreshes the first one's tensors in place, as every periodic checkpoint after the first does).

    .venv/bin/python bench/iteration.py --preset embedded [--threads 2] [--warmup 1] [--json FILE]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(episodes=32, max_new_tokens=24, epochs=2, minibatch_size=16)
PHASES = ("rollout", "reward", "forward", "update", "checkpoint")


def roofline(dtype_name: str, threads: int, repeats: int = 5, rounds: int = 3) -> float:
    """GFLOP/s of a 1440×576×1536 product in that precision: the best of ``rounds`` rounds of
    ``repeats`` products (a roofline is what the machine can do, so noise only lowers it)."""
    import torch

    torch.set_num_threads(threads)
    m, k, n = 1440, 576, 1536
    a, b = torch.randn(m, k), torch.randn(k, n)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype_name == "bf16" else torch.no_grad()
    if dtype_name == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    best = float("inf")
    with ctx:
        a @ b
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * m * k * n / best / 1e9


def one(precision: str, threads: int, seed: int, warmup: int = 1, compile: bool = False) -> dict:
    """Build the trainer, run ``warmup`` iterations and a timed one, time two checkpoints; the
    numbers of the last of each as a dict."""
    import torch

    torch.set_num_threads(threads)
    peak_before = roofline(precision, threads)  # before the run's writes, and after them
    from rlgf_cli.training.checkpoint import save_checkpoint
    from rlgf_cli.training.checkpoint_writer import CheckpointWriter

    trainer = build_trainer(precision, seed, compile)
    cfg, task, policy = trainer.cfg, trainer.task, trainer.policy
    steps = [trainer.step() for _ in range(max(0, warmup) + 1)]
    metrics = steps[-1]
    tokens = {"prompt": float(trainer_prompt_tokens(trainer)), "response": metrics["response_length"] * cfg.episodes}
    with tempfile.TemporaryDirectory() as tmp:
        writer = CheckpointWriter(background=True)
        snapshots = []
        for i in range(2):  # the first allocates the snapshot, the second refreshes it
            tick = time.perf_counter()
            writer.submit(Path(tmp) / f"bg{i}", policy=policy, critics=trainer.critics, optimizer=trainer.optimizer,
                          state=trainer.state(), config_toml="")
            snapshots.append(time.perf_counter() - tick)
            writer.wait()
            background_total_s = time.perf_counter() - tick
        snapshot_s = snapshots[-1]
        tick = time.perf_counter()
        save_checkpoint(Path(tmp) / "fg", policy=policy, critics=trainer.critics, optimizer=trainer.optimizer,
                        state=trainer.state(), config_toml="")
        foreground_s = time.perf_counter() - tick
    policy_params = sum(p.numel() for p in policy.model.parameters())
    critic_params = sum(p.numel() for p in trainer.critic.parameters())
    reward_params = sum(p.numel() for p in task.reward_model().model.parameters())
    total = tokens["prompt"] + tokens["response"]
    flops = {
        # decoding: every new token passes through the learner once, and the prompts once (prefill)
        "rollout": 2 * policy_params * total,
        "reward": 2 * reward_params * total,
        # old log-probs (learner), reference log-probs, values (critic)
        "forward": 2 * (2 * policy_params + critic_params) * total,
        # per epoch one forward + backward of the learner and of the critic over every episode
        "update": cfg.epochs * 6 * (policy_params + critic_params) * total,
    }
    seconds = {p: metrics[f"time_{p}_s"] for p in ("rollout", "reward", "forward", "update")}
    seconds["checkpoint"] = snapshot_s
    return {
        "precision": trainer.precision.name, "precision_reason": trainer.precision.reason, "threads": threads,
        "attention": trainer.policy.model.config._attn_implementation, "compiled": trainer.compiled,
        "allocator": __import__("backends.allocator", fromlist=["current"]).current(),
        "seconds": seconds, "iteration_s": metrics["time_s"] + snapshot_s, "iterations": len(steps),
        "first_iteration_s": steps[0]["time_s"],
        "gflops": {p: flops[p] / seconds[p] / 1e9 for p in flops if seconds[p] > 0},
        "roofline_gflops": max(peak_before, roofline(trainer.precision.name, threads)),
        "checkpoint": {"snapshot_s": snapshot_s, "first_snapshot_s": snapshots[0], "background_write_s": background_total_s,
                       "foreground_write_s": foreground_s},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "reward_mean": metrics["reward_mean"], "approx_kl": metrics.get("approx_kl"),
        "reward_means": [m["reward_mean"] for m in steps],
        "tokens": tokens, "params": {"policy": policy_params, "critic": critic_params, "reward": reward_params},
    }


def build_trainer(precision: str, seed: int, compile: bool = False, **shape):
    """The embedded default's Trainer as ``make demo`` builds it, in that precision (``shape``
    overrides :data:`SHAPE`'s settings)."""
    from backends import resolve
    from rlgf_cli.runtime import set_seed
    from rlgf_cli.training.config import build_config
    from rlgf_cli.training.run import build_task
    from rlgf_cli.training.trainer import Trainer

    cfg = build_config(None, task="rotten-tomatoes", alg="ppo", learner="smollm2", iterations=10, seed=seed,
                       device="cpu", precision=precision, lr=1e-5, save_every=0, compile=compile, **{**SHAPE, **shape})
    task = build_task(cfg)
    task.prepare()
    set_seed(seed)
    policy = resolve("smollm2", device="cpu")
    reference = resolve("smollm2", device="cpu")
    return Trainer(cfg, task, policy, reference, policy.make_critic())


def trainer_prompt_tokens(trainer) -> float:
    """Prompt tokens of an iteration's episodes: the mean prompt length of the first 256
    training prompts (as the learner's tokenizer counts them) times the episodes."""
    prompts = [ex.prompt for ex in trainer.task.examples("train")[:256]]
    _, mask = trainer.policy.encode_prompts(prompts, trainer.task.prompt_max_tokens)
    return float(mask.sum()) / len(prompts) * trainer.cfg.episodes


def table(results: list[dict]) -> str:
    a, b = results
    lines = [f"| phase | {a['precision']} s | {b['precision']} s | {a['precision']}/{b['precision']} | "
             f"{a['precision']} GFLOP/s | {b['precision']} GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    for p in PHASES:
        sa, sb = a["seconds"][p], b["seconds"][p]
        ga, gb = a["gflops"].get(p), b["gflops"].get(p)
        lines.append(f"| {p} | {sa:.2f} | {sb:.2f} | {sa / sb:.2f}× | {'' if ga is None else f'{ga:.1f}'} | "
                     f"{'' if gb is None else f'{gb:.1f}'} |")
    lines.append(f"| **iteration** | **{a['iteration_s']:.1f}** | **{b['iteration_s']:.1f}** | "
                 f"**{a['iteration_s'] / b['iteration_s']:.2f}×** | | |")
    if a.get("iterations", 1) > 1 and b.get("iterations", 1) > 1:
        fa, fb = a["first_iteration_s"], b["first_iteration_s"]
        lines.append(f"| first iteration (one-time costs) | {fa:.1f} | {fb:.1f} | {fa / fb:.2f}× | | |")
    lines += ["", f"- matrix-product roofline (1440×576×1536): {a['precision']} {a['roofline_gflops']:.1f} GFLOP/s, "
                  f"{b['precision']} {b['roofline_gflops']:.1f} GFLOP/s; the update reaches "
                  f"{a['gflops']['update'] / a['roofline_gflops']:.0%} and "
                  f"{b['gflops']['update'] / b['roofline_gflops']:.0%} of them",
              f"- peak memory (each precision in its own process): {a['peak_rss_gib']:.1f} GiB and "
              f"{b['peak_rss_gib']:.1f} GiB",
              f"- checkpoint: the training thread spends {a['checkpoint']['snapshot_s']:.2f} s and "
              f"{b['checkpoint']['snapshot_s']:.2f} s on the snapshot ({a['checkpoint']['snapshot_s'] / a['iteration_s']:.1%} "
              f"and {b['checkpoint']['snapshot_s'] / b['iteration_s']:.1%} of an iteration{_first_snapshots(a, b)}); the "
              f"background write takes {a['checkpoint']['background_write_s']:.1f} s and a foreground write "
              f"{a['checkpoint']['foreground_write_s']:.1f} s ({a['checkpoint']['foreground_write_s'] / a['iteration_s']:.0%}"
              f" of an fp32 iteration)",
              f"- precision choices: {a['precision']} ({a['precision_reason']}; {a.get('attention', '?')} attention), "
              f"{b['precision']} ({b['precision_reason']}; {b.get('attention', '?')} attention); memory allocator {a.get('allocator', '?')}",
              f"- torch.compile (--compile): {', '.join(a.get('compiled') or []) or 'off'}",
              f"- mean reward of the timed iteration: {a['reward_mean']:.3f} and {b['reward_mean']:.3f}"]
    return "\n".join(lines)


def compile_table(eager: list[dict], compiled: list[dict]) -> str:
    """Per precision and phase: eager against compiled seconds, measured in the same run."""
    head = "| phase | " + " | ".join(f"{r['precision']} eager s | {r['precision']} compiled s | eager/compiled"
                                     for r in eager) + " |"
    lines = ["### --compile against eager (same run)", "", head, "|---|" + "---:|---:|---:|" * len(eager)]
    rows = [(p, lambda r, p=p: r["seconds"][p]) for p in PHASES]
    rows += [("**iteration**", lambda r: r["iteration_s"]), ("first iteration (compiling)", lambda r: r["first_iteration_s"])]
    for name, get in rows:
        cells = [f"{get(e):.2f} | {get(c):.2f} | {get(e) / get(c):.2f}×" for e, c in zip(eager, compiled)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _first_snapshots(a: dict, b: dict) -> str:
    fa, fb = a["checkpoint"].get("first_snapshot_s"), b["checkpoint"].get("first_snapshot_s")
    return "" if fa is None or fb is None else f"; the first, which allocates it: {fa:.2f} s and {fb:.2f} s"


def single(r: dict) -> str:
    lines = [f"| phase | {r['precision']} s | GFLOP/s |", "|---|---:|---:|"]
    for p in PHASES:
        g = r["gflops"].get(p)
        lines.append(f"| {p} | {r['seconds'][p]:.2f} | {'' if g is None else f'{g:.1f}'} |")
    lines += [f"| **iteration** | **{r['iteration_s']:.1f}** | |", "",
              f"- roofline {r['roofline_gflops']:.1f} GFLOP/s; the update reaches "
              f"{r['gflops']['update'] / r['roofline_gflops']:.0%} of it; peak memory {r['peak_rss_gib']:.1f} GiB",
              f"- checkpoint: snapshot {r['checkpoint']['snapshot_s']:.2f} s in the training thread, background write "
              f"{r['checkpoint']['background_write_s']:.1f} s, foreground write {r['checkpoint']['foreground_write_s']:.1f} s"]
    return "\n".join(lines)


def main(args) -> int:
    """Run fp32 then bf16, each in a child process; print the table (and write ``--json``)."""
    import os

    from backends.precision import cpu_flags

    threads = args.threads or os.cpu_count() or 1
    results = []
    precisions = ["fp32", "bf16"]
    if not cpu_flags() and not getattr(args, "force_bf16", False):
        # emulated bf16 runs matrix products ~85x slower than fp32 (1.1 against 97 GFLOP/s on
        # an AVX2 EPYC): an iteration would take hours, so only fp32 runs, with both rooflines
        precisions = ["fp32"]
        print(f"no AMX-BF16 / AVX512-BF16 on this CPU: bf16 matrix products run at "
              f"{roofline('bf16', threads):.1f} GFLOP/s against {roofline('fp32', threads):.1f} in fp32 "
              "(emulated); running fp32 only", flush=True)
    compiled = [False, True] if getattr(args, "compile", False) else [False]
    for compile_ in compiled:  # eager first, then (with --compile) the same children compiled
        for precision in precisions:
            proc = subprocess.run([sys.executable, __file__, "--one", precision, "--threads", str(threads),
                                   "--seed", str(args.seed), "--warmup", str(getattr(args, "warmup", 1)),
                                   *(["--compile"] if compile_ else [])],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    n = len(precisions)
    for i in range(0, len(results), n):
        if i:
            print(f"\n### with --compile ({', '.join(results[i]['compiled'])})\n")
        print(table(results[i:i + n]) if n == 2 else single(results[i]))
    if len(results) > n:
        print("\n" + compile_table(results[:n], results[n:]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per precision before the timed one")
    p.add_argument("--json", default=None)
    p.add_argument("--compile", action="store_true",
                   help="also run each precision as `rlgf train --compile` trains (its warm-up compiles), "
                        "and print compiled against eager from the same run")
    p.add_argument("--force-bf16", action="store_true", help="run bf16 even where it is emulated (very slow)")
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.threads or 1, a.seed, a.warmup, a.compile)))
        sys.exit(0)
    sys.exit(main(a))
