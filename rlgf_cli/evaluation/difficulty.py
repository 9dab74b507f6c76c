"""Prompt difficulty (paper §6, Figure 3): every policy's metrics on easy, medium and hard prompts.

How difficulty is measured is the task's business: :meth:`~tasks.base.Task.prompt_difficulty`
gives one value per prompt and says how to read it (:class:`~tasks.base.PromptDifficulty`) —
the sentiment tasks score the prompt alone with their classifier, CommonGen counts concepts
unseen in training. This module only cuts the values into buckets:

* a **score** (higher is easier) — by default into terciles: sorted by score, the lowest
  ``round(n/3)`` are ``hard``, the next up to ``round(2n/3)`` ``medium``, the rest ``easy``;
  the cut points are reported as the midpoints between neighbouring scores, and tied scores
  always share a bucket (the higher one). ``thresholds`` gives the cut points instead: one
  value → easy (score ≥ t) / hard; two ascending values ``a, b`` → hard (< a) / medium / easy (≥ b).
* a **level** (higher is harder, e.g. a ``difficulty`` column of ``--task prompts`` data) — the
  same terciles with the order turned round: the lowest third ``easy``, the highest ``hard``
  (tied levels share the harder bucket); ``thresholds`` in the level's own units: one value →
  hard (level ≥ t) / easy; two ascending values ``a, b`` → easy (< a) / medium / hard (≥ b).
* a **count** (more is harder) — ``hard`` with at least ``unseen_at_least`` (default 1), else ``easy``.

Each policy generates once for all prompts; the task's metrics are then computed per bucket.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

from backends.errors import RlgfError, RlgfWarning, did_you_mean
from tasks.base import Example, PromptDifficulty, Task

BUCKETS = ("easy", "medium", "hard")
PLOT_METRIC_PREFERENCE = ("sentiment", "spider", "cider_d", "meteor")


# -- bucketing (pure) -------------------------------------------------------------------


def tercile_thresholds(scores: Sequence[float]) -> tuple[float, float]:
    """The two cut points splitting ``scores`` into thirds (see the module docstring)."""
    if len(scores) < 3:
        raise RlgfError(f"terciles need at least 3 prompts, got {len(scores)}",
                        "use more prompts: raise --limit, or a split (--data) with more rows")
    s = sorted(float(x) for x in scores)
    n = len(s)
    cuts = []
    for k in (round(n / 3), round(2 * n / 3)):
        cuts.append((s[k - 1] + s[k]) / 2)
    return cuts[0], cuts[1]


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"0.3,0.7"`` → ``(0.3, 0.7)``: one or two finite, strictly ascending values."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RlgfError(f"--thresholds {text!r} is not a list of numbers", "e.g. --thresholds 0.3,0.7") from None
    if not 1 <= len(values) <= 2 or not all(math.isfinite(v) for v in values):
        raise RlgfError(f"--thresholds takes one or two numbers, got {text!r}", "e.g. --thresholds 0.5 or 0.3,0.7")
    if len(values) == 2 and not values[0] < values[1]:
        raise RlgfError(f"--thresholds must ascend, got {text!r}", "write the hard/medium cut first: 0.3,0.7")
    return values


def bucket_by_score(scores: Sequence[float], thresholds: Sequence[float]) -> list[str]:
    """Bucket per score; a higher score is easier (one threshold: easy/hard, two: easy/medium/hard)."""
    if len(thresholds) == 1:
        (t,) = thresholds
        return ["easy" if s >= t else "hard" for s in scores]
    low, high = thresholds
    return ["easy" if s >= high else "medium" if s >= low else "hard" for s in scores]


def bucket_by_level(levels: Sequence[float], thresholds: Sequence[float]) -> list[str]:
    """Bucket per level; a higher level is harder (one threshold: hard/easy, two: easy/medium/hard)."""
    if len(thresholds) == 1:
        (t,) = thresholds
        return ["hard" if v >= t else "easy" for v in levels]
    low, high = thresholds
    return ["hard" if v >= high else "medium" if v >= low else "easy" for v in levels]


def bucket_by_count(counts: Sequence[float], at_least: int) -> list[str]:
    """Bucket per count of obstacles: ``hard`` with at least ``at_least``, else ``easy``."""
    return ["hard" if n >= at_least else "easy" for n in counts]


# -- bucketing a task's prompts --------------------------------------------------------------


def assign_buckets(task: Task, examples: Sequence[Example], *, thresholds: Sequence[float] | None = None,
                   unseen_at_least: int | None = None) -> tuple[list[str], list[float], dict]:
    """``(bucket per example, difficulty value per example, how it was measured)``, from the
    task's own :meth:`~tasks.base.Task.prompt_difficulty`."""
    measured = task.prompt_difficulty(examples)
    values = list(measured.values)
    if len(values) != len(examples):
        raise ValueError(f"{task.name}: prompt_difficulty gave {len(values)} values for {len(examples)} prompts")
    if measured.kind == "count":
        return _count_buckets(task, measured, values, thresholds, unseen_at_least)
    if unseen_at_least is not None:
        raise RlgfError(f"{task.name} rates prompts by a {measured.kind} ({measured.description}), not by a count",
                        "drop --unseen-at-least (it is for counting tasks such as CommonGen), or use --thresholds")
    cuts = tuple(thresholds) if thresholds else tercile_thresholds(values)
    bucket = bucket_by_level if measured.kind == "level" else bucket_by_score
    labels = bucket(values, cuts)
    if len(set(values)) == 1:
        fix = f"every prompt has the same {measured.kind}, so no cut separates them"
    elif thresholds and len(cuts) == 2 and min(values) < cuts[0] and cuts[1] <= max(values):
        fix = f"no {measured.kind} falls between the cuts {cuts[0]:g} and {cuts[1]:g}: widen them so some do"
    elif thresholds:
        fix = f"choose --thresholds between {min(values):.4g} and {max(values):.4g}"
    else:
        fix = f"the {len(examples)} prompts have only {len(set(values))} distinct {measured.kind}s; pass --thresholds"
    at = "at --thresholds " + ",".join(f"{c:g}" for c in cuts) if thresholds else "by terciles"
    warn_empty_buckets(labels, BUCKETS if len(cuts) == 2 else ("easy", "hard"), values, measured.kind, at, fix)
    return labels, values, {
        "method": "thresholds" if thresholds else f"{measured.method}_terciles",
        "thresholds": list(cuts),
        "description": measured.description,
    }


