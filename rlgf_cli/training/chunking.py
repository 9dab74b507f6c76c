"""How many episodes to generate and score at once: ``--rollout-batch-size 0``.

On a GPU a chunk should be as large as memory allows (a decoding step costs about the same
for 8 rows as for 112), but not larger: a chunk's peak is either its KV caches while it
decodes (learner and guide side by side in the lock-step loop) or the float32 logits of the
scoring pass (``rows × new tokens × vocabulary``), and the second one grows fast with large
vocabularies. :func:`auto_chunk` divides a share of the free device memory, after the
optimizer state that the first update will allocate, by the larger of the two per episode.
On CPU the chunk is fixed (64 episodes): memory is rarely the limit there, and larger chunks
make the guide's share of a guided batch smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

CPU_CHUNK = 64
#: the share of (free memory − optimizer state) a chunk may take: the update's activations,
#: the allocator's fragmentation and the other phase's buffers need the rest
MEMORY_SHARE = 0.4


@dataclass(frozen=True)
class EpisodeShape:
    prompt_tokens: int
    new_tokens: int


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of keys and values one token adds to a causal (or decoder) model's cache.

    Keys are counted at 4 bytes whatever ``dtype_bytes``: under bf16 autocast, rotary models
    (Llama, Qwen, SmolLM…) keep their keys in float32 (the rotation multiplies by float32
    cos/sin), so counting them at 2 would under-count the cache by a third."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers") or 1
    heads = _first(cfg, "num_attention_heads", "n_head", "num_heads") or 1
    kv_heads = _first(cfg, "num_key_value_heads") or heads
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model") or 1
    head_dim = _first(cfg, "head_dim", "d_kv") or max(1, hidden // heads)
    return layers * kv_heads * head_dim * (max(4, dtype_bytes) + dtype_bytes)


def bytes_per_episode(configs: list, shape: EpisodeShape, dtype_bytes: int) -> int:
    """Peak bytes one episode adds to a chunk: the larger of decoding (every model's KV cache
    over prompt + response, with room for a rewound roll-in) and scoring (float32 logits plus
    their log-softmax and probabilities)."""
    positions = shape.prompt_tokens + 2 * shape.new_tokens
    decoding = sum(kv_bytes_per_token(c, dtype_bytes) for c in configs) * positions
    vocab = max((_first(c.get_text_config() if hasattr(c, "get_text_config") else c, "vocab_size") or 0)
                for c in configs)
    scoring = shape.new_tokens * vocab * 4 * 3
    return max(decoding, scoring, 1)


def auto_chunk(episodes: int, *, free_bytes: int, reserved_bytes: int, per_episode: int) -> int:
    """Episodes per chunk: what fits in :data:`MEMORY_SHARE` of the memory left, 1 … ``episodes``."""
    room = max(0, free_bytes - reserved_bytes) * MEMORY_SHARE
    return max(1, min(episodes, int(room // max(1, per_episode))))


def rollout_chunk(episodes: int, device, *, configs: list, shape: EpisodeShape, dtype_bytes: int,
                  trainable_params: int) -> tuple[int, str]:
    """The chunk for ``--rollout-batch-size 0`` on ``device`` and a line saying why."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        n = min(episodes, CPU_CHUNK)
        return n, f"rollout chunks of {n} episodes (CPU)"
    free, _total = torch.cuda.mem_get_info(device)
    adam = 2 * 4 * trainable_params  # AdamW's two float32 moments, allocated at the first update
    n = auto_chunk(episodes, free_bytes=free, reserved_bytes=adam,
                   per_episode=bytes_per_episode(configs, shape, dtype_bytes))
    return n, f"rollout chunks of {n} episodes (sized to {free / 2**30:.1f} GiB free on {device})"


def _first(cfg, *names):
    for name in names:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
