"""``--precision auto|fp32|bf16``: what auto picks (CPU flags injected), bf16 on CPU end to end,
frozen models in bf16, and the PPO ratio exactly 1 at the first minibatch of each iteration."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_causal
from test_guided_rollout import always
from test_train_e2e import invoke, read_metrics, train_args

import rlgf_cli.training.trainer as trainer_module
from backends.base import Sampling
from backends.errors import RlgfError
from backends.hf.policy import HFPolicy
from backends.precision import Precision, cpu_flags, freeze_in, hold_frozen, resolve_precision
from rlgf_cli.runtime import set_seed
from rlgf_cli.training.config import TrainConfig
from rlgf_cli.training.trainer import Trainer
from tasks.base import Example, Task

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# -- what auto picks ----------------------------------------------------------------------
@pytest.mark.parametrize("flags, want", [
    ({"amx_bf16"}, "bf16"), ({"avx512_bf16"}, "bf16"), ({"amx_bf16", "avx512_bf16"}, "bf16"), (set(), "fp32"),
])
def test_auto_on_cpu_follows_the_bf16_units(flags, want):
    p = resolve_precision("auto", "cpu", flags=flags)
    assert p.name == want and p.bf16 == (want == "bf16")
    assert ("AMX" in p.reason or "AVX512" in p.reason)


def test_auto_on_cuda_follows_the_gpu():
    assert resolve_precision("auto", "cuda:0", cuda_bf16=True).name == "bf16"
    assert resolve_precision("auto", "cuda", cuda_bf16=False).name == "fp32"
    assert resolve_precision("fp32", "cuda", cuda_bf16=True).name == "fp32"
    with pytest.raises(RlgfError, match="does not support bfloat16"):
        resolve_precision("bf16", "cuda", cuda_bf16=False)


def test_explicit_choices_and_errors():
    assert resolve_precision("fp32", "cpu", flags={"amx_bf16"}).name == "fp32"
    slow = resolve_precision("bf16", "cpu", flags=set())
    assert slow.bf16 and "emulated" in slow.reason  # allowed, and said to be slower
    assert resolve_precision("bfloat16", "cpu", flags={"amx_bf16"}).name == "bf16"
    assert resolve_precision("auto", "mps").name == "fp32"
    with pytest.raises(RlgfError, match="unknown --precision"):
        resolve_precision("fp8", "cpu", flags=set())
    with pytest.raises(RlgfError, match="not on mps"):
        resolve_precision("bf16", "mps")
    with pytest.raises(RlgfError, match="unknown --precision"):
        TrainConfig(precision="half").validate()


def test_cpu_flags_are_read_from_cpuinfo_text():
    text = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile avx512_bf16 avx512f\n"
    assert cpu_flags(text) == {"amx_bf16", "avx512_bf16"}
    assert cpu_flags("flags\t: fpu avx2 fma\n") == set()


def test_autocast_context():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with Precision("bf16", "test").autocast():
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16
    with Precision("fp32", "test").autocast():
        assert torch.nn.functional.linear(x, w).dtype == torch.float32


# -- the trainer ----------------------------------------------------------------------------
class VariedPrompts(Task):
    """Prompts of very different lengths, so padding differs from one batch to another."""

    name = "varied"
    prompt_max_tokens = 32
    max_new_tokens = 6
    min_new_tokens = 2  # variable-length responses: the response width is trimmed too
    train_sampling = Sampling(do_sample=True)
    eval_sampling = Sampling(do_sample=True)

    def examples(self, split: str) -> list[Example]:
        return [Example(prompt="ab" * (1 + (7 * i) % 13) + ":", references=(), target="e") for i in range(24)]

    def reward(self, prompts, completions, examples) -> list[float]:
        return [sum(c == "e" for c in text) / max(len(text), 1) for text in completions]


def build(alg: str, precision: str, tokenizer, *, model=None, **overrides) -> Trainer:
    options = dict(task="varied", alg=alg, guide=None if alg == "ppo" else "tiny", iterations=3, episodes=12,
                   epochs=2, minibatch_size=4, rollout_batch_size=12, lr=1e-2, kl_coef=0.05, seed=3, device="cpu",
                   precision=precision, alpha=0.5)
    options.update(overrides)
    cfg = TrainConfig(**options).validate()
    set_seed(0)
    if model is None:
        model, _ = make_tiny_causal(tokenizer, seed=0)
    policy = HFPolicy(model, tokenizer)
    reference = HFPolicy(copy.deepcopy(model), tokenizer)
    guide = None if alg == "ppo" else always("e", seed=7, tokenizer=tokenizer, bias=3.0)
    needs = alg in ("aggrevated", "lols", "d2lols")
    return Trainer(cfg, VariedPrompts(), policy, reference, policy.make_critic(), guide=guide,
                   guide_critic=policy.make_critic() if needs else None)


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def spy_policy_loss(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(new log-probs, old log-probs, mask)`` of every policy-loss call the trainer makes."""
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real = trainer_module.clipped_policy_loss

    def spy(logprobs, old, adv, mask, clip):
        seen.append((logprobs.detach().clone(), old.clone(), mask.clone()))
        return real(logprobs, old, adv, mask, clip)

    monkeypatch.setattr(trainer_module, "clipped_policy_loss", spy)
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("alg", ["ppo", "lols"])
def test_ratio_is_exactly_one_at_the_first_minibatch(monkeypatch, tokenizer, alg, precision):
    trainer = build(alg, precision, tokenizer)
    seen = spy_policy_loss(monkeypatch)
    for _ in range(3):
        seen.clear()
        metrics = trainer.step()
        new, old, mask = seen[0]
        on = mask > 0
        assert on.any()
        assert torch.equal(new[on], old[on]), (new[on] - old[on]).abs().max()
        assert metrics["approx_kl"] >= 0.0
    # later minibatches moved: the update did something
    later = seen[-1]
    assert not torch.equal(later[0][later[2] > 0], later[1][later[2] > 0])


