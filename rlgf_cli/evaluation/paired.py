"""Paired comparison: is a policy better than another on the same prompts, beyond sampling noise?

``rlgf eval`` scores every policy on the same prompts, so the question the paper's title asks
("better than your LLM") is best answered prompt by prompt: for each prompt, a policy's
reward minus the baseline policy's (each averaged over its seeds), then the mean of those
differences and its standard error over the prompts. Pairing removes the part of the spread
that the prompts share (an easy prompt is easy for both): on ``make demo``'s evaluation (128
prompts, the trained model against SmolLM2, rewards correlated 0.50 prompt by prompt) the
paired difference had a standard error of 0.026, against 0.037 for the difference of the two
means taken apart.

The reward is the task's own per-sample training reward (``Task.reward``), the number
``--samples`` writes per generation; a task whose reward cannot run here (CommonGen's SPIDEr
without Java) gets no comparison.
"""

from __future__ import annotations

import math
from typing import Sequence

#: two-sided 95 % quantiles of Student's t at 1 … 10 degrees of freedom (the tables' values)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
_Z95 = 1.959964


def t95(df: float) -> float:
    """Student's t quantile of a two-sided 95 % interval at ``df`` degrees of freedom (real, as
    Satterthwaite's are): the table's values at whole numbers to 10, log-linear in 1/df between
    them (6.17 against the exact 6.02 at 1.5, on the wide side; 3.59 against 3.575 at 2.5; within
    0.003 from 3 on), then the Cornish-Fisher expansion (within 0.001 from 10 on); 1.96 at ∞."""
    if df is None or df == math.inf:
        return _Z95
    df = max(float(df), 1.0)
    if df <= 10:
        low = int(df)
        if low == df:
            return _T95[low - 1]
        w = (1 / low - 1 / df) / (1 / low - 1 / (low + 1))
        return math.exp((1 - w) * math.log(_T95[low - 1]) + w * math.log(_T95[low]))
    z = _Z95
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def per_prompt_reward(rows: Sequence[dict]) -> dict[int, float] | None:
    """Each prompt's reward averaged over the seeds it was generated at, or None when any
    generation has no reward (the task's reward did not run)."""
    sums: dict[int, list[float]] = {}
    for row in rows:
        reward = (row.get("scores") or {}).get("reward")
        if reward is None or not math.isfinite(float(reward)):
            return None
        sums.setdefault(int(row["index"]), []).append(float(reward))
    return {i: sum(v) / len(v) for i, v in sums.items()} or None


def compare(rewards: dict[int, float], baseline: dict[int, float]) -> dict | None:
    """The paired difference ``rewards − baseline`` over the prompts both have: its mean, its
    standard error and a 95 % interval (Student's t at n − 1 degrees of freedom; None with fewer
    than 2 prompts), and on how many prompts it is higher, lower or equal."""
    shared = sorted(set(rewards) & set(baseline))
    if not shared:
        return None
    diffs = [rewards[i] - baseline[i] for i in shared]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None
    return {
        "n": n,
        "mean": mean,
        "se": se,
        "ci95": [mean - t95(n - 1) * se, mean + t95(n - 1) * se] if se is not None else None,
        "higher": sum(d > 0 for d in diffs),
        "lower": sum(d < 0 for d in diffs),
        "equal": sum(d == 0 for d in diffs),
    }


def add_paired(results: list[dict], baseline: str | None = None) -> None:
    """Give every result but the ``baseline`` policy's (default: the first) a ``paired`` entry: its
    reward against the baseline's, prompt by prompt (see the module docstring). Nothing when the
    rewards are missing."""
    if len(results) < 2:
        return
    base = next((r for r in results if r["policy"] == baseline), results[0])
    reference = per_prompt_reward(base.get("samples", ()))
    if reference is None:
        return
    for result in results:
        rewards = per_prompt_reward(result.get("samples", ())) if result is not base else None
        stats = compare(rewards, reference) if rewards is not None else None
        if stats is not None:
            result["paired"] = {"against": base["policy"], "metric": "reward", **stats}


def choose_baseline(given: str | None, checkpoints: list[str], policies: list[str], specs: list[str]) -> str:
    """The policy the others are paired with: ``given`` (a ``--policy`` spec or a ``--checkpoint``
    as written, or as resolved), else the first ``--policy`` (the untrained model or the guide,
    beside checkpoints trained from it), else the first checkpoint."""
    from backends.errors import RlgfError, did_you_mean

    if given is None:
        return policies[0] if policies else specs[0]
    by_name = {**dict(zip(checkpoints, specs)), **{s: s for s in specs}}
    if given not in by_name:
        raise RlgfError(f"--baseline {given!r} is not one of the policies evaluated",
                        f"{did_you_mean(given, list(by_name))}pass one of: {', '.join(specs)}")
    return by_name[given]


def verdict(stats: dict) -> str:
    """In words: whether the 95 % interval of the paired difference excludes 0."""
    low_high = stats.get("ci95")
    if stats["higher"] == stats["lower"] == 0:
        return "the same reward on every prompt"
    if low_high is None:
        return "one prompt: no error estimate"
    low, high = low_high
    if low > 0:
        return "higher (95 % interval above 0)"
    if high < 0:
        return "lower (95 % interval below 0)"
    return "no clear difference (95 % interval spans 0)"


def paired_lines(results: list[dict], label) -> list[str]:
    """The comparison as lines of text, one per compared policy (empty without comparisons)."""
    compared = [r for r in results if r.get("paired")]
    if not compared:
        return []
    first = compared[0]["paired"]
    lines = [f"paired on the same {first['n']} prompts: reward minus {label(first['against'])}'s, "
             "mean ± standard error over prompts"]
    width = max(len(label(r["policy"])) for r in compared)
    for r in compared:
        p = r["paired"]
        se = f" ± {p['se']:.4f}" if p["se"] is not None else ""
        lines.append(f"  {label(r['policy']):<{width}}  {p['mean']:+.4f}{se}  higher on {p['higher']}, "
                     f"lower on {p['lower']} of {p['n']}: {verdict(p)}")
    return lines


def bucket_lines(buckets: dict, label) -> list[str]:
    """``rlgf difficulty``'s comparison: per bucket, each policy against the baseline on the bucket's
    prompts (empty without comparisons)."""
    rows = [(name, b["n"], spec, stats) for name, b in buckets.items() if b.get("paired")
            for spec, stats in b["paired"]["policies"].items()]
    if not rows:
        return []
    against = next(b["paired"]["against"] for b in buckets.values() if b.get("paired"))
    lines = [f"paired by bucket: reward minus {label(against)}'s on the same prompts, mean ± standard error"]
    head = max(len(f"{name} (n={n})") for name, n, _, _ in rows)
    width = max(len(label(spec)) for _, _, spec, _ in rows)
    for name, n, spec, p in rows:
        se = f" ± {p['se']:.4f}" if p["se"] is not None else ""
        lines.append(f"  {f'{name} (n={n})':<{head}}  {label(spec):<{width}}  {p['mean']:+.4f}{se}  "
                     f"higher on {p['higher']}, lower on {p['lower']}: {verdict(p)}")
    return lines
