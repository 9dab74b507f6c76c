"""Every `rlgf train` option comes from one TrainConfig field; --print-config shows the result."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from rlgf_cli.app import app
from rlgf_cli.commands.options import with_config_options
from rlgf_cli.training.config import TrainConfig, build_config, opt

ROOT = Path(__file__).resolve().parents[1]
FIELDS = dataclasses.fields(TrainConfig)
SHARED = ("--task", "--data", "--reward", "--reward-model", "--bertscore-model", "--device", "--quiet")


def params(command: str) -> dict:
    return {p.name: p for p in get_command(app).commands[command].params}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def print_config(*args: str) -> dict:
    result = CliRunner().invoke(app, ["train", "--print-config", *args])
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.stdout)["train"]


def test_every_field_has_a_train_option_whose_help_shows_its_default():
    options = params("train")
    for f in FIELDS:
        p = options[f.name]
        assert p.opts == [flag(f.name)], f.name
        assert p.default is None, f"{f.name}: an unset flag must not override --config"
        if isinstance(f.default, bool):
            assert p.secondary_opts == ["--no-" + flag(f.name)[2:]]
            shown = "on" if f.default else "off"
        elif f.default is None:
            shown = f.metadata["default_text"]  # "none" would not tell the user what happens
            assert shown, f.name
        else:
            shown = f.metadata["default_text"] or str(f.default)
        assert p.help.startswith(f.metadata["help"]) and len(f.metadata["help"]) > 5, f.name
        assert p.help.endswith(f"\\[default: {shown}]"), (f.name, p.help)


def test_rendered_help_keeps_the_defaults():
    env = {**os.environ, "COLUMNS": "250", "TERMINAL_WIDTH": "250"}
    proc = subprocess.run([sys.executable, "-m", "rlgf_cli", "train", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in ("[default: 0.99]", "[default: 1e-6; BC 1e-5; rotten-tomatoes (the default task) and prompts: 5e-05, but not for BC; commongen 1e-5]", "[default: PPO++ 0.2, AggreVaTeD 0.8]",
                 "--whiten-advantages", "--no-cuda-graphs", "--print-config", "--keep-checkpoints"):
        assert text in proc.stdout, text


def _other_value(f: dataclasses.Field):
    special = {"task": "imdb", "alg": "aggrevate", "device": "cpu", "aggrevated_advantage": "gae",
               "lr_schedule": "linear", "precision": "bf16", "chat_template": "on", "guide_prefill": "continue",
               "guide_extensions": "on", "log_to": "tensorboard"}  # word-valued options take one of their words
    if f.name in special:
        return special[f.name]
    if isinstance(f.default, bool):
        return not f.default
    kind = type(f.default) if f.default is not None else f.type
    if "bool" in str(kind):  # a switch whose default is decided later (--compile)
        return True
    if kind is int or "int" in str(kind):
        return (f.default or 6) + 1
    if kind is float or "float" in str(kind):
        return 0.25 if f.default == 0.5 else 0.5
    return f"x-{f.name}"


def test_each_flag_reaches_the_configuration():
    args, want = [], {}
    for f in FIELDS:
        value = _other_value(f)
        want[f.name] = value
        if isinstance(value, bool):
            args.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        else:
            args += [flag(f.name), str(value)]
    got = print_config(*args)
    assert got == {**want, "alg": "aggrevated"}  # the alias is resolved


def _run_with_torch_probe(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    probe = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('torch loaded: %s\\n' % ('torch' in sys.modules)));"
             f"sys.argv = ['rlgf', *{args!r}]; from rlgf_cli.app import main; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_print_config_merges_file_and_flags_and_loads_nothing(tmp_path):
    (tmp_path / "my.toml").write_text('[train]\nalg = "ppopp"\nguide = "hf:guide"\nepisodes = 8\nminibatch_size = 4\nseed = 1\n')
    proc = _run_with_torch_probe(["train", "--config", "my.toml", "--seed", "3", "--learner", "hf:does-not-exist",
                                  "--print-config"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "torch loaded: False" in proc.stderr
    got = tomllib.loads(proc.stdout)["train"]
    assert (got["alg"], got["guide"], got["episodes"], got["seed"]) == ("ppo++", "hf:guide", 8, 3)
    assert got["learner"] == "hf:does-not-exist" and got["gamma"] == 0.99
    assert got["lr"] == 5e-5 and got["epochs"] == 2  # rotten-tomatoes' own CPU-sized defaults
    assert "# max_new_tokens = (default: the task's)" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.toml"]  # no run folder made


def test_the_learning_rate_a_run_uses_is_written_out(tmp_path):
    """Each algorithm's or task's own default is resolved in the config, not left as a list of choices."""
    assert print_config("--alg", "bc")["lr"] == 1e-5
    assert print_config("--task", "imdb")["lr"] == 1e-6
    assert print_config("--task", "imdb", "--lr", "3e-6")["lr"] == 3e-6
    # the user's own task trains SmolLM2 as the embedded default does, with its CPU-sized settings
    got = print_config("--task", "prompts", "--data", "tasks/examples/critic_snippets.jsonl")
    assert (got["lr"], got["epochs"], got["episodes"], got["iterations"]) == (5e-5, 2, 32, 10)


def test_print_config_is_what_the_run_writes(tmp_path):
    cfg = build_config(None, alg="bc", iterations=3, out=str(tmp_path / "r"))
    assert print_config("--alg", "bc", "--iterations", "3", "--out", str(tmp_path / "r")) == tomllib.loads(cfg.to_toml())["train"]


def test_print_config_with_resume_shows_the_runs_settings(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(build_config(None, task="imdb", alg="bc", iterations=5, seed=4, out=str(run)).to_toml())
    got = print_config("--resume", str(run), "--iterations", "40")
    assert (got["task"], got["alg"], got["iterations"], got["seed"], got["out"]) == ("imdb", "bc", 40, 4, str(run))
    refused = CliRunner().invoke(app, ["train", "--resume", str(run), "--alg", "ppo", "--print-config"])
    assert refused.exit_code == 1 and "continues the run's --alg bc" in refused.stderr


@pytest.mark.parametrize("args, needle", [
    (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
    (["--alg", "lols"], "needs a guide"),
    (["--task", "rotten-tomatos"], "did you mean 'rotten-tomatoes'"),
    # what the task or the guide would refuse later is refused here too
    (["--temperature", "0"], "sampling out of range: temperature 0.0 —"),  # only what is wrong
    (["--top-p", "0"], "sampling out of range"),
    (["--top-k", "-1"], "sampling out of range"),
    (["--min-new-tokens", "-1"], "--min-new-tokens must be >= 0"),
    (["--chat-template", "maybe"], "--chat-template 'maybe' is not one of"),
    (["--guide-prefill", "bogus"], "--guide-prefill 'bogus' is not one of"),
    (["--guide-extensions", "maybe"], "--guide-extensions 'maybe' is not one of"),
])
def test_print_config_still_validates(args, needle):
    result = CliRunner().invoke(app, ["train", *args, "--print-config"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("[error] ") and needle in result.stderr


@dataclasses.dataclass
class ExtendedConfig(TrainConfig):
    test_knob: int = opt(3, "A knob only this test has.", panel="Test")
    test_switch: bool = opt(False, "A switch only this test has.")


def test_a_new_field_with_metadata_gets_an_option():
    seen = {}

    @with_config_options(ExtendedConfig)
    def command(*, dry: Annotated[bool, typer.Option(help="Hand-written.")] = False, **config) -> None:
        seen.update(config, dry=dry)

    one = typer.Typer()
    one.command()(command)
    result = CliRunner().invoke(one, ["--test-knob", "5", "--test-switch", "--gamma", "0.5", "--dry"])
    assert result.exit_code == 0, result.output
    assert (seen["test_knob"], seen["test_switch"], seen["gamma"], seen["dry"], seen["lam"]) == (5, True, 0.5, True, None)
    cfg = ExtendedConfig(**{k: v for k, v in seen.items() if k != "dry" and v is not None})
    assert (cfg.test_knob, cfg.gamma, cfg.lam) == (5, 0.5, 0.95)
    knob = next(p for p in get_command(one).params if p.name == "test_knob")
    assert knob.help == "A knob only this test has. \\[default: 3]"


def test_a_command_cannot_redeclare_a_config_field_by_hand():
    def command(*, gamma: float = 0.9, **config) -> None: ...

    with pytest.raises(TypeError, match="gamma"):
        with_config_options()(command)


def test_shared_task_flags_are_the_same_on_all_four_commands():
    helps = {}
    for command in ("train", "eval", "difficulty", "distill"):
        by_flag = {o: p for p in params(command).values() for o in p.opts}
        for name in SHARED:
            assert name in by_flag, (command, name)
            helps.setdefault((name, command in ("eval", "difficulty") and name == "--task"), set()).add(
                by_flag[name].help)
        assert "-q" in by_flag["--quiet"].opts
    assert all(len(h) == 1 for h in helps.values()), helps
    # except --task: eval and difficulty default to a checkpoint's own, and say so
    assert "checkpoint's own task" in helps[("--task", True)].pop()


def test_distill_names_the_guide_s_concurrency_as_train_does():
    opts = params("distill")["concurrency"].opts
    assert "--guide-concurrency" in opts and flag("guide_concurrency") in {o for p in params("train").values()
                                                                             for o in p.opts}
    assert "--concurrency" in opts  # the older name still works


def test_the_help_shows_the_default_task_s_own_training_defaults():
    # the default task overrides some generic defaults; the help says so, and stays true to the task
    from tasks.registry import train_defaults

    defaults = train_defaults(TrainConfig.task)
    options = params("train")
    for name, value in defaults.items():
        f = next(f for f in FIELDS if f.name == name)
        if value == f.default:
            continue
        said = f"{TrainConfig.task} (the default task) and prompts: {value}, but not for BC"
        assert said in (f.metadata["default_text"] or ""), name
        assert said in options[name].help