def _count_buckets(task: Task, measured: PromptDifficulty, values: list[float], thresholds, unseen_at_least):
    if thresholds:
        raise RlgfError(f"{task.name} buckets prompts by a count ({measured.method.replace('_', ' ')}), "
                        "not by score thresholds", "use --unseen-at-least N")
    at_least = 1 if unseen_at_least is None else unseen_at_least
    labels = bucket_by_count(values, at_least)
    if values:
        lo, hi = max(1, int(min(values)) + 1), int(max(values))
        warn_empty_buckets(labels, ("easy", "hard"), values, "count", f"at --unseen-at-least {at_least}",
                           f"choose --unseen-at-least from {lo} to {hi}" if lo <= hi
                           else "no --unseen-at-least separates these prompts")
    return labels, values, {
        "method": measured.method, "unseen_at_least": at_least, "description": measured.description.format(n=at_least),
    }


def warn_empty_buckets(labels: Sequence[str], expected: Sequence[str], values: Sequence[float], kind: str,
                       at: str, fix: str) -> None:
    """One ``warning:`` line when the cuts leave a bucket empty (a study of one bucket has no gap)."""
    empty = [b for b in expected if b not in labels]
    if not empty or not values:
        return
    full = [f"{labels.count(b)} {b}" for b in expected if b in labels]
    warnings.warn(RlgfWarning(
        f"no prompt is {' or '.join(empty)} {at} ({', '.join(full)}; {kind}s from {min(values):.4g} to {max(values):.4g}): "
        f"{fix}"), stacklevel=3)


# -- the whole study -------------------------------------------------------------------------


