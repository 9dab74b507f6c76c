"""Does bf16 learn like float32? The embedded default trained for a few iterations in each.

Runs ``rlgf train`` on the embedded default (``make demo``'s settings: PPO, rotten-tomatoes,
the cached SmolLM2-135M, 32 episodes per iteration) twice with the same seed, once with
``--precision fp32`` and once with ``--precision bf16``, one after the other so neither
competes for the cores. Both score with the same reward classifier (the task's, trained once
per machine). Prints both curves of mean reward per iteration, the largest gap between them
(the goal: within ±0.05 at every iteration) and each run's seconds per iteration, and draws
the two curves into one PNG.

    .venv/bin/python bench/precision_learning.py --iterations 5 --out runs/bench-precision

Arguments after ``--`` go to both ``rlgf train`` commands as they are (the tests train a tiny
model that way). On a CPU without AMX-BF16 or AVX512-BF16 (and no GPU) bf16 is emulated and
an embedded-default run would take hours, so the script stops with an error there unless
``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


def train(precision: str, args) -> dict:
    run = Path(args.out) / precision
    cmd = [sys.executable, "-m", "rlgf_cli", "train", "--task", "rotten-tomatoes", "--alg", "ppo",
           "--learner", args.learner, "--iterations", str(args.iterations), "--seed", str(args.seed),
           "--precision", precision, "--save-every", "0", "--out", str(run), "--overwrite",
           *args.train_args]
    tick = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"[error] the {precision} run failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    from rlgf_cli.evaluation.curves import read_metrics

    rows = read_metrics(run)
    config = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
    episodes = config.get("train", config).get("episodes")  # rlgf writes its options under [train]
    return {"run": str(run), "wall_s": wall, "episodes": episodes, "reward_mean": [r["reward_mean"] for r in rows],
            "reward_std": [r.get("reward_std") for r in rows],
            "time_s": [r["time_s"] for r in rows], "time_update_s": [r["time_update_s"] for r in rows],
            "kl_exact": [r.get("kl_exact") for r in rows],
            "precision": json.loads((run / "summary.json").read_text()).get("precision")}


def gap_standard_errors(a: dict, b: dict) -> list[float | None]:
    """Per iteration, the standard error of the gap between the two mean rewards from their
    sampling alone: each mean is over ``episodes`` sampled episodes, and the two runs sample
    different tokens as soon as the precisions round differently (so from the first step)."""
    out = []
    for sa, sb in zip(a.get("reward_std") or [], b.get("reward_std") or []):
        na, nb = a.get("episodes"), b.get("episodes")
        out.append(None if None in (sa, sb, na, nb) else (sa * sa / na + sb * sb / nb) ** 0.5)
    return out


def report(results: dict[str, dict]) -> str:
    a, b = (results[p] for p in PRECISIONS)
    ses = gap_standard_errors(a, b)
    lines = ["| iteration | fp32 reward | bf16 reward | gap | gap's s.e. | fp32 s | bf16 s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for i, (ra, rb) in enumerate(zip(a["reward_mean"], b["reward_mean"])):
        se = ses[i] if i < len(ses) else None
        lines.append(f"| {i + 1} | {ra:.3f} | {rb:.3f} | {rb - ra:+.3f} | {'' if se is None else f'{se:.3f}'} | "
                     f"{a['time_s'][i]:.1f} | {b['time_s'][i]:.1f} |")
    gap = max(abs(x - y) for x, y in zip(a["reward_mean"], b["reward_mean"]))
    mean_a, mean_b = (sum(r["reward_mean"]) / len(r["reward_mean"]) for r in (a, b))
    speed = sum(a["time_s"]) / sum(b["time_s"])
    lines += ["", f"- largest reward gap {gap:.3f} (goal ≤ 0.05)",
              f"- mean reward over the iterations: fp32 {mean_a:.3f}, bf16 {mean_b:.3f} (gap {mean_b - mean_a:+.3f})"]
    if ses and None not in ses:
        beyond = sum(abs(y - x) > 2 * se for x, y, se in zip(a["reward_mean"], b["reward_mean"], ses))
        lines.append(f"- sampling noise: each gap's standard error is {min(ses):.3f}–{max(ses):.3f} (from the "
                     f"rewards' spread over {a['episodes']} episodes); {beyond} of {len(ses)} gaps exceed two of them")
    lines += [f"- seconds per iteration: fp32 {sum(a['time_s']) / len(a['time_s']):.1f}, "
               f"bf16 {sum(b['time_s']) / len(b['time_s']):.1f} → bf16 {speed:.2f}× faster; "
               f"update phase {sum(a['time_update_s']) / sum(b['time_update_s']):.2f}×",
               f"- whole runs (loading and all): fp32 {a['wall_s']:.0f} s, bf16 {b['wall_s']:.0f} s"]
    return "\n".join(lines)


def bf16_is_native() -> bool:
    """Whether ``--precision auto`` picks bf16 here (a CPU with bf16 units, or a bf16 GPU)."""
    import torch

    from backends.precision import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_precision("auto", device).bf16


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learner", default="smollm2")
    p.add_argument("--out", default="runs/bench-precision")
    p.add_argument("--force", action="store_true", help="run bf16 even where it is emulated (slow)")
    p.add_argument("train_args", nargs="*", help="after --: more `rlgf train` arguments for both runs")
    a = p.parse_args(argv)
    if a.iterations < 1:
        raise SystemExit("[error] --iterations must be at least 1")
    sys.path.insert(0, str(ROOT))
    if not a.force and not bf16_is_native():
        raise SystemExit("[error] this machine has no bf16 units (no AMX-BF16 / AVX512-BF16 CPU, no bf16 GPU), so "
                         "the bf16 run would be emulated and take hours; run it where `--precision auto` picks "
                         "bf16, or pass --force")
    results = {precision: train(precision, a) for precision in PRECISIONS}
    out = Path(a.out)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")  # before the plot
    print(report(results))
    from rlgf_cli.evaluation.curves import plot_curves

    plot_curves({p: [results[p]["run"]] for p in PRECISIONS}, out / "curves.png", metric="reward_mean",
                title="mean reward per iteration: fp32 and bf16, same seed")
    print(f"wrote {out / 'curves.png'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
