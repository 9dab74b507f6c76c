"""The table of ``bench/lr_sensitivity.sh``: per row and learning rate, the validation reward over
the seeds and the paired difference from the guide, from the ``rlgf eval --json`` file it writes.

    python bench/lr_sensitivity_table.py runs/lr-sensitivity/eval-val.json
    python bench/lr_sensitivity_table.py --chosen runs/lr-sensitivity/eval-val.json   # "ALG LR" per row
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RUN = re.compile(r"BC_(?P<alg>[\w+]+)-lr(?P<lr>[0-9.e+-]+)-s(?P<seed>\d+)")


def rows(report: dict) -> tuple[dict | None, dict[tuple[str, float], list[dict]]]:
    """The guide's result (the policy whose name is no ``BC_ALG-lrLR-sSEED`` run folder) and the runs
    by (algorithm, lr)."""
    guide, runs = None, {}
    for result in report["results"]:
        match = RUN.search(result["policy"])
        if match is None:
            guide = result
            continue
        runs.setdefault((match["alg"], float(match["lr"])), []).append(
            {"seed": int(match["seed"]), "lr_text": match["lr"], **result})
    return guide, runs


SPLITS = {"val": "validation", "test": "test", "train": "training"}


def table(report: dict) -> str:
    guide, runs = rows(report)
    split = report["results"][0].get("split", "") if report["results"] else ""
    lines = [f"| row | lr | seeds | {SPLITS.get(split, split)} reward (mean, per seed) | − guide, mean over seeds "
             "| seeds above the guide | seeds whose 95 % interval is below the guide's |",
             "|---|---:|---:|---|---:|---:|---:|"]
    if guide is not None:
        lines.append(f"| guide (BC) | | | {guide['metrics']['reward']:.3f} | | | |")
    for (alg, lr), results in sorted(runs.items()):
        results.sort(key=lambda r: r["seed"])
        rewards = [r["metrics"]["reward"] for r in results]
        diffs = [r["paired"]["mean"] for r in results if "paired" in r]
        above = sum(d > 0 for d in diffs)
        below = sum(1 for r in results if (r.get("paired") or {}).get("ci95") and r["paired"]["ci95"][1] < 0)
        per_seed = ", ".join(f"{x:.2f}" for x in rewards)
        gap = f"{statistics.fmean(diffs):+.3f}" if diffs else ""
        lines.append(f"| BC+{alg} | {lr:g} | {len(results)} | {statistics.fmean(rewards):.3f} ({per_seed}) | {gap} "
                     f"| {above} of {len(diffs)} | {below} of {len(diffs)} |")
    return "\n".join(lines)


def chosen(report: dict) -> dict[str, str]:
    """Per row, the learning rate (as the run folders write it) with the best mean validation
    reward over its seeds (ties: the smaller rate)."""
    _, runs = rows(report)
    best: dict[str, tuple[str, float]] = {}
    for (alg, _), results in sorted(runs.items()):
        mean = statistics.fmean(r["metrics"]["reward"] for r in results)
        if alg not in best or mean > best[alg][1]:
            best[alg] = (results[0]["lr_text"], mean)
    return {alg: lr for alg, (lr, _) in best.items()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--chosen":  # "ALG LR" lines: each row's rate, chosen on validation
        for alg, lr in chosen(json.loads(Path(argv[1]).read_text(encoding="utf-8"))).items():
            print(alg, lr)
        return 0
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(table(json.loads(Path(argv[0]).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
