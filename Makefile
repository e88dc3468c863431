# The two commands a new user needs: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_URL ?= postgresql+psycopg://harvest:harvest@127.0.0.1:5432/harvest_test

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv system postgres demo test test-fast bench image lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

system:
	scripts/ensure-system.sh

postgres:
	scripts/ensure-postgres.sh

## make demo: serve the bundled demo site on loopback and scrape it on the embedded defaults (SQLite, local folder)
demo: venv system
	$(BIN)/python -m testkit.demo

## make test: the whole suite against real Postgres, a real S3 endpoint (moto server), Chromium and local API servers
test: venv system postgres
	HARVEST_TEST_DATABASE_URL=$(PG_URL) $(BIN)/pytest -q $(PYTEST_ARGS)

## make lint: ruff (style, pyflakes, bugbear, import order), mypy, and import-linter's layer contracts (pyproject.toml)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: venv system postgres
	$(BIN)/python -m bench.run

## make image: the container image the `scrape-website/docker` deployment runs (needs a Docker engine)
image:
	docker build -t harvest:latest .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
