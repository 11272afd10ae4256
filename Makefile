# One command per job; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help dev test pytest soak lint format pg15-test bench bench-peers bench-history clean

help: ## list the commands
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "pao needs Python 3.11 or newer"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "could not create a virtual environment: install your Python's venv module (Debian: apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

dev: $(STAMP) ## run API, scheduler and worker on the embedded database
	$(BIN)/pao dev

# Test processes side by side (pytest-xdist): most tests wait on PostgreSQL or on processes
# they started (three left the 2 cores idle two fifths of the time), so four keep this 2-core
# machine busy; TEST_WORKERS=0 runs them in one.
# tests/conftest.py hands the tests out one at a time, in the order it gives them
# (the longest first), so the run does not end on a long test started last.
TEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist load

test: $(STAMP) ## run every test (TEST_WORKERS=4 at once), then the linters and type checks
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)
	$(MAKE) --no-print-directory lint

pytest: $(STAMP) ## run the test suite only (pass ARGS=... to pytest)
	$(BIN)/python -m pytest $(ARGS)

# The load and scheduler-replica tests stop as soon as they have seen what they check;
# a soak keeps each of the three going for PAO_SOAK_SECONDS more (about 3x that in all).
PAO_SOAK_SECONDS ?= 300
SOAK_TESTS := tests/acceptance/test_load.py tests/acceptance/test_scheduler_processes.py::test_two_and_three_schedulers_never_double_fire

soak: $(STAMP) ## the load and scheduler tests, each PAO_SOAK_SECONDS (300) longer
	PAO_SOAK_SECONDS=$(PAO_SOAK_SECONDS) $(BIN)/python -m pytest $(SOAK_TESTS) -s $(ARGS)

lint: $(STAMP) ## ruff, ruff format --check, mypy, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

pg15-test: $(STAMP) ## run the integration tests again on a Debian PostgreSQL 15 cluster, if installed
	bash .ci/pg15-suite $(PYTEST_PARALLEL)

clean: ## remove the virtual environment and local databases
	-test -x $(BIN)/python && $(BIN)/python -c "import shutil; from tests.scratch import embedded_data_dir; shutil.rmtree(embedded_data_dir(), ignore_errors=True)"
	rm -rf $(VENV) $(BENCH_VENV) .pao .pao-test

BENCH_VENV := .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): bench/peers/requirements.txt
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/peers/requirements.txt
	@touch $@

bench-peers: $(STAMP) $(BENCH_STAMP) ## pao vs pgqueuer and procrastinate (ARGS="--quick", "--rounds 5")
	$(BIN)/python -m bench.peers.run $(ARGS)

bench-history: $(STAMP) ## 10M runs of history: hot path vs empty, pruning a month (ARGS="--runs 100000")
	$(BIN)/python -m bench.history $(ARGS)
