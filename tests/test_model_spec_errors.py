"""Model specs that cannot work fail early and say why: a missing folder, one folder written two
ways, a damaged config.json, a classifier given as a policy; and readable facts and plot choices."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from test_eval_compare import _env  # noqa: F401  (autouse: no API key, a fresh cache)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


def _no_task(monkeypatch):
    """Building the task (which may train a reward classifier) fails the test: errors come first."""
    from rlgf_cli.evaluation import evaluate

    def built(*args, **kwargs):
        raise AssertionError("the task was built before the specs were checked")

    monkeypatch.setattr(evaluate, "build_eval_task", built)


# -- 1. a missing folder fails before any work -------------------------------------------


def test_eval_refuses_a_missing_hf_folder_before_building_the_task(monkeypatch, tmp_path, tiny_causal_dir):
    _no_task(monkeypatch)
    typo = tmp_path / "some" / "typo" / "path"
    result = runner.invoke(app, ["eval", "-p", f"hf:{tiny_causal_dir}", "-p", f"hf:{typo}", "--limit", "1",
                                 "--device", "cpu"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("[error]")]
    assert errors == [f"[error] no such folder: {typo} — check the path (relative paths start from the current folder)"]
    assert "evaluating" not in result.output and "Traceback" not in result.output


def test_eval_refuses_a_file_and_a_missing_relative_folder_early(monkeypatch, tmp_path, tiny_causal_dir):
    from rlgf_cli.evaluation.evaluate import run_eval

    _no_task(monkeypatch)
    monkeypatch.chdir(tmp_path)
    common = dict(task_name=None, split="test", limit=1, task_options={}, device="cpu", batch_size=1,
                  reference_spec=None)
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(RlgfError, match="is a file, not a model folder"):
        run_eval([f"hf:{tiny_causal_dir}", f"hf:{a_file}"], **common)
    with pytest.raises(RlgfError, match="no such folder: ./no/such/model"):
        run_eval([f"hf:{tiny_causal_dir}", "hf:./no/such/model"], **common)
    with pytest.raises(RlgfError, match="no such folder: ./no/such/run"):  # a bare path, as the registry says
        run_eval(["./no/such/run"], **common)


# -- 2. /x/reward/ and /x/reward are one folder -----------------------------------------


def test_local_path_writes_an_absolute_folder_one_way(tmp_path):
    from rlgf_cli.training.config import build_config, local_path

    folder = tmp_path / "reward"
    folder.mkdir()
    assert local_path("reward_model", f"{folder}/") == str(folder)
    assert local_path("reward_model", f"{folder}//./") == str(folder)
    assert local_path("learner", f"hf:{folder}/") == f"hf:{folder}"
    assert local_path("learner", "hf:gpt2") == "hf:gpt2" and local_path("learner", "smollm2") == "smollm2"
    assert build_config(reward_model=f"{folder}/").reward_model == str(folder)


def _checkpoint(root, reward_model: str):
    """A checkpoint as far as ``run_task`` reads one: its trainer state and its rlgf.toml."""
    root.mkdir(parents=True)
    (root / "trainer_state.json").write_text(json.dumps({"iteration": 1, "task": "rotten-tomatoes"}))
    (root / "rlgf.toml").write_text(f'[train]\ntask = "rotten-tomatoes"\nreward_model = "{reward_model}"\n')
    return root


def test_eval_takes_checkpoints_recorded_with_and_without_a_trailing_slash_as_one_reward(tmp_path):
    from rlgf_cli.evaluation.evaluate import run_task

    reward = tmp_path / "reward"
    reward.mkdir()
    a = _checkpoint(tmp_path / "a" / "final", f"{reward}/")  # written before rlgf normalised paths
    b = _checkpoint(tmp_path / "b" / "final", str(reward))
    task, options, source = run_task([str(a), str(b)])
    assert task == "rotten-tomatoes" and source == str(a)
    c = _checkpoint(tmp_path / "c" / "final", str(tmp_path / "other"))
    with pytest.raises(RlgfError, match="different reward-model"):
        run_task([str(a), str(c)])


def test_resume_takes_the_runs_reward_model_without_its_trailing_slash(tmp_path):
    from rlgf_cli.commands.train import resume_settings

    reward = tmp_path / "reward"
    reward.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f'[train]\ntask = "rotten-tomatoes"\nalg = "ppo"\nreward_model = "{reward}/"\n')
    options = {"reward_model": str(reward)}
    assert resume_settings(run, None, options) == run / "config.toml" and options["out"] == str(run)


# -- 3. a damaged config.json ---------------------------------------------------------------


def _damaged_copy(source, folder, *, checkpoint: bool):
    shutil.copytree(source, folder)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 3])
    if checkpoint:
        (folder / "trainer_state.json").write_text('{"iteration": 1}')
    return folder


def test_a_truncated_config_json_is_called_damaged(tmp_path, tiny_causal_dir):
    from backends.hf.policy import HFPolicy

    folder = _damaged_copy(tiny_causal_dir, tmp_path / "model", checkpoint=False)
    with pytest.raises(RlgfError) as info:
        HFPolicy.load(str(folder))
    assert info.value.message.startswith(f"{folder / 'config.json'} is damaged (not valid JSON): ")
    assert "cache" not in info.value.message and "restore config.json" in info.value.hint


def test_a_truncated_config_json_in_a_checkpoint_says_to_drop_that_checkpoint(tmp_path, tiny_causal_dir,
                                                                                tiny_reward_dir):
    folder = _damaged_copy(tiny_causal_dir, tmp_path / "run" / "final", checkpoint=True)
    result = runner.invoke(app, ["eval", "-c", str(folder), "--reward-model", str(tiny_reward_dir),
                                 "--reference", "none", "--limit", "1", "--device", "cpu", "--quiet"])
    errors = [line for line in result.output.splitlines() if line.startswith("[error]")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert f"{folder / 'config.json'} is damaged" in errors[0]
    assert "checkpoint of an rlgf run: delete that folder" in errors[0]


# -- 4. a classifier given as a policy -------------------------------------------------------


def test_a_sequence_classifier_is_not_loaded_as_a_policy(tiny_reward_dir):
    from backends.hf.policy import HFPolicy

    with pytest.raises(RlgfError) as info:
        HFPolicy.load(str(tiny_reward_dir))
    assert info.value.message == (f"{tiny_reward_dir} holds a BertForSequenceClassification "
                                  "(not a causal or seq2seq language model)")
    assert f"--reward-model {tiny_reward_dir}" in info.value.hint and "hf:gpt2" in info.value.hint


def test_eval_of_a_classifier_checkpoint_is_one_error_line(tmp_path, tiny_reward_dir):
    result = runner.invoke(app, ["eval", "-c", str(tiny_reward_dir), "--reward-model", str(tiny_reward_dir),
                                 "--reference", "none", "--limit", "1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1 and "holds a BertForSequenceClassification" in errors[0], result.output
    assert "IndexError" not in result.output and "Traceback" not in result.output


def test_language_models_still_pass_the_check(tiny_causal_dir, tiny_seq2seq_dir):
    from transformers import AutoConfig

    from backends.hf.util import check_language_model

    for folder in (tiny_causal_dir, tiny_seq2seq_dir):
        check_language_model(AutoConfig.from_pretrained(folder), str(folder))
    custom = AutoConfig.from_pretrained(tiny_causal_dir)
    custom.architectures = ["MyRemoteCodeForCausalLM"]  # unknown to transformers: left to it
    check_language_model(custom, "custom")


# -- 5. readable Markdown facts; plot choices that can be plotted ------------------------------


def test_eval_markdown_writes_facts_for_people():
    from rlgf_cli.commands.eval import eval_markdown

    report = {
        "results": [{"policy": "a", "task": "rotten-tomatoes", "split": "test", "n": 3, "decoding": "greedy",
                     "metrics": {"sentiment": 0.5}}],
        "task_info": {"task": "rotten-tomatoes", "splits": {"train": 9987, "val": 1248, "test": 1248},
                      "test_accuracy": None, "split_seed": 42},
    }
    md = eval_markdown(report)
    assert "- splits: train 9,987 · val 1,248 · test 1,248" in md
    assert "- split_seed: 42" in md and "- task: rotten-tomatoes" in md
    assert "None" not in md and "{" not in md and "test_accuracy" not in md


def test_plot_does_not_offer_a_text_metric(tmp_path):
    from rlgf_cli.evaluation.curves import curves

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"iteration": i, "scheme": "ppo", "reward_mean": 0.5 + i / 10} for i in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RlgfError) as info:
        curves({"ppo": [run]}, "scheme")
    assert info.value.message == "'scheme' is not a number (e.g. 'ppo'), so it cannot be plotted"
    assert info.value.hint == "choose one of: reward_mean"
    with pytest.raises(RlgfError, match="no run logged the metric 'kl'") as info:
        curves({"ppo": [run]}, "kl")
    assert "scheme" not in info.value.hint


def test_eval_says_what_the_task_prepares(monkeypatch):
    """A reward classifier trained on first use takes a minute: eval passes the task's progress
    messages on instead of sitting silent (the task here reports a step, as the real one does)."""
    import tasks
    from rlgf_cli.evaluation.evaluate import build_eval_task
    from tasks.base import Task

    class Preparing(Task):
        name = "preparing"

        def prepare(self, progress=None) -> None:
            if progress is not None:
                progress("training the reward classifier (one time)", 0.5)

    monkeypatch.setattr(tasks, "get_task", lambda name, **options: Preparing())
    said = []
    build_eval_task("preparing", [], {}, say=said.append)
    assert said == ["training the reward classifier (one time)"]


def test_train_refuses_a_missing_hf_folder_before_anything(tmp_path):
    """`rlgf train` refuses it too, before the run folder is made (its own check, which eval's now
    shares through the registry)."""
    missing = tmp_path / "no" / "such" / "model"
    result = runner.invoke(app, ["train", "--learner", f"hf:{missing}", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert f"[error] no such folder: {missing}" in result.output and not (tmp_path / "run").exists()
    result = runner.invoke(app, ["train", "--learner", "hf:./typo/x", "--out", str(tmp_path / "run")])
    assert "[error] no such folder: ./typo/x" in result.output
