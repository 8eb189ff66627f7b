"""The MCP gateway for tests: the real process (``python manage.py mcp_gateway``) on a free port,
against the test database, started once per test module (``GatewayMixin``).

The test process's settings are pointed at it (public and internal URL); sessions created in a
test record that URL as their gateway. Agents are driven with the SDK's own client
(``agent_client``), from a helper thread with its own event loop (``run_async``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.test.utils import override_settings

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class RunningGateway:
    def __init__(self, *, extra_env: dict[str, str] | None = None) -> None:
        from tests.base import database_url

        self.tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-gw-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONADMIN_", "PYTEST", "DATABASE_URL"))}
        env.update(
            DJANGO_SETTINGS_MODULE="sessionadmin.settings",
            DATABASE_URL=database_url(),
            SESSIONADMIN_VAR_DIR=str(self.tmp / "var"),
            SESSIONADMIN_SECRET_KEY=str(settings.SECRET_KEY),
            SESSIONADMIN_GATEWAY_BIND="127.0.0.1:0",
            SESSIONADMIN_GATEWAY_URL="http://127.0.0.1:0",
            SESSIONADMIN_LOG_LEVEL="WARNING",
            SESSIONADMIN_MCP_TIMEOUT_SECONDS=str(settings.SESSIONADMIN_MCP_TIMEOUT_SECONDS),
            # The policies of the test process: loopback servers allowed, the sandbox as set.
            SESSIONADMIN_MCP_ALLOWED_HOSTS=",".join(settings.SESSIONADMIN_MCP_ALLOWED_HOSTS),
            SESSIONADMIN_STDIO_SANDBOX="on" if settings.SESSIONADMIN_STDIO_SANDBOX else "off",
            SESSIONADMIN_STDIO_COMMANDS=",".join(settings.SESSIONADMIN_STDIO_COMMANDS),
            PYTHONUNBUFFERED="1",
            # Its own metrics directory (the test process's is the web tier's).
            SESSIONADMIN_METRICS_DIR=str(self.tmp / "metrics"),
            PROMETHEUS_MULTIPROC_DIR=str(self.tmp / "metrics" / "gateway"),
            **(extra_env or {}),
        )
        (self.tmp / "metrics" / "gateway").mkdir(parents=True)
        self.log = open(self.tmp / "gateway.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "mcp_gateway"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            output = self.output()
            self.stop()
            raise RuntimeError(f"the gateway did not start: {line!r}\n{output}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        # Keep draining stdout so the gateway never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self.log.flush()
        return (self.tmp / "gateway.log").read_text()[-5000:]

    def settings(self) -> override_settings:
        return override_settings(SESSIONADMIN_GATEWAY_URL=self.url, SESSIONADMIN_GATEWAY_INTERNAL_URL=self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


_GATEWAYS: dict[str, RunningGateway] = {}


class GatewayMixin:
    """Starts one gateway per test module (at the first test class that needs it; stopped with
    the module) and points the settings at it for each test. Sessions a test leaves active are
    cut off at the gateway afterwards, so their connections do not outlive the test."""

    gateway: RunningGateway

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        module = cls.__module__
        if module not in _GATEWAYS:
            _GATEWAYS[module] = RunningGateway()
        cls.gateway = _GATEWAYS[module]
        override = cls.gateway.settings()
        override.enable()
        cls.addClassCleanup(override.disable)  # type: ignore[attr-defined]

    def tearDown(self) -> None:
        from sessionadmin import gateway_client
        from sessionadmin.models import AgentSession

        ids = list(AgentSession.objects.values_list("pk", flat=True))
        try:
            if ids:
                gateway_client.close_sessions(ids)
            # Calls cut off above are audited by the gateway a moment later: let it finish
            # before the database is flushed, or the entries would land in the next test.
            gateway_client.drain(timeout=10)
        except Exception:
            pass
        super().tearDown()  # type: ignore[misc]


def tearDownModule() -> None:
    """Stop the gateways of the module(s) done so far (one per module)."""
    for module in list(_GATEWAYS):
        _GATEWAYS.pop(module).stop()


atexit.register(tearDownModule)


def run_async(fn: Callable[[], Awaitable[T]], *, timeout: float = 60) -> T:
    """Run a coroutine function on a fresh event loop in a helper thread (the test thread may
    not run one: async_to_sync and Playwright own theirs)."""
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = asyncio.run(asyncio.wait_for(fn(), timeout))  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=worker, name="agent", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def agent_client(
    endpoint: str, token: str, *, mode: str = "auto", message_handler: Any = None, statuses: list[int] | None = None
) -> Any:
    """The SDK's own client for a session endpoint, with the session's bearer token. The HTTP
    statuses the endpoint answers are appended to ``statuses`` (the SDK hides them in errors)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def record(response: Any) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(30, read=60),
        event_hooks={"response": [record]},
    )
    return Client(streamable_http_client(endpoint, http_client=http), mode=mode, cache=None, message_handler=message_handler)
