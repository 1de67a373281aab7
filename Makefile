# Everything goes through the project's own virtual environment, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench reliability flake-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m engine run examples/hello.yaml

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples migrations
	$(BIN)/ruff format --check src tests benchmarks examples migrations

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n auto

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The reliability suites at full size (each prints its figures; docs/reliability.md has them).
reliability: $(STAMP)
	@for s in tests/reliability/[!_]*.py; do echo "== $$s"; $(BIN)/python $$s || exit 1; done

# The whole suite 20 times in a row; reports every test that failed at least once.
flake-check: $(STAMP)
	$(BIN)/python tests/reliability/_flake_check.py --runs 20

clean:
	rm -rf $(VENV) .engine .mypy_cache .ruff_cache .pytest_cache
