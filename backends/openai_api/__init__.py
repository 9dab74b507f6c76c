"""API backends: one base (transport, retries, cache, budget) with payload hooks."""

from backends.openai_api.policy import OpenAIPolicy

__all__ = ["OpenAIPolicy"]
