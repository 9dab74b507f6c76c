"""The CLI as users and scripts see it: help, version, and one [error] line for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def rlgf(*args, cwd=None, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RLGF_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "rlgf_cli", *args],
        capture_output=True, text=True, cwd=cwd or ROOT, env=full_env, timeout=timeout,
    )


def assert_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("[error] ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_help_lists_commands_and_does_not_import_torch():
    proc = rlgf("--help")
    assert proc.returncode == 0
    for cmd in ("train", "eval", "tasks", "backends"):
        assert cmd in proc.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from rlgf_cli.app import app; print('torch' in sys.modules)"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert probe.stdout.strip() == "False"


def test_help_prose_wraps_to_the_terminal_and_examples_keep_their_lines():
    """Docstring line breaks must not survive into help: at 400 columns a paragraph is one line."""
    proc = rlgf("train", "--help", env={"COLUMNS": "400", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    writes = [line for line in lines if line.startswith("Writes OUT/metrics.jsonl")]
    assert len(writes) == 1 and writes[0].endswith("(tensorboard --logdir runs)."), writes
    examples = [line for line in lines if line.startswith("rlgf train --")]
    assert "rlgf train --config my.toml --seed 3" in examples and len(examples) == 7, examples


def test_reflow_help_joins_prose_and_keeps_indented_blocks():
    from rlgf_cli.app import reflow_help

    doc = """First line
    goes on.

    A prose paragraph
    over two lines.

      cmd --a 1
      cmd --b 2
    """
    assert reflow_help(doc) == "First line goes on.\n\nA prose paragraph over two lines.\n\n  cmd --a 1\n  cmd --b 2"
    assert reflow_help(None) is None


def test_every_command_is_registered_with_help():
    proc = rlgf("--help", env={"COLUMNS": "200"})
    for cmd in ("train", "eval", "difficulty", "distill", "plot", "serve", "tasks", "backends"):
        assert f" {cmd} " in proc.stdout, cmd


def test_version():
    from rlgf_cli import __version__

    proc = rlgf("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"rlgf {__version__}"


def test_usage_error_exits_2():
    proc = rlgf("train", "--iterations", "many")
    assert proc.returncode == 2


def test_tasks_and_backends_json():
    import json

    tasks = json.loads(rlgf("tasks", "--json").stdout)
    assert any(t["name"] == "rotten-tomatoes" and t["default_learner"] == "smollm2" for t in tasks)
    backends = json.loads(rlgf("backends", "--json").stdout)
    assert {"hf", "openai"} <= {b["name"] for b in backends}
    table = rlgf("backends", env={"COLUMNS": "200"}).stdout
    assert "smollm2: SmolLM2-135M-Instruct (embedded" in table  # the model names that need no backend


def test_listings_fit_a_narrow_terminal():
    """On an 80-column terminal `rlgf tasks` prints one block per task (a six-column table there
    wrapped every cell into a strip a few letters wide); a wide terminal still gets the table."""
    narrow = rlgf("tasks", env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "rotten-tomatoes (default)" in [line.strip() for line in lines]  # on a line of its own, marked
    assert "commongen" in [line.strip() for line in lines]
    assert any(line.startswith("description") and "CommonGen" in line for line in lines)
    assert "--data PATH" in narrow.stdout and "data=PATH" not in narrow.stdout  # the flag as typed
    data = [line for line in lines if line.startswith("data source")]
    assert len(data) == len(json.loads(rlgf("tasks", "--json").stdout))  # one block per task
    assert "┃" not in narrow.stdout
    wide = rlgf("tasks", env={"COLUMNS": "200"}).stdout
    assert "┃ name" in wide and "default learner" in wide
    backends = rlgf("backends", env={"COLUMNS": "80"}).stdout
    assert "backends.hf.policy:HFPolicy" in backends  # no longer cut to "backends.hf.policy:HFPo…"
    assert "Specs without a backend name" in backends


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--task", "rotten-tomatos"], ["unknown task", "did you mean", "rotten-tomatoes"]),
        (["train", "--alg", "ppx"], ["unknown algorithm", "did you mean"]),
        (["train", "--alg", "d2lols"], ["needs a guide", "--guide"]),
        (["train", "--iterations", "0"], ["--iterations must be >= 1"]),
        (["train", "--gamma", "1.5"], ["--gamma must be in [0, 1]"]),
        (["train", "--clip-range", "0"], ["--clip-range"]),
        (["train", "--minibatch-size", "100", "--episodes", "10"], ["minibatch"]),
        (["train", "--device", "tpu"], ["unknown device"]),
        (["train", "--config", "no-such.toml"], ["config file not found"]),
        (["train", "--learner", "hx:gpt2"], ["did you mean", "hf"]),
        (["train", "--learner", "./no/such/folder"], ["no/such/folder"]),
        (["train", "--max-new-tokens", "100000000"], ["--max-new-tokens must be in [1, 4096]"]),
        (["train", "--clip-range-value", "nan"], ["--clip-range-value must be > 0"]),
        (["train", "--max-grad-norm", "0"], ["--max-grad-norm must be > 0"]),
        (["eval", "--policy", "smollm2", "--max-new-tokens", "5000"], ["--max-new-tokens must be in [1, 4096]"]),
        (["difficulty", "--policy", "smollm2", "--max-new-tokens", "0"], ["--max-new-tokens must be in [1, 4096]"]),
        (["eval"], ["nothing to evaluate"]),
        (["eval", "--checkpoint", "no-such-dir"], ["checkpoint folder not found"]),
        (["eval", "--policy", "smollm2", "--split", "dev"], ["unknown split"]),
        (["eval", "--policy", "smollm2", "--limit", "0"], ["--limit must be >= 1"]),
    ],
)
def test_bad_input_gives_one_error_line(tmp_path, args, needles):
    out = tmp_path / "run"
    if args[0] == "train":
        args = [*args, "--out", str(out), "--device", "cpu"] if "--device" not in args else [*args, "--out", str(out)]
    proc = rlgf(*args, cwd=tmp_path)
    assert_error(proc, *needles)
    assert not out.exists(), "a failed command must leave no run folder behind"


def test_bad_config_file_values(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepisodes = 'lots'\n")
    assert_error(rlgf("train", "--config", str(bad), "--out", str(tmp_path / "r")), "episodes", "wrong type")
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nlearning_rat = 0.1\n")
    assert_error(rlgf("train", "--config", str(typo), "--out", str(tmp_path / "r")), "unknown key", "did you mean")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    assert_error(rlgf("train", "--config", str(broken), "--out", str(tmp_path / "r")), "not valid TOML")


def test_existing_run_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    (out / "guide_samples.jsonl").parent.mkdir()
    (out / "guide_samples.jsonl").write_text("{}\n")  # what `rlgf distill` writes first
    (out / "metrics.jsonl").write_text("{}\n")
    assert_error(rlgf("train", "--out", str(out), "--device", "cpu"), "already holds an rlgf run", "--overwrite")
    assert (out / "metrics.jsonl").read_text() == "{}\n"


def test_overwrite_never_deletes_a_folder_rlgf_did_not_write(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "notes.txt").write_text("keep\n")
    # a folder of the user's own files: refused with and without --overwrite, and named
    assert_error(rlgf("train", "--out", str(project), "--device", "cpu"), "files rlgf did not write", "notes.txt")
    assert_error(rlgf("train", "--out", str(project), "--device", "cpu", "--overwrite"),
                 "replaces only a folder rlgf wrote")
    # the current folder, even when it is an rlgf run
    (project / "config.toml").write_text("# rlgf train — resolved configuration\n[train]\n")
    assert_error(rlgf("train", "--out", ".", "--device", "cpu", "--overwrite", cwd=project),
                 "holds the current folder")
    assert_error(rlgf("distill", "--guide", "openai:gpt-4o-mini", "--out", "..", "--overwrite", cwd=project / "src"),
                 "holds the current folder")
    assert (project / "src" / "main.py").read_text() == "print('mine')\n"
    assert (project / "notes.txt").read_text() == "keep\n"


def test_corrupt_data_file(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine movie", "label": 1}\nnot json at all\n')
    out = tmp_path / "run"
    proc = rlgf("train", "--data", str(data), "--out", str(out), "--device", "cpu")
    assert_error(proc, "data.jsonl")
    assert not out.exists()


def test_a_multi_line_library_message_still_prints_one_error_line():
    from rlgf_cli.commands.console import error_line

    line = error_line("could not load X: first line\n  second line.\n", "try\nthis")
    assert line == "[error] could not load X: first line second line — try this"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--out", "afile/run"], ["cannot write --out", "afile is a file, not a folder"]),
        (["train", "--out", "run", "--json", "afile/s.json"], ["cannot write --json", "afile is a file"]),
        (["eval", "--policy", "smollm2", "--json", "afile/r.json"], ["cannot write --json"]),
        (["eval", "--policy", "smollm2", "--markdown", "afile/r.md"], ["cannot write --markdown"]),
        (["eval", "--policy", "smollm2", "--samples", "adir"], ["--samples adir is a folder, not a file"]),
        (["difficulty", "--policy", "smollm2", "--plot", "afile/f.png"], ["cannot write --plot"]),
        (["distill", "--guide", "smollm2", "--out", "afile/d"], ["cannot write --out"]),
    ],
)
def test_unwritable_outputs_are_refused_before_any_work(tmp_path, args, needles):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir").mkdir()
    proc = rlgf(*args, "--device", "cpu", cwd=tmp_path)
    assert_error(proc, *needles)
    assert "loading" not in proc.stderr and "evaluating" not in proc.stderr, "refused before any model is loaded"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_write_all_keeps_what_it_can_write(tmp_path):
    from backends.errors import RlgfError
    from rlgf_cli.files import write_all

    (tmp_path / "afile").write_text("x")
    (tmp_path / "taken").mkdir()  # os.replace cannot put a file where a folder is
    with pytest.raises(RlgfError) as err:
        write_all([(tmp_path / "afile" / "a.json", "{}"), (tmp_path / "ok.json", "{}"), (tmp_path / "taken", "{}")])
    assert str(tmp_path / "afile" / "a.json") in err.value.message and str(tmp_path / "taken") in err.value.message
    assert f"written: {tmp_path / 'ok.json'}" in err.value.hint
    assert (tmp_path / "ok.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ok.json", "taken"], "no temporary file is left"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, a folder no one can create files in")
def test_a_folder_that_takes_no_files_is_refused_even_for_root(tmp_path):
    from backends.errors import RlgfError
    from rlgf_cli.files import ensure_writable

    with pytest.raises(RlgfError) as err:  # os.access says yes to root here; creating a file does not
        ensure_writable("/proc/rlgf-report.md", "--markdown")
    assert "cannot write --markdown /proc/rlgf-report.md: /proc takes no files" in err.value.message
    ensure_writable(tmp_path / "report.md", "--markdown")  # a writable folder passes ...
    assert list(tmp_path.iterdir()) == [], "... and the probe leaves nothing behind"


def test_write_hints_follow_the_cause():
    import errno

    from rlgf_cli.files import write_hint

    assert write_hint(OSError(errno.ENOSPC, "No space left on device")) == "free some space or choose another path"
    assert write_hint(OSError(errno.EACCES, "Permission denied"), "another --plot") == (
        "choose another --plot in a folder you can write to")
    assert write_hint(OSError(errno.EROFS, "Read-only file system")).endswith("in a folder you can write to")
    assert write_hint(OSError(errno.ENAMETOOLONG, "File name too long")) == "choose another path"


def test_the_iteration_line_shows_the_exact_kl_which_cannot_be_negative():
    from rlgf_cli.commands.progress import format_iteration

    line = format_iteration({"iteration": 2, "reward_mean": 0.634, "kl": -0.008, "kl_exact": 0.0134,
                             "approx_kl": 0.0676, "time_s": 59.4})
    assert line == "iter 2 · reward 0.634 · kl/token 0.013 · approx_kl 0.068 · 59.4s"
    # an older metrics row without the exact KL (or a BC row) still reads
    assert format_iteration({"iteration": 1, "reward_mean": 0.5, "kl": 0.01, "time_s": 1.0}) == \
        "iter 1 · reward 0.500 · kl 0.010 · 1.0s"
    assert format_iteration({"iteration": 3, "bc_loss": 1.25, "time_s": 2.0}) == "iter 3 · bc loss 1.250 · 2.0s"


def test_eval_of_a_run_with_no_checkpoint_says_so(tmp_path):
    """A run killed before its first checkpoint has only its config: not 'config.json missing'."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('# rlgf train — resolved configuration\n[train]\ntask = "rotten-tomatoes"\n')
    assert_error(rlgf("eval", "--checkpoint", str(run), "--device", "cpu"), "is an rlgf run with no model yet",
                 "--overwrite")


