# sessionadmin: `make run` starts everything on the embedded default, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest
MANAGE := $(BIN)/python manage.py

# Where the PostgreSQL run of the suite works; override them (make variables or environment) to
# keep several runs on one machine apart, e.g. `make test SESSIONADMIN_TEST_DB_NAME=test_sa_me
# CELERY_TEST_REDIS_URL=redis://127.0.0.1:6379/12`.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
SESSIONADMIN_TEST_DB_NAME ?= test_sessionadmin
CELERY_TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

# Debian packages: bubblewrap for the stdio sandbox (run and tests), chromium for the browser
# tests, wrk for `make bench`. Installed with apt-get only when missing.
RUN_DEBS := bubblewrap
# prometheus: `promtool check rules` over deploy/prometheus/alerts.yml (tests/test_deploy_rules.py).
DEBS := $(RUN_DEBS) chromium prometheus
BENCH_DEBS := wrk

.PHONY: run setup install install-dev npm deps run-deps bench-deps services lock lint test test-sqlite test-postgres test-browser bench worker beat

# --- virtualenv: the runtime lock for `make run`, the dev lock (runtime + tools) for the rest --

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

# Re-pin after editing requirements.in or requirements-dev.in. The lock must install on any
# machine from the public index alone, so this machine's extra pip indexes are left out.
lock: install-dev
	export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= CUSTOM_COMPILE_COMMAND="make lock"; \
	for name in requirements requirements-dev; do \
		$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
			--no-emit-find-links --output-file $$name.txt $$name.in || exit 1; \
	done

deps:
	@$(call apt_install,$(DEBS))
	@# npm for axe-core: Debian's package only where no npm is installed (a Node.js from another
	@# source, e.g. NodeSource's, conflicts with it).
	@command -v npm >/dev/null || { $(call apt_install,npm); }
	@$(MAKE) --no-print-directory npm

# Test-only JavaScript (axe-core for the browser tests' accessibility checks), pinned by
# package-lock.json; reinstalled only when the lock changes.
npm: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

run-deps:
	@$(call apt_install,$(RUN_DEBS))

bench-deps:
	@$(call apt_install,$(BENCH_DEBS))

define apt_install
missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
if [ -n "$$missing" ]; then \
	echo "apt-get install" $$missing; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
fi
endef

# --- run --------------------------------------------------------------------------------------

# var/, the secret key and the broker folders (idempotent); importing settings writes nothing.
setup: install
	$(MANAGE) setup

# Web, worker and beat in the foreground (the process list is `processes()` in
# sessionadmin/management/commands/run.py). SESSIONADMIN_BIND=host:port changes the address.
# The demo's MCP servers run on this machine: loopback must be listed for the URL policy.
run: export SESSIONADMIN_MCP_ALLOWED_HOSTS ?= 127.0.0.1
# The demo's stdio allow-list (unless the environment gives one): this venv's python, so the
# test server (tests/mcp_servers/server.py) can be put in the catalog. An interpreter runs
# whatever its arguments say: production lists dedicated server executables instead.
run: export SESSIONADMIN_STDIO_COMMANDS ?= $(abspath $(BIN))/python
run: setup run-deps
	$(MANAGE) migrate --no-input
	$(MANAGE) ensure_operator
	$(MANAGE) run

# Celery on its own, one process per terminal (production runs them as separate services;
# `make run` starts both with the web server). Only one beat may run.
worker: setup
	$(BIN)/python -m celery -A sessionadmin worker --loglevel INFO --hostname worker@%h

beat: setup
	$(BIN)/python -m celery -A sessionadmin beat --loglevel INFO --schedule var/celerybeat-schedule

# --- test -------------------------------------------------------------------------------------

# The local PostgreSQL and Redis the tests use; started here if they are down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done

lint: install-dev
	$(BIN)/ruff check sessionadmin tests bench tools
	$(BIN)/ruff format --check sessionadmin tests bench tools
	$(BIN)/mypy sessionadmin bench tools

test-sqlite: install-dev
	$(PYTEST) --ignore=tests/browser

test-postgres: install-dev services
	DATABASE_URL=$(TEST_DATABASE_URL) SESSIONADMIN_TEST_DB_NAME=$(SESSIONADMIN_TEST_DB_NAME) \
		CELERY_TEST_REDIS_URL=$(CELERY_TEST_REDIS_URL) $(PYTEST) --ignore=tests/browser

# A separate pytest process: once Playwright's event loop runs, later async tests would fail.
test-browser: install-dev deps
	$(PYTEST) tests/browser

test: install-dev deps services lint test-sqlite test-postgres test-browser

# --- bench ------------------------------------------------------------------------------------

# Every benchmark on PostgreSQL (`python -m bench all`). Those that need a seeded database create
# and drop their own; the others run against sessionadmin_bench_main (created and migrated here)
# with throwaway rows.
PG_BENCH_URL ?= postgres://postgres@127.0.0.1:5432/sessionadmin_bench_main
bench: install bench-deps services setup
	@psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'sessionadmin_bench_main'" | grep -q 1 \
		|| psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE sessionadmin_bench_main"
	DATABASE_URL=$(PG_BENCH_URL) $(MANAGE) migrate -v0
	DATABASE_URL=$(PG_BENCH_URL) $(BIN)/python -m bench all
