"""The reproduction's report: the table over seeds, training health, the paper's ordering with
paired per-seed differences, ``results.md`` / ``results.json`` and the curves.

Where the jobs kept each test prompt's reward, each paired difference also gets a standard error
that counts both the training seeds and the test prompts as samples (:func:`crossed`): the
per-seed one treats the 128 prompts as fixed, so it says how the difference would vary over new
training runs on these prompts, not over new prompts."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import reproduce_jobs as J
from reproduce_jobs import INITIAL
from rlgf_cli.evaluation.paired import t95


def aggregate(per_seed: list[dict[str, dict]]) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = {}
    for name in _labels(per_seed):
        table[name] = {}
        for m in dict.fromkeys(m for run in per_seed for m in run.get(name, {})):
            values = [run[name][m] for run in per_seed if m in run.get(name, {})]
            table[name][m] = {"mean": statistics.fmean(values),
                              "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return table


def health(runs_by_seed: list[dict[str, Path]]) -> dict[str, dict]:
    """Per row, the last iteration's training statistics averaged over seeds."""
    out: dict[str, dict] = {}
    for label in _labels(runs_by_seed):
        last = []
        for runs in runs_by_seed:
            if label not in runs or not (runs[label] / "metrics.jsonl").is_file():
                continue
            lines = (runs[label] / "metrics.jsonl").read_text().splitlines()
            if lines:
                last.append(json.loads(lines[-1]))
        keys = ("reward_mean", "approx_kl", "kl_exact", "kl_coef", "clipfrac", "bc_loss")
        out[label] = {k: statistics.fmean(r[k] for r in last) for k in keys if last and all(k in r for r in last)}
    return out


def paired(per_seed: list[dict[str, dict]], a: str, b: str, metric: str) -> dict | None:
    """``b − a`` seed by seed (the two rows scored on the same prompts with the same sampling
    seed): mean, standard error and at how many seeds ``b`` is ahead."""
    diffs = [run[b][metric] - run[a][metric] for run in per_seed
             if metric in run.get(a, {}) and metric in run.get(b, {})]
    if not diffs:
        return None
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return {"mean": statistics.fmean(diffs), "se": se, "ahead": sum(d > 0 for d in diffs), "n": len(diffs)}


def crossed(rewards_by_seed: list[dict[str, list[float]]], a: str, b: str) -> dict | None:
    """``b − a`` over every (seed, prompt) pair both rows have, with training seeds and test prompts
    both random (a two-way crossed design without replication): the variance of the grand mean is
    σ²_seed/S + σ²_prompt/P + σ²_rest/(S·P), its components estimated from the mean squares and kept
    at 0 or above, and a 95 % interval on Satterthwaite's degrees of freedom. None with fewer than 2
    seeds or 2 prompts."""
    rows = [[y - x for x, y in zip(seed[a], seed[b])] for seed in rewards_by_seed
            if a in seed and b in seed and len(seed[a]) == len(seed[b])]
    S = len(rows)
    if S < 2 or len(rows[0]) < 2 or any(len(r) != len(rows[0]) for r in rows):
        return None
    P = len(rows[0])
    grand = sum(map(sum, rows)) / (S * P)
    seed_means = [sum(r) / P for r in rows]
    prompt_means = [sum(r[i] for r in rows) / S for i in range(P)]
    ms_seed = P * sum((m - grand) ** 2 for m in seed_means) / (S - 1)
    ms_prompt = S * sum((m - grand) ** 2 for m in prompt_means) / (P - 1)
    ms_rest = sum((r[i] - seed_means[s] - prompt_means[i] + grand) ** 2
                  for s, r in enumerate(rows) for i in range(P)) / ((S - 1) * (P - 1))
    # var = σ²_seed/S + σ²_prompt/P + σ²_rest/(S·P) with σ² from the mean squares, each kept at 0 or
    # above: a sum of the mean squares with coefficients +1 (MS_seed, MS_prompt where they exceed
    # MS_rest) and 1 − (their number) for MS_rest, over S·P
    kept_seed, kept_prompt = ms_seed > ms_rest, ms_prompt > ms_rest
    terms = [(float(kept_seed), ms_seed, S - 1), (float(kept_prompt), ms_prompt, P - 1),
             (1.0 - kept_seed - kept_prompt, ms_rest, (S - 1) * (P - 1))]
    total = sum(c * ms for c, ms, _ in terms)
    var = total / (S * P)
    se = math.sqrt(var)
    # Satterthwaite's degrees of freedom of that sum of mean squares
    df = total**2 / sum((c * ms) ** 2 / d for c, ms, d in terms if c and ms) if total > 0 else math.inf
    half = t95(df) * se
    return {"mean": grand, "se": se, "df": df, "ci95": [grand - half, grand + half], "seeds": S, "prompts": P,
            "se_parts": {"seeds": math.sqrt(max(0.0, ms_seed - ms_rest) / (S * P)),
                         "prompts": math.sqrt(max(0.0, ms_prompt - ms_rest) / (S * P)),
                         "rest": math.sqrt(ms_rest / (S * P))}}


