"""``--compile``: the learner's and critics' scoring and update passes through torch.compile.

The compiled graph serves the no-grad scoring and the update alike, so the PPO ratio is still
exactly 1 at the first minibatch; checkpoints keep the model's own parameter names; decoding
stays eager. Tiny Llama configs, CPU (Inductor compiles C++ with the machine's compiler).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_causal
from test_precision import build, spy_policy_loss, tokenizer  # noqa: F401  (the module-scoped fixture)
from test_train_e2e import invoke, train_args

from backends.errors import RlgfWarning
from backends.hf.compiled import INDUCTOR_ENV, inductor_cache
from backends.hf.policy import HFPolicy

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(autouse=True)
def _inductor_cache(tmp_path_factory, monkeypatch):
    # one cache for the whole module (compiles once per graph), never the user's
    monkeypatch.setenv(INDUCTOR_ENV, str(tmp_path_factory.getbasetemp() / "inductor"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_ratio_is_exactly_one_at_the_first_minibatch(monkeypatch, tokenizer, precision):  # noqa: F811
    trainer = build("ppo", precision, tokenizer, compile=True)
    assert trainer.compiled == ["learner", "learner critic"]
    seen = spy_policy_loss(monkeypatch)
    for _ in range(2):
        seen.clear()
        trainer.step()
        new, old, mask = seen[0]
        on = mask > 0
        assert on.any()
        assert torch.equal(new[on], old[on]), (new[on] - old[on]).abs().max()
    later = seen[-1]
    assert not torch.equal(later[0][later[2] > 0], later[1][later[2] > 0])  # the update moved the policy


def test_compiled_numbers_match_eager_ones(tokenizer):  # noqa: F811
    # the same rollout (decoding is eager and seeded alike), scored and updated by fused kernels
    eager = build("ppo", "fp32", tokenizer)
    compiled = build("ppo", "fp32", tokenizer, compile=True)
    a, b = eager.step(), compiled.step()
    assert a["reward_mean"] == b["reward_mean"]
    keys = [k for k in ("pg_loss", "v_loss", "kl", "entropy", "approx_kl") if k in a]
    assert len(keys) >= 4, sorted(a)
    for key in keys:
        assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key


def test_compiling_leaves_parameter_names_and_decoding_alone(tokenizer):  # noqa: F811
    model, _ = make_tiny_causal(tokenizer, seed=0)
    policy = HFPolicy(model, tokenizer)
    critic = policy.make_critic()
    names = list(policy.model.state_dict()), list(critic.state_dict())
    assert policy.use_compile(True) and critic.use_compile(True)
    assert (list(policy.model.state_dict()), list(critic.state_dict())) == names  # checkpoints unchanged
    query, qmask = policy.encode_prompts(["abab:", "ab:"])
    with torch.no_grad():
        response, rmask = policy.generate(query, qmask, max_new_tokens=3)
        logits = policy.response_logits(query, qmask, response, rmask)
        values = critic.values(query, qmask, response, rmask)
    assert logits.grad_fn is None and values.grad_fn is None  # scoring keeps no graph
    logits = policy.response_logits(query, qmask, response, rmask)
    assert logits.grad_fn is not None  # the update's pass trains through the compiled graph
    assert not policy.use_compile(False) and policy.compiled is None


def test_only_the_repeated_blocks_compile_and_only_inside_a_call(tokenizer):  # noqa: F811
    from backends.hf.compiled import GradModeForward, block_forward, repeated_blocks

    model, _ = make_tiny_causal(tokenizer, seed=0)
    layers = list(model.model.layers)
    assert repeated_blocks(model) == layers  # the decoder layers, not the norms or the head
    forward = GradModeForward(model)
    seen = []
    hook = layers[1].register_forward_hook(lambda mod, args, out: seen.append(mod.forward))
    ids = torch.tensor([[5, 6, 7, 8]])
    forward(input_ids=ids)
    model(input_ids=ids)  # a plain call (decoding, the reference's scoring) stays eager
    hook.remove()
    assert seen[0].__func__ is block_forward(type(layers[1]))
    assert seen[1].__func__ is type(layers[1]).forward
    assert all("forward" not in vars(layer) for layer in layers)  # put back after the call


def test_the_compile_cache_defaults_to_rlgfs_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path))
    assert inductor_cache() == tmp_path / "inductor"
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(INDUCTOR_ENV, default_cache_dir())  # what torch writes there on import
    assert inductor_cache() == tmp_path / "inductor"
    monkeypatch.setenv(INDUCTOR_ENV, str(tmp_path / "mine"))  # the user's own choice is kept
    assert inductor_cache() == tmp_path / "mine"


def test_train_compile_end_to_end(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, out, "--compile", "--precision", "fp32"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compiled"] == ["learner", "learner critic"]
    # the final checkpoint reloads as a plain model (no compiled wrapper in its names)
    reloaded = HFPolicy.load(str(out / "final"), device="cpu")
    assert not any("_orig_mod" in name for name in reloaded.model.state_dict())


def test_a_failed_compile_falls_back_to_eager_with_a_warning(tokenizer, monkeypatch):  # noqa: F811
    import backends.hf.compiled as compiled_module

    model, _ = make_tiny_causal(tokenizer, seed=0)
    policy = HFPolicy(model, tokenizer)
    assert policy.use_compile(True)
    calls = []

    def broken(self, *args, **kwargs):
        calls.append(kwargs)
        raise torch._dynamo.exc.TorchDynamoException("no kernel for you")

    monkeypatch.setattr(compiled_module, "block_forward", lambda cls: broken)
    query, qmask = policy.encode_prompts(["abab:"])
    response = torch.tensor([[5, 6, 7]])
    rmask = torch.ones_like(response)
    with pytest.warns(RlgfWarning, match="runs eagerly"):  # the CLI prints it as one `warning:` line
        logits = policy.response_logits(query, qmask, response, rmask)
    with torch.no_grad():
        eager = model(input_ids=torch.cat([query, response[:, :-1]], 1),
                      attention_mask=torch.cat([qmask, rmask[:, :-1]], 1)).logits[:, -3:]
    torch.testing.assert_close(logits, eager)
    policy.response_logits(query, qmask, response, rmask)  # eager from now on, no second try
    assert len(calls) == 1 and "no kernel for you" in policy.compiled.failed


def test_compile_without_a_cpp_compiler_is_one_error_line(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    import backends.hf.compiled as compiled_module
    from test_train_e2e import runner

    from rlgf_cli.app import app

    monkeypatch.setattr(compiled_module.shutil, "which", lambda name: None)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_causal_dir, tiny_reward_dir, out, "--compile"))
    assert result.exit_code == 1
    assert "[error] --compile needs a C++ compiler" in result.output
    assert "Traceback" not in result.output
    assert not (out / "final").exists()


@pytest.mark.parametrize("precision,device,iterations,compiler,want", [
    ("bf16", "cpu", 20, True, True),
    ("bf16", "cpu", 19, True, False),  # too short to repay a cold compile
    ("fp32", "cpu", 200, True, False),  # fp32 gains 3 %: not worth the compile
    ("bf16", "cuda", 200, True, False),  # not measured on GPUs
    ("bf16", "cpu", 200, False, False),  # nothing to build the kernels with
])
def test_what_compile_not_given_means(monkeypatch, precision, device, iterations, compiler, want):
    import backends.hf.compiled as compiled_module
    from backends.precision import Precision

    monkeypatch.setattr(compiled_module, "has_compiler", lambda: compiler)
    on, why = compiled_module.auto_compile(Precision(precision, "test", device), iterations)
    assert on is want and why


def test_a_long_cpu_bf16_run_compiles_unless_told_not_to(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    import backends.hf.compiled as compiled_module

    monkeypatch.setattr(compiled_module, "AUTO_COMPILE_ITERATIONS", 2)  # the runs here have 2 iterations
    loud = [a for a in train_args(tiny_causal_dir, tiny_reward_dir, tmp_path / "auto", "--precision", "bf16")
            if a != "--quiet"]
    result = invoke(loud)
    assert "on by default: bf16 on a CPU, 2 iterations" in " ".join(result.output.split())
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["compiled"] == ["learner", "learner critic"]
    assert "compile = true" in (tmp_path / "auto" / "config.toml").read_text()  # a resumed run keeps the choice
    for name, extra in (("told", ["--precision", "bf16", "--no-compile"]), ("fp32", ["--precision", "fp32"])):
        invoke(train_args(tiny_causal_dir, tiny_reward_dir, tmp_path / name, *extra))
        assert json.loads((tmp_path / name / "summary.json").read_text())["compiled"] == []
        assert "compile = false" in (tmp_path / name / "config.toml").read_text()


def test_the_summary_names_only_the_models_that_stayed_compiled(tmp_path, tiny_causal_dir, tiny_reward_dir,
                                                                monkeypatch):
    """A failed compile goes on eagerly: summary.json must not call those models compiled."""
    import json

    import backends.hf.compiled as compiled_module
    from test_train_e2e import runner

    from rlgf_cli.app import app

    def broken(self, *args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("no kernel for you")

    monkeypatch.setattr(compiled_module, "block_forward", lambda cls: broken)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_causal_dir, tiny_reward_dir, out, "--compile"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "warning: --compile: torch.compile failed for " in result.output  # rlgf's own warning line
    assert json.loads((out / "summary.json").read_text())["compiled"] == []
