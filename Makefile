# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (if needed) and installs what it uses, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/import-watcher demo

services:
	bash .ci/services

test: $(VENV)/.installed-test services
	$(BIN)/pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check watcher tests benchmarks
	$(BIN)/mypy

# The benchmarks need the `bench` extra (matplotlib) and no services; full mode rewrites
# benchmarks/results.json, RESULTS.md and policy.png (quick mode: .ci/bench-quick).
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
