# Every target bootstraps its own virtualenv from pyproject.toml, so a fresh clone needs
# nothing but python3 (>= 3.11) and make.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.runtime-stamp
# This machine's pip config lists a mirror folder that may not exist; pip warns about it once
# per package. The warning is noise, not a failure, so it is filtered (errors still fail).
PIP_NOISE := is ignored: it is neither a file nor a directory

.PHONY: install demo test lint typecheck pytest services bench bench-quick bench-goals bench-shared-key clean

# What running needs (make demo): the package and its runtime dependencies only.
$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing bulkbatch into $(VENV) ..."
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e . 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $(RUN_STAMP)

# Everything (make test, make bench): also the test, lint and notebook tools.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing bulkbatch and its dev tools into $(VENV) ..."
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

demo: $(RUN_STAMP)
	$(BIN)/bulkbatch demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Two workers, a file each at a time (module fixtures are set up once): the suite waits on
# child processes and HTTP about half the time, so on the 2-core CI machine it took 11:54
# instead of 20:26 serially. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
pytest: install services
	$(BIN)/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

# --- services: PostgreSQL's server binaries for the PostgreSQL ledger/registry tests --------
# tests/stages/test_once_pg.py starts its own throw-away server from Debian's
# /usr/lib/postgresql/*/bin (no service is left running). CI runs on a clean machine, so when
# they are missing and we are root with apt-get, install them; anywhere else those tests fail
# with the command to run.
services:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing PostgreSQL (apt-get install postgresql) for the ledger tests ..."; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; }; \
	fi
# --- end services -----------------------------------------------------------------------------

test: lint typecheck pytest

bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

# Only the cells issue #19's goals are judged on, and the demo (about 16 minutes)
bench-goals: install
	$(BIN)/python bench/run.py --goals

# N shards sharing one API key under an account rate limit (about 3 minutes; --quick: 20k people)
bench-shared-key: install
	$(BIN)/python bench/bench_shared_key.py --limit 40

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache runs bench/out
