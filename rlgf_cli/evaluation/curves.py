"""Learning curves from run folders: ``metrics.jsonl`` per iteration, grouped, mean ± std.

Runs are grouped by algorithm (a warm-started run, ``--init``, gets its own group, the
paper's BC+Alg rows); within a group each run is a seed and the curve is the mean over the
seeds that reached an iteration, with a band of ± one standard deviation.
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from pathlib import Path

from backends.errors import RlgfError

DEFAULT_METRIC = "reward_mean"


def read_metrics(run: str | Path) -> list[dict]:
    """The per-iteration metrics of a run folder (lines cut by a kill are skipped)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise RlgfError(f"{run} holds no metrics.jsonl", "pass the --out folder of an rlgf train run")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RlgfError(f"{path} is damaged: not UTF-8 text (byte {exc.start})",
                        "leave that run out, or restore its metrics.jsonl") from None
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "iteration" in row:
            it = row["iteration"]
            if isinstance(it, bool) or not isinstance(it, int):  # 2.7, "two", null: not an iteration number
                raise RlgfError(f"{path}, line {n}: 'iteration' is {it!r}, not a whole number",
                                "leave that run out, or mend the line")
            rows.append(row)
    return rows


def run_config(run: str | Path) -> dict | None:
    """The ``[train]`` table of a run folder's ``config.toml``, or None when it cannot be read."""
    try:
        return tomllib.loads((Path(run) / "config.toml").read_text(encoding="utf-8")).get("train", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None


def group_label(run: str | Path) -> str:
    """``alg``, or ``init+alg`` for a warm-started run (``BC+ppo++`` when it started from a BC run)."""
    cfg = run_config(run)
    if cfg is None:
        return Path(run).name
    alg = cfg.get("alg", Path(run).name)
    init = cfg.get("init")
    if not init:
        return alg
    source = init_run(str(init), Path(run))
    init_cfg = run_config(source) or {}
    prefix = "BC" if init_cfg.get("alg") == "bc" else source.name
    return f"{prefix}+{alg}"


def init_run(init: str, run: Path) -> Path:
    """The run folder a warm start came from, however ``--init`` named it: ``hf:PATH``, the run
    folder, its ``final/`` or one of its ``checkpoints/iter-N/``; a relative path (the reproduction
    records them relative to where it ran) is looked for from the run's folder upwards too."""
    source = Path(init.removeprefix("hf:")).expanduser()
    if source.name == "final":
        source = source.parent
    elif source.parent.name == "checkpoints":
        source = source.parent.parent
    if not source.is_absolute() and not source.exists():
        source = next((base / source for base in Path(run).resolve().parents if (base / source).is_dir()), source)
    return source


def curves(groups: dict[str, list[str | Path]], metric: str = DEFAULT_METRIC) -> dict[str, dict]:
    """Per group: ``iterations``, ``mean``, ``std`` and ``seeds`` (runs that reached each iteration)."""
    out: dict[str, dict] = {}
    for label, runs in groups.items():
        by_iteration: dict[int, list[float]] = {}
        for run in runs:
            for row in read_metrics(run):
                value = row.get(metric)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    by_iteration.setdefault(int(row["iteration"]), []).append(float(value))
        its = sorted(by_iteration)
        out[label] = {
            "iterations": its,
            "mean": [statistics.fmean(by_iteration[i]) for i in its],
            "std": [statistics.stdev(by_iteration[i]) if len(by_iteration[i]) > 1 else 0.0 for i in its],
            "seeds": [len(by_iteration[i]) for i in its],
        }
    if not any(c["iterations"] for c in out.values()):
        rows = [row for runs in groups.values() for r in runs for row in read_metrics(r)]
        known = logged_metrics([r for runs in groups.values() for r in runs])
        logged = [row[metric] for row in rows if row.get(metric) is not None]
        what = f"'{metric}' is not a number (e.g. {logged[0]!r}), so it cannot be plotted" if logged \
            else f"no run logged the metric '{metric}'"
        raise RlgfError(what, f"choose one of: {', '.join(known)}" if known else "the runs logged no numeric metric yet")
    return out


def logged_metrics(runs: list[str | Path]) -> list[str]:
    """The numeric metrics these runs logged (not ``iteration``, nor text such as ``scheme``)."""
    return sorted({k for r in runs for row in read_metrics(r) for k, v in row.items()
                   if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v)})


def repeated_seeds(groups: dict[str, list[str | Path]]) -> list[str]:
    """One line per group holding two runs of the same seed: its band is then not a spread over seeds."""
    notes = []
    for label, runs in groups.items():
        by_seed: dict = {}
        for run in runs:
            seed = (run_config(run) or {}).get("seed")
            if seed is not None:
                by_seed.setdefault(seed, []).append(str(run))
        for seed, same in by_seed.items():
            if len(same) > 1:
                notes.append(f"{label}: {', '.join(same)} all have seed {seed}, so its band is not a spread over seeds")
    return notes


def group_runs(runs: list[str | Path]) -> dict[str, list[str | Path]]:
    groups: dict[str, list[str | Path]] = {}
    for run in runs:
        groups.setdefault(group_label(run), []).append(run)
    return groups


def plot_curves(groups: dict[str, list[str | Path]], path: str | Path, metric: str = DEFAULT_METRIC,
                title: str | None = None) -> dict[str, dict]:
    """Draw one line per group with a ± std band and write a PNG (atomically); returns the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    data = curves(groups, metric)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    for label, c in data.items():
        if not c["iterations"]:
            continue
        n = max(c["seeds"])
        (line,) = ax.plot(c["iterations"], c["mean"], marker="o", markersize=3, label=f"{label} (n={n})")
        lo = [m - s for m, s in zip(c["mean"], c["std"])]
        hi = [m + s for m, s in zip(c["mean"], c["std"])]
        ax.fill_between(c["iterations"], lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # no half iterations
    ax.set_ylabel(metric)
    ax.ticklabel_format(axis="y", useOffset=False)  # 0.4926 on the axis, not "1e-6 + 4.926e-1"
    ax.set_title(title or f"{metric} per iteration (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best", frameon=False)
    fig.tight_layout()
    from rlgf_cli.files import save_png

    save_png(fig, path, "--out")
    return data
