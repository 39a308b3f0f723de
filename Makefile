# Two commands matter: `make run` and `make test`. Both build the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test venv migrate up lint clean

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

migrate: $(STAMP)
	$(BIN)/gateway migrate

## Run the whole stack in containers.
up:
	docker compose up --build --scale worker=2

lint: $(STAMP)
	$(BIN)/python -m ruff check services shared tests || true

clean:
	rm -rf $(VENV) var .pytest_cache
