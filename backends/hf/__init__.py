"""The transformers backend: policy, generation, the decoding loop, KV cache, critic."""

from backends.hf.policy import HFPolicy

__all__ = ["HFPolicy"]
