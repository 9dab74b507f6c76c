"""bench/iteration.py runs one rlgf iteration and the HF-style loop (tiny config, CPU) and
prints the per-phase table with the ratio."""

import json

import pytest
from conftest import load_bench

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_iteration_tiny(tmp_path, capsys):
    bench = load_bench("iteration")
    out = tmp_path / "iteration.json"
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0",
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| phase | rlgf s | HF-style s | ratio (HF-style / rlgf) |" in text
    for label in ("roll-in", "roll-out", "reward", "reference log-probs", "update", "**iteration**", "peak memory"):
        assert label in text
    data = json.loads(out.read_text())
    assert data["shape"]["episodes"] == 16 and data["shape"]["minibatches"] == 4
    for side in ("rlgf", "hf_style"):
        assert data[side]["total"] > 0 and data[side]["update"] > 0 and data[side]["roll_in"] >= 0
        assert data["peak_memory_bytes"][side] > 0
    assert data["ratio"]["total"] == pytest.approx(data["hf_style"]["total"] / data["rlgf"]["total"])
    assert f"**{data['ratio']['total']:.2f}×**" in text


def test_word_tokenizer_has_gpt2_vocabulary():
    bench = load_bench("iteration")
    tok = bench.word_tokenizer(50257)
    assert len(tok) == 50257 and tok.eos_token_id == tok.pad_token_id == 50256
    assert tok("w0 w50255", add_special_tokens=False)["input_ids"] == [0, 50255]
    task = bench.BenchTask(3, 64, 48, 50256)
    assert all(len(tok(ex.prompt)["input_ids"]) == 64 for ex in task.examples("train"))
    assert task.reward(["p"], ["w7 w1"], task.examples("train")[:1]) == [pytest.approx(1 / 5)]


def test_embedded_preset_tables_render_every_phase():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import iteration_embedded as ie

    def result(name, scale):
        seconds = {p: scale * (i + 1) for i, p in enumerate(ie.PHASES)}
        return {"precision": name, "precision_reason": "test", "attention": "eager" if name == "bf16" else "sdpa",
                "seconds": seconds, "iteration_s": sum(seconds.values()),
                "gflops": {p: 10.0 / scale for p in ("rollout", "reward", "forward", "update")},
                "roofline_gflops": 40.0 / scale, "peak_rss_gib": 1.5,
                "checkpoint": {"snapshot_s": 0.1, "background_write_s": 2.0, "foreground_write_s": 2.5},
                "reward_mean": 0.5}

    def warmed(name, scale):  # the iteration after a warm-up one, and two snapshots
        r = result(name, scale)
        r.update(iterations=2, first_iteration_s=r["iteration_s"] * 1.5)
        r["checkpoint"]["first_snapshot_s"] = 0.3 * scale
        return r

    both = ie.table([result("fp32", 2.0), result("bf16", 1.0)])
    assert all(f"| {p} |" in both for p in ie.PHASES) and "| **iteration** | **30.0** | **15.0** | **2.00×**" in both
    assert "the update reaches 25% and 25% of them" in both
    assert "fp32 (test; sdpa attention), bf16 (test; eager attention)" in both
    assert "first iteration" not in both  # one iteration each: nothing to set apart
    warm = ie.table([warmed("fp32", 2.0), warmed("bf16", 1.0)])
    assert "| first iteration (one-time costs) | 45.0 | 22.5 | 2.00× | | |" in warm
    assert "spends 0.10 s and 0.10 s on the snapshot (0.3% and 0.7% of an iteration; the first, which " \
           "allocates it: 0.60 s and 0.30 s)" in warm
    one = ie.single(result("fp32", 2.0))
    assert "| update | 8.00 | 5.0 |" in one and "snapshot 0.10 s" in one
    # --compile: each precision eager against compiled, from the same run
    eager = [warmed("fp32", 2.0), warmed("bf16", 1.0)]
    compiled = [warmed("fp32", 2.0), warmed("bf16", 0.5)]
    compiled[0]["first_iteration_s"] = 90.0
    side = ie.compile_table(eager, compiled)
    assert "| fp32 eager s | fp32 compiled s | eager/compiled | bf16 eager s | bf16 compiled s |" in side
    assert "| update | 8.00 | 8.00 | 1.00× | 4.00 | 2.00 | 2.00× |" in side
    assert "| **iteration** | 30.00 | 30.00 | 1.00× | 15.00 | 7.50 | 2.00× |" in side
    assert "| first iteration (compiling) | 45.00 | 90.00 | 0.50× |" in side