def assert_held_frozen(model) -> None:
    """bf16 weights for every matrix product (linear layers, GPT-2's Conv1D, the head), float32
    embeddings and norms: what :func:`hold_frozen` gives a frozen model under bf16."""
    matrices, others = set(), set()
    for module in model.modules():
        direct = {p.dtype for p in module.parameters(recurse=False)}
        (matrices if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D" else others).update(direct)
    assert matrices == {torch.bfloat16}
    assert others == {torch.float32}  # embeddings, norms
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert model.get_input_embeddings().weight.dtype == torch.float32


def test_bf16_holds_frozen_models_in_bf16_and_trains_in_fp32(tokenizer):
    trainer = build("ppo++", "bf16", tokenizer)
    assert trainer.precision.bf16
    assert_held_frozen(trainer.reference.model)
    assert_held_frozen(trainer.guide.model)
    assert {p.dtype for p in trainer.policy.model.parameters()} == {torch.float32}
    assert {p.dtype for p in trainer.critic.parameters()} == {torch.float32}
    trainer.step()
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    assert {p.dtype for p in trainer.policy.model.parameters()} == {torch.float32}
    fp32 = build("ppo++", "fp32", tokenizer)
    assert {p.dtype for p in fp32.reference.model.parameters()} == {torch.float32}


def test_bf16_learner_decodes_from_a_bf16_copy_refreshed_after_each_update(tokenizer):
    trainer = build("ppo", "bf16", tokenizer)
    decoder = trainer.engine.learner
    assert decoder is trainer.decoder and decoder is not trainer.policy
    assert_held_frozen(decoder.model)
    live = dict(trainer.policy.model.named_parameters())
    for _ in range(2):
        trainer.step()
        for name, d in decoder.model.named_parameters():
            assert torch.equal(d, live[name].detach().to(d.dtype))
    assert build("ppo", "fp32", tokenizer).engine.learner is not None
    assert build("ppo", "fp32", tokenizer).decoder is None


def _attention(model) -> str:
    return getattr(model, "body", model).config._attn_implementation


def test_bf16_on_a_cpu_runs_every_model_with_eager_attention_and_fp32_keeps_sdpa(tokenizer):
    # torch's CPU sdpa kernels are slow in bf16 at these lengths (see Precision.attention)
    trainer = build("lols", "bf16", tokenizer)
    models = [trainer.policy.model, trainer.reference.model, trainer.guide.model, trainer.decoder.model,
              *trainer.critics.values()]
    assert [_attention(m) for m in models] == ["eager"] * 6
    assert torch.isfinite(torch.tensor(trainer.step()["reward_mean"]))
    fp32 = build("lols", "fp32", tokenizer)
    assert [_attention(m) for m in (fp32.policy.model, fp32.reference.model, *fp32.critics.values())] == ["sdpa"] * 4
    assert Precision("bf16", "test", "cuda").attention is None  # the GPU keeps its fused kernels


@pytest.mark.parametrize("precision, want", [("bf16", "eager"), ("fp32", "sdpa")])
def test_bc_trains_with_the_precisions_attention(tokenizer, precision, want):
    from rlgf_cli.training.bc import BCTrainer

    cfg = TrainConfig(task="varied", alg="bc", iterations=1, episodes=4, epochs=1, minibatch_size=4, lr=1e-3,
                      seed=3, device="cpu", precision=precision).validate()
    model, _ = make_tiny_causal(tokenizer, seed=0)
    class WithTargets(VariedPrompts):
        def bc_examples(self):
            return self.examples("train")

    trainer = BCTrainer(cfg, WithTargets(), HFPolicy(model, tokenizer))
    assert _attention(trainer.policy.model) == want
    assert math.isfinite(trainer.step()["bc_loss"])


def test_freeze_in_gives_bf16_weights_and_eager_attention_on_a_cpu(tokenizer):
    model, _ = make_tiny_causal(tokenizer, seed=0)
    policy = HFPolicy(model, tokenizer)
    freeze_in(policy, Precision("fp32", "test"))
    assert _attention(policy.model) == "sdpa" and policy.model.dtype == torch.float32
    freeze_in(policy, Precision("bf16", "test"))
    assert _attention(policy.model) == "eager"
    assert_held_frozen(policy.model)


def _tied_llama(tokenizer):
    from transformers import LlamaForCausalLM

    model, _ = make_tiny_causal(tokenizer, seed=0)
    config = copy.deepcopy(model.config)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    tied = LlamaForCausalLM(config).eval()
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    return tied


def _kl_from(reference_logits, logits) -> float:
    ref = torch.log_softmax(reference_logits.float(), -1)
    return float((ref.exp() * (ref - torch.log_softmax(logits.float(), -1))).sum(-1).mean())


def test_a_tied_head_gets_its_own_bf16_copy_and_the_residual_stream_stays_float32(tokenizer):
    bf16 = Precision("bf16", "test")
    model = _tied_llama(tokenizer)
    all_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    held = copy.deepcopy(model)
    hold_frozen(held, bf16)
    assert_held_frozen(held)
    head, embed = held.get_output_embeddings().weight, held.get_input_embeddings().weight
    assert head is not embed and torch.equal(head, embed.to(torch.bfloat16))
    torch.manual_seed(1)
    ids = torch.randint(4, len(tokenizer), (6, 40))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with bf16.autocast():
            out = held(input_ids=ids, output_hidden_states=True)
            pure = all_bf16(input_ids=ids).logits
    assert {h.dtype for h in out.hidden_states} == {torch.float32}  # the stream between the layers
    assert out.logits.dtype == torch.bfloat16  # the head's product ran in bf16
    # closer to the float32 model than all-bf16 weights are
    assert _kl_from(want, out.logits) < _kl_from(want, pure)
    hold_frozen(model, Precision("fp32", "test"))  # fp32: nothing changes
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_hold_frozen_turns_gpt2s_conv1d_layers_to_bf16():
    from conftest import make_tiny_gpt2

    model, tok = make_tiny_gpt2(seed=0)
    hold_frozen(model, Precision("bf16", "test"))
    assert_held_frozen(model)
    assert model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    ids = torch.randint(4, len(tok), (2, 12))
    with torch.no_grad(), Precision("bf16", "test").autocast():
        assert torch.isfinite(model(input_ids=ids).logits.float()).all()


def test_a_tied_learners_bf16_decoding_copy_follows_its_updates(tokenizer):
    trainer = build("ppo", "bf16", tokenizer, model=_tied_llama(tokenizer))
    policy, decoder = trainer.policy.model, trainer.decoder.model
    assert policy.get_output_embeddings().weight is policy.get_input_embeddings().weight  # the learner stays tied
    assert_held_frozen(decoder)
    before = decoder.get_output_embeddings().weight.clone()
    trainer.step()
    embed = policy.get_input_embeddings().weight.detach()
    assert not torch.equal(before, decoder.get_output_embeddings().weight)
    assert torch.equal(decoder.get_output_embeddings().weight, embed.to(torch.bfloat16))
    assert torch.equal(decoder.get_input_embeddings().weight, embed)


def _record_head_inputs(model, seen: list) -> None:
    def record(module, args):
        seen.append(args[0].is_contiguous())

    model.get_output_embeddings().register_forward_pre_hook(record)  # runs after rlgf's own hook


def test_bf16_on_a_cpu_gives_every_output_head_a_contiguous_input(tokenizer):
    # a frozen head fed hidden[:, -n:] (strided) makes torch.matmul broadcast the weight over the
    # batch, and the CPU's bf16 batched product copies that broadcast (see use_kernels)
    trainer = build("lols", "bf16", tokenizer)
    models = [trainer.reference.model, trainer.guide.model, trainer.decoder.model, trainer.policy.model]
    seen: list[bool] = []
    for m in models:
        _record_head_inputs(m, seen)
    trainer.step()
    assert len(seen) > 10 and all(seen)
    fp32 = build("lols", "fp32", tokenizer)  # fp32 keeps its path (and its numbers): strided inputs arrive
    seen32: list[bool] = []
    for m in (fp32.reference.model, fp32.guide.model, fp32.policy.model):
        _record_head_inputs(m, seen32)
    fp32.step()
    assert seen32 and not all(seen32)


def test_the_contiguous_head_gives_the_same_logits(tokenizer):
    model, _ = make_tiny_causal(tokenizer, seed=0)
    policy = HFPolicy(model, tokenizer)
    ids = torch.randint(3, len(tokenizer), (4, 9))
    freeze_in(policy, Precision("bf16", "test"))
    with torch.no_grad(), Precision("bf16", "test").autocast():  # frozen models run under autocast
        full = policy.model(input_ids=ids).logits[:, -3:]
        kept = policy.model(input_ids=ids, logits_to_keep=3).logits
        unhooked = copy.deepcopy(policy.model)
        unhooked.get_output_embeddings()._forward_pre_hooks.clear()
        strided = unhooked(input_ids=ids, logits_to_keep=3).logits
    assert kept.shape == full.shape == (4, 3, len(tokenizer))
    torch.testing.assert_close(kept, full, rtol=0, atol=0.05)
    torch.testing.assert_close(kept, strided, rtol=0, atol=0.05)
    hooks = len(policy.model.get_output_embeddings()._forward_pre_hooks)
    freeze_in(policy, Precision("bf16", "test"))  # once per model
    assert len(policy.model.get_output_embeddings()._forward_pre_hooks) == hooks == 1


def test_freeze_in_leaves_api_policies_alone():
    class Remote:
        trainable = False
        model = None

    freeze_in(Remote(), Precision("bf16", "test"))  # no error, nothing to cast


# -- end to end through the CLI -----------------------------------------------------------
def test_bf16_train_and_eval_on_cpu(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "bf16"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, out, "--lr", "1e-3", "--precision", "bf16"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    metrics = read_metrics(out)
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["reward_mean"])) for m in metrics)
    from safetensors.torch import load_file

    weights = load_file(out / "final" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # the trained weights stay float32
    report = tmp_path / "eval.json"
    invoke(["eval", "--checkpoint", str(out / "final"), "--reward-model", str(tiny_reward_dir), "--limit", "4",
            "--max-new-tokens", "4", "--device", "cpu", "--precision", "bf16", "--quiet", "--json", str(report)])
    data = json.loads(report.read_text())
    assert data["task_info"]["precision"] == "bf16"
    assert 0.0 <= data["results"][0]["metrics"]["sentiment"] <= 1.0


def test_fp32_is_what_auto_gives_without_bf16_units(tmp_path, tiny_causal_dir, tiny_reward_dir, monkeypatch):
    import backends.precision as precision_module

    monkeypatch.setattr(precision_module, "cpu_flags", lambda cpuinfo=None: set())
    runs = []
    for name, flag in (("auto", "auto"), ("fp32", "fp32")):
        out = tmp_path / name
        invoke(train_args(tiny_causal_dir, tiny_reward_dir, out, "--lr", "1e-3", "--precision", flag))
        runs.append(out)
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time")} for m in ms]  # noqa: E731
    assert strip(read_metrics(runs[0])) == strip(read_metrics(runs[1]))
    assert json.loads((runs[0] / "summary.json").read_text())["precision"] == "fp32"


@pytest.mark.parametrize("flags,run,want", [({"amx_bf16"}, "fp32", "bf16"), ({"amx_bf16"}, "bf16", "bf16"),
                                            (set(), "fp32", "fp32"), (set(), "bf16", "fp32")])
def test_the_reward_classifier_is_trained_in_the_machines_precision_not_the_runs(monkeypatch, flags, run, want):
    # one classifier per machine, shared by fp32 and bf16 runs (a second would cost minutes of
    # training and make the two precisions' rewards incomparable)
    import backends.precision as precision_module
    from tasks.rotten_tomatoes import RottenTomatoesTask

    monkeypatch.setattr(precision_module, "cpu_flags", lambda cpuinfo=None: set(flags))
    task = RottenTomatoesTask(device="cpu")
    task.precision = Precision(run, "test")
    assert task._classifier_config().precision == want


@pytest.mark.parametrize("tied", [False, True])
def test_the_bf16_decoding_copy_computes_what_the_learner_computes_under_autocast(tokenizer, tied):
    # bf16 matrices and float32 embeddings and norms are what autocast makes of the float32
    # learner, so the copy that samples the episodes and the learner that scores them agree exactly
    trainer = build("ppo", "bf16", tokenizer, model=_tied_llama(tokenizer) if tied else None)
    trainer.step()
    torch.manual_seed(2)
    ids = torch.randint(4, len(tokenizer), (5, 17))
    with torch.no_grad(), trainer.autocast:
        learner = trainer.policy.model(input_ids=ids).logits
        decoder = trainer.decoder.model(input_ids=ids).logits
    assert torch.equal(learner, decoder)
