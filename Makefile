# API Router Service -- developer workflow. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8080
PYTEST_FLAGS ?= -p no:cacheprovider -q

.PHONY: setup services codegen codegen-check run test check lint format typecheck fuzz bench dev-up dev-down clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"' 
	@test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && bash tools/install-python-venv.sh && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

services:
	@bash tools/install-services.sh

codegen: $(STAMP)
	$(BIN)/python tools/codegen.py

codegen-check: $(STAMP)
	$(BIN)/python tools/codegen.py --check $(if $(filter 1,$(STRICT)),--strict,)

run: $(STAMP)
	$(BIN)/router serve --demo --host 127.0.0.1 --port $(PORT)

test: $(STAMP) services
	$(BIN)/pytest $(PYTEST_FLAGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests tools bench
	$(BIN)/ruff format --check src tests tools bench

format: $(STAMP)
	$(BIN)/ruff format src tests tools bench
	$(BIN)/ruff check --fix src tests tools bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck codegen-check

# schemathesis against a live router on a free port (all checks, fixed seed + a random one).
fuzz: $(STAMP) services
	$(BIN)/pytest $(PYTEST_FLAGS) tests/contract/test_fuzz.py

# Benchmark: fake upstream direct, thin aiohttp proxy and the router (--demo), ratios from one run (bench/README.md).
# BENCH_ARGS e.g. "--duration 3 --conc 1,64", "--variant embedded,redis", "--stream", "--idempotency",
# "--litellm-venv DIR", "--json out.json --markdown bench/README.md".
bench: $(STAMP)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk
	$(BIN)/python bench/run.py $(BENCH_ARGS)

dev-up: $(STAMP) services
	$(BIN)/python tools/services.py up

dev-down: $(STAMP)
	$(BIN)/python tools/services.py down

clean:
	rm -rf .dev-services .router-data .mypy_cache .ruff_cache
