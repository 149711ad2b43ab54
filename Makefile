# meshca — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: set up, initialise the CA on the embedded SQLite default if needed, and start it.
run: $(STAMP)
	$(BIN)/meshca ca init --exist-ok   # migrates the schema, then creates the CA if needed
	$(BIN)/meshca ca status
	$(BIN)/meshca root bundle

## test: set up, lint, type-check and run the whole suite.
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ca sds migrations tests
	$(BIN)/ruff format --check ca sds migrations tests
	$(BIN)/mypy ca sds

format: $(STAMP)
	$(BIN)/ruff format ca sds migrations tests
	$(BIN)/ruff check --fix ca sds migrations tests

## bench: issuance throughput on SQLite (and PostgreSQL when MESHCA_TEST_POSTGRES_URL is set).
bench: $(STAMP)
	$(BIN)/python tests/bench/bench_issuance.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
