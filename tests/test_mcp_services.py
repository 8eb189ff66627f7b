"""sessionadmin.mcp_services against real MCP servers: attach, list, get, detach, calls,
health, session cleanup, .mcp.json and secrets."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

from django.core.exceptions import ValidationError
from django.test import override_settings

from sessionadmin import mcp_client, mcp_services
from sessionadmin.manager import InvalidInput, MCPClientNotFound, SessionNotFound
from sessionadmin.mcp_services import McpOperationFailed
from sessionadmin.models import AgentSession, AuditEntry, McpClient, McpServer
from tests.base import BaseTestCase
from tests.mcp_servers import SANDBOX_PATHS, RunningServer, processes_with, stdio_command

HEADER_SECRET = "hdr-secret-Xy7-0042"
ENV_SECRET = "env-secret-Qw3-0099"


SERVERS: dict[str, RunningServer] = {}


def setUpModule() -> None:
    # One set of servers for the whole module: each start costs the SDK's import time.
    for name, transport, token in (
        ("http", "streamable-http", ""),
        ("sse", "sse", ""),
        ("guarded", "streamable-http", HEADER_SECRET),
    ):
        SERVERS[name] = RunningServer(transport, token=token)


def tearDownModule() -> None:
    for server in SERVERS.values():
        server.stop()


class McpServicesTestCase(BaseTestCase):
    @property
    def http(self) -> RunningServer:
        return SERVERS["http"]

    @property
    def sse(self) -> RunningServer:
        return SERVERS["sse"]

    @property
    def guarded(self) -> RunningServer:
        return SERVERS["guarded"]

    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u1", "acme", actor="alice")
        self.http_server = mcp_services.save_server(
            McpServer(name="tools-http", transport="streamable_http", url=self.http.url), actor="alice"
        )
        self.sse_server = mcp_services.save_server(McpServer(name="tools-sse", transport="sse", url=self.sse.url), actor="alice")
        self.guarded_server = mcp_services.save_server(
            McpServer(name="guarded", transport="streamable_http", url=self.guarded.url),
            actor="alice",
            headers={"Authorization": f"Bearer {HEADER_SECRET}"},
        )
        command, args = stdio_command()
        self.stdio_server = mcp_services.save_server(
            McpServer(name="tools-stdio", transport="stdio", command=command, args=args, read_only_paths=list(SANDBOX_PATHS)),
            actor="alice",
            env={"CUSTOM_TOKEN": ENV_SECRET},
        )

    def events(self, event_type: str) -> list[AuditEntry]:
        return list(AuditEntry.objects.filter(event_type=event_type, session_id=self.session.id).order_by("id"))


class AttachTests(McpServicesTestCase):
    def test_it_attaches_a_catalog_server_over_streamable_http(self) -> None:
        client = mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        self.assertEqual(client.client_id, "tools-http")
        self.assertEqual(client.status, McpClient.Status.CONNECTED)
        self.assertEqual((client.server_name, client.server_version), ("sessionadmin-test-server", "1.2.3"))
        self.assertTrue(client.protocol_version)
        self.assertIn("tools", client.capabilities)
        self.assertIn("add", [t["name"] for t in client.tools])
        self.assertEqual(client.resources[0]["uri"], "test://readme")
        self.assertEqual(client.prompts[0]["name"], "greet")
        self.assertIsNotNone(client.last_verified_at)
        [added] = self.events("mcp_client_added")
        self.assertEqual(added.actor, "alice")
        self.assertEqual(added.details["client_id"], "tools-http")

    def test_it_attaches_over_sse_and_stdio(self) -> None:
        sse = mcp_services.add_client(self.session.id, server=self.sse_server, actor="alice")
        stdio = mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        self.assertEqual(sse.server_name, "sessionadmin-test-server")
        self.assertEqual(stdio.server_name, "sessionadmin-test-server")
        self.assertEqual([c.client_id for c in self.session.list_mcp_clients()], ["tools-sse", "tools-stdio"])

    def test_it_attaches_an_adhoc_url(self) -> None:
        client = mcp_services.add_client(
            self.session.id, url=self.http.url, transport="streamable_http", client_id="adhoc", actor="alice"
        )
        self.assertIsNone(client.server)
        self.assertEqual(client.url, self.http.url)

    def test_it_refuses_a_stdio_adhoc_attachment(self) -> None:
        with self.assertRaises(InvalidInput):
            mcp_services.add_client(self.session.id, url="http://127.0.0.1:9/x", transport="stdio", actor="alice")

    def test_it_refuses_a_duplicate_client_id(self) -> None:
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        with self.assertRaises(InvalidInput):
            mcp_services.add_client(self.session.id, server=self.sse_server, client_id="tools-http", actor="alice")

    def test_a_failed_attach_leaves_no_client_and_is_audited(self) -> None:
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.add_client(self.session.id, url="http://127.0.0.1:9/mcp", client_id="dead", actor="alice")
        self.assertEqual(ctx.exception.kind, mcp_client.UNREACHABLE)
        self.assertFalse(McpClient.objects.exists())
        [failed] = self.events("mcp_client_add_failed")
        self.assertEqual(failed.details["kind"], "unreachable")
        self.assertEqual(failed.details["client_id"], "dead")

    def test_a_wrong_credential_is_an_auth_failure(self) -> None:
        mcp_services.save_server(self.guarded_server, actor="alice", headers={"Authorization": "Bearer nope"})
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
        self.assertEqual(ctx.exception.kind, mcp_client.AUTH)

    def test_a_hanging_server_times_out(self) -> None:
        client = mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.call_tool(self.session.id, client.client_id, "sleep", {"seconds": 5}, actor="alice", timeout=1)
        self.assertEqual(ctx.exception.kind, mcp_client.TIMEOUT)
        [called] = self.events("mcp_tool_called")
        self.assertTrue(called.details["is_error"])
        self.assertEqual(called.details["kind"], "timeout")
        client.refresh_from_db()
        self.assertEqual(client.status, McpClient.Status.CONNECTED)  # slow is not down

    def test_it_needs_an_active_session(self) -> None:
        self.manager().cleanup_session(self.session.id, actor="alice")
        with self.assertRaises(SessionNotFound):
            mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")


class ClientLifecycleTests(McpServicesTestCase):
    def test_session_objects_expose_the_seed_api(self) -> None:
        session = self.manager().get_session(self.session.id)
        added = session.add_mcp_client(self.http_server, actor="alice")
        self.assertEqual(session.get_mcp_client("tools-http").pk, added.pk)
        self.assertEqual([c.client_id for c in session.list_mcp_clients()], ["tools-http"])
        self.assertEqual(session.get_session_info()["mcp_client_ids"], ["tools-http"])
        session.remove_mcp_client("tools-http", actor="alice")
        self.assertEqual(session.list_mcp_clients(), [])
        with self.assertRaises(MCPClientNotFound):
            session.get_mcp_client("tools-http")
        with self.assertRaises(MCPClientNotFound):
            session.remove_mcp_client("tools-http")
        [removed] = self.events("mcp_client_removed")
        self.assertEqual(removed.details, {"client_id": "tools-http"})

    def test_it_reattaches_a_removed_client_id(self) -> None:
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        mcp_services.remove_client(self.session.id, "tools-http", actor="alice")
        again = mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        # The detached client stays as history beside the new one.
        rows = list(McpClient.objects.order_by("pk").values_list("pk", "status"))
        self.assertEqual(len(rows), 2)
        self.assertEqual(rows[0][1], "closed")
        self.assertEqual(rows[1], (again.pk, "connected"))

    def test_it_calls_tools_with_valid_and_invalid_arguments(self) -> None:
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        ok = mcp_services.call_tool(self.session.id, "tools-http", "add", {"a": 20, "b": 22}, actor="alice")
        self.assertEqual(ok.structured, {"result": 42})
        bad = mcp_services.call_tool(self.session.id, "tools-http", "add", {"a": "twenty"}, actor="alice")
        self.assertTrue(bad.is_error)
        calls = self.events("mcp_tool_called")
        self.assertEqual([c.details["is_error"] for c in calls], [False, True])
        self.assertEqual(calls[0].details["tool"], "add")
        self.assertEqual(calls[0].details["arguments"], "redacted")
        self.assertIn("duration_ms", calls[0].details)
        self.assertNotIn("twenty", json.dumps([c.details for c in calls]))

    def test_a_server_dying_mid_call_marks_the_client_in_error(self) -> None:
        server = RunningServer("streamable-http")
        self.addCleanup(server.stop)
        entry = mcp_services.save_server(McpServer(name="fragile", transport="streamable_http", url=server.url), actor="alice")
        mcp_services.add_client(self.session.id, server=entry, actor="alice")
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.call_tool(self.session.id, "fragile", "crash", {}, actor="alice")
        self.assertEqual(ctx.exception.kind, mcp_client.CLOSED)
        client = McpClient.objects.get(client_id="fragile")
        self.assertEqual(client.status, McpClient.Status.ERROR)
        self.assertIn("connection closed", client.last_error)
        [changed] = self.events("mcp_client_status_changed")
        self.assertEqual((changed.details["from"], changed.details["to"]), ("connected", "error"))

    def test_refresh_records_an_unreachable_server(self) -> None:
        server = RunningServer("streamable-http")
        entry = mcp_services.save_server(McpServer(name="going", transport="streamable_http", url=server.url), actor="alice")
        mcp_services.add_client(self.session.id, server=entry, actor="alice")
        server.stop()
        client = mcp_services.refresh_client(self.session.id, "going", actor="alice")
        self.assertEqual(client.status, McpClient.Status.ERROR)
        self.assertTrue(client.last_error.startswith("unreachable: could not connect to the MCP server at "))

    def test_cleanup_closes_clients_and_the_stdio_child_is_gone(self) -> None:
        # A marker of this run in the server's environment finds its processes from outside.
        marker = f"mark-{uuid.uuid4().hex}"
        mcp_services.save_server(self.stdio_server, actor="alice", env={"CUSTOM_TOKEN": ENV_SECRET, "RUN_MARK": marker})
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        result = mcp_services.call_tool(self.session.id, "tools-stdio", "whoami", {}, actor="alice")
        self.assertEqual(result.structured["cwd"], "/workspace")
        self.manager().cleanup_session(self.session.id, actor="alice")
        self.assertEqual(processes_with(marker, where="environ"), [])
        self.assertEqual(set(McpClient.objects.values_list("status", flat=True)), {"closed"})
        closed = self.events("mcp_client_closed")
        self.assertEqual(sorted(e.details["client_id"] for e in closed), ["tools-http", "tools-stdio"])
        cleaned = self.events("session_cleaned_up")[0]
        self.assertLess(max(e.id for e in closed), cleaned.id)  # clients close before the workspace goes


class McpJsonTests(McpServicesTestCase):
    def test_it_writes_the_standard_config_with_mode_0600(self) -> None:
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.sse_server, actor="alice")
        path = Path(self.session.workspace_path) / ".mcp.json"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        command, args = stdio_command()
        self.assertEqual(
            json.loads(path.read_text()),
            {
                "mcpServers": {
                    "tools-stdio": {"command": command, "args": args, "env": {"CUSTOM_TOKEN": ENV_SECRET}},
                    "guarded": {"type": "http", "url": self.guarded.url, "headers": {"Authorization": f"Bearer {HEADER_SECRET}"}},
                    "tools-sse": {"type": "sse", "url": self.sse.url},
                }
            },
        )
        mcp_services.remove_client(self.session.id, "guarded", actor="alice")
        self.assertEqual(sorted(json.loads(path.read_text())["mcpServers"]), ["tools-sse", "tools-stdio"])
        self.assertEqual(sorted(p.name for p in Path(self.session.workspace_path).iterdir()), [".mcp.json"])

    def test_it_never_follows_a_symlink_planted_at_the_config(self) -> None:
        outside = Path(self.workspace_root).parent / "outside.txt"
        outside.write_text("untouched")
        os.symlink(outside, Path(self.session.workspace_path) / ".mcp.json")
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        self.assertEqual(outside.read_text(), "untouched")
        self.assertFalse((Path(self.session.workspace_path) / ".mcp.json").is_symlink())

    def test_it_rewrites_live_configs_when_the_catalog_changes(self) -> None:
        mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        path = Path(self.session.workspace_path) / ".mcp.json"
        with self.captureOnCommitCallbacks(execute=True):
            mcp_services.save_server(self.guarded_server, actor="alice", headers={"Authorization": "Bearer rotated-0099"})
        self.assertEqual(
            json.loads(path.read_text())["mcpServers"]["guarded"]["headers"], {"Authorization": "Bearer rotated-0099"}
        )
        with self.captureOnCommitCallbacks(execute=True):
            mcp_services.delete_server(self.stdio_server, actor="alice")
        self.assertEqual(sorted(json.loads(path.read_text())["mcpServers"]), ["guarded"])
        self.assertEqual(McpClient.objects.get(session=self.session, client_id="tools-stdio").status, "closed")
        closed = AuditEntry.objects.get(event_type="mcp_client_closed")
        self.assertEqual(closed.details, {"client_id": "tools-stdio", "reason": "catalog entry deleted"})

    def test_config_for_the_api_masks_secrets_unless_asked(self) -> None:
        mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
        masked = mcp_services.mcp_config_for(self.session, include_secrets=False)
        self.assertEqual(masked["mcpServers"]["guarded"]["headers"], {"Authorization": "••••0042"})
        full = mcp_services.mcp_config_for(self.session, include_secrets=True)
        self.assertEqual(full["mcpServers"]["guarded"]["headers"], {"Authorization": f"Bearer {HEADER_SECRET}"})


class SecretsNeverLeakTests(McpServicesTestCase):
    def test_secrets_stay_out_of_audit_rows_logs_and_session_info(self) -> None:
        with self.assertLogs(level="DEBUG") as logs:
            mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
            mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
            mcp_services.call_tool(self.session.id, "tools-stdio", "getenv", {"name": "CUSTOM_TOKEN"}, actor="alice")
            mcp_services.save_server(self.guarded_server, actor="alice", headers={"Authorization": "Bearer wrong"})
            with self.assertRaises(McpOperationFailed) as ctx:
                mcp_services.call_tool(self.session.id, "guarded", "add", {"a": 1, "b": 2}, actor="alice")
            mcp_services.health_pass(concurrency=2)
            self.manager().cleanup_session(self.session.id, actor="alice")
        stored = json.dumps(list(AuditEntry.objects.values("actor", "event_type", "details")))
        self.assertIn("header_names", stored)
        for secret in (HEADER_SECRET, ENV_SECRET):
            self.assertNotIn(secret, stored)
            self.assertNotIn(secret, "\n".join(logs.output))
            self.assertNotIn(secret, str(ctx.exception))
            self.assertNotIn(secret, json.dumps(self.session.get_session_info(), default=str))
            self.assertNotIn(secret, McpServer.objects.get(name="tools-stdio").env_encrypted)


class HealthPassTests(McpServicesTestCase):
    def test_it_checks_every_open_client_of_active_sessions_and_audits_changes_only(self) -> None:
        other = self.manager().create_session("u2", "acme", actor="alice")
        server = RunningServer("streamable-http")
        entry = mcp_services.save_server(McpServer(name="flaky", transport="streamable_http", url=server.url), actor="alice")
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        mcp_services.add_client(self.session.id, server=entry, actor="alice")
        mcp_services.add_client(other.id, server=self.sse_server, actor="alice")
        mcp_services.add_client(other.id, server=self.http_server, actor="alice")
        mcp_services.remove_client(other.id, "tools-http", actor="alice")

        self.assertEqual(mcp_services.health_pass(concurrency=2), {"checked": 3, "ok": 3, "failed": 0, "changed": 0})
        server.stop()
        self.assertEqual(mcp_services.health_pass(concurrency=2), {"checked": 3, "ok": 2, "failed": 1, "changed": 1})
        self.assertEqual(mcp_services.health_pass(concurrency=2), {"checked": 3, "ok": 2, "failed": 1, "changed": 0})
        flaky = McpClient.objects.get(client_id="flaky")
        self.assertEqual(flaky.status, McpClient.Status.ERROR)
        changes = AuditEntry.objects.filter(event_type="mcp_client_status_changed")
        self.assertEqual(
            [(c.actor, c.details["client_id"], c.details["to"]) for c in changes], [("system:mcp-health", "flaky", "error")]
        )

    def test_it_skips_sessions_that_are_not_active(self) -> None:
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        AgentSession.objects.filter(pk=self.session.pk).update(status=AgentSession.Status.TERMINATING)
        self.assertEqual(mcp_services.health_pass(), {"checked": 0, "ok": 0, "failed": 0, "changed": 0})


class SandboxAndPolicyTests(McpServicesTestCase):
    def test_targets_carry_the_sandbox_and_the_url_policy(self) -> None:
        self.stdio_server.network = True
        mcp_services.save_server(self.stdio_server, actor="alice")
        stdio = mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        http = mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        with override_settings(SESSIONADMIN_MCP_MAX_RESULT_BYTES=1234):
            target = mcp_services.target_for(stdio, self.session)
            self.assertEqual((target.sandbox, target.network, target.cwd), (True, True, self.session.workspace_path))
            self.assertEqual(target.read_only_paths, SANDBOX_PATHS)
            self.assertEqual(target.max_result_bytes, 1234)
            target = mcp_services.target_for(http, self.session)
            self.assertEqual((target.allowed_hosts, target.max_result_bytes), (("127.0.0.1",), 1234))
        with override_settings(SESSIONADMIN_STDIO_SANDBOX=False):
            self.assertFalse(mcp_services.target_for(stdio, self.session).sandbox)

    def test_with_the_sandbox_off_a_stdio_server_runs_in_the_workspace_itself(self) -> None:
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        with override_settings(SESSIONADMIN_STDIO_SANDBOX=False):
            result = mcp_services.call_tool(self.session.id, "tools-stdio", "whoami", {}, actor="alice")
        self.assertEqual(Path(result.structured["cwd"]).resolve(), Path(self.session.workspace_path).resolve())
        self.assertEqual(
            mcp_services.call_tool(self.session.id, "tools-stdio", "whoami", {}, actor="alice").structured["cwd"], "/workspace"
        )

    def test_saving_refuses_internal_urls_and_paths_that_would_show_the_dashboard(self) -> None:
        with override_settings(SESSIONADMIN_MCP_ALLOWED_HOSTS=[]), self.assertRaises(ValidationError) as ctx:
            mcp_services.save_server(McpServer(name="meta", transport="sse", url="http://169.254.169.254/sse"), actor="alice")
        self.assertIn("169.254.169.254 is a cloud metadata address", str(ctx.exception.message_dict["url"]))
        self.stdio_server.read_only_paths = [str(Path(self.session.workspace_path).parent)]
        with self.assertRaises(ValidationError) as ctx:
            mcp_services.save_server(self.stdio_server, actor="alice")
        self.assertIn("may not be, contain or lie inside", str(ctx.exception.message_dict["read_only_paths"]))
        self.assertFalse(McpServer.objects.filter(name="meta").exists())

    def test_a_catalog_url_no_longer_allowed_is_refused_on_attach(self) -> None:
        with override_settings(SESSIONADMIN_MCP_ALLOWED_HOSTS=[]), self.assertRaises(InvalidInput) as ctx:
            mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        self.assertIn("URL of tools-http refused: 127.0.0.1 is a loopback address", str(ctx.exception))
        self.assertFalse(McpClient.objects.exists())
