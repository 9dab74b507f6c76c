"""bench/allocator.py on a tiny model: four runs, both allocators, the same rewards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.allocator import find_tcmalloc

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux") or find_tcmalloc() is None,
                    reason="tcmalloc is not installed (Debian: libtcmalloc-minimal4)")
def test_allocator_bench_compares_both_in_one_run(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "bench/allocator.py", "--iterations", "1", "--learner", str(tiny_causal_dir),
         "--out", str(out), "--", "--reward-model", str(tiny_reward_dir), "--episodes", "4",
         "--max-new-tokens", "4", "--device", "cpu", "--precision", "fp32"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert [r["kind"] for r in data["runs"]] == ["system", "tcmalloc", "tcmalloc", "system"]
    assert [r["allocator"] for r in data["runs"]] == ["system", "tcmalloc", "tcmalloc", "system"]
    assert data["same_rewards"] is True and data["ratio"] > 0
    assert "tcmalloc's iterations" in proc.stdout and "| system (system) |" in proc.stdout
    assert not list(out.glob("*/final")) and not list(out.glob("*/checkpoints"))  # logs only, no weights
