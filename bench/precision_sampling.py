"""Does sampling in bf16 change the reward before any update? Many rounds of the first rollout.

``precision_learning.py``'s curves differ already at iteration 1, before any update: the two
runs start from the same weights, yet bf16's rounding changes which tokens are drawn, and 32
episodes leave a standard error of about 0.07 on each mean. This bench asks the question of
iteration 1 alone, with enough episodes to answer it: it builds the embedded default's trainer
(``make demo``'s PPO settings) in float32 and in bf16, and for each of ``--rounds`` rounds draws
the same ``--episodes`` training prompts for both, samples them with each trainer's own
rollout (float32: the learner; bf16: its decoding copy under autocast), and scores every
completion with the same float32 reward. Prints each round's two means, then the gap over all
episodes with its standard error, and how often the two precisions drew the same completion.

    .venv/bin/python bench/precision_sampling.py --rounds 8 --episodes 128 --out runs/bench-sampling.json

Options after ``--`` are ``rlgf train`` options for both trainers (``--learner``,
``--reward-model``, ``--max-new-tokens``…), as in ``precision_learning.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def trainer_options(args: list[str]) -> dict:
    """``--name value`` pairs after ``--`` as ``build_config`` overrides (numbers parsed; a
    ``--flag`` with no value is True)."""
    out, i = {}, 0
    while i < len(args):
        key = args[i].removeprefix("--").replace("-", "_")
        if i + 1 == len(args) or args[i + 1].startswith("--"):
            out[key], i = True, i + 1
            continue
        value = args[i + 1]
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
        out[key] = value
        i += 2
    return out


def build(precision: str, options: dict, seed: int):
    from backends import resolve
    from rlgf_cli.runtime import set_seed
    from rlgf_cli.training.config import build_config
    from rlgf_cli.training.run import build_task
    from rlgf_cli.training.trainer import Trainer

    values = dict(task="rotten-tomatoes", alg="ppo", learner="smollm2", iterations=1, seed=seed, device="cpu",
                  save_every=0)
    values.update(options)
    cfg = build_config(None, precision=precision, **values)
    task = build_task(cfg)
    task.prepare()
    set_seed(seed)
    policy, reference = resolve(cfg.learner, device="cpu"), resolve(cfg.learner, device="cpu")
    return Trainer(cfg, task, policy, reference, policy.make_critic())


def first_rollout(trainer, examples, seed: int):
    """The first iteration's rollout of ``examples`` (what ``Trainer.step`` collects)."""
    from rlgf_cli.runtime import set_seed

    set_seed(seed)
    cfg = trainer.cfg
    ctx = trainer.algorithm.context(0, cfg.iterations, alpha=cfg.alpha, betas=cfg.betas(), switch=cfg.switch_iteration)
    with trainer.autocast:
        return trainer.collect(examples, trainer.algorithm.plan(ctx)[0])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=128, help="prompts per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    options = trainer_options(extra)
    trainers = {p: build(p, options, args.seed) for p in ("fp32", "bf16")}
    fp32 = trainers["fp32"]
    if not trainers["bf16"].precision.bf16 or fp32.precision.bf16:
        raise SystemExit("[error] the trainers did not resolve to fp32 and bf16")
    draw = fp32.sampler  # both trainers' samplers start alike; one draws the prompts for both
    rounds, scores = [], {"fp32": [], "bf16": []}
    tick = time.perf_counter()
    for r in range(args.rounds):
        examples = draw.draw(args.episodes)
        batches = {p: first_rollout(t, examples, args.seed + 1000 + r) for p, t in trainers.items()}
        row = {"round": r + 1}
        for p, batch in batches.items():
            s = fp32.score(batch).float()  # the same float32 reward for both
            scores[p].append(s)
            row[p] = float(s.mean())
        a, b = (batches[p].response.tolist() for p in ("fp32", "bf16"))
        row["same_completion"] = sum(x == y for x, y in zip(a, b))
        row["same_first_token"] = sum(x[:1] == y[:1] for x, y in zip(a, b))
        rounds.append(row)
        print(f"round {r + 1}: fp32 {row['fp32']:.3f}, bf16 {row['bf16']:.3f}, gap {row['bf16'] - row['fp32']:+.3f}; "
              f"same completion {row['same_completion']}/{args.episodes}, "
              f"same first token {row['same_first_token']}/{args.episodes}", flush=True)
    a, b = torch.cat(scores["fp32"]), torch.cat(scores["bf16"])
    n = len(a)
    se = float(((a.var() + b.var()) / n) ** 0.5) if n > 1 else 0.0
    gap = float(b.mean() - a.mean())
    gaps = [r["bf16"] - r["fp32"] for r in rounds]
    print(f"\nall {n} episodes per precision: fp32 {float(a.mean()):.4f}, bf16 {float(b.mean()):.4f}, "
          f"gap {gap:+.4f} (standard error {se:.4f}; {abs(gap) / se if se else 0.0:.1f} s.e.)")
    print(f"per-round gaps {min(gaps):+.3f} to {max(gaps):+.3f} over {args.episodes} episodes each; "
          f"{time.perf_counter() - tick:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rounds": rounds, "episodes": args.episodes, "seed": args.seed,
                                              "fp32_mean": float(a.mean()), "bf16_mean": float(b.mean()),
                                              "gap": gap, "gap_standard_error": se, "options": options},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
