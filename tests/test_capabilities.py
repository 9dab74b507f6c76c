"""Capabilities live on the policy type: the core asks a policy (or the class a spec resolves to)
what it is and can do, and the backend builds its own options — no backend names in the core.

A fake remote backend is registered as a real ``rlgf.backends`` entry point of a package on
``sys.path`` (a dist-info folder, as pip would write), so the tests exercise the registry's
lookup, not a patched one.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

import backends
from backends import registry
from backends.base import SAMPLING_OPTIONS, Policy, RunSettings, Sampling
from backends.errors import RlgfError

FAKE = '''
from backends.base import Policy, Sampling


class FakeRemote(Policy):
    """Pretends to be an API model: remote, no top-k, options built from the run's settings."""

    backend = "fakeapi"
    remote = True

    def __init__(self, spec, *, base_url=None, seed=None, budget_tokens=0):
        super().__init__(spec)
        self.base_url, self.seed, self.budget_tokens = base_url, seed, budget_tokens
        self.calls = 0
        self.closed = False

    @classmethod
    def options_from(cls, settings):
        opts = {"seed": settings.seed, "budget_tokens": settings.budget_tokens}
        if settings.base_url:
            opts["base_url"] = settings.base_url
        return opts

    @property
    def sampling_options(self):
        return frozenset({"temperature", "top_p"})

    def complete(self, prompts, *, max_new_tokens, min_new_tokens=0, sampling=Sampling()):
        self.calls += len(prompts)
        return ["!" * max_new_tokens for _ in prompts]

    def stats(self):
        return {"calls": self.calls, "budget_used_tokens": 7}

    def close(self):
        self.closed = True


class NotAPolicy:
    def __init__(self, spec):
        self.spec = spec
