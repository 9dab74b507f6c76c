"""bench/serve.py runs end to end on a tiny model and reports both servings and their ratio."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_serve_tiny(tmp_path, tiny_causal_dir):
    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "serve.py"), "--model", str(tiny_causal_dir),
                           "--clients", "4", "--tokens", "3", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["single"]["mean_batch"] == 1.0 and data["batched"]["mean_batch"] >= 1.0
    assert data["ratio"] > 0 and "completions per second" in proc.stdout and "| batched" in proc.stdout
