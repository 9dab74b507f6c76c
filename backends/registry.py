"""Which backends exist and how a spec string becomes a :class:`~backends.base.Policy`.

Backends are registered lazily as ``"module:Class"`` strings, so listing them (``rlgf
backends``, ``rlgf --help``) imports neither torch nor transformers. Third-party packages add
backends through the ``rlgf.backends`` entry-point group::

    [project.entry-points."rlgf.backends"]
    mybackend = "my_package.module:MyPolicy"

Spec strings:

* ``hf:NAME_OR_PATH`` — a transformers folder or hub id; ``openai:MODEL`` — an API model;
* ``PLUGIN:ARG`` — any entry-point backend;
* an alias (``smollm2``: the embedded SmolLM2-135M-Instruct);
* a bare existing folder — a transformers model folder.

A backend class subclasses :class:`~backends.base.Policy` (which states its capabilities) and
is built with ``Class.from_spec(arg, device=..., spec=..., **kwargs)`` when it has that
classmethod, else ``Class(arg, **kwargs)``. :func:`policy_class` names the class a spec
resolves to without building it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Callable

from backends import embedded
from backends.base import Policy
from backends.errors import RlgfError, did_you_mean

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rlgf.backends"

BUILTIN: dict[str, str] = {
    "hf": "backends.hf.policy:HFPolicy",
    "openai": "backends.openai_api.policy:OpenAIPolicy",
    "openai-chat": "backends.openai_api.chat_policy:OpenAIChatPolicy",
}

DESCRIPTIONS: dict[str, str] = {
    "hf": "local Hugging Face transformers model, causal or seq2seq (trainable): hf:gpt2, hf:./runs/x/final",
    "openai": "OpenAI-compatible completions API (text only; guide or evaluation): openai:davinci-002",
    "openai-chat": "OpenAI-compatible chat API (guide or evaluation; roll-outs through prefill): openai-chat:gpt-4o-mini",
}


def _entry_points() -> list[metadata.EntryPoint]:
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # noqa: BLE001 - broken metadata must not break the CLI
        log.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return []


def backends() -> dict[str, dict]:
    """``name → {"target", "source", "description"}``, built-ins first."""
    found: dict[str, dict] = {
        name: {"target": target, "source": "built-in", "description": DESCRIPTIONS.get(name, "")}
        for name, target in BUILTIN.items()
    }
    for ep in _entry_points():
        name = ep.name.strip().lower()
        if name in found:
            if found[name]["target"] != ep.value:
                log.warning(
                    "ignoring the entry point %s = %s: %r is already registered as %s",
                    name, ep.value, name, found[name]["target"],
                )
            continue
        dist = getattr(ep, "dist", None)
        package = getattr(dist, "name", None) if dist is not None else None
        found[name] = {
            "target": ep.value,
            "source": "entry point",
            "description": f"plug-in from {package}" if package else "plug-in",
        }
    return found


def available() -> list[dict]:
    """Backends for ``rlgf backends``: dicts with name, target, source and description."""
    return [{"name": name, **info} for name, info in backends().items()]


def aliases() -> list[dict]:
    """Built-in model aliases: dicts with name and description."""
    return [{"name": name, "description": text} for name, text in embedded.ALIASES.items()]


def load_backend(name: str) -> type:
    """Import and return the policy class registered as ``name``."""
    known = backends()
    if name not in known:
        raise _unknown("backend", name, list(known))
    target = known[name]["target"]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr) if attr else module
    except (ImportError, AttributeError) as exc:
        raise RlgfError(
            f"the backend {name!r} ({target}) could not be loaded: {exc}",
            "install the package that provides it (or its missing dependency)",
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise RlgfError(f"the backend {name!r} ({target}) is not a policy class",
                        "a backend subclasses backends.base.Policy (see its documentation)")
    return cls


def _unknown(kind: str, name: str, choices: list[str]) -> RlgfError:
    hint = did_you_mean(name, choices, cutoff=0.5)
    return RlgfError(f"unknown {kind} {name!r}", f"{hint}known {kind}s: {', '.join(sorted(choices))}")


def _build(cls: type, arg: str, *, spec: str, device, progress, kwargs: dict):
    factory = getattr(cls, "from_spec", None)
    if factory is None:
        return cls(arg, **kwargs)
    extra = {"device": device, "spec": spec, "progress": progress}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in extra.items():
        if key in params or (takes_any and key != "progress"):
            kwargs.setdefault(key, value)
    return factory(arg, **kwargs)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or "/" in spec or "\\" in spec


def _saved_iteration(folder: Path) -> int:
    """The iteration recorded in a model folder's ``trainer_state.json`` (-1 when unknown)."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not JSON or not UTF-8
        return -1
    iteration = state.get("iteration") if isinstance(state, dict) else None
    return iteration if isinstance(iteration, int) and not isinstance(iteration, bool) else -1


