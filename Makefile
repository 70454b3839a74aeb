# The whole developer interface. Each target creates .venv by itself on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench bench-smoke demo screenshots clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: start Accord on the embedded default (SQLite in ./.accord), API and worker, port 8600
run: $(STAMP)
	$(BIN)/accord up

## test: lint, type-check, then the whole test suite (SQLite and PostgreSQL), in TEST_WORKERS processes
# Most tests wait on a live server, a worker or a database, so more processes than cores pay off.
TEST_WORKERS ?= 3
test: lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy src bench

## bench: the benchmarks at full size; figures go in docs/performance.md
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/e2e.py

## demo: send synthetic customers to a running Accord (start it with `make run` first)
demo: $(STAMP)
	$(BIN)/accord demo

## screenshots: the console's pages into docs/console/ (needs /usr/bin/chromium: apt-get install -y chromium)
screenshots: $(STAMP)
	$(BIN)/python scripts/console_screenshots.py

clean:
	rm -rf $(VENV) .accord .pytest_cache .mypy_cache .ruff_cache
