# The two commands a new user needs: `make demo` and `make test`. Both set everything up on a fresh machine.
# The venv's interpreter: Debian's python3.11 (built with PGO and LTO) where there is one, else python3 from PATH;
# scripts/venv-python.sh says why. `make venv PYTHON=...` picks another.
PYTHON ?= $(shell scripts/venv-python.sh)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_URL ?= postgresql+psycopg://harvest:harvest@127.0.0.1:5432/harvest_test
# Every dependency, direct and transitive, pinned with its hashes (make lock writes them from pyproject.toml).
RUNTIME_LOCK := requirements/runtime.lock
DEV_LOCK := requirements/dev.lock
# One resolution for every machine: Linux images, developers' laptops (--universal keeps the markers).
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 \
	--custom-compile-command "make lock" --quiet $(if $(UPGRADE),--upgrade)

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Bytecode is cached: where the environment says PYTHONDONTWRITEBYTECODE (some CI images and containers do), every
# Python process the suite starts (harvest commands, flow-run processes, workers) compiled the project from source
# again, ~0.9 CPU-seconds each on a clean clone.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv lock system postgres docker-images demo test test-fast bench image lint clean

venv: $(STAMP)

# The dev lock holds the runtime lock's versions plus the dev tools; the project itself goes in without
# dependencies, so nothing is resolved afresh and two installs a week apart get the same packages. uv (the dev lock's
# own pin, checked against the lock's hashes) installs them: it fetches and unpacks in parallel, where pip took
# ~35-50 s of a clean clone's `make test` on one core.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || { sed -n '/^uv==/,/^[^ ]/p' $(DEV_LOCK) | sed '$$d' > $(VENV)/uv.lock.txt; \
		$(BIN)/pip install -q --disable-pip-version-check --no-deps --require-hashes -r $(VENV)/uv.lock.txt; }
	$(BIN)/uv pip install -q --python $(BIN)/python --require-hashes -r $(DEV_LOCK)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

## make lock: re-resolve requirements/runtime.lock and requirements/dev.lock from pyproject.toml (after editing
## its dependencies; `make lock UPGRADE=1` takes the newest allowed versions of the unpinned transitive ones).
## The runtime lock goes into the image; the dev lock is constrained to it, so both agree.
lock:
	test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(BIN)/pip install -q "$$(grep -o 'uv==[0-9.]*' pyproject.toml)"; }
	$(UV_COMPILE) -o $(RUNTIME_LOCK)
	$(UV_COMPILE) --extra dev -c $(RUNTIME_LOCK) -o $(DEV_LOCK)

system:
	scripts/ensure-system.sh

postgres:
	scripts/ensure-postgres.sh

## make demo: serve the bundled demo site on loopback and scrape it on the embedded defaults (SQLite, local folder)
demo: venv system
	$(BIN)/python -m testkit.demo

# make test's worker processes (pytest-xdist, one test file per worker at a time, tests/e2e on one worker): the
# suite mostly waits on servers and subprocesses, so more workers than cores pay. `make test PYTEST_WORKERS=0`
# runs in one process. PG_RESTART= (empty) skips the Postgres cluster-restart test while others share the server.
# (Four workers with the e2e modules on two, the longest files first, took 25 min of tests on a clean clone here, a run
# that also had the fleet worker's new e2e module: not faster, as the suite is CPU-bound (42 CPU-minutes) and each
# worker and e2e stack keeps a Prefect server busy for the whole run.)
PYTEST_WORKERS ?= 3
PG_RESTART ?= 1
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)

## make test: the whole suite against real Postgres, a real S3 endpoint (moto server), Chromium and local API servers;
## the test that restarts the Postgres cluster (marker pg_restart) runs alone afterwards (with no PYTEST_ARGS)
test: docker-images venv system postgres
	HARVEST_TEST_DATABASE_URL=$(PG_URL) $(BIN)/pytest -q $(XDIST) --durations=15 -m "not pg_restart" $(PYTEST_ARGS)
	$(if $(PG_RESTART),$(if $(PYTEST_ARGS),,HARVEST_TEST_DATABASE_URL=$(PG_URL) $(BIN)/pytest -q -m pg_restart tests/failures))

# The docker test's images build in the background (scripts/prebuild-images.sh) from before the venv is installed:
# on a clean clone their ~4 CPU-minutes overlap pip's mostly single-core install instead of the tests.
docker-images:
	scripts/ensure-docker.sh
	setsid scripts/prebuild-images.sh </dev/null >/dev/null 2>&1 &

## make test-fast: the inner loop: the unit, hostile-input and top-level tests (no flow runs on Prefect, no e2e
## stack, no failure scenarios)
test-fast: venv system postgres
	HARVEST_TEST_DATABASE_URL=$(PG_URL) $(BIN)/pytest -q $(XDIST) -m "not e2e and not pg_restart" --ignore=tests/e2e \
		--ignore=tests/failures --ignore=tests/flows $(PYTEST_ARGS)

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