def _crossed_text(c: dict | None) -> str:
    if c is None:
        return ""
    low, high = c["ci95"]
    return (f"; over {c['seeds']} seeds × {c['prompts']} prompts ± {c['se']:.3f} s.e., 95 % interval "
            f"{low:+.3f} to {high:+.3f}")


def _paired_text(p: dict | None, a: str, b: str, c: dict | None = None) -> str:
    if p is None:
        return ""
    se = "" if p["se"] != p["se"] else f" ± {p['se']:.3f} s.e."
    return f"{b} − {a} seed by seed {p['mean']:+.3f}{se}, {b} ahead at {p['ahead']} of {p['n']} seeds" + _crossed_text(c)


def rewards_match(per_seed: list[dict], rewards_by_seed: list[dict[str, list[float]]] | None, metric: str) -> bool:
    """Whether ``metric`` is the mean of the per-prompt rewards (a sentiment score is; a corpus
    BLEU is not), row by row and seed by seed: only then do the rewards speak for the metric."""
    if not rewards_by_seed or len(rewards_by_seed) != len(per_seed):
        return False
    pairs = [(run[label][metric], values) for run, seed in zip(per_seed, rewards_by_seed)
             for label, values in seed.items() if metric in run.get(label, {}) and values]
    return bool(pairs) and all(abs(m - statistics.fmean(v)) < 1e-6 for m, v in pairs)


def ordering(table: dict[str, dict[str, dict]], metric: str, per_seed: list[dict] | None = None,
             rewards_by_seed: list[dict[str, list[float]]] | None = None) -> list[str]:
    """Plain statements of whether the paper's ordering holds (means over seeds), each with the
    paired per-seed difference when ``per_seed`` is given, and the difference over seeds and
    prompts (:func:`crossed`) when ``rewards_by_seed`` holds the rewards ``metric`` is the mean of."""
    mean = {name: row[metric]["mean"] for name, row in table.items() if metric in row}
    lines = []
    rewards = rewards_by_seed if per_seed and rewards_match(per_seed, rewards_by_seed, metric) else None

    def pair_text(a: str, b: str) -> str:
        return _paired_text(paired(per_seed, a, b, metric), a, b, crossed(rewards, a, b) if rewards else None)

    def cmp(a: str, b: str) -> None:
        if a in mean and b in mean:
            verdict = "holds" if mean[a] < mean[b] else "does NOT hold"
            pair = pair_text(a, b) if per_seed else ""
            lines.append(f"{a} < {b}: {verdict} ({mean[a]:.3f} vs {mean[b]:.3f}" + (f"; {pair})" if pair else ")"))

    cmp(INITIAL, J.GUIDE)
    cmp(J.GUIDE, "ppo")
    cmp("ppo", "ppo++")
    cmp("ppo", "d2lols")
    for guided in ("ppo++", "aggrevated", "lols", "d2lols"):  # the same claims from the guide's weights
        cmp("BC+ppo", f"BC+{guided}")
    best = max((n for n in mean if n not in (INITIAL, J.GUIDE)), key=mean.get, default=None)
    if best is not None and J.GUIDE in mean:
        at = [n for n in mean if n not in (INITIAL, J.GUIDE) and mean[n] >= mean[J.GUIDE]]
        lines.append(f"learners at or above the guide ({mean[J.GUIDE]:.3f}): {', '.join(at) if at else 'none'}; "
                     f"best learner: {best} ({mean[best]:.3f})")
        for name in at if per_seed else []:
            lines.append(pair_text(J.GUIDE, name))
    return lines


