"""The reproduction by prompt difficulty (paper §6, Figure 3): where on the test prompts a row's
reward comes from.

The ``difficulty`` job scores every test prompt alone with the task's own measure (the
sentiment tasks: the reward classifier's P(positive) of the prompt, higher is easier) and cuts
the prompts into terciles, exactly as ``rlgf difficulty`` does. Every evaluation job records
its reward per prompt, so each row's mean reward on the easy, medium and hard third follows
without generating again, paired seed by seed against PPO and against the guide like the
main table.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import reproduce_jobs as J
from reproduce_jobs import INITIAL

BUCKETS = ("easy", "medium", "hard")


def measure_prompts(args) -> dict:
    """The difficulty job: each evaluated test prompt's difficulty value and tercile."""
    from reproduce import eval_task_options, setting

    from backends.errors import RlgfError
    from backends.precision import resolve_precision
    from rlgf_cli.evaluation.difficulty import assign_buckets
    from rlgf_cli.evaluation.evaluate import build_eval_task, split_examples
    from rlgf_cli.runtime import resolve_device

    task = build_eval_task(args.task, [], eval_task_options(args), resolve_precision("auto", resolve_device(args.device)))
    examples = split_examples(task, "test", setting(args, "eval_limit"))
    try:
        buckets, values, how = assign_buckets(task, examples)
    except RlgfError as e:  # a task without a measure of difficulty: the rest of the report stands
        return {"unavailable": str(e)}
    return {"values": [float(v) for v in values], "buckets": buckets, **how}


def gather_rewards(jobs, done: dict[str, dict], seeds) -> list[dict[str, list[float]]]:
    """For each of ``seeds`` (those :func:`reproduce_jobs.gather` used, in its order), the reward
    per prompt by row label; rows evaluated before per-prompt rewards were kept are absent."""
    fixed = {j.label: done[j.name].get("per_prompt", {}) for j in jobs
             if j.kind in ("initial", "guide-eval") and j.name in done}
    out = []
    for seed in seeds:
        mine = {label: by_seed[str(seed)] for label, by_seed in fixed.items() if str(seed) in by_seed}
        mine.update({j.label: done[j.name]["per_prompt"] for j in jobs
                     if j.kind == "row" and j.seed == seed and "per_prompt" in done.get(j.name, {})})
        out.append(mine)
    return out


def section(jobs, done: dict[str, dict], seeds) -> dict | None:
    """The difficulty job's prompts and the table, or None when the run has no such data."""
    difficulty = done.get("difficulty")
    rewards = gather_rewards(jobs, done, seeds)
    if not difficulty or "buckets" not in difficulty or not any(rewards):
        if difficulty and "unavailable" in difficulty:
            print(f"no table by prompt difficulty: {difficulty['unavailable']}", flush=True)
        return None
    return {"prompts": difficulty, "table": table(rewards, difficulty["buckets"])}


def bucket_means(rewards: list[float], buckets: list[str]) -> dict[str, float]:
    """Mean reward over the prompts of each bucket."""
    if len(rewards) != len(buckets):
        raise ValueError(f"{len(rewards)} rewards for {len(buckets)} prompts")
    return {b: statistics.fmean(r for r, lab in zip(rewards, buckets) if lab == b) for b in BUCKETS if b in buckets}


def table(rewards_by_seed: list[dict[str, list[float]]], buckets: list[str]) -> dict:
    """Per row and bucket: the mean over seeds of the bucket's mean reward (± std over seeds),
    and the paired per-seed differences against PPO and against the guide."""
    per_seed = [{label: bucket_means(r, buckets) for label, r in seed.items()} for seed in rewards_by_seed]
    labels = list(dict.fromkeys(label for seed in per_seed for label in seed))
    rows: dict[str, dict] = {}
    for label in labels:
        rows[label] = {}
        for b in BUCKETS:
            values = [seed[label][b] for seed in per_seed if b in seed.get(label, {})]
            if not values:
                continue
            cell = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values)}
            for other, key in (("ppo", "vs_ppo"), (J.GUIDE, "vs_guide")):
                if label not in (other, INITIAL):
                    cell[key] = _paired(per_seed, other, label, b)
            rows[label][b] = cell
    counts = {b: buckets.count(b) for b in BUCKETS if b in buckets}
    return {"counts": counts, "rows": rows}


def _paired(per_seed: list[dict], a: str, b: str, bucket: str) -> dict | None:
    diffs = [seed[b][bucket] - seed[a][bucket] for seed in per_seed
             if bucket in seed.get(a, {}) and bucket in seed.get(b, {})]
    if not diffs:
        return None
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"mean": statistics.fmean(diffs), "se": se, "ahead": sum(d > 0 for d in diffs), "n": len(diffs)}


def _diff_text(p: dict | None) -> str:
    if not p:
        return ""
    se = "" if p["se"] is None else f" ± {p['se']:.3f}"
    return f"{p['mean']:+.3f}{se} ({p['ahead']}/{p['n']})"


def markdown(result: dict, difficulty: dict) -> list[str]:
    """The section of ``results.md``."""
    counts = result["counts"]
    cuts = ", ".join(f"{t:.3f}" for t in difficulty.get("thresholds", []))
    lines = ["", "By prompt difficulty (paper §6, Figure 3): the test prompts in terciles of "
             f"{difficulty.get('description', 'their difficulty')} (cut at {cuts}; "
             + ", ".join(f"{n} {b}" for b, n in counts.items())
             + "). Mean reward per bucket over seeds; the differences are paired by seed (± s.e., seeds ahead):", "",
             "| method | " + " | ".join(counts) + " | " + " | ".join(f"{b} − PPO" for b in counts) + " | "
             + " | ".join(f"{b} − guide" for b in counts) + " |",
             "|---|" + "---:|" * (3 * len(counts))]
    for label, cells in result["rows"].items():
        means = [f"{cells[b]['mean']:.3f} ± {cells[b]['std']:.3f}" if b in cells else "" for b in counts]
        vs_ppo = [_diff_text(cells.get(b, {}).get("vs_ppo")) for b in counts]
        vs_guide = [_diff_text(cells.get(b, {}).get("vs_guide")) for b in counts]
        lines.append(f"| {label} | " + " | ".join(means + vs_ppo + vs_guide) + " |")
    return lines


def plot(result: dict, path: Path, task: str, seeds: list[int]) -> Path:
    """``rlgf difficulty``'s chart (its grouped bars, error bars from the std over seeds) of
    each row's mean reward per bucket."""
    from rlgf_cli.evaluation.difficulty import plot as draw

    buckets = {b: {"n": n,
                   "policies": {label: {"reward": cells[b]["mean"]} for label, cells in result["rows"].items() if b in cells},
                   "policies_std": {label: {"reward": cells[b]["std"]} for label, cells in result["rows"].items() if b in cells}}
               for b, n in result["counts"].items()}
    report = {"task": task, "policies": list(result["rows"]), "buckets": buckets, "metric_names": ["reward"],
              **({"seeds": seeds} if len(seeds) > 1 else {})}
    return draw(report, path, "reward")
