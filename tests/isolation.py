"""A pytest plugin (``-p tests.isolation`` in pyproject's addopts) that gives the test process a
temporary ``VAR_DIR`` and a secret key of its own.

It has to be a plugin: pytest-django imports the settings before any conftest.py, so an
environment variable set in a conftest comes too late. Child processes (Celery workers,
parallel creators, MCP servers) inherit the environment. The test process never reads nor
writes the repository's ``var/``: the SQLite test database, the broker's folders and the
static root live in the temporary folder, removed when the run ends.

Run pytest as ``python -m pytest`` from the repository root (the Makefile does): ``-p`` imports
this module by name before anything puts the repository on ``sys.path``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile

import pytest

VAR_DIR = tempfile.mkdtemp(prefix="sessionadmin-test-var-")
os.environ["SESSIONADMIN_VAR_DIR"] = VAR_DIR
os.environ["SESSIONADMIN_SECRET_KEY"] = secrets.token_urlsafe(50)
os.environ.setdefault("SESSIONADMIN_LOG_LEVEL", "WARNING")
# A stdio test server (a Python process importing the MCP SDK, in its sandbox) can take several
# seconds to start on a loaded machine: the tests that are about timeouts give their own.
os.environ.setdefault("SESSIONADMIN_MCP_TIMEOUT_SECONDS", "30")
# The test MCP servers listen on loopback, which the outbound URL policy refuses unless listed.
os.environ["SESSIONADMIN_MCP_ALLOWED_HOSTS"] = "127.0.0.1"
# The stdio allow-list, explicitly: the test MCP servers run on this venv's python
# (tests/mcp_servers/); nothing else may run, whatever the developer's shell says.
os.environ["SESSIONADMIN_STDIO_COMMANDS"] = sys.executable
# The test process is the web tier, in prometheus_client's multiprocess mode as in production
# (decided when prometheus_client is first imported, so here); Celery workers of the tests write
# to the "worker" directory beside it (tests/celery_worker.py), the gateway to its own.
METRICS_DIR = os.path.join(VAR_DIR, "prometheus")
os.environ["SESSIONADMIN_METRICS_DIR"] = METRICS_DIR
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(METRICS_DIR, "web")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def pytest_configure(config: pytest.Config) -> None:
    # Django is set up by now (pytest-django did it while loading the initial conftests).
    from sessionadmin import bootstrap

    bootstrap.prepare()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(VAR_DIR, ignore_errors=True)