def _trial(t: dict, metric: str) -> str:
    kl = t.get("kl_exact_last")
    return (f"lr {t['lr']:g}: val {t['val'][metric]:.3f}, mean approx_kl {t['approx_kl_mean']:.4f}, last exact KL "
            + ("–" if kl is None else f"{kl:.4f}"))


def markdown(table: dict[str, dict[str, dict]], meta: dict, rows_health: dict, lr_choice: dict | None,
             per_seed: list[dict] | None = None, rewards_by_seed: list[dict] | None = None) -> str:
    metrics = list(next(iter(table.values())).keys())
    main = metrics[0]  # the task's first metric: the Δ column and the ordering
    first = meta.get("first_seed", 0)
    done = meta.get("seeds_done") or list(range(first, first + meta["seeds"]))
    consecutive = done == list(range(done[0], done[0] + len(done))) if done else True
    which = ("" if done == list(range(len(done))) else f" (seed {done[0]})" if len(done) == 1
             else f" (seeds {done[0]}–{done[-1]})" if consecutive else f" (seeds {', '.join(map(str, done))})")
    lines = [f"# rlgf reproduction — {meta['task']}, preset `{meta['preset']}`, {meta['seeds']} seeds{which}, "
             f"learner `{meta['learner']}`", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- wall time: {meta['wall_s'] / 60:.1f} min" + (f" (the folders' own, summed{_repeated(meta)})"
                                                               if meta.get("sources") else "")
             + (f" (after --resume; {len(meta['kept_jobs'])} jobs were kept from the interrupted run)"
                if meta.get("kept_jobs") else ""),
             f"- settings: {meta['settings']}",
             *([f"- row options (the RL rows{' and their lr trials' if meta.get('lr_per_row') else ''} only, not "
                f"the guide's BC{'' if meta.get('lr_per_row') else ' nor the lr trials'}): {meta['row_options']}"]
               if meta.get("row_options") else []), ""]
    if meta.get("sources"):
        lines[-1:-1] = [f"- joined from: {', '.join(f'`{s}`' for s in meta['sources'])}"]
    if lr_choice and "per_row" in lr_choice:  # --lr-per-row
        lines.append(f"Learning rate chosen on the validation split for each row (the row at each rate, seed 1000, "
                     f"{lr_choice['metric']}):")
        for label, choice in lr_choice["per_row"].items():
            trials = "; ".join(_trial(t, lr_choice["metric"]) for t in choice["trials"])
            lines.append(f"- {label}: {trials} — chosen {choice['chosen']:g}")
        lines.append("")
    elif lr_choice:
        lines.append(f"Learning rate chosen on the validation split (PPO, seed 1000, {lr_choice['metric']}):")
        for t in lr_choice["trials"]:
            lines.append(f"- {_trial(t, lr_choice['metric'])}")
        lines += [f"- chosen: {lr_choice['chosen']:g}", ""]
    source = (f"The given model `{meta['guide_model']}`" if meta.get("guide_model")
              else f"One BC policy (trained once, seed {meta.get('guide_seed', 0)})")
    lines += [f"Test split, mean ± std over seeds. {source} "
              "is the guide of every guided row and the warm start of the BC+ rows, so its own ± is the "
              "evaluation's sampling alone:", "",
              "| method | " + " | ".join(metrics) + f" | Δ {main} vs guide |", "|---|" + "---:|" * (len(metrics) + 1)]
    guide = table.get(J.GUIDE, {}).get(main, {}).get("mean")
    for name, row in table.items():
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in metrics]
        delta = "" if guide is None or name == J.GUIDE else f"{row[main]['mean'] - guide:+.3f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta} |")
    columns = {"reward_mean": "reward", "approx_kl": "approx_kl", "kl_exact": "exact KL / token", "kl_coef": "KL coef",
               "clipfrac": "clipfrac"}
    if any("bc_loss" in h for h in rows_health.values()):  # the BC guide's: it logs its loss, no reward or KL
        columns["bc_loss"] = "BC loss"
    lines += ["", "Last training iteration (mean over seeds):", "",
              "| run | " + " | ".join(columns.values()) + " |", "|---|" + "---:|" * len(columns)]
    for name, h in rows_health.items():
        cells = [f"{h[k]:.4f}" if k in h else "" for k in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Ordering ({main}):", ""] + [f"- {line}" for line in ordering(table, main, per_seed, rewards_by_seed)]
    if meta.get("job_seconds"):
        lines += ["", "Where the time went (seconds of one job process, summed by kind):", ""]
        kinds: dict[str, list[float]] = {}
        guide_kind = "guide (given: nothing trained)" if meta.get("guide_model") else "guide (BC)"
        for name, sec in meta["job_seconds"].items():
            kind = "lr trials" if name.startswith("lr-") else guide_kind if name == "guide" else \
                "evaluation of the initial learner and the guide" if name in ("initial", "guide-eval") else \
                "the test prompts' difficulty" if name == "difficulty" else \
                "RL rows (training + evaluation)"
            kinds.setdefault(kind, []).append(sec)
        lines += [f"- {kind}: {len(v)} job{'s' * (len(v) != 1)}, {sum(v):.0f} s" for kind, v in kinds.items()]
    return "\n".join(lines) + "\n"


def _repeated(meta: dict) -> str:
    """How many joined folders added no wall time (another holds their jobs, identical)."""
    n = len(meta.get("repeated_sources") or [])
    return f"; {n} duplicate folder{'s' * (n != 1)} counted once" if n else ""


def _labels(by_seed: list[dict]) -> list[str]:
    """Row labels in order of first appearance over the seeds (a seed may miss some)."""
    return list(dict.fromkeys(label for seed in by_seed for label in seed))


def write_results(out: Path, per_seed, runs_by_seed, meta, lr_choice, difficulty: dict | None = None,
                  rewards_by_seed: list[dict] | None = None) -> dict:
    """``difficulty``: :func:`reproduce_difficulty.section` (a table by prompt difficulty and
    ``difficulty.png``), when the run kept rewards per prompt; ``rewards_by_seed``: those rewards
    (:func:`reproduce_difficulty.gather_rewards`), for :func:`crossed`."""
    import reproduce_difficulty as D
    from rlgf_cli.evaluation.curves import plot_curves

    table = aggregate(per_seed)
    rows_health = health(runs_by_seed)
    groups = {label: [runs[label] for runs in runs_by_seed if label in runs]
              for label in _labels(runs_by_seed) if label != J.GUIDE}
    curves = plot_curves(groups, out / "curves.png", title=f"{meta['task']}: reward per iteration (± std, "
                                                          f"{len(per_seed)} seeds)")
    text = markdown(table, meta, rows_health, lr_choice, per_seed, rewards_by_seed)
    if difficulty:  # its rows in the main table's order
        rows = difficulty["table"]["rows"]
        difficulty["table"]["rows"] = {k: rows[k] for k in [*table, *rows] if k in rows}
        text += "\n".join(D.markdown(difficulty["table"], difficulty["prompts"])) + "\n"
        D.plot(difficulty["table"], out / "difficulty.png", meta["task"], meta.get("seeds_done") or [meta.get("first_seed", 0) + i for i in range(len(per_seed))])
    (out / "results.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({**meta, "per_seed": per_seed, "table": table, "health": rows_health,
                                                  "lr_choice": lr_choice, "curves": curves,
                                                  **({"difficulty": difficulty} if difficulty else {})}, indent=2),
                                      encoding="utf-8")
    return table
