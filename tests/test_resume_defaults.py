"""A run's settings as it effectively used them: ``--data hf:DIR`` with a relative local folder
is kept as an absolute path (so --resume and eval -c work from any folder), and --resume
accepts a fixed setting given as the default the run used (``--chat-template auto``)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app
from rlgf_cli.training.config import build_config

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")

REWARD = '''
def reward(prompts, completions, references):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


def _save_dataset(folder):
    import datasets

    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"prompt": [f"Say {i}:" for i in range(8)]}),
        "validation": datasets.Dataset.from_dict({"prompt": ["Say a:", "Say b:"]}),
        "test": datasets.Dataset.from_dict({"prompt": ["Say c:", "Say d:"]}),
    }).save_to_disk(str(folder))


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_causal_dir):
    """A one-iteration ``--task prompts`` run trained with ``--data hf:hfds``, hfds a folder
    relative to the working directory, and the chat template and prompt field left at their
    defaults; the run folder (outside that directory)."""
    pytest.importorskip("datasets")
    work = tmp_path_factory.mktemp("work")
    _save_dataset(work / "hfds")
    (work / "vowels.py").write_text(REWARD, encoding="utf-8")
    out = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        result = runner.invoke(app, ["train", "--task", "prompts", "--data", "hf:hfds", "--reward", "vowels.py:reward",
                                     "--learner", str(tiny_causal_dir), "--iterations", "1", "--episodes", "4",
                                     "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu", "--quiet",
                                     "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out, work


def test_a_relative_local_hf_folder_is_stored_absolute(hf_run):
    out, work = hf_run
    config = (out / "config.toml").read_text()
    assert f'data = "hf:{(work / "hfds").resolve()}"' in config, config


def test_the_split_suffix_is_kept_and_hub_names_stay(tmp_path, monkeypatch):
    (tmp_path / "hfds").mkdir()
    monkeypatch.chdir(tmp_path)
    assert build_config(task="prompts", data="hf:hfds:test").data == f"hf:{tmp_path.resolve() / 'hfds'}:test"
    assert build_config(task="prompts", data="hf:hfds").data == f"hf:{tmp_path.resolve() / 'hfds'}"
    for hub in ("hf:some-org/some-dataset:train", "hf:imdb", "hf:imdb:test"):
        assert build_config(task="prompts", data=hub).data == hub


def test_resume_from_elsewhere_accepts_the_defaults_the_run_used(hf_run, tmp_path, monkeypatch):
    out, _ = hf_run
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    monkeypatch.chdir(tmp_path)  # not where hfds is
    result = runner.invoke(app, ["train", "--resume", str(run), "--iterations", "2", "--chat-template", "auto",
                                 "--prompt-field", "prompt", "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert [json.loads(x)["iteration"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_eval_of_the_run_from_elsewhere_reads_the_local_dataset(hf_run, tmp_path, monkeypatch):
    out, _ = hf_run
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "-c", str(out), "--limit", "2", "--max-new-tokens", "4", "--device", "cpu",
                                 "--reference", "none", "--json", str(report), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(report.read_text())["results"]


@pytest.mark.parametrize("flag, value, then", [
    ("--chat-template", "on", "(its default, auto)"),
    ("--prompt-field", "text", "(its default, prompt)"),
    ("--reference-field", "refs", "(its default)"),
])
def test_resume_still_refuses_other_values(hf_run, flag, value, then):
    out, _ = hf_run
    before = (out / "config.toml").read_text()
    result = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "2", flag, value])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("[error] ") and "Traceback" not in result.output
    assert f"--resume continues the run with its own {flag} {then}, not {value}" in lines[-1], lines[-1]
    assert (out / "config.toml").read_text() == before


def test_a_run_default_is_not_taken_for_another_task():
    from rlgf_cli.commands.train import run_default

    assert run_default({"task": "prompts", "alg": "ppo"}, "chat_template") == "auto"
    assert run_default({"task": "prompts", "alg": "ppo"}, "learner") == "smollm2"
    assert run_default({"task": "rotten-tomatoes", "alg": "ppo"}, "prompt_field") is None
    assert run_default({"task": "no-such-task", "alg": "ppo"}, "prompt_field") is None
