# The two commands of the README: `make run` (set up, fetch the default model, generate) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= Explain in two sentences why the sky is blue.

.PHONY: setup run test

$(BIN)/deeproots: pyproject.toml setup.py $(wildcard deeproots/kernels/csrc/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch from the local wheel store, before anything can ask for a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/deeproots

setup: $(BIN)/deeproots

run: setup
	$(BIN)/deeproots run "$(PROMPT)"

test: setup
	$(BIN)/python -m pytest -q
