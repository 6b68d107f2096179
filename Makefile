# Two commands do all the set-up on a fresh machine:
#   make demo   offline quick start (tokenize -> pretrain -> evaluate -> generate)
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LLMKIT_DATA ?= $(abspath ../shared/data)
export LLMKIT_DATA

.PHONY: install demo test test-slow test-all lint bench clean

# llama.cpp for the GGUF tests (the llama extra) compiles from its sdist: about 4 minutes on 2 cores.
# GGML_NATIVE=OFF builds the portable kernels (x86-64: AVX2, FMA, F16C; no AVX-512, no AMX): a
# -march=native build runs AMX tile instructions wherever the CPU lists AMX, and those crash in VMs
# that do not enable AMX (q8_0 matmuls segfault). --no-cache-dir: a wheel pip built earlier with
# other CMAKE_ARGS is not reused.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir -c constraints.txt llama-cpp-python
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,report,sweep,llama]'
	touch $(STAMP)

install: $(STAMP)

# The offline quick start: Python's own docs -> BPE tokenizer -> a small GPT (about two minutes
# on a laptop CPU) -> perplexity -> a streamed sample. Re-running starts afresh.
DEMO := outputs/quickstart
demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/llmkit pretrain experiment=quickstart out_dir=$(DEMO)
	$(VENV)/bin/llmkit evaluate checkpoint=$(DEMO) out_dir=$(DEMO)/evaluate
	$(VENV)/bin/llmkit generate checkpoint=$(DEMO) out_dir=$(DEMO)/generate prompt="The import statement" max_new_tokens=120

test: $(STAMP)
	$(PY) -m pytest -m "not slow" --durations=15

# ruff (lint + format check) and mypy on llmkit/ (configured in pyproject.toml); CI runs it
lint: $(STAMP)
	$(VENV)/bin/ruff check llmkit
	$(VENV)/bin/ruff format --check llmkit
	$(VENV)/bin/mypy

test-slow: $(STAMP)
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf outputs multirun .pytest_cache
