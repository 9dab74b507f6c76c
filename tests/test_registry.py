"""The backend registry: specs, aliases, folders, plug-ins and helpful errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import backends
from backends import embedded, registry
from backends.errors import RlgfError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_import_stays_light():
    code = (
        "import backends, sys; backends.available(); backends.aliases(); "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_builtins_listed_once():
    listed = backends.available()
    names = [b["name"] for b in listed]
    assert names[:2] == ["hf", "openai"] and names.count("hf") == 1
    hf = listed[0]
    assert hf["target"] == "backends.hf.policy:HFPolicy" and hf["source"] == "built-in" and hf["description"]
    assert backends.aliases()[0]["name"] == "smollm2"


def test_resolve_hf_prefix_and_bare_folder(tiny_causal_dir, tiny_seq2seq_dir):
    from backends.hf.policy import HFPolicy

    policy = backends.resolve(f"hf:{tiny_causal_dir}")
    assert isinstance(policy, HFPolicy) and not policy.is_seq2seq
    assert policy.spec == f"hf:{tiny_causal_dir}"
    bare = backends.resolve(str(tiny_seq2seq_dir), dtype="bfloat16")
    assert isinstance(bare, HFPolicy) and bare.is_seq2seq
    assert bare.dtype.is_floating_point and str(bare.dtype) == "torch.bfloat16"
    assert backends.HFPolicy is HFPolicy  # lazy attribute


def test_resolve_alias(monkeypatch, tiny_causal_dir):
    calls = []

    def fake_dir(progress=None):
        calls.append(progress)
        return tiny_causal_dir

    monkeypatch.setattr(embedded, "smollm2_dir", fake_dir)
    messages = []
    for spec in ("smollm2", "SmolLM2", "hf:smollm2"):
        policy = backends.resolve(spec, progress=messages.append)
        assert policy.spec == spec and policy.backend == "hf"
    assert calls == [messages.append] * 3


@pytest.mark.parametrize(
    "spec, message, hint",
    [
        ("hff:gpt2", "unknown backend 'hff'", "did you mean 'hf'"),
        ("opnai:davinci-002", "unknown backend 'opnai'", "did you mean 'openai'"),
        ("smollm", "unknown model 'smollm'", "did you mean 'smollm2'"),
        ("gpt2", "unknown model 'gpt2'", "hf:gpt2"),
        ("hf:", "names no model", "hf:MODEL"),
        ("./no/such/run", "no such folder", "path"),
        ("", "empty model spec", "smollm2"),
    ],
)
def test_resolve_errors(spec, message, hint):
    with pytest.raises(RlgfError) as info:
        backends.resolve(spec)
    assert message in info.value.message
    assert hint in (info.value.hint or "")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(RlgfError) as info:
        backends.resolve("zzz:model")
    assert "hf" in info.value.hint and "openai" in info.value.hint


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A third-party distribution on sys.path registering two ``rlgf.backends`` entry points."""
    (tmp_path / "rlgf_fake_plugin.py").write_text(
        textwrap.dedent(
            '''
            from backends.base import Policy

            class EchoPolicy(Policy):
                backend = "echo"

                def complete(self, prompts, *, max_new_tokens, min_new_tokens=0, sampling=None):
                    return [self.spec + ":" + p for p in prompts]

            class FactoryPolicy(EchoPolicy):
                @classmethod
                def from_spec(cls, arg, *, device="cpu", spec=None):
                    made = cls(arg)
                    made.device_seen = device
                    made.full_spec = spec
                    return made
            '''
        )
    )
    dist = tmp_path / "rlgf_fake_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlgf-fake-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[rlgf.backends]\n"
        "echo = rlgf_fake_plugin:EchoPolicy\n"
        "factory = rlgf_fake_plugin:FactoryPolicy\n"
        "broken = rlgf_fake_plugin:DoesNotExist\n"
        "hf = rlgf_fake_plugin:EchoPolicy\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("rlgf_fake_plugin", None)


@pytest.mark.usefixtures("plugin")
def test_entry_point_plugins():
    listed = {b["name"]: b for b in backends.available()}
    assert listed["echo"]["source"] == "entry point"
    assert listed["echo"]["target"] == "rlgf_fake_plugin:EchoPolicy"
    assert "rlgf-fake-plugin" in listed["echo"]["description"]
    assert listed["hf"]["target"] == "backends.hf.policy:HFPolicy"  # built-ins cannot be overridden

    echo = backends.resolve("echo:hello")
    assert echo.complete(["x"], max_new_tokens=1) == ["hello:x"]
    made = backends.resolve("factory:abc", device="cuda:3")
    assert made.spec == "abc" and made.device_seen == "cuda:3" and made.full_spec == "factory:abc"

    with pytest.raises(RlgfError, match="could not be loaded"):
        backends.resolve("broken:x")
    with pytest.raises(RlgfError) as info:
        backends.resolve("ecko:x")
    assert "did you mean 'echo'" in info.value.hint


def test_load_backend_unknown():
    with pytest.raises(RlgfError, match="unknown backend"):
        registry.load_backend("nope")
