"""Browser tests: Playwright driving Debian's chromium against pytest-django's live server.

Run as their own pytest process (``make test-browser``): once Playwright's event loop has run
in a process, later tests that use asyncio in the same process fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The live server thread and Playwright's loop share the process; Django refuses ORM calls
# from a thread that has a running event loop unless told this is intended.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("SESSIONADMIN_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    }


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def workspace_root(tmp_path: Path, settings: Any) -> Path:
    root = tmp_path / "workspaces"
    settings.SESSIONADMIN_WORKSPACE_ROOT = root
    return root


@pytest.fixture
def personas(transactional_db: None, workspace_root: Path) -> Iterator[Any]:
    """alice (operator), bob (viewer), charlie (no role), root (superuser); orgs acme, globex."""
    from types import SimpleNamespace

    from tests.base import make_personas

    ns = SimpleNamespace()
    make_personas(ns)
    yield ns


@pytest.fixture
def login(page: Any, live_server: Any) -> Callable[[str], Any]:
    """login("alice") logs the page in through the real login form and returns the page."""
    from tests.base import PASSWORD

    def _login(username: str) -> Any:
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_load_state("networkidle")
        return page

    return _login


@pytest.fixture
def celery_worker(personas: Any, workspace_root: Path) -> Iterator[Any]:
    """A real Celery worker on the live server's database (it removes the workspaces of the
    sessions the browser ends)."""
    from tests.celery_worker import CeleryWorker

    worker = CeleryWorker(workspace_root=workspace_root)
    worker.start()
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def mcp_http_server() -> Iterator[Any]:
    """The test MCP server over streamable HTTP, for a module's tests."""
    from tests.mcp_servers import RunningServer

    server = RunningServer("streamable-http")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """The real gateway process, for a module's tests."""
    from tests.gateway import RunningGateway

    with django_db_blocker.unblock():
        running = RunningGateway()
    yield running
    running.stop()


@pytest.fixture
def use_gateway(gateway: Any) -> Iterator[None]:
    """Point the web tier at the module's gateway (``pytestmark = pytest.mark.usefixtures(...)``)."""
    with gateway.settings():
        yield
