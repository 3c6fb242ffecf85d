# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (if needed) and installs what it uses, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint services bench clean mutants

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

# The whole suite under coverage, subprocess daemons included (pyproject [tool.coverage.*]);
# the report fails under its fail_under floor. REQUIRE_SERVICES=1 (CI) fails instead of skipping
# tests whose Redis or Chromium is missing.
test: $(VENV)/.installed-test services
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

# Deliberate breaks of the invariants that matter most, each run against the tests that guard it
# in a scratch copy (tests/mutants/): every one must make its tests fail.
mutants: $(VENV)/.installed-test services
	$(BIN)/python -m tests.mutants

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
