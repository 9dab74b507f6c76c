"""Policies: the base types, the backend registry and the embedded default model.

``import backends`` stays light (no torch, no transformers); the heavy modules load when a
backend is resolved or an attribute such as :class:`HFPolicy` is first used.
"""

from __future__ import annotations

from backends.base import GREEDY, Policy, RunSettings, Sampling, TokenPolicy
from backends.cache import cache_dir
from backends.errors import RlgfError
from backends.registry import aliases, available, backends, load_backend, policy_class, resolve

__all__ = [
    "GREEDY",
    "Policy",
    "RunSettings",
    "Sampling",
    "TokenPolicy",
    "RlgfError",
    "cache_dir",
    "aliases",
    "available",
    "backends",
    "load_backend",
    "policy_class",
    "resolve",
    "HFPolicy",
    "Critic",
]

_LAZY = {"HFPolicy": ("backends.hf.policy", "HFPolicy"), "Critic": ("backends.hf.critic", "Critic")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'backends' has no attribute {name!r}")