def test_a_run_is_recognised_by_any_copy_of_its_config(tmp_path):
    from rlgf_cli.files import rlgf_made

    run = tmp_path / "run"
    (run / "checkpoints" / "iter-0003").mkdir(parents=True)
    (run / "config.toml").write_text("")  # emptied
    assert not rlgf_made(run)
    (run / "checkpoints" / "iter-0003" / "rlgf.toml").write_text("# rlgf train — resolved configuration\n")
    assert rlgf_made(run)
    (run / "config.toml").write_text("[train]\n")  # a config of the user's own: not rlgf's header
    assert rlgf_made(run) and not rlgf_made(tmp_path)


def test_on_a_terminal_each_iteration_s_line_stays_above_the_bar(monkeypatch):
    """The bar's status is rewritten by every phase: an iteration's reward shown only there was gone
    a moment later, and its length squeezed the bar to one character at 80 columns."""
    import io

    from rich.console import Console

    from rlgf_cli.commands import progress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80, highlight=False, soft_wrap=True)
    monkeypatch.setattr(progress, "err_console", console)
    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    bar = progress.TrainProgress()
    bar("start", {"total": 2, "out": "runs/x"})
    for i in (1, 2):
        bar("phase", {"name": "rollout"})
        bar("iteration", {"iteration": i, "reward_mean": 0.4 + i / 10, "kl_exact": 0.01, "time_s": 1.0})
    bar.close()
    text = screen.getvalue()
    assert "iter 1 · reward 0.500" in text and "iter 2 · reward 0.600" in text
    assert text.count("iter 1 · reward 0.500") == 1  # printed once, not redrawn in the bar
