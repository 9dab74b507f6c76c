"""Result tables for people (rich, Markdown) and helpers shared by eval, difficulty and distill.

Numbers are formatted one way everywhere: 4 decimals below 100, 4 significant digits above
(perplexities), ``–`` for a missing value, and ``mean ± std`` when several seeds were run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof=1``); the std is ``None`` for one value.

    Non-finite values (a nan perplexity) make the mean and std nan rather than vanish.
    """
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var) if math.isfinite(var) else math.nan


def runs_mean_std(runs: Sequence[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Over ``runs`` (each ``{"metrics": {...}}``, e.g. one per sampling seed): every metric's
    mean, and its standard deviation where there are two values or more."""
    names = list(dict.fromkeys(m for run in runs for m in run["metrics"]))
    means, stds = {}, {}
    for name in names:
        mean, std = mean_std([r["metrics"][name] for r in runs if name in r["metrics"]])
        means[name] = mean
        if std is not None:
            stds[name] = std
    return means, stds


def _decimals(value: float) -> int:
    """Places after the point: 1 from 100 up (perplexities), 4 below (rewards, BLEU…)."""
    return 1 if abs(value) >= 100 else 4


def fmt(value: float | None, decimals: int | None = None) -> str:
    """A table cell: fixed decimals (never an exponent), no minus on a value that rounds to zero."""
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{_decimals(value) if decimals is None else decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_mean_std(mean: float | None, std: float | None = None) -> str:
    """``mean ± std``, the std to the mean's decimals."""
    if mean is None:
        return "–"
    if std is None:
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std, _decimals(mean) if math.isfinite(mean) else None)}"


def metric_columns(metric_dicts: Iterable[dict], order: Sequence[str] = ()) -> list[str]:
    """Metric names over several results: those in ``order`` (a task's metric_names) first, in
    that order, then any others in first-seen order."""
    names: list[str] = []
    for metrics in metric_dicts:
        for name in metrics:
            if name not in names:
                names.append(name)
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def short_label(spec: str) -> str:
    """A readable name for a policy spec: the last two parts of a folder path, else the spec."""
    path = Path(spec)
    if len(path.parts) > 2 and ("/" in spec or "\\" in spec):
        return "/".join(path.parts[-2:])
    return spec


def short_labels(specs: Sequence[str]) -> dict[str, str]:
    """:func:`short_label` per spec, falling back to the full spec where two would collide."""
    labels = {s: short_label(s) for s in specs}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {s: (label if counts[label] == 1 else s) for s, label in labels.items()}


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1) -> str:
    """A GitHub-flavoured Markdown table; columns from ``align_right_from`` on are right-aligned."""
    head = "| " + " | ".join(_md_cell(c) for c in columns) + " |"
    rule = "|" + "|".join("---:" if i >= align_right_from else "---" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])
