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

.PHONY: install demo test lint typecheck pytest bench bench-quick clean

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

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache runs bench/out
