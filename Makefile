# sessionadmin: `make run` starts everything on the embedded default, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
REDIS_URL ?= redis://127.0.0.1:6379/15
PYTEST := $(BIN)/python -m pytest

.PHONY: run install services sandbox browser test test-sqlite test-postgres test-browser lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed

# The demo's MCP servers run on this machine: loopback must be listed for the URL policy.
run: export SESSIONADMIN_MCP_ALLOWED_HOSTS ?= 127.0.0.1
run: install sandbox
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py ensure_operator
	$(BIN)/python manage.py run

# The local PostgreSQL and Redis the tests use; started here if they are down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done

# Debian's bubblewrap: stdio MCP servers run in its sandbox (SESSIONADMIN_STDIO_SANDBOX).
sandbox:
	@command -v bwrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }

# Debian's chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: install
	$(BIN)/ruff check sessionadmin tests
	$(BIN)/ruff format --check sessionadmin tests
	$(BIN)/mypy sessionadmin

test-sqlite: install sandbox
	$(PYTEST) --ignore=tests/browser

test-postgres: install services sandbox
	DATABASE_URL=$(PG_URL) CELERY_TEST_REDIS_URL=$(REDIS_URL) $(PYTEST) --ignore=tests/browser

# A separate pytest process: once Playwright's event loop runs, later async tests would fail.
test-browser: install browser
	$(PYTEST) tests/browser

test: install services sandbox browser lint test-sqlite test-postgres test-browser

# Every benchmark on PostgreSQL. Those that need a seeded database create and drop their own;
# the others run against sessionadmin_bench_main (created and migrated here) with throwaway rows.
PG_BENCH_URL ?= postgres://postgres@127.0.0.1:5432/sessionadmin_bench_main
bench: install services
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	@psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'sessionadmin_bench_main'" | grep -q 1 \
		|| psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE sessionadmin_bench_main"
	DATABASE_URL=$(PG_BENCH_URL) $(BIN)/python manage.py migrate -v0
	DATABASE_URL=$(PG_BENCH_URL) $(BIN)/python manage.py benchmark all

# Celery on its own, one process per terminal (production runs them as separate services;
# `make run` starts both with the web server). Only one beat may run.
.PHONY: worker beat
worker: install
	$(BIN)/python -m celery -A sessionadmin worker --loglevel INFO --hostname worker@%h

beat: install
	$(BIN)/python -m celery -A sessionadmin beat --loglevel INFO --schedule var/celerybeat-schedule
