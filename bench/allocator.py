"""tcmalloc against the C library's malloc: the embedded default's iterations under each.

Runs ``rlgf train`` on the embedded default (``make demo``'s settings: PPO, rotten-tomatoes,
the cached SmolLM2-135M, 32 episodes per iteration, ``--precision auto``) for
``--iterations`` iterations with ``RLGF_ALLOCATOR=system`` and with ``RLGF_ALLOCATOR=tcmalloc``,
in the order system, tcmalloc, tcmalloc, system (a machine that speeds up or slows down
during the run favours neither). Prints each run's wall, user and system seconds, its
seconds per iteration and phase and its minor page faults, the ratio of the
iteration times, and whether both allocators gave the same rewards (they should, to the bit).

    .venv/bin/python bench/allocator.py --iterations 2 --out runs/bench-allocator

Arguments after ``--`` go to every ``rlgf train`` command (its test trains a tiny model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ORDER = ("system", "tcmalloc", "tcmalloc", "system")
PHASES = ("rollout", "reward", "forward", "update")


def train(kind: str, round_: int, args) -> dict:
    from backends.allocator import REEXEC_MARK
    from rlgf_cli.evaluation.curves import read_metrics

    run = Path(args.out) / f"{kind}-{round_}"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", REEXEC_MARK)}
    env["RLGF_ALLOCATOR"] = kind
    cmd = [sys.executable, "-m", "rlgf_cli", "train", "--task", "rotten-tomatoes", "--alg", "ppo",
           "--learner", args.learner, "--iterations", str(args.iterations), "--seed", "0",
           "--save-every", "0", "--out", str(run), "--overwrite", "--quiet", *args.train_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"[error] the {kind} run failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    for weights in ("final", "checkpoints"):  # the model is not what is measured: keep the logs only
        shutil.rmtree(run / weights, ignore_errors=True)
    rows = read_metrics(run)
    summary = json.loads((run / "summary.json").read_text())
    return {
        "allocator": summary.get("allocator"), "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "iteration_s": sum(r["time_s"] for r in rows),
        "phases_s": {p: sum(r[f"time_{p}_s"] for r in rows) for p in PHASES},
        "reward_mean": [r["reward_mean"] for r in rows],
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=2, help="iterations per run (default 2)")
    p.add_argument("--learner", default="smollm2", help="the learner (default: the embedded SmolLM2)")
    p.add_argument("--out", default="runs/bench-allocator", help="folder for the runs and results.json")
    args = p.parse_args(argv)
    args.train_args = train_args
    from backends.allocator import find_tcmalloc

    if find_tcmalloc() is None:
        print("[error] tcmalloc is not installed — Debian/Ubuntu: apt-get install libtcmalloc-minimal4", file=sys.stderr)
        return 1
    runs = []
    for i, kind in enumerate(ORDER):
        runs.append({"kind": kind, **train(kind, i, args)})
        r = runs[-1]
        print(f"{kind:8s} (run {i + 1}/{len(ORDER)}): wall {r['wall_s']:.1f} s, iterations {r['iteration_s']:.1f} s, "
              f"system {r['system_s']:.1f} s", flush=True)
    by = {k: [r for r in runs if r["kind"] == k] for k in ("system", "tcmalloc")}
    mean = {k: {f: sum(r[f] for r in rs) / len(rs) for f in ("wall_s", "user_s", "system_s", "iteration_s", "minor_faults")}
            for k, rs in by.items()}
    same = len({json.dumps(r["reward_mean"]) for r in runs}) == 1
    ratio = mean["system"]["iteration_s"] / mean["tcmalloc"]["iteration_s"]
    print("\n| allocator | wall s | user s | system s | iterations s | minor page faults |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, m in mean.items():
        print(f"| {k} ({by[k][0]['allocator']}) | {m['wall_s']:.1f} | {m['user_s']:.1f} | {m['system_s']:.1f} | "
              f"{m['iteration_s']:.1f} | {m['minor_faults']:,.0f} |")
    print(f"\ntcmalloc's iterations {ratio:.2f}× faster (means of 2 runs each, same run); "
          f"rewards {'identical' if same else 'DIFFERENT'} across the 4 runs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"ratio": ratio, "same_rewards": same, "mean": mean, "runs": runs},
                                                 indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