def run_difficulty(specs: list[str], *, task_name, split, limit, seed, reference_spec, task_options, device,
                   batch_size, decoding=None, base_url=None, thresholds=None, unseen_at_least=None,
                   say=None, bar=None, metric: str | None = None, precision: str = "auto", seeds: int = 1,
                   baseline: str | None = None) -> dict:
    """Generate with every policy, then compute its metrics per difficulty bucket.

    With ``seeds`` > 1 each policy generates at sampling seeds ``seed`` … ``seed + seeds - 1``:
    a bucket's ``policies`` then hold the mean over seeds, ``policies_std`` the standard
    deviation and ``per_seed`` each seed's metrics (one run stands for all under deterministic
    decoding). ``metric`` (the one to chart) is checked against the task's metrics before any
    generation."""
    import contextlib

    from backends import policy_class, resolve
    from backends.precision import freeze_in, resolve_precision

    from rlgf_cli.evaluation.reward_memo import rewards_once
    from rlgf_cli.evaluation.evaluate import (build_eval_task, check_specs, compute_metrics, decoding_for, describe_decoding,
                           generate_for, load_for_eval, load_reference, resolve_sampling, reward_runs,
                           split_examples)
    from rlgf_cli.evaluation.evaluate import metric_names as eval_metric_names
    from rlgf_cli.runtime import resolve_device

    say = say or (lambda text: None)
    bar = bar or (lambda label: contextlib.nullcontext(lambda done, total: None))
    check_specs(specs, seed=seed, base_url=base_url)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    task = build_eval_task(task_name, specs, task_options, prec, say)
    if metric is not None and metric not in eval_metric_names(task):
        known = eval_metric_names(task)
        raise RlgfError(f"no metric '{metric}' for {task.name}", f"{did_you_mean(metric, known)}choose one of: {', '.join(known)}")
    sampling = resolve_sampling(task.eval_sampling, **(decoding or {}))
    examples = split_examples(task, split, limit)
    say(f"measuring the difficulty of {len(examples)} {split} prompts")
    labels, values, how = assign_buckets(task, examples, thresholds=thresholds, unseen_at_least=unseen_at_least)
    names = [b for b in BUCKETS if b in labels]
    members = {b: [i for i, lab in enumerate(labels) if lab == b] for b in names}
    ref_spec, reference, ref_facts = load_reference(reference_spec, specs, task, dev, say)
    if reference is not None:
        freeze_in(reference, prec)
    buckets = {b: {"n": len(members[b]), "policies": {}} for b in names}
    decodings = {}
    seed_list = [seed + i for i in range(max(1, seeds))]
    scored = len(specs) > 1 and reward_runs(task)  # per-prompt rewards, to pair each policy with the baseline
    rewards: dict[str, list[dict]] = {}
    for spec in specs:
        remote = policy_class(spec).remote  # loaded per seed (its requests are seeded)
        local = None
        if not remote:
            local = reference if reference is not None and spec == ref_spec else resolve(spec, device=dev)
        runs: dict[str, list[dict]] = {b: [] for b in names}
        for s in seed_list:
            if s != seed and sampling.is_deterministic:
                say(f"{spec}: {decodings[spec]} is deterministic; one run stands for every seed")
                break
            policy = local or load_for_eval(spec, dev, seed=s, base_url=base_url)
            freeze_in(policy, prec)
            decode = decoding_for(policy, task, sampling)
            decodings[spec] = describe_decoding(policy, decode)
            say(f"generating with {spec} ({decodings[spec]}" + (f", seed {s})" if len(seed_list) > 1 else ")"))
            with bar(f"difficulty {spec}" + (f" · seed {s}" if len(seed_list) > 1 else "")) as progress, prec.autocast():
                completions = generate_for(policy, task, examples, decoding=decode, seed=s, batch_size=batch_size,
                                           progress=progress)
            with rewards_once(task):  # the buckets' metrics ask for rewards the pairing already scored
                if scored:
                    values_s = task.reward([ex.prompt for ex in examples], completions, examples)
                    rewards.setdefault(spec, []).extend({"index": i, "scores": {"reward": float(r)}}
                                                        for i, r in enumerate(values_s))
                for b in names:
                    idx = members[b]
                    with prec.autocast():
                        runs[b].append({"seed": s, "metrics": compute_metrics(
                            task, policy, [examples[i] for i in idx], [completions[i] for i in idx], reference)})
            if remote:
                policy.close()
        for b in names:
            _summarise_runs(buckets[b], spec, runs[b], several=len(runs[b]) > 1)
        del local
    if scored:
        for b in names:
            _pair_bucket(buckets[b], set(members[b]), baseline or specs[0], specs, rewards)
    return {
        "task": task.name,
        "split": split,
        "n": len(examples),
        "seed": seed,
        **({"seeds": seed_list} if len(seed_list) > 1 and not sampling.is_deterministic else {}),
        **how,
        "policies": specs,
        "metric_names": eval_metric_names(task),
        "decoding": decodings,
        "buckets": buckets,
        "gaps": {m: gaps_for({"buckets": buckets}, m) for m in metric_names({"buckets": buckets})},
        "prompts": [{"index": i, "prompt": ex.prompt, "difficulty": v, "bucket": lab}
                    for i, (ex, v, lab) in enumerate(zip(examples, values, labels))],
        "task_info": {**ref_facts, **task.info(), **prec.info()},
    }


