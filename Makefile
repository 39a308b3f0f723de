# Two commands matter: `make run` and `make test`. Both build the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test venv migrate up lint clean bench soak

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

## Start api, worker and billing (plus embedded Redis/SQLite and a demo provider when unset).
run: $(STAMP)
	$(BIN)/gateway run all

## Unit, integration and end-to-end tests (needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## Benchmark scenarios S1-S7 against the performance budgets (not part of `make test`):
## a fresh PostgreSQL database on 127.0.0.1:5432, the bundled Redis, a Node fake upstream.
## Writes bench-results/<timestamp>.json and .md. BENCH_ARGS="--scale 0.3 --only S1,S3" etc.
# The services run from a runtime-only virtualenv, as production installs them (no test
# tools imported into every process); the harness runs from .venv.
RUNTIME_VENV  := .venv-runtime
RUNTIME_STAMP := $(RUNTIME_VENV)/.installed

$(RUNTIME_STAMP): pyproject.toml
	@test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install --quiet -e .
	@touch $(RUNTIME_STAMP)

bench: $(STAMP) $(RUNTIME_STAMP)
	@command -v node >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs)
	$(BIN)/python -m bench --service-python $(RUNTIME_VENV)/bin/python $(BENCH_ARGS)

## Soak (not part of `make test`): SOAK_SECONDS (300) of mixed traffic with failing
## providers on private PostgreSQL/Redis servers; error rate, RSS per service, ledger audit.
SOAK_SECONDS ?= 300
soak: $(STAMP)
	$(BIN)/python -m tests.soak.run --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

migrate: $(STAMP)
	$(BIN)/gateway migrate

## Run the whole stack in containers.
up:
	docker compose up --build --scale worker=2

## Static checks: pyflakes-level errors (unused or undefined names, syntax) everywhere.
lint: $(STAMP)
	$(BIN)/python -m ruff check --select F,E9 services shared tests bench

clean:
	rm -rf $(VENV) var .pytest_cache
