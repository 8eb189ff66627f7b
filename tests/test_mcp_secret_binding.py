"""Secrets bound to their target (issue 11, item 3): changing a catalog entry's transport, URL,
command or arguments removes the stored headers and environment values that were not entered
again in the same save, so a credential never reaches another host; the audit records the old
and new target, never a secret value."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from django.urls import reverse

from sessionadmin import mcp_services
from sessionadmin.mcp_services import McpOperationFailed
from sessionadmin.models import AuditEntry, McpServer
from tests.base import PASSWORD, BaseTransactionTestCase
from tests.gateway import GatewayMixin
from tests.gateway import tearDownModule as stop_gateways
from tests.mcp_servers import RunningServer, stdio_command

TOKEN = "bound-secret-Kd4-5150"
NEW_TOKEN = "second-secret-Rt6-2468"
ENV_TOKEN = "env-bound-Lp2-7788"


def tearDownModule() -> None:
    stop_gateways()


class SecretBindingTestCase(GatewayMixin, BaseTransactionTestCase):
    guarded: RunningServer
    logger: RunningServer
    log_dir: Path

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.log_dir = Path(tempfile.mkdtemp(prefix="sec-headers-"))
        cls.addClassCleanup(shutil.rmtree, cls.log_dir, ignore_errors=True)
        cls.guarded = RunningServer("streamable-http", token=TOKEN)
        cls.addClassCleanup(cls.guarded.stop)
        # "The new host": it accepts anything and writes down every header it receives.
        cls.logger = RunningServer("streamable-http", log_headers=cls.log_dir / "headers.jsonl")
        cls.addClassCleanup(cls.logger.stop)

    def setUp(self) -> None:
        super().setUp()
        (self.log_dir / "headers.jsonl").write_text("")  # each test reads only its own requests
        self.session = self.manager().create_session("u1", "acme", actor="alice")
        self.entry = mcp_services.save_server(
            McpServer(name="remote", transport="streamable_http", url=self.guarded.url),
            actor="dave",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )

    def updated(self) -> AuditEntry:
        return AuditEntry.objects.filter(event_type="mcp_server_updated").latest("id")

    def received(self) -> str:
        return json.dumps(self.logger.logged_requests())


class UrlChangeTests(SecretBindingTestCase):
    def test_a_url_change_without_secrets_clears_them_and_the_old_one_never_reaches_the_new_host(self) -> None:
        mcp_services.add_client(self.session.id, server=self.entry, actor="alice")  # the old target works
        self.entry.url = self.logger.url
        saved = mcp_services.save_server(self.entry, actor="dave")
        self.assertEqual(saved.secrets_cleared, ("headers",))
        self.assertEqual(mcp_services.server_headers(McpServer.objects.get(pk=self.entry.pk)), {})
        mcp_services.add_client(self.session.id, server=self.entry, client_id="moved", actor="alice")
        requests = self.logger.logged_requests()
        self.assertTrue(requests)  # the new host was reached...
        self.assertTrue(all("authorization" not in r["headers"] for r in requests))
        self.assertNotIn(TOKEN, self.received())  # ...and never saw the old credential
        workspace_config = (Path(self.session.workspace_path) / ".mcp.json").read_text()
        self.assertNotIn(TOKEN, workspace_config)
        details = self.updated().details
        self.assertEqual(details["changes"], {"url": {"from": self.guarded.url, "to": self.logger.url}})
        self.assertEqual((details["secrets_cleared"], details["header_names"]), (["headers"], []))
        self.assertNotIn(TOKEN, json.dumps(list(AuditEntry.objects.values_list("details", flat=True))))

    def test_a_url_change_with_secrets_entered_again_keeps_the_new_ones(self) -> None:
        self.entry.url = self.logger.url
        saved = mcp_services.save_server(self.entry, actor="dave", headers={"Authorization": f"Bearer {NEW_TOKEN}"})
        self.assertEqual(saved.secrets_cleared, ())
        self.assertEqual(mcp_services.server_headers(saved), {"Authorization": f"Bearer {NEW_TOKEN}"})
        mcp_services.add_client(self.session.id, server=self.entry, actor="alice")
        self.assertIn(f"Bearer {NEW_TOKEN}", self.received())
        self.assertNotIn(TOKEN, self.received())
        self.assertEqual(self.updated().details["secrets_cleared"], [])

    def test_an_unchanged_target_keeps_its_secrets(self) -> None:
        self.entry.description = "renamed only"
        self.assertEqual(mcp_services.save_server(self.entry, actor="dave").secrets_cleared, ())
        self.assertEqual(
            mcp_services.server_headers(McpServer.objects.get(pk=self.entry.pk)), {"Authorization": f"Bearer {TOKEN}"}
        )
        self.assertEqual(self.updated().details["changes"], {})
        mcp_services.add_client(self.session.id, server=self.entry, actor="alice")

    def test_credentials_in_urls_stay_out_of_the_record(self) -> None:
        self.entry.url = "https://user:url-pass-0001@example.test/mcp?api_key=query-secret-0002"
        mcp_services.save_server(self.entry, actor="dave")
        self.assertEqual(self.updated().details["changes"]["url"]["to"], "https://example.test/mcp?api_key=[redacted]")
        stored = json.dumps(list(AuditEntry.objects.values_list("details", flat=True)))
        self.assertNotIn("url-pass-0001", stored)
        self.assertNotIn("query-secret-0002", stored)


class StdioChangeTests(SecretBindingTestCase):
    def test_changing_arguments_or_command_clears_the_environment(self) -> None:
        command, args = stdio_command()
        entry = mcp_services.save_server(
            McpServer(name="local", transport="stdio", command=command, args=args), actor="dave", env={"API_KEY": ENV_TOKEN}
        )
        entry.args = [*args, "--verbose"]
        self.assertEqual(mcp_services.save_server(entry, actor="dave").secrets_cleared, ("env",))
        self.assertEqual(mcp_services.server_env(entry), {})
        details = self.updated().details
        self.assertEqual(details["changes"], {"args": {"from": args, "to": [*args, "--verbose"]}})
        self.assertNotIn(ENV_TOKEN, json.dumps(details))
        entry.args = args
        mcp_services.save_server(entry, actor="dave", env={"API_KEY": ENV_TOKEN})
        self.assertEqual(mcp_services.server_env(entry), {"API_KEY": ENV_TOKEN})

    def test_changing_the_transport_clears_headers(self) -> None:
        command, args = stdio_command()
        self.entry.transport, self.entry.url, self.entry.command, self.entry.args = "stdio", "", command, args
        self.assertEqual(mcp_services.save_server(self.entry, actor="dave").secrets_cleared, ("headers",))
        changes = self.updated().details["changes"]
        self.assertEqual(sorted(changes), ["args", "command", "transport", "url"])
        self.assertEqual(changes["url"], {"from": self.guarded.url, "to": ""})


class FormTests(SecretBindingTestCase):
    def test_the_dashboard_says_the_secrets_were_removed(self) -> None:
        self.client.login(username="dave", password=PASSWORD)
        edit = reverse("mcp_server_edit", args=[self.entry.pk])
        form = {"name": "remote", "transport": "streamable_http", "url": self.logger.url, "enabled": "on"}
        response = self.client.post(edit, form, follow=True)
        self.assertContains(response, "The target of remote changed: its stored headers were removed.")
        self.assertEqual(mcp_services.server_headers(McpServer.objects.get(pk=self.entry.pk)), {})
        # Moving it back does not bring the old credential back either.
        self.assertEqual(self.client.post(edit, {**form, "url": self.guarded.url}).status_code, 302)
        with self.assertRaises(McpOperationFailed) as ctx:
            mcp_services.add_client(self.session.id, server="remote", actor="alice")
        self.assertEqual(ctx.exception.kind, "auth")

    def test_the_admin_keeps_secrets_entered_again(self) -> None:
        self.root.is_staff = True
        self.root.save(update_fields=["is_staff"])
        self.client.force_login(self.root)
        change = reverse("admin:sessionadmin_mcpserver_change", args=[self.entry.pk])
        form = {
            "name": "remote",
            "transport": "streamable_http",
            "url": self.logger.url,
            "enabled": "on",
            "headers_text": f"Authorization: Bearer {NEW_TOKEN}",
        }
        self.assertEqual(self.client.post(change, form).status_code, 302)
        self.assertEqual(
            mcp_services.server_headers(McpServer.objects.get(pk=self.entry.pk)), {"Authorization": f"Bearer {NEW_TOKEN}"}
        )
        del form["headers_text"]
        form["url"] = self.guarded.url
        response = self.client.post(change, form, follow=True)
        self.assertContains(response, "its stored headers were removed")
        self.assertEqual(mcp_services.server_headers(McpServer.objects.get(pk=self.entry.pk)), {})