def run_model_choice(folder: Path) -> tuple[Path, str]:
    """The model an ``rlgf train --out`` folder stands for, and why, in words: its newest one.

    That is its ``final/``, unless a checkpoint of a later iteration was written after it (a
    finished run extended with ``--resume --iterations`` and stopped before its new end): then
    that checkpoint. A folder with no ``final/`` (or a model folder) is itself, with no reason."""
    final = folder / "final"
    if (folder / "config.json").is_file() or not (final / "config.json").is_file():
        return folder, ""
    done = _saved_iteration(final)
    newest, newest_iter = None, -1
    for path in (folder / "checkpoints").glob("iter-*"):
        if path.is_dir() and not path.name.startswith(".") and (path / "config.json").is_file():
            iteration = _saved_iteration(path)
            if iteration > newest_iter:
                newest, newest_iter = path, iteration
    if newest is not None and done >= 0 and newest_iter > done:
        holder = training_pid(folder)
        if holder is not None:  # its checkpoints come and go (pruned as it saves): the finished model
            return final, f"the run's final model: process {holder} is training the run on"
        return newest, f"the run's newest model, iteration {newest_iter}: its final/ is older (iteration {done})"
    return final, "the run's final model"


#: the lock file of a run folder being trained (``rlgf_cli.training.run_lock``)
RUN_LOCK_FILE = ".rlgf-lock"


