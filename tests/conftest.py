"""Shared fixtures: tiny randomly initialised models saved as ordinary transformers folders.

* ``tiny_causal_dir`` — a 2-layer Llama (hidden 32) with a byte-level BPE tokenizer (no merges,
  so every byte is a token) that adds ``<s>`` like Llama tokenizers do; pad ``<pad>``, eos ``</s>``.
* ``tiny_seq2seq_dir`` — a 2-layer T5 (d_model 32) with the ByT5 tokenizer (needs no files).

Both are built from configs (nothing is downloaded), once per test session, with a fixed seed.
Load them with ``HFPolicy.load(str(path))`` or ``backends.resolve(f"hf:{path}")``.
"""

from __future__ import annotations

import pytest

from backends.precision import cpu_flags as _MACHINE_CPU_FLAGS


@pytest.fixture(autouse=True, scope="session")
def _auto_precision_is_fp32():
    """``--precision auto`` resolves to fp32 in every in-process test, whatever the machine.

    On a CPU with AMX or AVX512-BF16 units ``auto`` picks bf16, whose rounding would make the
    suite's exact comparisons depend on the machine CI happens to run on. Session-wide, so a
    module's reference run and the test compared with it resolve alike. Tests of the bf16
    path ask for it (``--precision bf16``) or inject the CPU flags themselves; subprocess tests
    that compare numbers pass ``--precision fp32``."""
    import backends.precision as precision_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision_module, "cpu_flags", lambda cpuinfo=None: set())
        yield


@pytest.fixture(autouse=True)
def _slow_tests_keep_the_machines_precision(request, monkeypatch):
    """The ``slow`` tests of the real embedded assets keep the machine's own choice, as ``make
    demo`` does, so they share its cached reward classifier (trained once per machine)."""
    if request.node.get_closest_marker("slow"):
        import backends.precision as precision_module

        monkeypatch.setattr(precision_module, "cpu_flags", _MACHINE_CPU_FLAGS)


def make_byte_tokenizer():
    """A GPT-2-like byte-level tokenizer (260 tokens) that prepends ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def make_tiny_causal(tokenizer=None, seed: int = 0):
    """``(model, tokenizer)``: a tiny Llama sized to the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or make_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def make_tiny_gpt2(tokenizer=None, seed: int = 0):
    """``(model, tokenizer)``: a tiny GPT-2 — absolute position embeddings, which catch wrong
    position ids under left padding."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tokenizer or make_byte_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval(), tokenizer


def make_tiny_seq2seq(seed: int = 0):
    """``(model, tokenizer)``: a tiny T5 with the ByT5 tokenizer."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = ByT5Tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    return model, tokenizer


def bias_lm_head(model, token_id: int, bias: float):
    """Give ``model``'s LM head a bias of ``bias`` on ``token_id`` (in place; returns the model).

    Makes a random tiny model prefer one token: always write it (large bias) or end early
    (a bias on EOS)."""
    import torch

    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[token_id] = bias
    model.lm_head = biased
    return model


def load_bench(name: str):
    """``bench/NAME.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def greedy_reference(p, prompt: str, prefix: list[int], steps: int, min_new: int = 0) -> list[int]:
    """Greedy continuation of prompt + ``prefix`` (response tokens) by full forward passes
    without a cache, up to EOS, which is forbidden until the response (prefix included) has
    ``min_new`` tokens. Causal models and encoder-decoder ones (the prefix is then the decoder's)."""
    import torch

    query, qmask = p.encode_prompts([prompt])
    start = [p.decoder_start_id] if p.is_seq2seq else query[0].tolist()
    ids = start + list(prefix)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            tensor = torch.tensor([ids], device=p.device)
            if p.is_seq2seq:
                logits = p.model(input_ids=query, attention_mask=qmask, decoder_input_ids=tensor).logits[0, -1]
            else:
                logits = p.model(input_ids=tensor).logits[0, -1]
            if len(prefix) + len(out) < min_new:
                logits[p.eos_ids] = float("-inf")
            token = int(logits.argmax())
            out.append(token)
            ids.append(token)
            if token in p.eos_ids:
                break
    return out


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory):
    """Folder of a tiny causal LM (Llama, byte-level tokenizer with BOS)."""
    model, tokenizer = make_tiny_causal()
    path = tmp_path_factory.mktemp("tiny-causal")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_seq2seq_dir(tmp_path_factory):
    """Folder of a tiny seq2seq LM (T5, ByT5 tokenizer)."""
    model, tokenizer = make_tiny_seq2seq()
    path = tmp_path_factory.mktemp("tiny-seq2seq")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread (tiny models are far faster so on a busy 2-core box).

    Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory):
    """A tiny randomly initialised sequence classifier with the byte tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = make_byte_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=2, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-reward")
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def generate_draws(monkeypatch):
    """Sample over the whole vocabulary as ``generate`` does, so a test can check rlgf's decoding
    loop against ``generate`` token for token (the default draw among the top-k candidates has
    the same distribution but another random stream).

    Use with ``pytestmark = pytest.mark.usefixtures("generate_draws")``.
    """
    from backends.hf import decode

    monkeypatch.setattr(decode, "DRAW", "generate")
