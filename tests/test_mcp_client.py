"""sessionadmin.mcp_client against real MCP servers: stdio, streamable HTTP and SSE."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

from django.test import SimpleTestCase

from sessionadmin import mcp_client
from sessionadmin.mcp_client import McpError, Target
from tests.mcp_servers import RunningServer, process_gone, stdio_command

TOKEN = "tok-Zq8-very-secret-4711"


class HttpServersMixin:
    http: RunningServer
    sse: RunningServer

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        cls.http = RunningServer("streamable-http")
        cls.addClassCleanup(cls.http.stop)  # type: ignore[attr-defined]
        cls.sse = RunningServer("sse")
        cls.addClassCleanup(cls.sse.stop)  # type: ignore[attr-defined]


def stdio_target(**kwargs: object) -> Target:
    command, args = stdio_command()
    return Target("stdio", command=command, args=tuple(args), **kwargs)  # type: ignore[arg-type]


class McpClientHttpTests(HttpServersMixin, SimpleTestCase):
    def test_it_inspects_a_streamable_http_server(self) -> None:
        snap = mcp_client.inspect(Target("streamable_http", url=self.http.url), timeout=10)
        self.assertEqual(snap.server_name, "sessionadmin-test-server")
        self.assertEqual(snap.server_version, "1.2.3")
        self.assertIn("tools", snap.capabilities)
        names = [t["name"] for t in snap.tools]
        self.assertIn("add", names)
        add = next(t for t in snap.tools if t["name"] == "add")
        self.assertEqual(add["input_schema"]["required"], ["a", "b"])
        self.assertEqual([r["uri"] for r in snap.resources], ["test://readme"])
        self.assertEqual([p["name"] for p in snap.prompts], ["greet"])

    def test_it_inspects_an_sse_server(self) -> None:
        snap = mcp_client.inspect(Target("sse", url=self.sse.url), timeout=10)
        self.assertEqual(snap.server_name, "sessionadmin-test-server")
        self.assertIn("echo", [t["name"] for t in snap.tools])

    def test_it_calls_a_tool_with_valid_arguments(self) -> None:
        result = mcp_client.call_tool(Target("streamable_http", url=self.http.url), "add", {"a": 2, "b": 40}, timeout=10)
        self.assertFalse(result.is_error)
        self.assertEqual(result.text, ["42"])
        self.assertEqual(result.structured, {"result": 42})

    def test_it_calls_a_tool_over_sse(self) -> None:
        result = mcp_client.call_tool(Target("sse", url=self.sse.url), "echo", {"text": "hi", "times": 2}, timeout=10)
        self.assertEqual(result.text, ["hi hi"])

    def test_it_returns_an_error_result_for_invalid_arguments(self) -> None:
        result = mcp_client.call_tool(Target("streamable_http", url=self.http.url), "add", {"a": "x"}, timeout=10)
        self.assertTrue(result.is_error)
        self.assertIn("validation error", result.text[0])

    def test_it_maps_a_hanging_call_to_timeout(self) -> None:
        with self.assertRaises(McpError) as ctx:
            mcp_client.call_tool(Target("streamable_http", url=self.http.url), "sleep", {"seconds": 5}, timeout=1)
        self.assertEqual(ctx.exception.kind, mcp_client.TIMEOUT)
        self.assertIn("did not answer within 1 s", str(ctx.exception))

    def test_it_maps_a_closed_port_to_refused(self) -> None:
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(Target("streamable_http", url="http://127.0.0.1:9/mcp"), timeout=5)
        self.assertEqual(ctx.exception.kind, mcp_client.REFUSED)
        self.assertTrue(str(ctx.exception).startswith("refused: connection to http://127.0.0.1:9/mcp"))

    def test_it_maps_an_unknown_host_to_unreachable(self) -> None:
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(Target("streamable_http", url="http://no-such-host.invalid/mcp"), timeout=5)
        self.assertEqual(ctx.exception.kind, mcp_client.UNREACHABLE)

    def test_it_maps_a_wrong_path_to_protocol_error(self) -> None:
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(Target("streamable_http", url=self.http.url.replace("/mcp", "/nope")), timeout=5)
        self.assertEqual(ctx.exception.kind, mcp_client.PROTOCOL)

    def test_it_pings_many_with_bounded_concurrency(self) -> None:
        targets = [Target("streamable_http", url=self.http.url)] * 6 + [Target("streamable_http", url="http://127.0.0.1:9/mcp")]
        results = mcp_client.ping_many(targets, timeout=5, concurrency=3)
        self.assertEqual(results[:6], [None] * 6)
        self.assertIsInstance(results[6], McpError)

    def test_it_works_from_a_thread_that_runs_an_event_loop(self) -> None:
        import asyncio

        async def inside_loop() -> float:
            return mcp_client.ping(Target("streamable_http", url=self.http.url), timeout=10)

        self.assertEqual(asyncio.run(inside_loop()), 0.0)


class McpClientAuthTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.http = RunningServer("streamable-http", token=TOKEN)
        cls.addClassCleanup(cls.http.stop)
        cls.sse = RunningServer("sse", token=TOKEN)
        cls.addClassCleanup(cls.sse.stop)

    def test_it_maps_a_401_to_auth_without_the_secret(self) -> None:
        for transport, server in (("streamable_http", self.http), ("sse", self.sse)):
            with self.subTest(transport), self.assertRaises(McpError) as ctx:
                mcp_client.ping(Target(transport, url=server.url, headers={"Authorization": "Bearer wrong-" + TOKEN}), timeout=5)
            self.assertEqual(ctx.exception.kind, mcp_client.AUTH)
            self.assertNotIn(TOKEN, str(ctx.exception))

    def test_it_sends_the_catalog_headers(self) -> None:
        for transport, server in (("streamable_http", self.http), ("sse", self.sse)):
            with self.subTest(transport):
                snap = mcp_client.inspect(
                    Target(transport, url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}), timeout=10
                )
                self.assertEqual(snap.server_version, "1.2.3")


class McpClientDyingServerTests(SimpleTestCase):
    def test_it_maps_an_http_server_dying_mid_call_to_closed(self) -> None:
        server = RunningServer("streamable-http")
        self.addCleanup(server.stop)
        with self.assertRaises(McpError) as ctx:
            mcp_client.call_tool(Target("streamable_http", url=server.url), "crash", {}, timeout=10)
        self.assertEqual(ctx.exception.kind, mcp_client.CLOSED)
        server.proc.wait(timeout=5)
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(Target("streamable_http", url=server.url), timeout=5)
        self.assertEqual(ctx.exception.kind, mcp_client.REFUSED)


class McpClientStdioTests(SimpleTestCase):
    def setUp(self) -> None:
        tmp = tempfile.mkdtemp(prefix="sessionadmin-mcp-")
        self.addCleanup(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
        self.cwd = tmp

    def test_it_runs_a_stdio_server_in_the_workspace_with_a_clean_environment(self) -> None:
        leaks = {
            "DATABASE_URL": "postgres://u:pw@db/x",
            "SESSIONADMIN_SECRET_KEY": "django-secret",
            "CELERY_BROKER_URL": "redis://r",
        }
        with mock.patch.dict(os.environ, leaks):
            result = mcp_client.call_tool(
                stdio_target(env={"CUSTOM_TOKEN": "env-secret-value"}, cwd=self.cwd), "whoami", {}, timeout=30
            )
        info = result.structured
        self.assertEqual(Path(info["cwd"]).resolve(), Path(self.cwd).resolve())
        self.assertIn("CUSTOM_TOKEN", info["env"])
        self.assertLessEqual(set(info["env"]), {"PATH", "HOME", "LANG", "LOGNAME", "SHELL", "TERM", "USER", "CUSTOM_TOKEN"})
        for name in leaks:
            self.assertNotIn(name, info["env"])
        self.assertTrue(process_gone(info["pid"]))

    def test_it_passes_catalog_env_values(self) -> None:
        result = mcp_client.call_tool(
            stdio_target(env={"CUSTOM_TOKEN": "env-secret-value"}), "getenv", {"name": "CUSTOM_TOKEN"}, timeout=30
        )
        self.assertEqual(result.structured, {"result": "env-secret-value"})

    def test_it_reaps_a_hanging_stdio_server_on_timeout(self) -> None:
        pidfile = Path(self.cwd) / "pid"
        with self.assertRaises(McpError) as ctx:
            mcp_client.call_tool(stdio_target(), "sleep", {"seconds": 60, "pidfile": str(pidfile)}, timeout=10)
        self.assertEqual(ctx.exception.kind, mcp_client.TIMEOUT)
        self.assertTrue(process_gone(int(pidfile.read_text())))

    def test_it_maps_a_stdio_server_dying_mid_call_to_closed(self) -> None:
        with self.assertRaises(McpError) as ctx:
            mcp_client.call_tool(stdio_target(), "crash", {}, timeout=30)
        self.assertEqual(ctx.exception.kind, mcp_client.CLOSED)

    def test_it_maps_a_missing_command_to_unreachable(self) -> None:
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(Target("stdio", command="/nonexistent/mcp-server"), timeout=5)
        self.assertEqual(ctx.exception.kind, mcp_client.UNREACHABLE)

    def test_it_redacts_secrets_from_what_a_failing_server_prints(self) -> None:
        script = "import os, sys; print('boom ' + os.environ['API_KEY'], file=sys.stderr); sys.exit(1)"
        target = Target("stdio", command=stdio_command()[0], args=("-c", script), env={"API_KEY": "sk-live-123456"})
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(target, timeout=10)
        self.assertIn("boom [redacted]", str(ctx.exception))
        self.assertNotIn("sk-live-123456", str(ctx.exception))
