"""bench/reproduce.py's options: the presets, the parser and its checks, ``--row-option``'s settings.

Apart from the rest of the reproduction so the scheduler (``reproduce_jobs.py``), the report and the
tests can read a reproduction's settings without importing the script that runs it.
"""

from __future__ import annotations

import argparse

PRESETS = {
    "tiny": dict(iterations=2, episodes=8, epochs=1, minibatch_size=8, max_new_tokens=12, eval_limit=16,
                 bc_iterations=4, bc_episodes=8, lr=1e-5, bc_lr=1e-5),
    # sized so 3 seeds of every row fit in 90 minutes on 2 CPU cores (80.0 min measured with
    # --jobs 2 and two lr trials; one 8-episode SmolLM2 iteration takes about 30 s on one core)
    "cpu": dict(iterations=8, episodes=8, epochs=1, minibatch_size=4, max_new_tokens=24, eval_limit=128,
                bc_iterations=20, bc_episodes=32, lr=3e-5, bc_lr=5e-5),
    "gpu": dict(iterations=30, episodes=64, epochs=4, minibatch_size=16, max_new_tokens=24, eval_limit=512,
                bc_iterations=60, bc_episodes=64, lr=1e-5, bc_lr=5e-5),
}


def parse_args(argv=None, description: str | None = None):
    p = make_parser(description)
    args = p.parse_args(argv)
    return check_args(p, args)


