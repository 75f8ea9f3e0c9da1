# fedrs — the two set-up commands of the README:
#   make run   create .venv, install the pinned stack + fedrs (editable), run the main pipeline and the report
#   make test  same environment: lint (ruff), types (mypy), the docs site (broken links fail), the whole test suite
#              on TEST_WORKERS (2) pytest-xdist workers
#   make test-fast  the unit tests only (no pipelines, Flower engines, DVC or notebooks): the edit loop
#   make docs  the documentation site under site/
# A second call skips the install unless pyproject.toml (the pinned stack) changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedrs-installed
PIPELINES ?= feddiff
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
# REPRODUCIBLE=1: bit-identical numbers across CPU kinds (AVX2 code paths, oneDNN off; slower, see docs/reproducibility.md)
REPRODUCIBLE ?=

# nothing may reach the internet at run time
export KEDRO_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: install run test test-fast docs clean-data

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned stack into $(VENV) (first time: about 2 minutes)..."
	@$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
	@$(BIN)/python -m pip check
	@touch $(STAMP)

run: install
	FEDRS_REPRODUCIBLE=$(REPRODUCIBLE) $(BIN)/kedro run --pipelines=$(PIPELINES)
	FEDRS_REPRODUCIBLE=$(REPRODUCIBLE) $(BIN)/kedro run --pipelines=report
	@$(BIN)/python -m fedrs.outputs --pipelines=$(PIPELINES),report

CHECKS_LOG := $(VENV)/.test-checks.log

# types and the docs site are checked beside the suite, which waits on Flower and the SuperLink at times;
# their output follows the suite's, and either failing fails the target
test: install
	$(BIN)/ruff check src tests bench
	@{ $(BIN)/mypy && $(BIN)/mkdocs build --strict --quiet --site-dir site; } > $(CHECKS_LOG) 2>&1 & checks=$$!; \
	trap 'kill $$checks 2>/dev/null || true' INT TERM; status=0; $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS) || status=$$?; \
	if wait $$checks; then cat $(CHECKS_LOG); else cat $(CHECKS_LOG); echo "make test: mypy or the docs build failed"; \
	status=1; fi; exit $$status

test-fast: install
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -m "not integration" -q $(PYTEST_ARGS)

docs: install
	$(BIN)/mkdocs build --strict --site-dir site
	@echo "Open site/index.html"

clean-data:
	find data -type f ! -name .gitkeep -delete
