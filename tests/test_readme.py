"""README's examples stay true: every `rlgf …` command line in its code blocks names a real
command, only options that command has, and real tasks and algorithms."""

import re
import shlex
from pathlib import Path

import typer

from rlgf_cli.app import app

ROOT = Path(__file__).resolve().parents[1]


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks marked bash, sh, console or nothing."""
    blocks, body, info = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if body is None:
                body, info = [], line.strip().strip("`").strip()
            else:
                if info in ("", "bash", "sh", "console"):
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def readme_commands() -> list[list[str]]:
    """The `rlgf` command lines of README's shell blocks, as argument lists after `rlgf`."""
    found = []
    for block in shell_blocks((ROOT / "README.md").read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            tokens, part = list(lexer), []
            for token in tokens + [";"]:  # split at ; & | && || (a command per part)
                if token and set(token) <= set(";&|()"):
                    found += _rlgf_args(part)
                    part = []
                else:
                    part.append(token)
    return found


def _rlgf_args(words: list[str]) -> list[list[str]]:
    """``[args after rlgf]`` when ``words`` runs rlgf (after any VAR=value), else nothing."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    return [words[1:]] if words and Path(words[0]).name == "rlgf" else []


def task_names() -> set[str]:
    from tasks import registry

    return set(registry.names())


def alg_names() -> set[str]:
    from rlgf_cli.training import algorithms

    return set(algorithms.names()) | set(algorithms.aliases())


def test_readme_examples_use_real_commands_and_options():
    group = typer.main.get_command(app)
    lines = readme_commands()
    assert len(lines) >= 20, "README shows rlgf at work"
    wrong = []
    for args in lines:
        if not args or args[0].startswith("-"):
            continue
        command = group.commands.get(args[0])
        if command is None:
            wrong.append(f"unknown command: rlgf {' '.join(args)}")
            continue
        options = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for word, value in zip(args[1:], args[2:] + [""]):
            flag = word.split("=", 1)[0]
            if flag.startswith("--") and flag not in options:
                wrong.append(f"rlgf {args[0]} has no {flag}: rlgf {' '.join(args)}")
            known = {"--task": task_names(), "--alg": alg_names()}.get(flag)
            if known is not None and value not in known:
                wrong.append(f"no {flag} {value}: rlgf {' '.join(args)}")
    assert not wrong, "\n".join(wrong)


def test_the_check_finds_a_wrong_option(monkeypatch):
    fake = "```bash\nrlgf train --no-such-flag 3 --alg dagger\nrlgf evaluate --policy x\n```\n" * 20
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: fake if self.name == "README.md" else real(self, *a, **k))
    lines = readme_commands()
    assert ["train", "--no-such-flag", "3", "--alg", "dagger"] in lines and ["evaluate", "--policy", "x"] in lines
    try:
        test_readme_examples_use_real_commands_and_options()
    except AssertionError as exc:
        assert "rlgf train has no --no-such-flag" in str(exc) and "unknown command: rlgf evaluate" in str(exc)
        assert "no --alg dagger" in str(exc)
    else:
        raise AssertionError("a wrong option went unnoticed")
