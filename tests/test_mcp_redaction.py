"""Redaction everywhere (issue 11, item 5): the Redactor itself, and hostile servers started by
the tests that quote the token part of their bearer header or echo their environment, which
must come out as [redacted] on the pages, in the audit rows (session page, admin, CSV), in the
stored listings and in the logs."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.test import SimpleTestCase
from django.urls import reverse

from sessionadmin import audit, mcp_services
from sessionadmin.mcp_services import McpOperationFailed
from sessionadmin.models import AuditEntry, McpClient, McpServer
from sessionadmin.redaction import MARK, RedactingFilter, Redactor, scope
from tests.base import PASSWORD, BaseTransactionTestCase
from tests.celery_worker import wait_for
from tests.gateway import GatewayMixin
from tests.gateway import tearDownModule as stop_gateways
from tests.mcp_servers import LEAKY_SCRIPT, SANDBOX_PATHS, RunningServer, leaky_stdio_command

TOKEN = "SECRET-HDR-123"  # the token part of the header "Bearer SECRET-HDR-123"
ENV_KEY = "env-Key-Hx9-55501"


def tearDownModule() -> None:
    stop_gateways()


class RedactorTests(SimpleTestCase):
    def test_it_replaces_whole_values_and_their_long_parts(self) -> None:
        r = Redactor([f"Bearer {TOKEN}", "user:hunter2hunter2", "a=averylongvalue,b=x"])
        self.assertEqual(r.text(f"invalid api token: {TOKEN}"), f"invalid api token: {MARK}")
        self.assertEqual(r.text(f"sent Bearer {TOKEN}!"), f"sent {MARK}!")
        self.assertEqual(r.text("password hunter2hunter2 and user"), f"password {MARK} and user")
        self.assertEqual(r.text("got averylongvalue"), f"got {MARK}")
        self.assertEqual(r.text("Bearer alone"), "Bearer alone")  # parts under 8 characters stay

    def test_it_is_case_insensitive_and_sees_percent_encoding(self) -> None:
        r = Redactor(["tok/en with+symbols!"])
        self.assertEqual(r.text("TOK/EN WITH+SYMBOLS!"), MARK)
        self.assertEqual(r.text("q=tok%2Fen%20with%2Bsymbols%21"), f"q={MARK}")
        self.assertEqual(r.text("symbols! is short"), "symbols! is short")

    def test_it_redacts_the_credentials_of_a_basic_header(self) -> None:
        r = Redactor(["Basic " + base64.b64encode(b"alice:wonderland99").decode()])
        self.assertEqual(r.text("bad password wonderland99 for alice"), f"bad password {MARK} for alice")

    def test_short_values_only_as_words_and_tiny_ones_not_at_all(self) -> None:
        r = Redactor(["prod", "1"])
        self.assertEqual(r.text("prod, production, Prod, 1 and 10"), f"{MARK}, production, Prod, 1 and 10")

    def test_it_removes_credentials_from_any_url(self) -> None:
        self.assertEqual(Redactor().text("see https://bob:pw@example.test/x"), f"see https://{MARK}@example.test/x")
        r = Redactor.for_url("https://api.test/mcp?key=query-token-000111&mode=json")
        self.assertEqual(r.text("query-token-000111 json"), f"{MARK} json")

    def test_it_walks_json_keys_and_values(self) -> None:
        r = Redactor([TOKEN])
        data = {TOKEN: [1, None, True, {"nested": f"x {TOKEN} y"}], "n": 2.5}
        self.assertEqual(r.json(data), {MARK: [1, None, True, {"nested": f"x {MARK} y"}], "n": 2.5})
        self.assertNotIn(TOKEN, repr(r))

    def test_log_records_in_scope_are_redacted(self) -> None:
        record = logging.LogRecord("mcp.client.stdio", logging.ERROR, __file__, 1, "bad line %r", (f"k {TOKEN}",), None)
        try:
            raise ValueError(f"input_value='{TOKEN}'")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
        with scope(Redactor([TOKEN])):
            RedactingFilter().filter(record)
        self.assertEqual(record.getMessage(), f"bad line 'k {MARK}'")
        self.assertIn(MARK, record.exc_text or "")
        self.assertNotIn(TOKEN, record.exc_text or "")


@contextmanager
def console_log() -> Iterator[io.StringIO]:
    """What the configured console handler (the one with the RedactingFilter) writes."""
    handlers = [h for h in logging.getLogger().handlers if any(isinstance(f, RedactingFilter) for f in h.filters)]
    assert handlers, "the console handler has no RedactingFilter"
    handler = handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    old = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(old)


class HostileServersTestCase(GatewayMixin, BaseTransactionTestCase):
    echo: RunningServer
    rejecting: RunningServer

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.echo = RunningServer("streamable-http", script=LEAKY_SCRIPT)
        cls.addClassCleanup(cls.echo.stop)
        cls.rejecting = RunningServer("streamable-http", script=LEAKY_SCRIPT, options=("--reject",))
        cls.addClassCleanup(cls.rejecting.stop)

    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u1", "acme", actor="alice")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        self.echo_entry = mcp_services.save_server(
            McpServer(name="echoing", transport="streamable_http", url=self.echo.url), actor="dave", headers=bearer
        )
        self.rejecting_entry = mcp_services.save_server(
            McpServer(name="rejecting", transport="streamable_http", url=self.rejecting.url), actor="dave", headers=bearer
        )
        command, args = leaky_stdio_command()
        self.env_entry = mcp_services.save_server(
            McpServer(name="env-echo", transport="stdio", command=command, args=args, read_only_paths=list(SANDBOX_PATHS)),
            actor="dave",
            env={"API_KEY": ENV_KEY},
        )
        self.client.login(username="alice", password=PASSWORD)

    def called(self, count: int = 1) -> list[AuditEntry]:
        # Tool-call entries are written by the gateway in batches, a few ms after each call.
        return wait_for(
            lambda: len(found := list(AuditEntry.objects.filter(event_type="mcp_tool_called").order_by("id"))) >= count and found,
            what="the tool-call audit entries",
        )

    def tool_url(self, client_id: str, tool: str) -> str:
        return reverse("session_mcp_tool", args=[self.session.id, client_id, tool])

    def assert_nowhere(self, *texts: str) -> None:
        """Neither secret in the audit rows, the stored clients, the session page, the MCP
        panel, the admin (list, each entry) or its CSV export."""
        for text in texts:
            for secret in (TOKEN, ENV_KEY):
                self.assertNotIn(secret, text)
                self.assertNotIn(secret.lower(), text.lower())
        stored = json.dumps(list(AuditEntry.objects.values("event_type", "details")))
        clients = json.dumps(list(McpClient.objects.values()), default=str)
        pages = [self.client.get(reverse("session_detail", args=[self.session.id])).content.decode()]
        pages.append(self.client.get(reverse("session_mcp", args=[self.session.id])).content.decode())
        self.root.is_staff = True
        self.root.save(update_fields=["is_staff"])
        self.client.force_login(self.root)
        pages.append(self.client.get(reverse("admin:sessionadmin_auditentry_changelist")).content.decode())
        for pk in AuditEntry.objects.values_list("pk", flat=True):
            pages.append(self.client.get(reverse("admin:sessionadmin_auditentry_change", args=[pk])).content.decode())
        export = self.client.get(reverse("admin:sessionadmin_auditentry_export"))
        pages.append(b"".join(export.streaming_content).decode())
        self.client.login(username="alice", password=PASSWORD)
        for where, text in [("audit rows", stored), ("clients", clients), *(("page", p) for p in pages)]:
            for secret in (TOKEN, ENV_KEY):
                self.assertNotIn(secret.lower(), text.lower(), f"{secret} in {where}")


class TokenEchoTests(HostileServersTestCase):
    def test_a_result_quoting_the_token_is_redacted_on_the_page_and_in_the_audit(self) -> None:
        mcp_services.add_client(self.session.id, server=self.echo_entry, actor="alice")
        page = self.client.post(self.tool_url("echoing", "token_echo"), {}).content.decode()
        self.assertIn(f"invalid api token: {MARK}", page)
        failed = self.client.post(self.tool_url("echoing", "token_fail"), {}).content.decode()
        self.assertIn('data-is-error="true"', failed)
        self.assertIn(f"invalid api token: {MARK}", failed)
        self.called(2)
        self.assert_nowhere(page, failed)

    def test_a_handshake_refused_with_the_token_is_redacted_in_the_failure(self) -> None:
        attach = reverse("session_mcp_attach", args=[self.session.id])
        response = self.client.post(attach, {"server": self.rejecting_entry.pk}, headers={"HX-Request": "true"})
        self.assertContains(response, f"invalid api token: {MARK}")
        [failed] = AuditEntry.objects.filter(event_type="mcp_client_add_failed")
        self.assertIn(f"invalid api token: {MARK}", failed.details["error"])
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.add_client(self.session.id, server=self.rejecting_entry, actor="alice")
        self.assertNotIn(TOKEN, str(ctx.exception))
        self.assert_nowhere(response.content.decode())


class EnvEchoTests(HostileServersTestCase):
    def test_what_a_stdio_server_echoes_of_its_env_is_redacted(self) -> None:
        client = mcp_services.add_client(self.session.id, server=self.env_entry, actor="alice")
        self.assertEqual(client.server_name, f"leaky {MARK}")
        keyed = next(t for t in client.tools if t["name"] == "keyed")
        self.assertEqual(keyed["description"], f"Uses the key {MARK} for everything.")
        page = self.client.post(self.tool_url("env-echo", "environ"), {}).content.decode()
        self.assertIn(f"&quot;API_KEY&quot;: &quot;{MARK}&quot;", page)  # structured content
        self.assertIn(MARK, page.split("Structured content")[0])  # and the text block
        self.called(1)
        self.assert_nowhere(page)

    def test_a_stderr_tail_quoting_the_env_is_redacted(self) -> None:
        mcp_services.add_client(self.session.id, server=self.env_entry, actor="alice")
        page = self.client.post(self.tool_url("env-echo", "stderr_exit"), {}).content.decode()
        self.assertIn(f"could not authenticate with key {MARK}", page)

        # The gateway records the dead connection on its own, a moment after the call failed.
        def status_change_with_error() -> AuditEntry | None:
            entries = AuditEntry.objects.filter(event_type="mcp_client_status_changed")
            return next((e for e in entries if "error" in e.details), None)

        changed = wait_for(status_change_with_error, what="the status change")
        self.assertIn(MARK, changed.details["error"])
        self.assertIn(MARK, McpClient.objects.get(client_id="env-echo").last_error)
        self.assert_nowhere(page)

    def test_an_error_quoting_the_env_is_redacted_everywhere(self) -> None:
        mcp_services.add_client(self.session.id, server=self.env_entry, actor="alice")
        page = self.client.post(self.tool_url("env-echo", "env_protocol_error"), {}).content.decode()
        self.assertIn(f"invalid api key: {MARK}", page)
        [called] = self.called(1)
        self.assertIn(f"invalid api key: {MARK}", called.details["error"])
        self.assert_nowhere(page)


class LogTests(SimpleTestCase):
    def test_what_is_logged_during_an_operation_is_redacted_on_the_console(self) -> None:
        """The SDK logs from tasks of its own: the operation's redactor reaches them (a
        context variable) and the console handler's filter applies it."""
        import anyio

        async def operation() -> None:
            async def sdk_task() -> None:
                logging.getLogger("mcp.client").error("could not parse %r", f"line with {ENV_KEY}")

            with scope(Redactor([ENV_KEY])):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sdk_task)

        with console_log() as stream:
            anyio.run(operation)
            logging.getLogger("mcp.client").error("outside any operation: https://u:pw-000111@host.test/x")
        logged = stream.getvalue()
        self.assertIn(f"could not parse 'line with {MARK}'", logged)
        self.assertNotIn(ENV_KEY, logged)
        self.assertIn(f"https://{MARK}@host.test/x", logged)


