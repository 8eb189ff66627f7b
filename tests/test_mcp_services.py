"""sessionadmin.mcp_services against the real gateway and real MCP servers: attach, list, get,
detach, calls, refresh, health, catalog changes, session cleanup, .mcp.json and secrets."""

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
from sessionadmin.models import AgentSession, AuditEntry, GatewayToken, McpClient, McpServer
from tests.base import BaseTransactionTestCase
from tests.celery_worker import wait_for
from tests.gateway import GatewayMixin
from tests.gateway import tearDownModule as stop_gateways
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
    stop_gateways()
    for server in SERVERS.values():
        server.stop()


class McpServicesTestCase(GatewayMixin, BaseTransactionTestCase):
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

    def calls(self, count: int) -> list[AuditEntry]:
        # Tool-call entries are written by the gateway in batches, a few ms after each call.
        return wait_for(lambda: len(found := self.events("mcp_tool_called")) >= count and found, what="the audit entries")


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
        self.assertEqual(set(client.pinned_tools), {t["name"] for t in client.tools})
        self.assertEqual(
            client.pinned_tools["add"]["sha256"], mcp_client.definition_sha256(client.pinned_tools["add"]["definition"])
        )
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

    def test_it_refuses_a_duplicate_client_id_and_a_double_underscore(self) -> None:
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        with self.assertRaises(InvalidInput):
            mcp_services.add_client(self.session.id, server=self.sse_server, client_id="tools-http", actor="alice")
        with self.assertRaises(InvalidInput):
            mcp_services.add_client(self.session.id, server=self.sse_server, client_id="a__b", actor="alice")

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

    def test_a_gateway_that_is_down_is_a_clear_error(self) -> None:
        with override_settings(SESSIONADMIN_GATEWAY_INTERNAL_URL="http://127.0.0.1:9"):
            with self.assertRaises(McpOperationFailed) as ctx:
                mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        self.assertEqual(ctx.exception.kind, "gateway unavailable")
        self.assertTrue(str(ctx.exception).startswith("gateway unavailable: "))
        self.assertEqual(self.events("mcp_client_add_failed")[0].details["kind"], "gateway unavailable")

    def test_a_hanging_call_times_out_and_slow_is_not_down(self) -> None:
        client = mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.call_tool(self.session.id, client.client_id, "sleep", {"seconds": 5}, actor="alice", timeout=1)
        self.assertEqual(ctx.exception.kind, mcp_client.TIMEOUT)
        [called] = self.calls(1)
        self.assertEqual((called.details["outcome"], called.details["kind"]), ("failed", "timeout"))
        client.refresh_from_db()
        self.assertEqual(client.status, McpClient.Status.CONNECTED)

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

    def test_detach_closes_the_live_connection_and_the_stdio_server(self) -> None:
        # A marker of this run in the server's environment finds its processes from outside the
        # sandbox (inside it, pids are those of its own namespace).
        marker = f"mark-{uuid.uuid4().hex}"
        mcp_services.save_server(self.stdio_server, actor="alice", env={"CUSTOM_TOKEN": ENV_SECRET, "RUN_MARK": marker})
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        mcp_services.call_tool(self.session.id, "tools-stdio", "spawn_child", {}, actor="alice")
        self.assertGreaterEqual(len(processes_with(marker, where="environ")), 2)  # the server and its child
        mcp_services.remove_client(self.session.id, "tools-stdio", actor="alice")
        wait_for(lambda: processes_with(marker, where="environ") == [], what="the stdio server and its child to be gone")
        again = mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        # The detached client stays as the session's history beside the new one.
        rows = list(McpClient.objects.order_by("pk").values_list("pk", "status"))
        self.assertEqual([status for _, status in rows], ["closed", "connected"])
        self.assertEqual(rows[1][0], again.pk)

    def test_it_calls_tools_with_valid_and_invalid_arguments(self) -> None:
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        ok = mcp_services.call_tool(self.session.id, "tools-http", "add", {"a": 20, "b": 22}, actor="alice")
        self.assertEqual(ok.structured, {"result": 42})
        bad = mcp_services.call_tool(self.session.id, "tools-http", "add", {"a": "twenty"}, actor="alice")
        self.assertTrue(bad.is_error)
        calls = self.calls(2)
        self.assertEqual([(c.actor, c.details["outcome"]) for c in calls], [("alice", "ok"), ("alice", "error")])
        self.assertEqual(calls[0].details["tool"], "add")
        self.assertIn("duration_ms", calls[0].details)
        self.assertEqual(len(calls[0].details["arguments_sha256"]), 64)
        self.assertNotIn("twenty", json.dumps([c.details for c in calls]))

    def test_a_server_dying_mid_call_puts_the_client_to_reconnecting(self) -> None:
        server = RunningServer("streamable-http")
        self.addCleanup(server.stop)
        entry = mcp_services.save_server(McpServer(name="fragile", transport="streamable_http", url=server.url), actor="alice")
        mcp_services.add_client(self.session.id, server=entry, actor="alice")
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.call_tool(self.session.id, "fragile", "crash", {}, actor="alice")
        self.assertEqual(ctx.exception.kind, mcp_client.CLOSED)
        client = wait_for(
            lambda: McpClient.objects.filter(client_id="fragile", status=McpClient.Status.RECONNECTING).first(),
            what="the reconnecting status",
        )
        self.assertTrue(client.last_error)
        changed = self.events("mcp_client_status_changed")[0]
        self.assertEqual((changed.details["from"], changed.details["to"]), ("connected", "reconnecting"))

    def test_refresh_records_an_unreachable_server(self) -> None:
        server = RunningServer("streamable-http")
        entry = mcp_services.save_server(McpServer(name="going", transport="streamable_http", url=server.url), actor="alice")
        mcp_services.add_client(self.session.id, server=entry, actor="alice")
        server.stop()
        client = mcp_services.refresh_client(self.session.id, "going", actor="alice")
        self.assertEqual(client.status, McpClient.Status.RECONNECTING)
        # Refused (the refresh found it gone) or closed (the connection noticed first).
        self.assertIn(client.last_error.split(":")[0], ("refused", "connection closed", "unreachable"))

    def test_cleanup_closes_clients_and_the_stdio_child_is_gone(self) -> None:
        # A marker of this run in the server's environment finds its processes from outside.
        marker = f"mark-{uuid.uuid4().hex}"
        mcp_services.save_server(self.stdio_server, actor="alice", env={"CUSTOM_TOKEN": ENV_SECRET, "RUN_MARK": marker})
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        result = mcp_services.call_tool(self.session.id, "tools-stdio", "whoami", {}, actor="alice")
        self.assertEqual(result.structured["cwd"], "/workspace")
        self.manager().cleanup_session(self.session.id, actor="alice")
        wait_for(lambda: processes_with(marker, where="environ") == [], what="the stdio server to be gone")
        self.assertEqual(set(McpClient.objects.values_list("status", flat=True)), {"closed"})
        closed = self.events("mcp_client_closed")
        self.assertEqual(sorted(e.details["client_id"] for e in closed), ["tools-http", "tools-stdio"])
        cleaned = self.events("session_cleaned_up")[0]
        self.assertLess(max(e.id for e in closed), cleaned.id)  # clients close before the workspace goes


