"""``--rollout-batch-size 0``: chunks sized to the device's free memory (pure arithmetic, so it
is tested here with the memory figures of a GPU; on CPU the chunk is fixed)."""

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from rlgf_cli.training.chunking import CPU_CHUNK, EpisodeShape, auto_chunk, bytes_per_episode, kv_bytes_per_token, rollout_chunk

GiB = 2**30


def test_kv_bytes_follow_the_architecture():
    # GPT-2-124M under bf16 autocast: bf16 values, keys counted as float32 (rotary models keep them so)
    assert kv_bytes_per_token(GPT2Config(), 2) == 12 * 12 * 64 * (4 + 2)
    llama = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert kv_bytes_per_token(llama, 4) == 2 * 30 * 3 * 64 * 4  # grouped-query attention: the KV heads count


def test_the_larger_phase_sets_the_bytes_per_episode():
    shape = EpisodeShape(prompt_tokens=64, new_tokens=48)
    gpt2 = GPT2Config()
    # the paper's IMDB shape: scoring logits (48 × 50,257 float32, three copies) outweigh two KV caches
    assert bytes_per_episode([gpt2, gpt2], shape, 2) == 48 * 50257 * 12
    small_vocab = GPT2Config(vocab_size=100)
    decoding = 2 * kv_bytes_per_token(small_vocab, 2) * (64 + 2 * 48)
    assert bytes_per_episode([small_vocab, small_vocab], shape, 2) == decoding


def test_auto_chunk_fits_the_free_memory():
    per = 48 * 50257 * 12
    assert auto_chunk(112, free_bytes=78 * GiB, reserved_bytes=2 * GiB, per_episode=per) == 112  # an H100
    small = auto_chunk(112, free_bytes=8 * GiB, reserved_bytes=1 * GiB, per_episode=per)
    assert small == int(7 * GiB * 0.4 // per) and 1 < small < 112
    assert auto_chunk(112, free_bytes=1 * GiB, reserved_bytes=2 * GiB, per_episode=per) == 1  # never 0


def test_cpu_chunk_is_fixed():
    shape = EpisodeShape(64, 48)
    assert rollout_chunk(200, torch.device("cpu"), configs=[GPT2Config()], shape=shape, dtype_bytes=4,
                         trainable_params=10)[0] == CPU_CHUNK
    n, why = rollout_chunk(16, torch.device("cpu"), configs=[GPT2Config()], shape=shape, dtype_bytes=4,
                           trainable_params=10)
    assert n == 16 and "CPU" in why


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_chunk_reads_free_memory():  # pragma: no cover - runs where a GPU is
    n, why = rollout_chunk(112, torch.device("cuda"), configs=[GPT2Config()], shape=EpisodeShape(64, 48),
                           dtype_bytes=2, trainable_params=124_000_000)
    assert 1 <= n <= 112 and "GiB free" in why
