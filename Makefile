# Two commands do all the set-up on a fresh machine:
#   make demo   offline quick start (tokenize -> pretrain -> evaluate -> generate)
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LLMKIT_DATA ?= $(abspath ../shared/data)
export LLMKIT_DATA

.PHONY: install demo test test-slow test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llmkit tokenize out_dir=outputs/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf outputs multirun .pytest_cache
