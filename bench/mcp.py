"""MCP over streamable HTTP on loopback: attach and tool call through sessionadmin against the
raw SDK, and a health pass over many sessions.

Starts the test MCP server (``tests/mcp_servers/server.py``) as subprocesses. Works in the
configured database on a throwaway org, catalog entries, user and sessions (workspaces in a
temporary folder), all removed at the end, audit rows included; nothing else is touched.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.management.base import CommandParser
from django.test import Client as DjangoClient
from django.test.utils import override_settings
from django.urls import reverse

from bench import REPO

SERVER_SCRIPT = REPO / "tests" / "mcp_servers" / "server.py"
TARGET_RATIO = 1.3
TARGET_HEALTH_SECONDS = 3.0


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--iterations", type=int, default=30, help="timed repetitions of each attach and call (default 30)")
    parser.add_argument("--sessions", type=int, default=50, help="sessions in the health pass (default 50)")
    parser.add_argument("--clients-per-session", type=int, default=2, help="clients per session in the health pass (default 2)")
    parser.add_argument("--concurrency", type=int, default=10, help="health pass concurrency (default 10)")


class RunningServer:
    """``server.py`` over streamable HTTP on 127.0.0.1, on a port it picks and prints first."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "streamable-http"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{SERVER_SCRIPT} did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/mcp"

    def stop(self) -> None:
        self.proc.kill()  # no graceful shutdown: uvicorn would wait for idle keep-alive streams
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


_TLS: list[Any] = []


def _raw_client(url: str, tuned: bool) -> Any:
    """The SDK as documented (``Client(url)``), or tuned like ours: one TLS context reused,
    since building one per connection costs more than the MCP exchange itself."""
    from mcp import Client

    if not tuned:
        return Client(url)
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    if not _TLS:
        _TLS.append(httpx2.create_ssl_context())
    http = httpx2.AsyncClient(verify=_TLS[0], timeout=httpx2.Timeout(30, read=300))
    return Client(streamable_http_client(url, http_client=http))


def _raw_attach(url: str, tuned: bool = False) -> None:
    async def go() -> None:
        async with _raw_client(url, tuned) as client:
            await client.list_tools()

    asyncio.run(go())


def _raw_call(url: str, tuned: bool = False) -> None:
    async def go() -> None:
        async with _raw_client(url, tuned) as client:
            await client.call_tool("add", {"a": 1, "b": 2})

    asyncio.run(go())


