"""bench/precision_learning.py trains fp32 and bf16 with the same seed and compares their curves
(here a tiny model; bf16 is emulated on CPUs without bf16 units, hence --force)."""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import load_bench

from backends.precision import cpu_flags  # the real reader (the suite hides the flags only at run time)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_precision_learning_tiny(tmp_path, capsys, tiny_causal_dir, tiny_reward_dir):
    bench = load_bench("precision_learning")
    out = tmp_path / "bench"
    assert bench.main([
        "--iterations", "2", "--seed", "3", "--out", str(out), "--force", "--",
        "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir), "--episodes", "4",
        "--minibatch-size", "4", "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu", "--quiet",
    ]) == 0
    text = capsys.readouterr().out
    assert "| iteration | fp32 reward | bf16 reward | gap | gap's s.e. | fp32 s | bf16 s |" in text
    data = json.loads((out / "results.json").read_text())
    assert data["fp32"]["episodes"] == data["bf16"]["episodes"] == 4
    assert data["fp32"]["precision"] == "fp32" and data["bf16"]["precision"] == "bf16"
    fp32, bf16 = data["fp32"]["reward_mean"], data["bf16"]["reward_mean"]
    assert len(fp32) == len(bf16) == 2
    gap = max(abs(a - b) for a, b in zip(fp32, bf16))
    assert f"largest reward gap {gap:.3f} (goal ≤ 0.05)" in text
    mean = (sum(bf16) - sum(fp32)) / 2
    assert f"bf16 {sum(bf16) / 2:.3f} (gap {mean:+.3f})" in text
    ses = bench.gap_standard_errors(data["fp32"], data["bf16"])
    stds = data["fp32"]["reward_std"][0], data["bf16"]["reward_std"][0]
    assert ses[0] == pytest.approx(((stds[0] ** 2 + stds[1] ** 2) / 4) ** 0.5)
    assert f"each gap's standard error is {min(ses):.3f}–{max(ses):.3f}" in text
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_precision_learning_refuses_emulated_bf16_without_force(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # and the suite hides the CPU's units
    bench = load_bench("precision_learning")
    with pytest.raises(SystemExit, match=r"\[error\] this machine has no bf16 units"):
        bench.main(["--iterations", "1", "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


@pytest.mark.skipif(bool(cpu_flags()), reason="this CPU has bf16 units: the script would run for real")
def test_the_cpu_bf16_check_stops_at_once_without_bf16_units(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "cpu_bf16_check.sh"), str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("[error] this CPU reports neither AMX-BF16 nor AVX512-BF16")
    assert not out.exists()


def test_precision_drift_compares_each_bf16_variant_with_float32(tmp_path, capsys, tiny_causal_dir):
    import torch

    bench = load_bench("precision_drift")
    out = tmp_path / "drift.json"
    assert bench.main(["--learner", str(tiny_causal_dir), "--prompts", "4", "--new-tokens", "5", "--seed", "1",
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| against float32 | KL per token | mean abs dlogp | max abs dlogp | forward s |" in text
    data = json.loads(out.read_text())
    assert [r["variant"] for r in data["rows"]] == [
        "learner under autocast (float32 weights)",
        "frozen as rlgf holds it (bf16 matrices, float32 embeddings and norms)",
        "frozen with all-bf16 weights (before)"]
    for row in data["rows"]:
        assert row["tokens"] > 0 and row["kl_per_token"] >= 0.0 and row["abs_dlogp_max"] >= row["abs_dlogp_mean"] > 0
        assert f"| {row['variant']} | {row['kl_per_token']:.2e} |" in text
    assert set(data["learner_vs_decoder"]) == {"learner vs its decoding copy (now)",
                                               "learner vs its decoding copy (all-bf16, before)"}
    # the comparison itself: nothing between a distribution and itself, the exact KL otherwise
    ref = torch.log_softmax(torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]]), -1)
    other = torch.log_softmax(torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]]), -1)
    ids, mask = torch.tensor([[7, 0, 1]]), torch.tensor([[1, 0]])
    same = bench.compare(ref, ref, ids, 1, mask)
    assert same["kl_per_token"] == 0.0 and same["abs_dlogp_max"] == 0.0 and same["tokens"] == 1
    got = bench.compare(ref, other, ids, 1, mask)  # only the first response token counts (mask)
    want = float((ref[0, 0].exp() * (ref[0, 0] - other[0, 0])).sum())
    assert got["kl_per_token"] == pytest.approx(want)
    assert got["abs_dlogp_mean"] == pytest.approx(float((ref[0, 0, 0] - other[0, 0, 0]).abs()))


@pytest.mark.filterwarnings("ignore:.*lose their start")  # the tiny prompts' cut is not what this checks
def test_precision_sampling_compares_the_first_rollout_of_both_precisions(tmp_path, capsys, tiny_causal_dir,
                                                                          tiny_reward_dir):
    bench = load_bench("precision_sampling")
    out = tmp_path / "sampling.json"
    assert bench.main(["--rounds", "2", "--episodes", "4", "--seed", "3", "--out", str(out), "--",
                       "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir),
                       "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [r["round"] for r in data["rounds"]] == [1, 2] and data["episodes"] == 4
    assert data["options"]["max_new_tokens"] == 4 and data["options"]["learner"] == str(tiny_causal_dir)
    for r in data["rounds"]:
        assert 0.0 <= r["fp32"] <= 1.0 and 0.0 <= r["bf16"] <= 1.0
        assert 0 <= r["same_completion"] <= r["same_first_token"] <= 4
        assert f"round {r['round']}: fp32 {r['fp32']:.3f}, bf16 {r['bf16']:.3f}" in text
    # equal rounds: the overall means are the rounds' means
    assert data["fp32_mean"] == pytest.approx(sum(r["fp32"] for r in data["rounds"]) / 2)
    assert data["gap"] == pytest.approx(data["bf16_mean"] - data["fp32_mean"])
    assert data["gap_standard_error"] > 0
    assert f"gap {data['gap']:+.4f} (standard error {data['gap_standard_error']:.4f}" in text
    assert bench.trainer_options(["--episodes", "8", "--lr", "1e-5", "--cuda-graphs", "--learner", "x", "--quiet"]) == {
        "episodes": 8, "lr": 1e-5, "cuda_graphs": True, "learner": "x", "quiet": True}