def make_parser(description: str | None = None) -> argparse.ArgumentParser:
    # no abbreviations: the workers' command is this one less some options, found by their full names
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (--first-seed … --first-seed + N-1)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first seed: a replicate at new seeds (the guide and the lr trials keep theirs)")
    p.add_argument("--learner", default="smollm2")
    p.add_argument("--task", default="rotten-tomatoes")
    p.add_argument("--device", default="auto")
    p.add_argument("--lr", type=float, default=None, help="RL learning rate for every algorithm (default: the preset's)")
    p.add_argument("--lr-grid", default=None,
                   help="comma-separated learning rates: choose the RL lr first, by PPO's validation reward")
    p.add_argument("--lr-per-row", action="store_true",
                   help="with --lr-grid: choose each row's lr by that row's own validation reward (the row trained "
                        "at each rate, seed 1000), not PPO's for every row")
    p.add_argument("--max-approx-kl", type=float, default=0.1,
                   help="an lr whose mean approx_kl exceeds this is not chosen (PPO's healthy range)")
    p.add_argument("--max-kl-per-token", type=float, default=0.1,
                   help="nor one whose exact KL to the reference, per learner token, ends above this "
                        "(0.1 nats a token: 2.4 nats over 24 tokens)")
    p.add_argument("--bc-lr", type=float, default=None)
    p.add_argument("--all-rows", action="store_true", help="also BC+AggreVaTeD, BC+LOLS, BC+D2LOLS")
    p.add_argument("--rows", default=None, metavar="LABELS",
                   help="comma-separated row labels to train (default: every row; e.g. ppo,ppo++,d2lols)")
    p.add_argument("--guide-model", default=None, metavar="DIR",
                   help="use this model folder as the guide (and the BC+ rows' warm start) instead of training "
                        "BC here; its row is labelled 'guide' (e.g. a stronger guide: a kept BC+ppo model)")
    p.add_argument("--reward-model", default=None, help="reward classifier folder (default: the task's own)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="the task's data (`rlgf train --data`), e.g. a prompts file for --task prompts")
    p.add_argument("--reward", default=None, metavar="SPEC",
                   help="the task's reward (`rlgf train --reward`), e.g. tasks/examples/exact_match.py:reward")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--keep-models", action="store_true", help="keep every run's final model (GBs each)")
    p.add_argument("--jobs", type=int, default=1,
                   help="jobs (one training run and its evaluation, a learning-rate trial…) run in this many "
                        "processes at once, each with --threads torch threads")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per job process (0: the cores shared among the jobs running at once)")
    p.add_argument("--compile", action="store_true",
                   help="train with `rlgf train --compile` (default: eager, as every committed run)")
    p.add_argument("--resume", action="store_true",
                   help="keep the jobs an interrupted reproduction in --out finished (jobs/*.json) and run the "
                        "rest; refused when --out was made with other settings")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # do this one job alone
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child of --jobs
    p.add_argument("--collect", action="store_true",
                   help="train nothing: gather the jobs already finished in --out (jobs/*.json) into the tables")
    p.add_argument("--from", dest="sources", action="append", default=None, metavar="DIR",
                   help="with --collect: the folders to gather from (repeat it; replicates at other seeds "
                        "joined into one table in --out, --seeds counting them all)")
    p.add_argument("--beta", type=float, default=None,
                   help="β of the PPO++ and AggreVaTeD rows (`rlgf train --beta`: PPO++'s share of episodes "
                        "rolled in by the guide; default: each algorithm's own, PPO++ 0.2 as in the paper)")
    p.add_argument("--aggrevated-advantage", choices=["one-step", "gae"], default=None,
                   help="AggreVaTeD's advantage in the AggreVaTeD, LOLS and D2LOLS rows (`rlgf train "
                        "--aggrevated-advantage`; default: rlgf's, one-step)")
    p.add_argument("--row-option", action="append", default=None, metavar="KEY=VALUE",
                   help="an `rlgf train` setting (a config.toml key, its value as in TOML) for every RL row (and, "
                        "with --lr-per-row, its lr trials), not the guide's BC nor PPO's shared lr trials; repeat "
                        "it for more, e.g. --row-option whiten_advantages=false")
    for name in ("iterations", "episodes", "eval-limit", "bc-iterations", "max-new-tokens"):
        p.add_argument(f"--{name}", type=int, default=None, help="override the preset")
    return p


def check_args(p: argparse.ArgumentParser, args):
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1 (got {args.seeds})")
    if args.lr_grid:
        try:
            grid = [float(x) for x in args.lr_grid.split(",") if x.strip()]
        except ValueError:
            grid = []
        if not grid or not all(x > 0 for x in grid):
            p.error(f"--lr-grid takes positive numbers separated by commas, e.g. 5e-5,2e-4 (got {args.lr_grid!r})")
    if args.lr is not None and args.lr_grid:
        p.error("give --lr (the rows' learning rate) or --lr-grid (choose it on the validation split), not both")
    if args.lr_per_row and not args.lr_grid:
        p.error("--lr-per-row chooses each row's lr among --lr-grid's: give --lr-grid too")
    if args.sources and not args.collect:
        p.error("--from joins finished folders: it goes with --collect")
    try:
        rows = row_options(args)
    except ValueError as exc:
        p.error(str(exc))
    if rows.get("minibatch_size", 0) > setting(args, "episodes"):
        p.error(f"--row-option minibatch_size={rows['minibatch_size']}: more than the {setting(args, 'episodes')} "
                "episodes of an iteration")
    return args


#: settings a reproduction sets itself, per row or for all (its own options name them), and the task's,
#: which its evaluations and its guide must share; the preset's epochs and minibatch size are not
#: among them: a row option may change them for the RL rows
OWN_SETTINGS = {"task", "alg", "learner", "device", "seed", "out", "iterations", "episodes", "max_new_tokens", "lr",
                "save_every", "reward_model", "data", "reward", "compile", "guide", "init", "beta",
                "aggrevated_advantage", "prompt_field", "reference_field", "chat_template", "prompt_max_tokens",
                "min_new_tokens", "reward_label", "reward_url", "bertscore_model", "temperature", "top_k", "top_p"}


def row_options(args) -> dict:
    """``--row-option KEY=VALUE`` as settings (values read as TOML: true, 0.5, "text"; a bare word
    as text); ValueError for a key that is no `rlgf train` setting or one the reproduction sets."""
    import dataclasses
    import tomllib

    from rlgf_cli.training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {}
    for item in getattr(args, "row_option", None) or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--row-option {item!r}: give KEY=VALUE with KEY a setting of `rlgf train` "
                             "(a key of a run's config.toml)")
        if key in OWN_SETTINGS:
            raise ValueError(f"--row-option {key}: the reproduction sets it (use its own option)")
        try:
            options[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = value.strip()
    return options


def setting(args, name: str):
    value = getattr(args, name, None)
    return PRESETS[args.preset][name] if value is None else value


