"""MCP through the gateway: latency against the raw SDK, concurrency, kill-to-refusal, and the
runtime API's heartbeat while slow dashboard tool calls run.

Runs against a PostgreSQL database of its own (``sessionadmin_bench_mcp``, created on the server
of the configured ``DATABASE_URL`` and dropped at the end unless ``--keep``), never the
developer's data (a gateway reconnects every open client of the sessions it serves). It starts
the test MCP server (``tests/mcp_servers/server.py``) over stdio and streamable HTTP, the real
gateway (``manage.py mcp_gateway``) and, for the last part, gunicorn; agents are the SDK's own
``Client``. Figures:

1. tool call p50/p99, agent -> gateway -> live upstream, against a raw SDK client holding its own
   live connection to the same upstream, over stdio and streamable HTTP (``--rounds`` interleaved
   rounds of ``--calls`` sequential calls of each kind);
2. ``--concurrent`` calls at once over ``--sessions`` sessions x 2 clients (streamable HTTP
   upstreams): all succeed? p50/p99, and the gateway's RSS per live client (its own memory; the
   upstream processes are not its children);
3. kill-to-refusal over ``--kills`` kills: from the start of the kill (the dashboard's
   ``kill_sessions``) to the first call its agent sees refused;
4. heartbeat p99 (wrk on ``POST /api/v1/sessions/<id>/activity``, gunicorn with ``--workers``)
   alone, then while 8 dashboard tool calls of 10 s are in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from bench import REPO, command

BENCH_DB = "sessionadmin_bench_mcp"
TARGET_RATIO = 1.5
TARGET_STDIO_P50_MS = 10.0
TARGET_KILL_P99_MS = 1000.0
TARGET_HEARTBEAT_P99_MS = 50.0
SERVER_SCRIPT = REPO / "tests" / "mcp_servers" / "server.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=200, help="sequential calls per kind per round (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--sessions", type=int, default=50, help="sessions of the concurrency run (2 clients each)")
    parser.add_argument("--concurrent", type=int, default=500, help="calls in flight at once (default 500)")
    parser.add_argument("--kills", type=int, default=50, help="kills timed (default 50)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers of the heartbeat run")
    parser.add_argument("--duration", type=int, default=8, help="seconds of each heartbeat run (default 8)")
    parser.add_argument("--database", default=BENCH_DB, help=f"name of the database it creates and drops (default {BENCH_DB})")
    parser.add_argument("--keep", action="store_true", help="keep that database afterwards")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)


def run(out: Any, **opts: Any) -> None:
    if opts["inner"]:
        measure(out, opts)
        return
    db: dict[str, Any] = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise CommandError("the mcp benchmark needs PostgreSQL: set DATABASE_URL=postgres://... (its server is used)")
    if shutil.which("wrk") is None:
        raise CommandError("wrk is not installed: apt-get install -y wrk (make bench does it)")
    import psycopg

    name = opts["database"]
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise CommandError("--database: lowercase letters, digits and _ only")
    conninfo = {
        k: v for k, v in {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db["PASSWORD"]}.items() if v
    }
    admin = psycopg.connect(dbname="postgres", autocommit=True, **conninfo)
    tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-bench-mcp-"))
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        user = f"{db['USER']}{':' + db['PASSWORD'] if db['PASSWORD'] else ''}@" if db["USER"] else ""
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{user}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}",
            "SESSIONADMIN_LOG_LEVEL": "ERROR",
            "SESSIONADMIN_SECRET_KEY": settings.SECRET_KEY,
            "SESSIONADMIN_WORKSPACE_ROOT": str(tmp / "workspaces"),
            "SESSIONADMIN_VAR_DIR": str(tmp / "var"),
            "SESSIONADMIN_MAX_CONCURRENT": "0",
            "SESSIONADMIN_GATEWAY_BIND": "127.0.0.1:0",
            "SESSIONADMIN_GATEWAY_URL": "http://127.0.0.1:0",
            # The test MCP servers: this interpreter runs the stdio one, the HTTP ones listen on
            # loopback (which the URL policy refuses unless listed).
            "SESSIONADMIN_STDIO_COMMANDS": sys.executable,
            "SESSIONADMIN_MCP_ALLOWED_HOSTS": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        manage = [sys.executable, str(REPO / "manage.py")]
        subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True)
        inner = command("mcp", "--inner")
        for name in ("calls", "rounds", "sessions", "concurrent", "kills", "workers", "duration"):
            inner += [f"--{name}", str(opts[name])]
        proc = subprocess.run(inner, env=env, capture_output=True, text=True, cwd=REPO)
        out.write(proc.stdout.rstrip())
        if proc.returncode:
            raise CommandError(f"the measuring process failed:\n{proc.stderr[-3000:]}")
    finally:
        if not opts["keep"]:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A child process that prints ``PORT <n>`` once it listens."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise CommandError(f"{args[1:3]} did not start: {line!r}")
        self.port = int(line.split()[1])
        threading.Thread(target=lambda: [None for _ in self.proc.stdout or []], daemon=True).start()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000 if ordered else float("nan")


def agent(url: str, token: str) -> Any:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=120))
    return Client(streamable_http_client(url, http_client=http), cache=None)


# --- the measuring process (Django set up on the bench database) ----------------------------


def measure(out: Any, opts: dict[str, Any]) -> None:
    from sessionadmin import mcp_services
    from sessionadmin.manager import SessionManager
    from sessionadmin.models import McpServer, Org

    started = time.monotonic()
    http_a = Proc([sys.executable, str(SERVER_SCRIPT), "streamable-http"])
    http_b = Proc([sys.executable, str(SERVER_SCRIPT), "streamable-http"])
    gateway = Proc([sys.executable, str(REPO / "manage.py"), "mcp_gateway"], env={**os.environ})
    url = f"http://127.0.0.1:{gateway.port}"
    settings.SESSIONADMIN_GATEWAY_URL = url
    settings.SESSIONADMIN_GATEWAY_INTERNAL_URL = url
    try:
        Org.objects.create(id="bench", name="Bench")
        manager = SessionManager(max_concurrent=0)
        stdio = mcp_services.save_server(
            McpServer(
                name="stdio",
                transport="stdio",
                command=sys.executable,
                args=[str(SERVER_SCRIPT), "stdio"],
                # What the sandboxed server needs to read: this venv, its Python, the script.
                read_only_paths=sorted({sys.prefix, sys.base_prefix, str(SERVER_SCRIPT.parent)}),
            ),
            actor="benchmark",
        )
        a = mcp_services.save_server(
            McpServer(name="a", transport="streamable_http", url=f"http://127.0.0.1:{http_a.port}/mcp"), actor="benchmark"
        )
        b = mcp_services.save_server(
            McpServer(name="b", transport="streamable_http", url=f"http://127.0.0.1:{http_b.port}/mcp"), actor="benchmark"
        )
        database = settings.DATABASES["default"]["NAME"]
        out.write(f"gateway {url} (pid {gateway.proc.pid}), PostgreSQL database {database}, test MCP server (tests/mcp_servers)")
        figures: dict[str, Any] = {}
        latency(out, opts, manager, stdio, a, figures)
        concurrency_and_kills(out, opts, manager, a, b, gateway, figures)
        heartbeat(out, opts, manager, a, figures)
        checks = {
            f"stdio p50 ratio <= {TARGET_RATIO}": figures["ratio_stdio"] <= TARGET_RATIO,
            f"streamable HTTP p50 ratio <= {TARGET_RATIO}": figures["ratio_http"] <= TARGET_RATIO,
            f"stdio p50 through the gateway < {TARGET_STDIO_P50_MS:g} ms": figures["gw_stdio_p50"] < TARGET_STDIO_P50_MS,
            f"{opts['concurrent']} concurrent calls all succeed": figures["concurrent_ok"],
            f"kill-to-refusal p99 < {TARGET_KILL_P99_MS:g} ms": figures["kill_p99"] < TARGET_KILL_P99_MS,
            f"heartbeat p99 < {TARGET_HEARTBEAT_P99_MS:g} ms with 8 slow dashboard calls": figures["hb_busy_p99"]
            < TARGET_HEARTBEAT_P99_MS,
            # Else the figure above was measured with no slow call in flight.
            "the 8 slow dashboard calls ran in the gateway and were polled back": figures["slow_calls_done"],
        }
        out.write("")
        for name, ok in checks.items():
            out.write(f"  {'ok  ' if ok else 'MISS'} {name}")
        out.write(f"  total {time.monotonic() - started:.0f} s")
    finally:
        gateway.stop()
        http_a.stop()
        http_b.stop()


def _token(session: Any) -> tuple[str, str]:
    from sessionadmin import mcp_services

    entry = mcp_services.mcp_config_for(session, actor="benchmark")["mcpServers"]["sessionadmin"]
    return entry["url"], entry["headers"]["Authorization"].removeprefix("Bearer ")


def latency(out: Any, opts: dict[str, Any], manager: Any, stdio: Any, http: Any, figures: dict[str, Any]) -> None:
    from mcp import Client, StdioServerParameters

    from sessionadmin import mcp_services

    session = manager.create_session("latency", "bench", actor="benchmark")
    mcp_services.add_client(session.id, server=stdio, actor="benchmark", client_id="stdio")
    mcp_services.add_client(session.id, server=http, actor="benchmark", client_id="http")
    url, token = _token(session)
    samples: dict[str, list[float]] = {"raw stdio": [], "gateway stdio": [], "raw http": [], "gateway http": []}

    async def timed(client: Any, tool: str, n: int, into: list[float]) -> None:
        for i in range(n):
            t0 = time.perf_counter()
            await client.call_tool(tool, {"a": i, "b": 1})
            into.append(time.perf_counter() - t0)

    async def main() -> None:
        params = StdioServerParameters(command=sys.executable, args=[str(SERVER_SCRIPT), "stdio"])
        async with (
            Client(params, cache=None) as raw_stdio,
            Client(http.url, cache=None) as raw_http,
            agent(url, token) as gw,
        ):
            await gw.list_tools()
            pairs = [
                (raw_stdio, "add", "raw stdio"),
                (gw, "stdio__add", "gateway stdio"),
                (raw_http, "add", "raw http"),
                (gw, "http__add", "gateway http"),
            ]
            for client, tool, _ in pairs:
                await timed(client, tool, 30, [])  # warm-up
            for _ in range(opts["rounds"]):
                for client, tool, kind in pairs:
                    await timed(client, tool, opts["calls"], samples[kind])

    asyncio.run(main())
    out.write("")
    out.write(f"1. sequential tool calls (`add`), {opts['rounds']} interleaved rounds x {opts['calls']} calls:")
    for kind, values in samples.items():
        out.write(f"  {kind:<15} p50 {pct(values, 0.5):7.2f} ms  p99 {pct(values, 0.99):7.2f} ms")
    for transport in ("stdio", "http"):
        raw, gw = pct(samples[f"raw {transport}"], 0.5), pct(samples[f"gateway {transport}"], 0.5)
        figures[f"ratio_{transport}"] = gw / raw
        out.write(f"  {transport}: gateway/raw p50 ratio {gw / raw:.2f} (+{gw - raw:.2f} ms per call)")
    figures["gw_stdio_p50"] = pct(samples["gateway stdio"], 0.5)


def concurrency_and_kills(
    out: Any, opts: dict[str, Any], manager: Any, a: Any, b: Any, gateway: Proc, figures: dict[str, Any]
) -> None:
    from sessionadmin import mcp_services

    n = opts["sessions"]
    sessions = [manager.create_session(f"user-{i}", "bench", actor="benchmark") for i in range(n)]
    rss_before = gateway.rss_kib()
    attach_started = time.monotonic()
    for session in sessions:
        mcp_services.add_client(session.id, server=a, actor="benchmark", client_id="a")
        mcp_services.add_client(session.id, server=b, actor="benchmark", client_id="b")
    attach_seconds = time.monotonic() - attach_started
    time.sleep(1.0)
    rss_after = gateway.rss_kib()
    endpoints = [_token(s) for s in sessions]
    per_agent = max(1, opts["concurrent"] // n)
    latencies: list[float] = []
    failures: list[str] = []
    kill_times: list[float] = []

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            agents = [await stack.enter_async_context(agent(url, token)) for url, token in endpoints]
            await asyncio.gather(*(c.list_tools() for c in agents))

            async def one(client: Any, tool: str, i: int) -> None:
                t0 = time.perf_counter()
                try:
                    result = await client.call_tool(tool, {"a": i, "b": 1})
                    if result.is_error:
                        failures.append("error result")
                except Exception as exc:
                    failures.append(type(exc).__name__)
                latencies.append(time.perf_counter() - t0)

            calls = [one(c, "a__add" if j % 2 else "b__add", j) for c in agents for j in range(per_agent)]
            await asyncio.gather(*calls)

            for session, client in list(zip(sessions, agents, strict=True))[: opts["kills"]]:
                kill_times.append(await kill_to_refusal(manager, session, client))

    asyncio.run(main())
    total = len(latencies)
    figures["concurrent_ok"] = not failures and total == per_agent * n
    figures["kill_p99"] = pct(kill_times, 0.99)
    per_client = (rss_after - rss_before) / (2 * n)
    out.write("")
    out.write(f"2. {total} tool calls at once over {n} sessions x 2 clients (streamable HTTP upstreams):")
    out.write(
        f"  {total - len(failures)}/{total} succeeded  p50 {pct(latencies, 0.5):.1f} ms  p99 {pct(latencies, 0.99):.1f} ms"
        f"{'  failures: ' + str(sorted(set(failures))) if failures else ''}"
    )
    out.write(
        f"  gateway RSS {rss_before / 1024:.1f} MiB -> {rss_after / 1024:.1f} MiB with {2 * n} live clients: "
        f"{per_client:.0f} KiB per client (children excluded); attaching them took {attach_seconds:.1f} s"
    )
    out.write("")
    out.write(f"3. kill-to-refusal over {len(kill_times)} kills (dashboard kill_sessions -> first refused call):")
    out.write(
        f"  p50 {pct(kill_times, 0.5):.0f} ms  p99 {pct(kill_times, 0.99):.0f} ms  max {max(kill_times) * 1000:.0f} ms"
        if kill_times
        else "  (none)"
    )


async def kill_to_refusal(manager: Any, session: Any, client: Any) -> float:
    """Start the kill in a thread; the agent calls in a loop until refused."""
    from django.db import connection

    from sessionadmin import lifecycle

    def kill() -> None:
        try:
            lifecycle.end(session_ids=[session.id], actor="benchmark", reason="benchmark")
        finally:
            connection.close()

    refused = asyncio.Event()
    t0 = 0.0

    async def calls() -> float:
        while True:
            try:
                await client.call_tool("a__add", {"a": 1, "b": 1})
            except Exception:
                refused.set()
                return time.perf_counter()

    loop_task = asyncio.ensure_future(calls())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    kill_task = asyncio.ensure_future(asyncio.to_thread(kill))
    t1 = await asyncio.wait_for(loop_task, 30)
    await kill_task
    return t1 - t0


def heartbeat(out: Any, opts: dict[str, Any], manager: Any, server: Any, figures: dict[str, Any]) -> None:
    import httpx2
    from django.contrib.auth.models import Group, User

    from bench import api as api_bench
    from sessionadmin import mcp_services, tokens
    from sessionadmin.roles import OPERATORS, ensure_roles

    ensure_roles()
    operator = User.objects.create_user("bench-operator", password="bench-operator-password")
    operator.groups.add(Group.objects.get(name=OPERATORS))
    _, raw = tokens.create_token(name="bench-mcp", actor="benchmark")
    hb_sessions = [str(manager.create_session(f"hb-{i}", "bench", actor="benchmark").id) for i in range(50)]
    busy = manager.create_session("busy", "bench", actor="benchmark")
    mcp_services.add_client(busy.id, server=server, actor="benchmark", client_id="slow")
    data = {"token": raw, "sessions": hb_sessions}
    wrk = shutil.which("wrk") or "wrk"
    port = api_bench.free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SESSIONADMIN_GATEWAY_URL": settings.SESSIONADMIN_GATEWAY_URL,
           "SESSIONADMIN_GATEWAY_INTERNAL_URL": settings.SESSIONADMIN_GATEWAY_INTERNAL_URL}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-bench-mcp-wrk-"))
    wrk_opts = {"threads": 2, "connections": 8, "duration": opts["duration"]}
    proc = api_bench.start_gunicorn(env, opts["workers"], port)
    try:
        alone = api_bench.run_wrk(wrk, wrk_opts, base, api_bench.lua_script("activity", data), tmp)
        web = httpx2.Client(base_url=base, follow_redirects=False, timeout=30)
        login = web.get("/accounts/login/")
        csrf = web.cookies.get("csrftoken") or re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
        web.post("/accounts/login/", data={"username": "bench-operator", "password": "bench-operator-password",
                                           "csrfmiddlewaretoken": csrf})  # fmt: skip
        csrf = web.cookies.get("csrftoken") or csrf
        tool_url = f"/sessions/{busy.id}/mcp/slow/tools/sleep/"
        post_ms = []
        polls = []
        for _ in range(8):
            t0 = time.perf_counter()
            r = web.post(tool_url, data={"arg_seconds": "10", "csrfmiddlewaretoken": csrf},
                         headers={"HX-Request": "true", "X-CSRFToken": csrf})  # fmt: skip
            post_ms.append((time.perf_counter() - t0) * 1000)
            found = re.search(r'hx-get="([^"]+/calls/[^"]+)"', r.text)  # the poll URL (with its query)
            if found:
                polls.append(html.unescape(found.group(1)))
        busy_run = api_bench.run_wrk(wrk, wrk_opts, base, api_bench.lua_script("activity", data), tmp)
        finished = 0
        deadline = time.monotonic() + 30
        pending = list(polls)
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if web.get(p, headers={"HX-Request": "true"}).status_code != 286]
            time.sleep(0.5)
        finished = len(polls) - len(pending)
    finally:
        api_bench.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    figures["hb_busy_p99"] = busy_run["p99_ms"]
    figures["slow_calls_done"] = len(polls) == 8 and finished == 8
    out.write("")
    out.write(f"4. heartbeat (wrk -t2 -c8 -d{opts['duration']}s, gunicorn -w {opts['workers']}):")
    out.write(f"  alone                              p50 {alone['p50_ms']:6.1f} ms  p99 {alone['p99_ms']:6.1f} ms  "
              f"{alone['rps']:.0f} req/s {alone['statuses']}")  # fmt: skip
    out.write(f"  with 8 x 10 s dashboard calls      p50 {busy_run['p50_ms']:6.1f} ms  p99 {busy_run['p99_ms']:6.1f} ms  "
              f"{busy_run['rps']:.0f} req/s {busy_run['statuses']}")  # fmt: skip
    out.write(f"  the 8 dashboard POSTs answered in {statistics.median(post_ms):.0f} ms (median), max {max(post_ms):.0f} ms; "
              f"{len(polls)} started, {finished} finished and polled back")  # fmt: skip
