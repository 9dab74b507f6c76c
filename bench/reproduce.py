"""Reproduce the shape of the paper's Tables 1 and 2 on the embedded default.

Runs BC, PPO, PPO++, AggreVaTeD, LOLS and D2LOLS (and BC+each: the learner warm-started
from the BC policy) on ``rotten-tomatoes`` with the BC policy as the guide, over several
seeds, evaluates every result on the same test prompts, and writes a Markdown and a JSON
table of mean ± std for every metric. ``--sweep`` adds the β and α sweeps (Table 2).

    # CPU, tiny budget (minutes)
    python bench/reproduce.py --preset tiny --out runs/reproduce-cpu
    # one GPU, reduced budget (a few minutes)
    python bench/reproduce.py --preset gpu --device cuda --seeds 3 --sweep --out runs/reproduce-gpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {
    # iterations, episodes, epochs, minibatch, max_new_tokens, eval_limit, bc_iterations
    "tiny": dict(iterations=2, episodes=8, epochs=1, minibatch_size=8, max_new_tokens=12, eval_limit=16, bc_iterations=4),
    "gpu": dict(iterations=10, episodes=64, epochs=4, minibatch_size=16, max_new_tokens=24, eval_limit=256, bc_iterations=20),
}
ALGS = ("ppo", "ppo++", "aggrevated", "lols", "d2lols")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seeds", type=int, default=2, help="number of seeds (0 … N-1)")
    p.add_argument("--learner", default="smollm2")
    p.add_argument("--device", default="auto")
    p.add_argument("--lr", type=float, default=1e-5, help="RL learning rate (the paper's 1e-6 needs far more iterations)")
    p.add_argument("--bc-lr", type=float, default=1e-5)
    p.add_argument("--sweep", action="store_true", help="also run the β (PPO++, AggreVaTeD) and α (LOLS, D2LOLS) sweeps")
    p.add_argument("--reward-model", default=None, help="reward classifier folder (default: the task's own)")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--iterations", type=int, default=None, help="override the preset")
    p.add_argument("--episodes", type=int, default=None, help="override the preset")
    p.add_argument("--eval-limit", type=int, default=None, help="override the preset")
    return p.parse_args(argv)


def run_training(name: str, out: Path, args, seed: int, **overrides) -> Path:
    from rlgf_cli.config import build_config
    from rlgf_cli.run import train

    preset = PRESETS[args.preset]
    values = dict(
        task="rotten-tomatoes", learner=args.learner, device=args.device, seed=seed, out=str(out / name),
        iterations=args.iterations or preset["iterations"], episodes=args.episodes or preset["episodes"],
        epochs=preset["epochs"], minibatch_size=min(preset["minibatch_size"], args.episodes or preset["episodes"]),
        max_new_tokens=preset["max_new_tokens"], lr=args.lr, save_every=0, reward_model=args.reward_model,
    )
    values.update(overrides)
    started = time.perf_counter()
    summary = train(build_config(None, **values), overwrite=True)
    print(f"  trained {name:<24} seed {seed} in {time.perf_counter() - started:6.1f}s", flush=True)
    return Path(summary["final"])


def evaluate(policies: dict[str, str], args, seed: int) -> dict[str, dict]:
    from rlgf_cli.evaluate import run_eval

    preset = PRESETS[args.preset]
    task_options = {"max_new_tokens": preset["max_new_tokens"]}
    if args.reward_model:
        task_options["reward_model"] = args.reward_model
    report = run_eval(
        list(policies.values()), task_name="rotten-tomatoes", split="test",
        limit=args.eval_limit or preset["eval_limit"], seed=seed, reference_spec=args.learner,
        task_options=task_options, device=args.device, batch_size=32,
    )
    by_spec = {r["policy"]: r["metrics"] for r in report["results"]}
    return {name: by_spec[spec] for name, spec in policies.items()}


def one_seed(args, seed: int, out: Path) -> dict[str, dict]:
    preset = PRESETS[args.preset]
    bc = run_training("bc", out, args, seed, alg="bc", lr=args.bc_lr, iterations=preset["bc_iterations"])
    policies = {"initial learner": args.learner, "BC (guide)": str(bc)}
    for alg in ALGS:
        guide = None if alg == "ppo" else str(bc)
        policies[alg] = str(run_training(alg, out, args, seed, alg=alg, guide=guide))
        policies[f"BC+{alg}"] = str(run_training(f"bc+{alg}", out, args, seed, alg=alg, guide=guide, init=str(bc)))
    if args.sweep:
        for value in (0.2, 0.5, 0.8):
            for alg in ("ppo++", "aggrevated"):
                policies[f"{alg} β={value}"] = str(run_training(f"{alg}-beta{value}", out, args, seed, alg=alg,
                                                                 guide=str(bc), beta=value))
            for alg in ("lols", "d2lols"):
                policies[f"{alg} α={value}"] = str(run_training(f"{alg}-alpha{value}", out, args, seed, alg=alg,
                                                                 guide=str(bc), alpha=value))
    return evaluate(policies, args, seed)


def aggregate(per_seed: list[dict[str, dict]]) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = {}
    for name in per_seed[0]:
        metrics = per_seed[0][name].keys()
        table[name] = {}
        for m in metrics:
            values = [run[name][m] for run in per_seed if m in run.get(name, {})]
            table[name][m] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
            }
    return table


def markdown(table: dict[str, dict[str, dict]], args) -> str:
    metrics = list(next(iter(table.values())).keys())
    lines = [
        f"# rlgf reproduction — rotten-tomatoes, preset `{args.preset}`, {args.seeds} seed(s), learner `{args.learner}`",
        "",
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for name, row in table.items():
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        print(f"seed {seed}", flush=True)
        per_seed.append(one_seed(args, seed, out / f"seed{seed}"))
    table = aggregate(per_seed)
    md = markdown(table, args)
    (out / "results.md").write_text(md, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"preset": args.preset, "seeds": args.seeds, "learner": args.learner,
                                                  "per_seed": per_seed, "table": table}, indent=2), encoding="utf-8")
    print(md)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
