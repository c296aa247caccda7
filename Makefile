# The two commands of the README: `make run` (set up, fetch the default model, generate) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= Explain in two sentences why the sky is blue.
# llama.cpp's AMX kernels segfault on Intel Sapphire Rapids (a batch of 8+ tokens through ggml_backend_amx_mul_mat):
# build llama-cpp-python without them. Harmless on CPUs without AMX (AMD EPYC included).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'

.PHONY: setup run test test-fast browser

$(BIN)/deeproots: pyproject.toml setup.py $(wildcard deeproots/kernels/csrc/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch from the local wheel store, before anything can ask for a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/deeproots

# The bench extra (llama.cpp, the tests' second reference): compiled from source once per machine (~12 minutes on
# 2 cores); pip's cache keeps the wheel for later venvs.
$(VENV)/.bench-extra: $(BIN)/deeproots
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(BIN)/pip install -q -e '.[bench]'
	touch $@

setup: $(BIN)/deeproots

# Debian's Chromium for the chat page's browser tests (Playwright, from the test extra, drives it: no browser
# download). Where it cannot be installed (no root, no apt), those tests skip and say why.
browser:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; } \
		|| echo "chromium could not be installed: the browser tests will skip"

run: setup
	$(BIN)/deeproots run "$(PROMPT)"

# Two workers, one test file at a time each (a file's fixtures load once): much of the suite waits on servers, CLI
# processes and transformers rather than computing, so two cores finish it in ~3/4 of one worker's time.
test: setup $(VENV)/.bench-extra browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

# The edit-test loop: every test not marked slow (pyproject.toml), under a minute.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"
