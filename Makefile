# Django Channels + PgBouncer reference stack. `make help` lists the targets.
# Everything installs what it needs (Debian packages, the .venv) on first use.

SHELL := bash
.SHELLFLAGS := -o errexit -o nounset -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCKS := app/requirements.txt loadtest/requirements.txt requirements-dev.txt
SCRIPTS := $(wildcard */entrypoint.sh) loadtest/as-results-owner.sh monitoring/promtool.sh lib/secrets.sh native/install-system-packages.sh native/fetch-monitoring.sh .ci/run .ci/as-regular-user.sh $(wildcard compose/*.sh) $(wildcard swarm/*.sh) $(wildcard tests/browser/*.sh)
DOCKERFILES := $(wildcard */Dockerfile) swarm/node/Dockerfile

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install missing Debian packages (PostgreSQL, PgBouncer, Redis, python3-venv)
	@native/install-system-packages.sh

POOLED_POSTGRES := pooled-postgres/pyproject.toml $(shell find pooled-postgres/src -name '*.py')

$(VENV)/.installed: $(LOCKS) $(POOLED_POSTGRES)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(addprefix -r ,$(LOCKS)) ./pooled-postgres
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv from the lock files

.PHONY: up
up: deps venv ## start the native stack (PostgreSQL, PgBouncer, Redis, Daphne) on loopback
	@$(PY) -m native up

.PHONY: monitoring
monitoring: deps venv ## the native stack (started if need be) plus Prometheus and its exporters; prints the dashboard's URL
	@$(PY) -m native up --monitoring

.PHONY: down
down: ## stop every process the native stack started (monitoring too)
	@if [[ -x $(PY) ]]; then $(PY) -m native down; fi

.PHONY: destroy
destroy: ## stop the native stack and delete its data and generated secrets
	@if [[ -x $(PY) ]]; then $(PY) -m native destroy; fi

.PHONY: status
status: venv ## show which native services run
	@$(PY) -m native status

.PHONY: demo
demo: deps venv ## bring the stack up, check it end to end, then prove server connections stay bounded (pooled vs naive, ~5 min)
	@$(PY) -m native up
	@$(PY) -m native.smoke
	@$(PY) -m loadtest.demo

.PHONY: bench
bench: deps venv ## not a test: every configuration side by side in two scenarios, the pgbench ceiling and 7,500 users (~35 min)
	@$(PY) -m native up
	@$(PY) -m loadtest.bench

# e.g. make chaos CHAOS_ARGS="--app-setting CHAT_DATABASE_THREADS=4" (python -m loadtest.chaos --help)
CHAOS_ARGS ?=

.PHONY: profile
profile: deps venv ## not a test: where Daphne's CPU goes per message, py-spy on every Daphne process (~1 min)
	@$(PY) -m native up
	@$(PY) -m loadtest.profile

.PHONY: chaos
chaos: deps venv ## inject faults under load (PgBouncer/PostgreSQL restarts, saturated pool, killed Daphne); lost must be 0
	@$(PY) -m native up
	@$(PY) -m loadtest.chaos $(CHAOS_ARGS)

.PHONY: test
test: deps venv ## the whole suite against real servers, the Compose stack on a private Docker engine included
	COMPOSE_TEST=1 $(PY) -m pytest

.PHONY: test-native
test-native: deps venv ## the suite without the Compose stack (no Docker install, ~3 min)
	$(PY) -m pytest -m "not compose"

.PHONY: compose-test
compose-test: venv ## only the Docker Compose end-to-end test (installs Docker, builds the images)
	COMPOSE_TEST=1 $(PY) -m pytest -m compose tests/compose

.PHONY: swarm-test
# SWARM_TOPOLOGIES="per-node central": both PgBouncer topologies side by side (~25 min), the
# comparison that chose the shipped one; empty, the shipped one alone.
SWARM_TOPOLOGIES ?=

swarm-test: venv ## the stack on a three-node Docker Swarm (Docker-in-Docker nodes): placement, the budget, faults under load (~12 min)
	SWARM_TOPOLOGIES="$(SWARM_TOPOLOGIES)" swarm/swarm.sh run $(PY) -m pytest -m swarm tests/swarm

.PHONY: lint
lint: venv ## ruff, shellcheck, hadolint, Compose schema, alert rules (promtool check and unit tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/shellcheck -x -P SCRIPTDIR $(SCRIPTS)
	$(VENV)/bin/hadolint $(DOCKERFILES)
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	compose/check-config.sh
	monitoring/promtool.sh

.PHONY: lock
lock: venv ## recompile the lock files from the *.in files
	$(VENV)/bin/pip install --quiet pip-tools
	for lock in app/requirements loadtest/requirements requirements-dev; do \
	  $(VENV)/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-header \
	    --no-emit-index-url --no-emit-find-links --output-file $$lock.txt $$lock.in; done