def training_pid(folder: Path) -> int | None:
    """The pid of another process training the run in ``folder`` (its lock file names the holder),
    or None. The lock itself decides, not the pid: a lock file left by a killed run is held by no
    one, whatever process has its number now."""
    import os

    lock = Path(folder) / RUN_LOCK_FILE
    try:
        pid = int(lock.read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return None
    if pid == os.getpid():  # this process's own run (its lock is held through another descriptor)
        return None
    try:
        import fcntl
    except ImportError:  # no flock here: nothing locks, nothing is held
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free: released at once by closing
    except BlockingIOError:
        return pid if pid > 0 else -1
    except OSError:  # a file system without flock
        return None
    finally:
        os.close(fd)
    return None


def loaded_folder(spec: str) -> Path | None:
    """The folder a bare folder spec loads (for a run folder, :func:`run_model`), or None for any
    other spec (``hf:…``, ``smollm2``, another backend's)."""
    name, arg, text = _parse(spec)
    return Path(arg) if name == "hf" and Path(text).expanduser().is_dir() else None


def run_model(folder: Path) -> Path:
    """An ``rlgf train --out`` folder stands for its newest model (:func:`run_model_choice`):
    its ``final/``, or a checkpoint newer than that; any other folder is itself."""
    return run_model_choice(folder)[0]


def _parse(spec: str) -> tuple[str | None, str, str]:
    """``(backend name, argument, spec)`` of a spec; the name is None for the embedded model.

    Raises :class:`RlgfError` (with "did you mean" hints) for a spec that names nothing."""
    return _parse_choice(spec)[:3]


def _parse_choice(spec: str) -> tuple[str | None, str, str, str]:
    """:func:`_parse`'s three, and why a run folder stands for the model chosen ("" for any other
    spec): the folder's checkpoints are read once, so the reason given is the model loaded."""
    text = (spec or "").strip()
    if not text:
        raise RlgfError("empty model spec", "use hf:NAME_OR_PATH, openai:MODEL, a model folder, or smollm2")
    lowered = text.lower()
    if lowered in embedded.ALIASES:
        return None, lowered, text, ""
    known = backends()
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in known:
        name = prefix.lower()
        rest = rest.strip()
        if not rest:
            raise RlgfError(f"{text!r} names no model", f"write {name}:MODEL (e.g. {name}:gpt2)")
        if name == "hf" and rest.lower() in embedded.ALIASES:
            return None, rest.lower(), text, ""
        return name, rest, text, ""
    path = Path(text).expanduser()
    if path.is_dir():
        chosen, why = run_model_choice(path)
        return "hf", str(chosen), text, why
    if sep and len(prefix) > 1 and not _looks_like_path(prefix):
        raise _unknown("backend", prefix, list(known))
    if _looks_like_path(text):
        raise RlgfError(f"no such folder: {text}", "check the path, or use hf:ORG/NAME for a hub model")
    names = list(embedded.ALIASES) + [f"{b}:" for b in known]
    hint = did_you_mean(lowered, list(embedded.ALIASES) + list(known), cutoff=0.5)
    raise RlgfError(
        f"unknown model {text!r}",
        f"{hint}use one of: {', '.join(names)} (e.g. hf:{text} for a Hugging Face model, or a model folder)",
    )


def policy_class(spec: str) -> type[Policy]:
    """The class :func:`resolve` would build for ``spec``, without building it (its module is
    imported, no model is loaded), so callers can ask its capabilities (``remote``,
    ``trainable``…) and its :meth:`~backends.base.Policy.options_from` first.

    Raises the same :class:`RlgfError` as :func:`resolve` for a spec that names nothing, or a
    folder that holds no model."""
    name, arg, _ = _parse(spec)
    if name == "hf":
        check_model_folder(Path(arg).expanduser(), given=arg)
    return load_backend(name or "hf")  # the embedded model is a transformers model


def check_model_folder(path: Path, given: str | None = None) -> None:
    """An existing folder given as a model must hold a ``save_pretrained`` model (config.json);
    ``given`` (the spec's argument) that can only be a local path (``./x``, ``/x``, ``~/x``,
    ``a/b/c``: a hub id is ``org/name``) must name a folder that is there."""
    if given is not None and not path.is_dir() and (given.startswith((".", "/", "~")) or given.count("/") > 1):
        if path.exists():
            raise RlgfError(f"{given} is a file, not a model folder", "pass the folder that holds config.json")
        raise RlgfError(f"no such folder: {given}", "check the path (relative paths start from the current folder)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise RlgfError(f"not a transformers model folder: config.json missing in {path}",
                        "pass a folder written by save_pretrained (e.g. a run's final/ folder)")


def resolve(spec: str, *, device="cpu", progress: Callable[[str], None] | None = None, **kwargs):
    """Turn a spec string into a ready :class:`~backends.base.Policy`.

    ``progress`` receives one-line messages about slow first-time work (converting the
    embedded model). Other keyword arguments (``dtype``…) go to the backend.
    """
    name, arg, text, why = _parse_choice(spec)
    if progress is not None and why:
        progress(f"{text} is a run folder: using {arg} ({why})")
    if name is None:
        return embedded.load_smollm2(device=device, progress=progress, spec=text, **kwargs)
    return _build(load_backend(name), arg, spec=text, device=device, progress=progress, kwargs=dict(kwargs))