class OldRowsTests(HostileServersTestCase):
    def test_rows_written_before_redaction_are_shown_redacted(self) -> None:
        # An entry as the unredacted code wrote them: append-only, so it is cleaned when shown.
        details = {"client_id": "echoing", "kind": "protocol error", "error": f"invalid api token: {TOKEN}"}
        audit.write([audit.session_entry("mcp_client_add_failed", self.session, "alice", details)])
        timeline = self.client.get(reverse("session_detail", args=[self.session.id])).content.decode()
        self.assertIn(f"invalid api token: {MARK}", timeline)
        self.root.is_staff = True
        self.root.save(update_fields=["is_staff"])
        self.client.force_login(self.root)
        export = self.client.get(reverse("admin:sessionadmin_auditentry_export"), {"event_type": "mcp_client_add_failed"})
        rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
        self.assertIn(f"invalid api token: {MARK}", rows[1][6])
        self.assertNotIn(TOKEN, json.dumps(rows))
        entry = AuditEntry.objects.get(event_type="mcp_client_add_failed")
        self.assertNotContains(self.client.get(reverse("admin:sessionadmin_auditentry_change", args=[entry.pk])), TOKEN)
        self.assertNotContains(self.client.get(reverse("admin:sessionadmin_auditentry_changelist")), TOKEN)
        self.assertEqual(AuditEntry.objects.get(pk=entry.pk).details["error"], f"invalid api token: {TOKEN}")  # untouched
