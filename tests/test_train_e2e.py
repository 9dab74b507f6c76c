"""End to end through the CLI with tiny models built from configs (seconds)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from rlgf_cli.app import app

runner = CliRunner()


def train_args(learner, reward, out, *extra):
    return [
        "train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
        "--iterations", "2", "--episodes", "8", "--minibatch-size", "4", "--epochs", "2",
        "--max-new-tokens", "8", "--device", "cpu", "--quiet", *extra,
    ]


def invoke(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_then_plain_transformers_load_then_eval(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, out, "--lr", "1e-3", "--save-every", "1"))
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["scheme"] == "ppo"
        assert 0.0 <= m["reward_mean"] <= 1.0
        assert m["learner_tokens"] == 8 * 8 and m["guide_tokens"] == 0
    assert "alg = \"ppo\"" in (out / "config.toml").read_text()
    # the periodic checkpoint of iteration 1 and the last iteration's, which final/ is made from
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter-0001", "iter-0002"]
    assert (out / "checkpoints" / "iter-0001" / "model.safetensors").is_file()
    assert not list(out.rglob(".tmp-*")), "no temporary folders may be left behind"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = out / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    start = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    assert changed, "training must change the weights"
    # final/ is what a user ships: model, tokenizer, configs, the critic; no resumable state
    assert (final / "critic").is_dir()
    assert not [p.name for p in final.iterdir() if p.name.startswith(("optimizer", "rng"))]
    state = json.loads((final / "trainer_state.json").read_text())
    assert state == {"iteration": 2, "alg": "ppo", "task": "rotten-tomatoes", "learner": str(tiny_causal_dir)}
    last = out / "checkpoints" / "iter-0002"
    assert {"optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json"} <= {p.name for p in last.iterdir()}
    assert json.loads((last / "trainer_state.json").read_text())["iteration"] == 2
    # the weights are on disk once: final/ links the last checkpoint's files
    assert (final / "model.safetensors").stat().st_ino == (last / "model.safetensors").stat().st_ino

    report = tmp_path / "eval.json"
    samples = tmp_path / "samples.jsonl"
    invoke([
        "eval", "--checkpoint", str(final), "--policy", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir),
        "--limit", "6", "--device", "cpu", "--json", str(report), "--samples", str(samples), "--quiet",
    ])
    data = json.loads(report.read_text())
    assert [r["policy"] for r in data["results"]] == [str(final), str(tiny_causal_dir)]
    for r in data["results"]:
        assert r["task"] == "rotten-tomatoes" and r["split"] == "test" and r["n"] == 6
        assert set(r["metrics"]) == {"sentiment", "perplexity", "output_perplexity"}
        assert 0.0 <= r["metrics"]["sentiment"] <= 1.0 and r["metrics"]["perplexity"] > 1.0
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 12 and {"policy", "prompt", "completion", "reference"} <= set(rows[0])


def test_same_seed_same_run(tmp_path, tiny_causal_dir, tiny_reward_dir):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        invoke(train_args(tiny_causal_dir, tiny_reward_dir, out, "--lr", "1e-3", "--seed", "7"))
        runs.append(out)
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time")} for m in ms]  # noqa: E731
    assert strip(read_metrics(runs[0])) == strip(read_metrics(runs[1]))
    from safetensors.torch import load_file

    a = load_file(runs[0] / "final" / "model.safetensors")
    b = load_file(runs[1] / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bc_lowers_the_loss(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "bc"
    invoke([
        "train", "--alg", "bc", "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir),
        "--out", str(out), "--iterations", "6", "--episodes", "16", "--minibatch-size", "8",
        "--lr", "3e-3", "--device", "cpu", "--quiet",
    ])
    metrics = read_metrics(out)
    assert metrics[-1]["bc_loss"] < metrics[0]["bc_loss"]
    assert (out / "final" / "model.safetensors").is_file()


def test_json_summary_to_stdout(tmp_path, tiny_causal_dir, tiny_reward_dir):
    result = invoke(train_args(tiny_causal_dir, tiny_reward_dir, tmp_path / "r", "--iterations", "1", "--json", "-"))
    summary = json.loads(result.stdout)
    assert summary["iterations"] == 1 and summary["alg"] == "ppo"
    assert summary["final"].endswith("final")


@pytest.mark.slow
def test_real_embedded_default_one_iteration(tmp_path):
    """The real thing: SmolLM2 from its PyPI package and the trained MiniLM reward."""
    out = tmp_path / "smol"
    invoke([
        "train", "--task", "rotten-tomatoes", "--learner", "smollm2", "--out", str(out),
        "--iterations", "1", "--episodes", "4", "--minibatch-size", "4", "--epochs", "1",
        "--max-new-tokens", "8", "--device", "cpu", "--quiet",
    ])
    (m,) = read_metrics(out)
    assert m["learner_tokens"] == 4 * 8 and 0.0 <= m["reward_mean"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task_info"]["test_accuracy"] >= 0.80


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, tiny_causal_dir, tiny_reward_dir):
    straight = tmp_path / "straight"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, straight, "--lr", "1e-3", "--iterations", "3"))
    split = tmp_path / "split"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, split, "--lr", "1e-3", "--iterations", "2"))
    # a half-written checkpoint (as a kill mid-save leaves it) must be ignored
    (split / "checkpoints" / ".tmp-iter-0009-x").mkdir(parents=True)
    (split / "checkpoints" / ".tmp-iter-0009-x" / "trainer_state.json").write_text('{"iteration": 9}')
    invoke(["train", "--resume", str(split), "--iterations", "3", "--quiet"])
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time")} for m in ms]  # noqa: E731
    assert [m["iteration"] for m in read_metrics(split)] == [1, 2, 3]
    assert strip(read_metrics(split)) == strip(read_metrics(straight))
    from safetensors.torch import load_file

    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(split / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_drops_metrics_of_an_iteration_that_was_not_checkpointed(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, out, "--iterations", "2"))
    with open(out / "metrics.jsonl", "a") as fh:  # as if killed after logging iteration 3 but before saving it
        fh.write('{"iteration": 3, "reward_mean": 0.5}\n{"iteration": 4, "rew')
    invoke(["train", "--resume", str(out), "--iterations", "3", "--quiet"])
    iterations = [m["iteration"] for m in read_metrics(out)]
    assert iterations == [1, 2, 3]


def test_resume_without_checkpoint_is_an_error(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 1
    assert "[error]" in result.output and "config.toml missing" in result.output



def test_rollout_batch_size_is_sized_to_the_device(tiny_causal_dir, tiny_reward_dir):
    """0 (the default) sizes chunks to a GPU's free memory (tests/test_chunking.py) and is 64 on CPU."""
    from backends import resolve
    from rlgf_cli.training.config import build_config
    from rlgf_cli.training.run import build_task
    from rlgf_cli.training.trainer import Trainer

    cfg = build_config(None, learner=str(tiny_causal_dir), reward_model=str(tiny_reward_dir), episodes=48,
                       device="cpu")
    assert cfg.rollout_batch_size == 0
    policy, reference = resolve(str(tiny_causal_dir)), resolve(str(tiny_causal_dir))
    trainer = Trainer(cfg, build_task(cfg), policy, reference, policy.make_critic())
    assert trainer.rollout_batch_size == 48  # all 48 episodes: fewer than a CPU chunk of 64
    cfg.episodes = 100
    assert Trainer(cfg, build_task(cfg), policy, reference, policy.make_critic()).rollout_batch_size == 64
    cfg.rollout_batch_size = 8
    assert Trainer(cfg, build_task(cfg), policy, reference, policy.make_critic()).rollout_batch_size == 8
