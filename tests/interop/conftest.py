"""Interop tests run against servers and clients nobody here wrote (llama-cpp-python's server,
EleutherAI's lm-eval, the openai SDK). They need extra packages and minutes, so they run only
with ``make test-interop`` (which installs them and sets ``RLGF_INTEROP=1``); ``make test``
collects and skips them."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RLGF_INTEROP") == "1":
        return
    skip = pytest.mark.skip(reason="interop test: run `make test-interop`")
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(skip)
