"""bench/lr_sensitivity.sh and its table: rows from the guide's weights at several learning rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]


def result(policy: str, reward: float, paired=None) -> dict:
    out = {"policy": policy, "split": "val", "metrics": {"reward": reward}}
    if paired is not None:
        out["paired"] = {"mean": paired[0], "ci95": list(paired[1:])}
    return out


def test_the_table_groups_the_runs_by_row_and_rate():
    bench = load_bench("lr_sensitivity_table")
    report = {"results": [
        result("hf:runs/x/guide/final", 0.69),
        result("hf:runs/x/BC_aggrevated-lr5e-05-s1/final", 0.30, (-0.39, -0.5, -0.28)),
        result("hf:runs/x/BC_aggrevated-lr5e-05-s0/final", 0.40, (-0.29, -0.4, -0.18)),
        result("hf:runs/x/BC_ppo-lr1e-05-s0/final", 0.75, (0.06, -0.02, 0.14)),
        result("hf:runs/x/BC_ppo++-lr1e-05-s0/final", 0.70, (0.01, -0.1, 0.12)),
    ]}
    text = bench.table(report)
    assert "| validation reward (mean, per seed) |" in text
    assert "| guide (BC) | | | 0.690 | | | |" in text
    assert "| BC+aggrevated | 5e-05 | 2 | 0.350 (0.40, 0.30) | -0.340 | 0 of 2 | 2 of 2 |" in text  # seed order
    assert "| BC+ppo | 1e-05 | 1 | 0.750 (0.75) | +0.060 | 1 of 1 | 0 of 1 |" in text
    assert "| BC+ppo++ | 1e-05 | 1 |" in text
    assert bench.chosen(report) == {"aggrevated": "5e-05", "ppo": "1e-05", "ppo++": "1e-05"}
    report["results"].append(result("hf:runs/x/BC_aggrevated-lr1e-05-s0/final", 0.36, (-0.33, -0.4, -0.2)))
    assert bench.chosen(report)["aggrevated"] == "1e-05"  # 0.36 against 0.35
    rows = text.splitlines()
    assert rows.index(next(r for r in rows if r.startswith("| BC+aggrevated"))) < \
        rows.index(next(r for r in rows if r.startswith("| BC+ppo |")))


def test_the_script_trains_every_row_and_rate_and_evaluates_them_on_validation(tmp_path, tiny_causal_dir):
    out = tmp_path / "sens"
    env = {**os.environ, "LEARNER": str(tiny_causal_dir), "ALGS": "ppo aggrevated", "LRS": "1e-5 3e-5",
           "SEEDS": "0", "ITERATIONS": "1", "EPISODES": "4", "BC_EPISODES": "4", "LIMIT": "6",
           "RLGF": str(Path(sys.executable).parent / "rlgf")}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "lr_sensitivity.sh"), str(out)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    runs = sorted(p.name for p in out.iterdir() if p.name.startswith("BC_"))
    assert runs == ["BC_aggrevated-lr1e-5-s0", "BC_aggrevated-lr3e-5-s0", "BC_ppo-lr1e-5-s0", "BC_ppo-lr3e-5-s0"]
    for run in runs:  # each from the guide's weights, at its own rate
        config = tomllib.loads((out / run / "config.toml").read_text())["train"]
        assert config["lr"] == float(run.split("-lr")[1].split("-s")[0])
        assert config["alg"] == run.split("_")[1].split("-lr")[0]
        assert Path(config["init"]).parts[-2:] == ("guide", "final") and config["guide"] == config["init"]
    report = json.loads((out / "eval-val.json").read_text())
    assert [r["split"] for r in report["results"]] == ["val"] * 5
    assert all(r["n"] == 6 for r in report["results"])
    assert sum("paired" in r for r in report["results"]) == 4  # each against the guide
    table = (out / "table.md").read_text()
    validation, test = table.split("Each row at the rate chosen above, on the test split:")
    assert validation.count("| BC+aggrevated |") == 2 and validation.count("| BC+ppo |") == 2
    assert "| guide (BC) |" in validation and "| validation reward" in validation
    # the test split: each row once, at the rate the validation split chose for it
    chosen = dict(line.split() for line in subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lr_sensitivity_table.py"), "--chosen", str(out / "eval-val.json")],
        capture_output=True, text=True, check=True).stdout.splitlines())
    assert set(chosen) == {"ppo", "aggrevated"}
    assert "| test reward" in test and "| guide (BC) |" in test
    for alg, lr in chosen.items():
        assert f"| BC+{alg} | {float(lr):g} | 1 |" in test
    tested = json.loads((out / "eval-test.json").read_text())["results"]
    assert [r["split"] for r in tested] == ["test"] * 3
    # only each learner is kept (its critics and optimizer state go), and a second call trains nothing
    for run in runs:
        assert (out / run / "final" / "model.safetensors").is_file()
        assert not (out / run / "checkpoints").exists() and not (out / run / "final" / "critic").exists()
    assert not (out / "BC_aggrevated-lr1e-5-s0" / "final" / "guide_critic").exists()
    logs = {p: p.stat().st_mtime_ns for p in (out / "logs").glob("BC_*.log")}
    again = subprocess.run(["bash", str(ROOT / "bench" / "lr_sensitivity.sh"), str(out)], capture_output=True,
                           text=True, timeout=600, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert logs and {p: p.stat().st_mtime_ns for p in (out / "logs").glob("BC_*.log")} == logs


def test_a_failed_training_stops_the_script_before_any_evaluation(tmp_path, tiny_causal_dir):
    out = tmp_path / "sens"
    env = {**os.environ, "LEARNER": str(tiny_causal_dir), "ALGS": "ppo", "LRS": "1e-5 -1", "SEEDS": "0",
           "ITERATIONS": "1", "EPISODES": "4", "BC_EPISODES": "4", "LIMIT": "6",
           "RLGF": str(Path(sys.executable).parent / "rlgf")}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "lr_sensitivity.sh"), str(out)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 1 and "[error] a training failed" in proc.stderr
    assert "[error]" in (out / "logs" / "BC_ppo-lr-1-s0.log").read_text()  # rlgf refused the rate
    assert not (out / "eval-val.json").exists()