'''


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    (tmp_path / "rlgf_fake_api.py").write_text(textwrap.dedent(FAKE))
    dist = tmp_path / "rlgf_fake_api-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlgf-fake-api\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[rlgf.backends]\nfakeapi = rlgf_fake_api:FakeRemote\nnotapolicy = rlgf_fake_api:NotAPolicy\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("rlgf_fake_api", None)


# -- the base type's defaults ----------------------------------------------------------------


def test_base_policy_defaults():
    p = Policy("x")
    assert (p.remote, p.trainable, p.can_beam_search) == (False, False, False)
    assert p.stats() == {}
    assert p.validate() is None and p.close() is None and p.use_cuda_graphs(True) is None
    assert p.sampling_options == SAMPLING_OPTIONS
    s = Sampling(top_k=50, top_p=0.9)
    assert p.honoured(s) == s
    assert Policy.options_from(RunSettings(seed=3, base_url="http://x", budget_tokens=9)) == {}


def test_builtin_capabilities():
    from backends.base import TokenPolicy
    from backends.hf.policy import HFPolicy
    from backends.openai_api.policy import OpenAIPolicy

    assert TokenPolicy.trainable and TokenPolicy.can_beam_search and not TokenPolicy.remote
    assert HFPolicy.trainable and not HFPolicy.remote
    assert OpenAIPolicy.remote and not OpenAIPolicy.trainable and not OpenAIPolicy.can_beam_search


# -- the registry names the class before anything loads ----------------------------------------


def test_policy_class_resolves_specs_without_building(tiny_causal_dir):
    from backends.hf.policy import HFPolicy
    from backends.openai_api.policy import OpenAIPolicy

    assert registry.policy_class("openai:davinci-002") is OpenAIPolicy
    assert registry.policy_class("smollm2") is HFPolicy
    assert registry.policy_class("hf:gpt2") is HFPolicy
    assert registry.policy_class(str(tiny_causal_dir)) is HFPolicy


@pytest.mark.parametrize("spec", ["", "zzz:model", "./no/such/folder", "smolm2"])
def test_policy_class_fails_like_resolve(spec):
    with pytest.raises(RlgfError) as by_class:
        registry.policy_class(spec)
    with pytest.raises(RlgfError) as by_resolve:
        registry.resolve(spec)
    assert (by_class.value.message, by_class.value.hint) == (by_resolve.value.message, by_resolve.value.hint)


@pytest.mark.usefixtures("fake_backend")
def test_a_registered_backend_reports_its_capabilities():
    cls = backends.policy_class("fakeapi:m1")
    assert cls.__name__ == "FakeRemote" and cls.remote and not cls.trainable
    made = backends.resolve("fakeapi:m1", **cls.options_from(RunSettings(seed=4, base_url="http://h/v1")))
    assert (made.spec, made.seed, made.base_url) == ("m1", 4, "http://h/v1")
    with pytest.raises(RlgfError, match="not a policy class"):
        backends.policy_class("notapolicy:x")


# -- the core asks the policy -------------------------------------------------------------------


@pytest.mark.usefixtures("fake_backend")
def test_training_guide_options_come_from_the_guide_backend():
    from rlgf_cli.training.config import TrainConfig
    from rlgf_cli.training.run import guide_options

    cfg = TrainConfig(alg="ppo++", guide="fakeapi:m", guide_base_url="http://h/v1", guide_budget_tokens=50, seed=9)
    assert guide_options(cfg) == {"seed": 9, "budget_tokens": 50, "base_url": "http://h/v1"}


@pytest.mark.usefixtures("fake_backend")
def test_eval_decoding_follows_what_the_policy_honours():
    from rlgf_cli.evaluation.decoding import decoding_for, describe_decoding
    from rlgf_cli.evaluation.evaluate import load_for_eval
    from tasks.base import Task

    policy = load_for_eval("fakeapi:m", "cpu", seed=2, base_url="http://h/v1")
    assert (policy.seed, policy.base_url) == (2, "http://h/v1")
    asked = Sampling(top_k=50, temperature=0.7)
    assert describe_decoding(policy, asked) == "sampling (temperature 0.7)"  # no top-k: it cannot enforce it

    class Beams(Task):
        eval_sampling = Sampling(do_sample=False, num_beams=4)

    assert decoding_for(policy, Beams, None).is_greedy  # cannot beam-search: greedy instead
    local = Policy("local")
    assert describe_decoding(local, asked) == "sampling (temperature 0.7, top-k 50)"


@pytest.mark.usefixtures("fake_backend")
def test_distill_accepts_budget_options_for_any_remote_guide(tiny_causal_dir):
    from rlgf_cli.evaluation.distill import DistillOptions, check_options

    check_options(DistillOptions(guide="fakeapi:m", guide_budget_tokens=100))
    with pytest.raises(RlgfError, match="is for an API guide"):
        check_options(DistillOptions(guide=str(tiny_causal_dir), guide_budget_tokens=100))


@pytest.mark.usefixtures("fake_backend")
def test_run_records_a_guides_stats_only_when_it_has_any():
    from rlgf_cli.training.run import _guide_state

    assert _guide_state(backends.resolve("fakeapi:m")) == {"guide_budget_used_tokens": 7}
    assert _guide_state(Policy("local")) == {}
    assert _guide_state(None) == {}


# -- options built by the openai backend --------------------------------------------------------


def test_openai_builds_its_options_from_the_run(monkeypatch):
    from backends.openai_api.policy import OpenAIPolicy
    from backends.openai_api.token_budget import TokenBudget

    for var in ("RLGF_GUIDE_TIMEOUT", "RLGF_GUIDE_MAX_RETRIES", "RLGF_GUIDE_BACKOFF"):
        monkeypatch.delenv(var, raising=False)
    assert OpenAIPolicy.options_from(RunSettings()) == {}
    opts = OpenAIPolicy.options_from(RunSettings(seed=5, base_url="http://h/v1", budget_tokens=100, budget_used=30,
                                                 price_per_1k=0.5, max_concurrency=3))
    budget = opts.pop("budget")
    assert isinstance(budget, TokenBudget) and (budget.max_tokens, budget.used) == (100, 30)
    assert opts == {"base_url": "http://h/v1", "price_per_1k": 0.5, "seed": 5, "max_concurrency": 3}

    monkeypatch.setenv("RLGF_GUIDE_TIMEOUT", "2.5")
    # every API policy reads $RLGF_GUIDE_*: a guide, and the policy `eval` or `difficulty` scores
    assert OpenAIPolicy.options_from(RunSettings()) == {"timeout": 2.5}
    monkeypatch.setenv("RLGF_GUIDE_TIMEOUT", "-1")
    with pytest.raises(RlgfError, match="RLGF_GUIDE_TIMEOUT"):
        OpenAIPolicy.options_from(RunSettings())


def test_openai_sampling_options_depend_on_extensions():
    from backends.openai_api.policy import OpenAIPolicy

    plain = OpenAIPolicy("openai:m", base_url="http://127.0.0.1:9/v1", cache_path=False)
    extended = OpenAIPolicy("openai:m", base_url="http://127.0.0.1:9/v1", cache_path=False, extensions=True)
    try:
        assert "top_k" not in plain.sampling_options and "min_new_tokens" not in plain.sampling_options
        assert extended.sampling_options == SAMPLING_OPTIONS
        assert plain.honoured(Sampling(top_k=50)).top_k == 0
        assert extended.honoured(Sampling(top_k=50)).top_k == 50
    finally:
        plain.close()
        extended.close()


def test_hf_takes_no_run_options():
    from backends.hf.policy import HFPolicy

    assert HFPolicy.options_from(RunSettings(seed=1, base_url="http://h", budget_tokens=5)) == {}
