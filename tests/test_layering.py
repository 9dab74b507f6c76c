"""Dependencies point one way: commands → training / evaluation / serving → backends, tasks.

Every import in the package (module level and inside functions) is read from the source, so
a lazy import that breaks the layering fails here as well as an eager one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("rlgf_cli.training", "rlgf_cli.evaluation", "rlgf_cli.serving", "rlgf_cli.runtime", "rlgf_cli.files")
#: (importing modules, forbidden prefix, allowed importers within it) — read as "X never imports Y"
RULES = [
    (("backends",), "tasks", ()),
    (("backends",), "rlgf_cli", ()),
    (("tasks",), "rlgf_cli", ()),
    (LIBRARY, "rlgf_cli.commands", ()),
    (LIBRARY + ("backends", "tasks"), "typer", ()),
    (LIBRARY + ("backends", "tasks"), "rich", ()),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join(prefix + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    found = []
    sources = [p for top in ("rlgf_cli", "backends", "tasks") for p in (root / top).rglob("*.py")]
    for path in sources:
        mod = module_name(path, root)
        names = imports(path, root)
        for importers, forbidden, _ in RULES:
            if any(within(mod, i) for i in importers):
                found += [f"{mod} imports {n}" for n in sorted(names) if within(n, forbidden)]
        # nothing but rlgf_cli/app.py imports the commands (they may import each other)
        if not within(mod, "rlgf_cli.commands") and mod != "rlgf_cli.app":
            found += [f"{mod} imports {n}" for n in sorted(names) if within(n, "rlgf_cli.commands")]
    return sorted(set(found))


def test_the_package_keeps_its_layers():
    assert violations(ROOT) == []


def test_the_layout_answers_where_things_go():
    for folder in ("rlgf_cli/commands", "rlgf_cli/training", "rlgf_cli/evaluation", "rlgf_cli/serving",
                   "backends/hf", "backends/openai_api", "tasks/scoring"):
        assert (ROOT / folder / "__init__.py").is_file(), folder
    flat = sorted(p.name for p in (ROOT / "rlgf_cli").glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "app.py", "files.py", "runtime.py"]


def test_a_forbidden_import_is_caught(tmp_path):
    """The checker on a copy of the rules' shape: each planted import is reported."""
    def write(rel: str, text: str) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    for pkg in ("rlgf_cli", "rlgf_cli/commands", "rlgf_cli/training", "backends", "tasks"):
        write(f"{pkg}/__init__.py", "")
    write("rlgf_cli/app.py", "from rlgf_cli.commands import train\n")  # allowed
    write("rlgf_cli/commands/train.py", "import typer\nfrom rlgf_cli.commands.console import x\n")  # allowed
    write("rlgf_cli/training/run.py", "def f():\n    from ..commands.console import err_console\n    import rich\n")
    write("backends/hf.py", "from tasks.base import Task\n")
    write("tasks/imdb.py", "import rlgf_cli.training.config\n")
    assert violations(tmp_path) == [
        "backends.hf imports tasks.base",
        "backends.hf imports tasks.base.Task",
        "rlgf_cli.training.run imports rich",
        "rlgf_cli.training.run imports rlgf_cli.commands.console",
        "rlgf_cli.training.run imports rlgf_cli.commands.console.err_console",
        "tasks.imdb imports rlgf_cli.training.config",
    ]
