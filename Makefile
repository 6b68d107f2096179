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

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,report,sweep]'
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