def _pair_bucket(bucket: dict, members: set[int], baseline: str, specs: list[str],
                 rewards: dict[str, list[dict]]) -> None:
    """``bucket["paired"]``: each policy against the ``baseline`` one, on the bucket's prompts
    (:mod:`rlgf_cli.evaluation.paired`)."""
    from rlgf_cli.evaluation.paired import compare, per_prompt_reward

    def mine(spec):
        return per_prompt_reward([r for r in rewards.get(spec, ()) if r["index"] in members])

    reference = mine(baseline)
    if reference is None:
        return
    paired = {spec: stats for spec in specs
              if spec != baseline and (ours := mine(spec)) and (stats := compare(ours, reference))}
    if paired:
        bucket["paired"] = {"against": baseline, "metric": "reward", "policies": paired}


def _summarise_runs(bucket: dict, spec: str, runs: list[dict], several: bool) -> None:
    """A bucket's entry for ``spec``: its metrics (the mean over ``runs``) and, when several
    seeds were asked for, their standard deviations and the runs themselves."""
    from rlgf_cli.evaluation.report import runs_mean_std

    if not several:
        bucket["policies"][spec] = runs[0]["metrics"]
        return
    bucket["policies"][spec], bucket.setdefault("policies_std", {})[spec] = runs_mean_std(runs)
    bucket.setdefault("per_seed", {})[spec] = runs


def metric_names(report: dict) -> list[str]:
    from rlgf_cli.evaluation.report import metric_columns

    return metric_columns((m for b in report["buckets"].values() for m in b["policies"].values()),
                          report.get("metric_names", ()))


def gaps_for(report: dict, metric: str) -> dict[str, float | None]:
    """Per policy, its ``metric`` on easy prompts minus on hard prompts (None without both)."""
    buckets = report["buckets"]
    out = {}
    policies = list(next(iter(buckets.values()))["policies"]) if buckets else []
    for p in policies:
        easy = buckets.get("easy", {}).get("policies", {}).get(p, {}).get(metric)
        hard = buckets.get("hard", {}).get("policies", {}).get(p, {}).get(metric)
        out[p] = None if easy is None or hard is None else easy - hard
    return out


def default_plot_metric(report: dict) -> str:
    names = metric_names(report)
    if not names:
        raise RlgfError("no metrics to plot")
    return next((m for m in PLOT_METRIC_PREFERENCE if m in names), names[0])


def plot(report: dict, path: str | Path, metric: str | None = None) -> Path:
    """A grouped bar chart like the paper's Figure 3: buckets on x, one bar per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlgf_cli.evaluation.report import short_labels

    metric = metric or default_plot_metric(report)
    if metric not in metric_names(report):
        known = metric_names(report)
        raise RlgfError(f"no metric '{metric}' to plot", f"{did_you_mean(metric, known)}choose one of: {', '.join(known)}")
    buckets = report["buckets"]
    names = list(buckets)
    policies = report.get("policies") or list(next(iter(buckets.values()))["policies"])
    labels = short_labels(policies)
    gaps = gaps_for(report, metric)
    width = 0.8 / max(1, len(policies))
    fig, ax = plt.subplots(figsize=(7, 4.5 + 0.25 * ((len(policies) + 1) // 2)), dpi=100)
    for j, p in enumerate(policies):
        heights = [buckets[b]["policies"].get(p, {}).get(metric, math.nan) for b in names]
        stds = [buckets[b].get("policies_std", {}).get(p, {}).get(metric) for b in names]
        xs = [i + (j - (len(policies) - 1) / 2) * width for i in range(len(names))]
        gap = gaps.get(p)
        legend = labels[p] + ("" if gap is None else f" (easy−hard {gap:+.3f})")
        errors = [0.0 if v is None else v for v in stds] if any(v is not None for v in stds) else None
        ax.bar(xs, heights, width=width * 0.95, label=legend, yerr=errors, capsize=3 if errors else 0)
    ax.set_xticks(range(len(names)), [f"{b}\n(n={buckets[b]['n']})" for b in names])
    ax.set_ylabel(metric)
    several = f" (mean ± std, {len(report['seeds'])} seeds)" if report.get("seeds") else ""
    ax.set_title(f"{report.get('task', '')} · {metric} by prompt difficulty{several}")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(2, len(policies)),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    from rlgf_cli.files import save_png

    return save_png(fig, path, "--plot")
