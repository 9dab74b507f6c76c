"""bench/reproduce.py runs every algorithm and writes the mean ± std table (tiny models, one seed)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reproduce_tiny(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "repro"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--learner", str(tiny_causal_dir),
         "--reward-model", str(tiny_reward_dir), "--seeds", "2", "--iterations", "1", "--episodes", "4",
         "--eval-limit", "4", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    rows = data["table"]
    expected = {"initial learner", "BC (guide)", "ppo", "ppo++", "aggrevated", "lols", "d2lols",
                "BC+ppo", "BC+ppo++", "BC+aggrevated", "BC+lols", "BC+d2lols"}
    assert set(rows) == expected
    for row in rows.values():
        assert set(row) == {"sentiment", "perplexity", "output_perplexity"}
        assert all(cell["n"] == 2 and cell["std"] >= 0 for cell in row.values())
    md = (out / "results.md").read_text()
    assert "| BC+d2lols |" in md and "±" in md
