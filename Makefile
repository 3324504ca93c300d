# Every target bootstraps .venv from nothing (python3 >= 3.11 is the only prerequisite) and
# reinstalls when pyproject.toml changes. No Docker and no system Postgres are needed: the
# embedded Postgres (pgserver) and the simulated providers are used when nothing is configured.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all lint bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## converge 25 instances on simulated providers, then tear them down
	$(BIN)/reconciler demo

test: $(STAMP)  ## the test suite (slow chaos/benchmark tests run in their short form)
	$(BIN)/python -m pytest -q

chaos: $(STAMP)  ## the long chaos run: 500 instances, three replicas killed at random
	CHAOS_INSTANCES=500 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_chaos.py -k three_replicas

lint: $(STAMP)  ## ruff, mypy --strict, the import-linter layering contracts (pyproject.toml), and the generated SDK is current
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/reconciler sdk generate --check

bench: $(STAMP)  ## every benchmark at full size (about 20 minutes on 2 cores); rewrites docs/benchmarks.md
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m tests.benchmarks

clean:
	rm -rf $(VENV) .reconciler .pytest_cache .mypy_cache .ruff_cache *.egg-info