class CatalogChangeTests(McpServicesTestCase):
    def test_a_changed_entry_reconnects_with_its_new_secret_and_a_deleted_one_closes(self) -> None:
        marker = f"mark-{uuid.uuid4().hex}"
        mcp_services.save_server(self.stdio_server, actor="alice", env={"RUN_MARK": marker})
        mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        self.assertTrue(processes_with(marker, where="environ"))
        mcp_services.save_server(self.guarded_server, actor="alice", headers={"Authorization": "Bearer rotated-0099"})
        wait_for(
            lambda: McpClient.objects.filter(client_id="guarded", status=McpClient.Status.RECONNECTING).exists(),
            what="the reconnect with the rotated (wrong) secret",
        )
        mcp_services.save_server(self.guarded_server, actor="alice", headers={"Authorization": f"Bearer {HEADER_SECRET}"})
        wait_for(
            lambda: McpClient.objects.filter(client_id="guarded", status=McpClient.Status.CONNECTED).exists(),
            timeout=60,
            what="the reconnect with the right secret",
        )
        self.assertEqual(mcp_services.call_tool(self.session.id, "guarded", "add", {"a": 1, "b": 1}, actor="alice").text, ["2"])
        mcp_services.delete_server(self.stdio_server, actor="alice")
        wait_for(lambda: processes_with(marker, where="environ") == [], what="the stdio server of the deleted entry")
        self.assertEqual(McpClient.objects.get(session=self.session, client_id="tools-stdio").status, "closed")
        closed = AuditEntry.objects.get(event_type="mcp_client_closed")
        self.assertEqual(closed.details, {"client_id": "tools-stdio", "reason": "catalog entry deleted"})


class McpJsonTests(McpServicesTestCase):
    def test_it_writes_one_gateway_entry_with_mode_0600(self) -> None:
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
        path = Path(self.session.workspace_path) / ".mcp.json"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        document = json.loads(path.read_text())
        entry = document["mcpServers"]["sessionadmin"]
        self.assertEqual(list(document["mcpServers"]), ["sessionadmin"])
        self.assertEqual(set(entry), {"type", "url", "headers"})
        self.assertEqual((entry["type"], entry["url"]), ("http", f"{self.gateway.url}/sessions/{self.session.id}/mcp"))
        token = entry["headers"]["Authorization"].removeprefix("Bearer ")
        self.assertTrue(GatewayToken.objects.filter(session=self.session, token_hash=mcp_services.hash_gateway_token(token)))
        for secret in (HEADER_SECRET, ENV_SECRET, self.guarded.url, "CUSTOM_TOKEN", stdio_command()[1][0]):
            self.assertNotIn(secret, path.read_text())
        # Written once (first attach): a second attach and a detach leave it alone.
        self.assertEqual(len(self.events("gateway_token_issued")), 1)
        mcp_services.remove_client(self.session.id, "guarded", actor="alice")
        self.assertEqual(json.loads(path.read_text()), document)
        self.assertEqual(sorted(p.name for p in Path(self.session.workspace_path).iterdir()), [".mcp.json"])

    def test_it_never_follows_a_symlink_planted_at_the_config(self) -> None:
        outside = Path(self.workspace_root).parent / "outside.txt"
        outside.write_text("untouched")
        os.symlink(outside, Path(self.session.workspace_path) / ".mcp.json")
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        self.assertEqual(outside.read_text(), "untouched")
        self.assertFalse((Path(self.session.workspace_path) / ".mcp.json").is_symlink())