def run(out: Any, *, iterations: int, sessions: int, clients_per_session: int, concurrency: int, **_: Any) -> None:
    from django.contrib.auth.models import User

    from sessionadmin import mcp_services
    from sessionadmin.manager import SessionManager
    from sessionadmin.models import AgentSession, AuditEntry, McpClient, McpServer, Org
    from sessionadmin.roles import OPERATE_PERMISSION

    tag = f"bench-mcp-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-bench-mcp-"))
    servers = [RunningServer(), RunningServer()]
    org = Org.objects.create(id=tag, name="MCP benchmark (throwaway)")
    entries = [
        mcp_services.save_server(McpServer(name=f"{tag}-{i}", transport="streamable_http", url=s.url), actor=tag)
        for i, s in enumerate(servers)
    ]
    user = User.objects.create_user(tag, password=secrets.token_urlsafe(16))
    app_label, codename = OPERATE_PERMISSION.split(".")
    from django.contrib.auth.models import Permission

    user.user_permissions.add(
        Permission.objects.get(content_type__app_label=app_label, codename=codename),
        Permission.objects.get(content_type__app_label=app_label, codename="view_agentsession"),
    )
    try:
        with override_settings(SESSIONADMIN_WORKSPACE_ROOT=tmp / "workspaces"):
            manager = SessionManager(tmp / "workspaces", max_concurrent=0)
            url = servers[0].url
            out.write(f"server: {url} (test MCP server, uvicorn subprocess); {iterations} timed runs each, medians\n")

            # Warm up both paths (imports, first connections) before timing anything.
            _raw_attach(url)
            warm = manager.create_session(f"{tag}-warm", org.id, actor=tag)
            mcp_services.add_client(warm.id, server=entries[0], actor=tag)

            # 1. attach: handshake + catalog + DB writes + .mcp.json, against initialize + list_tools.
            ours, raw, tuned = [], [], []
            attach_sessions = [manager.create_session(f"{tag}-a{i}", org.id, actor=tag) for i in range(iterations)]
            _raw_attach(url, tuned=True)
            for session in attach_sessions:
                raw.append(_timed(lambda: _raw_attach(url)))
                tuned.append(_timed(lambda: _raw_attach(url, tuned=True)))
                ours.append(_timed(lambda s=session: mcp_services.add_client(s.id, server=entries[0], actor=tag)))  # type: ignore[misc]
            _report(out, "attach", "sessionadmin add_client", ours, "raw SDK initialize+list_tools", raw, tuned)

            # 2. tool call through the dashboard view (form, service, audit, render) vs a raw call.
            browser = DjangoClient()
            browser.force_login(user)
            call_url = reverse("session_mcp_tool", args=[attach_sessions[0].id, entries[0].name, "add"])
            form = {"arg_a": "1", "arg_b": "2"}
            response = browser.post(call_url, form, headers={"HX-Request": "true"})
            assert response.status_code == 200 and b"badge-connected" in response.content, response.content[:500]
            ours, raw, tuned = [], [], []
            for _round in range(iterations):
                raw.append(_timed(lambda: _raw_call(url)))
                tuned.append(_timed(lambda: _raw_call(url, tuned=True)))
                ours.append(_timed(lambda: browser.post(call_url, form, headers={"HX-Request": "true"})))
            _report(out, "call", "dashboard view (POST)", ours, "raw SDK connect+call_tool", raw, tuned)

            # 3. a health pass over sessions x clients (rows set up directly; only the pass is timed).
            McpClient.objects.filter(session__org=org).delete()
            AgentSession.objects.filter(org=org).update(status=AgentSession.Status.ENDED, ended_at=time_now())
            health_sessions = [manager.create_session(f"{tag}-h{i}", org.id, actor=tag) for i in range(sessions)]
            McpClient.objects.bulk_create(
                McpClient(session=s, client_id=f"c{j}", server=entries[j % len(entries)], transport="streamable_http")
                for s in health_sessions
                for j in range(clients_per_session)
            )
            started = time.perf_counter()
            counts = mcp_services.health_pass(concurrency=concurrency, actor=tag)
            elapsed = time.perf_counter() - started
            out.write(
                f"health   {sessions} sessions x {clients_per_session} clients, concurrency {concurrency}: {elapsed:.2f} s"
                f" (target < {TARGET_HEALTH_SECONDS:g} s) {counts}\n"
            )
    finally:
        McpClient.objects.filter(session__org=org).delete()
        AgentSession.objects.filter(org=org).delete()
        # Bulk delete of the throwaway rows only (the model refuses single-row deletes).
        AuditEntry.objects.filter(org_id=tag).delete()
        AuditEntry.objects.filter(actor=tag).delete()
        McpServer.objects.filter(name__startswith=tag).delete()
        org.delete()
        user.delete()
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _report(
    out: Any, label: str, ours_label: str, ours: list[float], raw_label: str, raw: list[float], tuned: list[float]
) -> None:
    out.write(
        f"{label:<7} {ours_label} {_median_ms(ours):6.1f} ms | {raw_label}: as documented {_median_ms(raw):6.1f} ms,"
        f" reusing its TLS context {_median_ms(tuned):6.1f} ms | ratio {_median_ms(ours) / _median_ms(raw):.2f}"
        f" / {_median_ms(ours) / _median_ms(tuned):.2f} (target <= {TARGET_RATIO})\n"
    )


def time_now() -> Any:
    from django.utils import timezone

    return timezone.now()