class SecretsNeverLeakTests(McpServicesTestCase):
    def test_secrets_stay_out_of_audit_rows_errors_results_and_session_info(self) -> None:
        mcp_services.add_client(self.session.id, server=self.guarded_server, actor="alice")
        mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        echoed = mcp_services.call_tool(self.session.id, "tools-stdio", "getenv", {"name": "CUSTOM_TOKEN"}, actor="alice")
        mcp_services.save_server(self.guarded_server, actor="alice", headers={"Authorization": "Bearer wrong"})
        wait_for(lambda: McpClient.objects.filter(client_id="guarded", status="reconnecting").exists(), what="reconnecting")
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.call_tool(self.session.id, "guarded", "add", {"a": 1, "b": 2}, actor="alice")
        mcp_services.health_pass()
        self.manager().cleanup_session(self.session.id, actor="alice")
        stored = json.dumps(list(AuditEntry.objects.values("actor", "event_type", "details")))
        self.assertIn("header_names", stored)
        self.assertEqual(echoed.text, ["[redacted]"])
        for secret in (HEADER_SECRET, ENV_SECRET):
            self.assertNotIn(secret, stored)
            self.assertNotIn(secret, str(ctx.exception))
            self.assertNotIn(secret, json.dumps(self.session.get_session_info(), default=str))
            self.assertNotIn(secret, McpServer.objects.get(name="tools-stdio").env_encrypted)
            self.assertNotIn(secret, json.dumps(list(McpClient.objects.values("last_error", "tools"))))


class HealthPassTests(McpServicesTestCase):
    def test_it_pings_every_live_connection_and_audits_changes_only(self) -> None:
        other = self.manager().create_session("u2", "acme", actor="alice")
        server = RunningServer("streamable-http")
        self.addCleanup(server.stop)
        entry = mcp_services.save_server(McpServer(name="flaky", transport="streamable_http", url=server.url), actor="alice")
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        mcp_services.add_client(self.session.id, server=entry, actor="alice")
        mcp_services.add_client(other.id, server=self.sse_server, actor="alice")
        mcp_services.add_client(other.id, server=self.http_server, actor="alice")
        mcp_services.remove_client(other.id, "tools-http", actor="alice")

        first = mcp_services.health_pass()
        self.assertEqual({k: first[k] for k in ("checked", "ok", "failed")}, {"checked": 3, "ok": 3, "failed": 0})
        server.stop()
        second = mcp_services.health_pass()
        self.assertEqual({k: second[k] for k in ("checked", "ok", "failed")}, {"checked": 3, "ok": 2, "failed": 1})
        flaky = McpClient.objects.get(client_id="flaky")
        self.assertEqual(flaky.status, McpClient.Status.RECONNECTING)
        changes = AuditEntry.objects.filter(event_type="mcp_client_status_changed", details__client_id="flaky")
        self.assertEqual([c.details["to"] for c in changes], ["reconnecting"])

    def test_it_skips_sessions_that_are_not_active(self) -> None:
        mcp_services.add_client(self.session.id, server=self.http_server, actor="alice")
        AgentSession.objects.filter(pk=self.session.pk).update(status=AgentSession.Status.TERMINATING)
        counts = mcp_services.health_pass()
        self.assertEqual((counts["checked"], counts["ok"], counts["failed"]), (0, 0, 0))


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
        # The target the gateway would build with the setting off (the gateway under test runs
        # with it on), used for one connection of this process.
        client = mcp_services.add_client(self.session.id, server=self.stdio_server, actor="alice")
        with override_settings(SESSIONADMIN_STDIO_SANDBOX=False):
            unsandboxed = mcp_services.target_for(client, self.session)
        result = mcp_client.call_tool(unsandboxed, "whoami", {}, timeout=30)
        self.assertEqual(Path(result.structured["cwd"]).resolve(), Path(self.session.workspace_path).resolve())
        sandboxed = mcp_client.call_tool(mcp_services.target_for(client, self.session), "whoami", {}, timeout=30)
        self.assertEqual(sandboxed.structured["cwd"], "/workspace")

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
