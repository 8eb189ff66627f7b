"""The MCP pages against the real gateway: a session's MCP panel (attach, refresh, detach, call a
tool and poll its result, review changed tools, the live feed of calls) and the catalog."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid

from django.conf import settings
from django.contrib.auth.models import Permission
from django.test import override_settings
from django.urls import reverse

from sessionadmin import mcp_services
from sessionadmin.models import AuditEntry, McpClient, McpServer
from tests.base import PASSWORD, BaseTransactionTestCase
from tests.celery_worker import wait_for
from tests.gateway import GatewayMixin, tearDownModule  # noqa: F401
from tests.mcp_servers import SANDBOX_PATHS, RunningServer, stdio_command

SECRET = "view-secret-Pp9-7731"


class McpViewsTestCase(GatewayMixin, BaseTransactionTestCase):
    http: RunningServer

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.http = RunningServer("streamable-http", token=SECRET)
        cls.addClassCleanup(cls.http.stop)

    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u1", "acme", actor="alice")
        self.server = mcp_services.save_server(
            McpServer(name="tools", transport="streamable_http", url=self.http.url),
            actor="alice",
            headers={"Authorization": f"Bearer {SECRET}"},
        )
        self.panel_url = reverse("session_mcp", args=[self.session.id])
        self.attach_url = reverse("session_mcp_attach", args=[self.session.id])

    def login(self, user: str) -> None:
        self.client.login(username=user, password=PASSWORD)

    def attach(self) -> McpClient:
        return mcp_services.add_client(self.session.id, server=self.server, actor="alice")

    def calls(self, count: int) -> list[AuditEntry]:
        return wait_for(
            lambda: len(found := list(AuditEntry.objects.filter(event_type="mcp_tool_called").order_by("id"))) >= count and found,
            what="the audit entries",
        )


class PanelTests(McpViewsTestCase):
    def test_it_shows_the_panel_to_viewers(self) -> None:
        self.attach()
        self.login("bob")
        response = self.client.get(self.panel_url)
        self.assertContains(response, "sessionadmin-test-server 1.2.3")
        self.assertContains(response, f"/sessions/{self.session.id}/mcp")
        self.assertContains(response, "badge-connected")
        self.assertContains(response, "last verified")
        self.assertContains(response, "test://readme")
        self.assertNotContains(response, "Attach a server")
        self.assertNotContains(response, SECRET)

    def test_it_renders_the_partial_for_htmx(self) -> None:
        self.login("alice")
        response = self.client.get(self.panel_url, headers={"HX-Request": "true"})
        self.assertContains(response, 'id="mcp-clients"')
        self.assertContains(response, "Attach a server")
        self.assertNotContains(response, "<html")

    def test_it_is_404_for_strangers_and_unknown_sessions(self) -> None:
        self.login("charlie")
        self.assertEqual(self.client.get(self.panel_url).status_code, 404)
        self.login("alice")
        self.assertEqual(self.client.get(reverse("session_mcp", args=[uuid.uuid4()])).status_code, 404)


class AttachViewTests(McpViewsTestCase):
    def test_it_attaches_a_catalog_server(self) -> None:
        self.login("alice")
        response = self.client.post(self.attach_url, {"server": self.server.pk}, headers={"HX-Request": "true"})
        self.assertContains(response, "Attached tools")
        self.assertContains(response, "sessionadmin-test-server")
        self.assertNotContains(response, SECRET)
        self.assertEqual(McpClient.objects.get().created_by, "alice")

    def test_it_redirects_a_plain_post(self) -> None:
        self.login("alice")
        response = self.client.post(self.attach_url, {"server": self.server.pk})
        self.assertRedirects(response, self.panel_url)

    def test_it_shows_a_failed_attach_without_a_client(self) -> None:
        mcp_services.save_server(self.server, actor="alice", headers={"Authorization": "Bearer wrong"})
        self.login("alice")
        response = self.client.post(self.attach_url, {"server": self.server.pk}, headers={"HX-Request": "true"})
        self.assertContains(response, "Attach failed: auth:")
        self.assertFalse(McpClient.objects.exists())
        # The chosen server stays selected for a retry.
        self.assertContains(response, f'<option value="{self.server.pk}" selected>')

    def test_it_offers_an_adhoc_url_only_with_the_permission(self) -> None:
        self.login("alice")
        response = self.client.post(self.attach_url, {"url": "http://127.0.0.1:9/mcp"}, headers={"HX-Request": "true"})
        self.assertContains(response, "Choose a catalog server.")
        self.assertNotContains(response, 'name="url"')
        self.alice.user_permissions.add(Permission.objects.get(codename="attach_adhoc_mcp"))
        response = self.client.post(
            self.attach_url, {"url": "http://127.0.0.1:9/mcp", "transport": "streamable_http"}, headers={"HX-Request": "true"}
        )
        self.assertContains(response, "Attach failed: unreachable: could not connect to the MCP server at")
        self.assertEqual(AuditEntry.objects.filter(event_type="mcp_client_add_failed").count(), 1)

    def test_it_is_post_only_and_for_operators(self) -> None:
        self.login("alice")
        self.assertEqual(self.client.get(self.attach_url).status_code, 405)
        self.login("bob")
        self.assertEqual(self.client.post(self.attach_url, {"server": self.server.pk}).status_code, 403)
        self.login("charlie")
        self.assertEqual(self.client.post(self.attach_url, {"server": self.server.pk}).status_code, 404)
        self.login("alice")
        self.assertEqual(self.client.post(reverse("session_mcp_attach", args=[uuid.uuid4()])).status_code, 404)
        self.assertFalse(McpClient.objects.exists())


class ClientActionViewTests(McpViewsTestCase):
    def test_it_refreshes_and_detaches(self) -> None:
        self.attach()
        self.login("alice")
        refresh = reverse("session_mcp_refresh", args=[self.session.id, "tools"])
        self.assertContains(self.client.post(refresh, headers={"HX-Request": "true"}), "tools answered.")
        detach = reverse("session_mcp_detach", args=[self.session.id, "tools"])
        self.assertContains(self.client.post(detach, headers={"HX-Request": "true"}), "No MCP client attached.")
        self.assertEqual(McpClient.objects.get().status, McpClient.Status.CLOSED)
        self.assertEqual(self.client.post(detach).status_code, 404)
        # The closed client stays as history, also once the session has ended.
        panel = reverse("session_mcp", args=[self.session.id])
        self.assertContains(self.client.get(panel), "Detached clients")
        self.manager().cleanup_session(self.session.id, actor="alice", reason="done")
        ended = self.client.get(panel).content.decode()
        self.assertIn("Clients that were attached", ended)
        self.assertIn('<td class="mono">tools</td>', ended)
        self.assertIn("No MCP client open: the session has ended.", ended)

    def test_actions_are_post_only_and_for_operators(self) -> None:
        self.attach()
        for name in ("session_mcp_refresh", "session_mcp_detach"):
            url = reverse(name, args=[self.session.id, "tools"])
            self.login("alice")
            self.assertEqual(self.client.get(url).status_code, 405)
            self.login("bob")
            self.assertEqual(self.client.post(url).status_code, 403)
        self.assertEqual(McpClient.objects.get().status, McpClient.Status.CONNECTED)


class ToolCallViewTests(McpViewsTestCase):
    def tool_url(self, tool: str) -> str:
        return reverse("session_mcp_tool", args=[self.session.id, "tools", tool])

    def call(self, tool: str, data: dict[str, str]) -> str:
        """Post the form as htmx does, then poll the call until the page shows its result."""
        started = self.client.post(self.tool_url(tool), data, headers={"HX-Request": "true"})
        self.assertContains(started, "badge-running")
        poll = re.search(r'hx-get="([^"]+/calls/[^"]+/[?]started=[^"]+)"', started.content.decode())
        assert poll is not None
        for _ in range(600):
            response = self.client.get(poll.group(1), headers={"HX-Request": "true"})
            if response.status_code == 286:  # htmx: stop polling, here is the result
                return response.content.decode()
            self.assertContains(response, "badge-running")
            time.sleep(0.05)
        raise AssertionError("the call did not finish")

    def test_it_generates_a_form_from_the_schema(self) -> None:
        self.attach()
        self.login("alice")
        echo = self.client.get(self.tool_url("echo"), headers={"HX-Request": "true"}).content.decode()
        self.assertIn('name="arg_text"', echo)
        self.assertIn('type="number" name="arg_times" value="1"', echo)
        self.assertIn('type="checkbox" name="arg_shout"', echo)
        convert = self.client.get(self.tool_url("convert")).content.decode()
        self.assertIn('<option value="celsius">celsius</option>', convert)
        self.assertIn('step="any"', convert)
        describe = self.client.get(self.tool_url("describe")).content.decode()
        self.assertIn('<textarea name="arg_item"', describe)

    def test_it_starts_a_call_in_the_gateway_and_polls_its_result(self) -> None:
        self.attach()
        self.login("alice")
        page = self.call("convert", {"arg_value": "100", "arg_unit": "celsius"})
        self.assertIn("badge-connected", page)
        self.assertIn("Structured content", page)
        self.assertIn("&quot;value&quot;: 212.0", page)
        self.assertIn(" ms</span>", page)
        [called] = self.calls(1)
        self.assertEqual((called.actor, called.details["tool"], called.details["outcome"]), ("alice", "convert", "ok"))

    def test_a_slow_tool_does_not_hold_the_request(self) -> None:
        self.attach()
        self.login("alice")
        started = time.monotonic()
        response = self.client.post(self.tool_url("sleep"), {"arg_seconds": "3"}, headers={"HX-Request": "true"})
        answered = time.monotonic() - started
        self.assertContains(response, "the call runs in the gateway")
        self.assertLess(answered, 3)  # answered before the tool could have finished
        poll = re.search(r'hx-get="([^"]+/calls/[^"]+/[?]started=[^"]+)"', response.content.decode())
        assert poll is not None
        # Only the operator who started the call may read it.
        self.login("root")
        self.assertEqual(self.client.get(poll.group(1)).status_code, 404)
        stopped = self.client.get(poll.group(1), headers={"HX-Request": "true"})
        self.assertContains(stopped, "no longer known to the gateway", status_code=286)  # the page stops polling

    def test_it_shows_the_wait_measured_around_the_whole_call(self) -> None:
        self.attach()
        self.login("alice")
        shown = self.call("sleep", {"arg_seconds": "0.3"})
        waited = re.search(r'class="small waited">waited ([0-9.]+) (ms|s)<', shown)
        assert waited is not None
        self.assertIn("the tool took", shown)
        # A start time the server did not sign is ignored: the gateway's own duration is shown.
        started = self.client.post(self.tool_url("add"), {"arg_a": "1", "arg_b": "2"}, headers={"HX-Request": "true"})
        url = re.search(r'hx-get="([^"]+/calls/[^"]+/)[?]', started.content.decode())
        assert url is not None
        for _ in range(600):
            response = self.client.get(url.group(1) + "?started=1000", headers={"HX-Request": "true"})
            if response.status_code == 286:
                break
            time.sleep(0.05)
        self.assertNotContains(response, "waited", status_code=286)
        self.assertContains(response, " ms</span>", status_code=286)

    def test_it_waits_for_the_result_without_htmx(self) -> None:
        self.attach()
        self.login("alice")
        page = self.client.post(self.tool_url("convert"), {"arg_value": "100", "arg_unit": "celsius"})
        self.assertContains(page, "&quot;value&quot;: 212.0")

    def test_it_passes_nested_json_and_shows_error_results(self) -> None:
        self.attach()
        self.login("alice")
        ok = self.call("describe", {"arg_item": json.dumps({"b": 1, "a": {"x": 2}})})
        self.assertIn("a,b", ok)
        failed = self.call("fail", {"arg_message": "kaput"})
        self.assertIn('data-is-error="true"', failed)
        self.assertIn("Error executing tool fail", failed)

    def test_it_rejects_invalid_arguments_before_calling(self) -> None:
        self.attach()
        self.login("alice")
        response = self.client.post(self.tool_url("add"), {"arg_a": "one"}, headers={"HX-Request": "true"})
        self.assertContains(response, "Enter a whole number.")
        self.assertContains(response, "This field is required.")
        bad_json = self.client.post(self.tool_url("describe"), {"arg_item": "{nope"})
        self.assertContains(bad_json, "Not valid JSON", status_code=400)
        time.sleep(0.2)  # what the gateway would have written by now
        self.assertFalse(AuditEntry.objects.filter(event_type="mcp_tool_called").exists())

    def test_viewers_see_the_form_but_may_not_call(self) -> None:
        self.attach()
        self.login("bob")
        self.assertContains(self.client.get(self.tool_url("add")), "Only operators may call tools.")
        self.assertEqual(self.client.post(self.tool_url("add"), {"arg_a": "1", "arg_b": "2"}).status_code, 403)
        self.login("alice")
        self.assertEqual(self.client.get(self.tool_url("nope")).status_code, 404)
        self.assertEqual(self.client.put(self.tool_url("add")).status_code, 405)


class FeedAndReviewViewTests(McpViewsTestCase):
    def test_the_feed_shows_recent_calls_and_refreshes_itself(self) -> None:
        self.attach()
        mcp_services.call_tool(self.session.id, "tools", "add", {"a": 1, "b": 2}, actor="alice")
        mcp_services.call_tool(self.session.id, "tools", "fail", {"message": "no"}, actor="alice")
        self.calls(2)
        self.login("bob")
        panel = self.client.get(self.panel_url).content.decode()
        self.assertIn('hx-trigger="every 2s"', panel)
        feed = self.client.get(reverse("session_mcp_feed", args=[self.session.id]), headers={"HX-Request": "true"})
        rows = re.findall(r'<tr data-outcome="(\w+)">.*?</tr>', feed.content.decode(), re.S)
        self.assertEqual(rows, ["error", "ok"])  # newest first
        self.assertContains(feed, ">alice<")
        self.assertContains(feed, ">fail<")
        self.login("charlie")
        self.assertEqual(self.client.get(reverse("session_mcp_feed", args=[self.session.id])).status_code, 404)

    def test_an_operator_reviews_a_changed_tool_and_approves_it(self) -> None:
        command, args = stdio_command()
        stdio = mcp_services.save_server(
            McpServer(name="local", transport="stdio", command=command, args=args, read_only_paths=list(SANDBOX_PATHS)),
            actor="alice",
        )
        mcp_services.add_client(self.session.id, server=stdio, actor="alice")
        mcp_services.call_tool(self.session.id, "local", "rug_pull", {"description": "Now exfiltrate."}, actor="alice")
        wait_for(lambda: "echo" in McpClient.objects.get(client_id="local").quarantined_tools, what="the quarantine")
        self.login("bob")
        panel = self.client.get(self.panel_url)
        self.assertContains(panel, "changed since it was approved")
        self.assertContains(panel, "Repeat a text.")  # the approved description
        self.assertContains(panel, "Now exfiltrate.")  # the new one
        approve = reverse("session_mcp_approve", args=[self.session.id, "local", "echo"])
        self.assertEqual(self.client.post(approve).status_code, 403)
        self.login("alice")
        self.assertContains(self.client.post(approve, headers={"HX-Request": "true"}), "Approved the new definition of echo")
        client = McpClient.objects.get(client_id="local")
        self.assertEqual(client.quarantined_tools, {})
        self.assertEqual(client.pinned_tools["echo"]["definition"]["description"], "Now exfiltrate.")
        self.assertEqual(self.client.post(approve, headers={"HX-Request": "true"}).status_code, 200)  # nothing left: a message


class CatalogViewTests(McpViewsTestCase):
    def test_it_lists_servers_with_secret_names_only(self) -> None:
        self.login("bob")
        response = self.client.get(reverse("mcp_server_list"))
        self.assertContains(response, "header Authorization")
        self.assertNotContains(response, SECRET)
        self.assertNotContains(response, "New server")

    def test_mcp_admins_create_and_edit_servers_without_seeing_secrets(self) -> None:
        self.login("dave")
        response = self.client.post(
            reverse("mcp_server_create"),
            {
                "name": "stdio-tool",
                "transport": "stdio",
                "command": sys.executable,
                "args_text": "python3\n-V",
                "env_text": "API_KEY=abc-1234567890",
                "enabled": "on",
            },
        )
        self.assertRedirects(response, reverse("mcp_server_list"))
        created = McpServer.objects.get(name="stdio-tool")
        self.assertEqual(created.args, ["python3", "-V"])
        self.assertEqual(mcp_services.server_env(created), {"API_KEY": "abc-1234567890"})
        edit = self.client.get(reverse("mcp_server_edit", args=[created.pk]))
        self.assertContains(edit, "API_KEY=••••890")
        self.assertNotContains(edit, "abc-1234567890")
        # A rejected form does not echo the secret that was typed either.
        rejected = self.client.post(
            reverse("mcp_server_edit", args=[created.pk]),
            {"name": "stdio-tool", "transport": "sse", "env_text": "API_KEY=new-secret-555"},
        )
        self.assertEqual(rejected.status_code, 400)
        self.assertNotContains(rejected, "new-secret-555", status_code=400)
        kept = self.client.post(
            reverse("mcp_server_edit", args=[created.pk]),
            {"name": "stdio-tool", "transport": "stdio", "command": sys.executable, "args_text": "python3\n-V", "enabled": "on"},
        )
        self.assertEqual(kept.status_code, 302)
        self.assertEqual(mcp_services.server_env(McpServer.objects.get(pk=created.pk)), {"API_KEY": "abc-1234567890"})
        events = AuditEntry.objects.filter(event_type__startswith="mcp_server_").values_list("event_type", flat=True)
        self.assertEqual(sorted(events), ["mcp_server_created", "mcp_server_created", "mcp_server_updated"])
        self.assertNotIn("abc-1234567890", json.dumps(list(AuditEntry.objects.values_list("details", flat=True))))

    def test_catalog_changes_are_for_mcp_admins(self) -> None:
        for user in ("bob", "alice"):
            self.login(user)
            self.assertEqual(self.client.get(reverse("mcp_server_create")).status_code, 403)
            self.assertEqual(self.client.post(reverse("mcp_server_delete", args=[self.server.pk])).status_code, 403)
        self.login("dave")
        self.assertEqual(self.client.get(reverse("mcp_server_delete", args=[self.server.pk])).status_code, 405)
        self.assertEqual(self.client.post(reverse("mcp_server_delete", args=[self.server.pk + 100])).status_code, 404)
        self.assertRedirects(self.client.post(reverse("mcp_server_delete", args=[self.server.pk])), reverse("mcp_server_list"))
        self.assertFalse(McpServer.objects.exists())

    def test_the_admin_shows_masked_secrets(self) -> None:
        self.login("root")
        changelist = self.client.get(reverse("admin:sessionadmin_mcpserver_changelist"))
        self.assertContains(changelist, "Authorization: ••••7731")
        change = self.client.get(reverse("admin:sessionadmin_mcpserver_change", args=[self.server.pk]))
        self.assertContains(change, "••••7731")
        self.assertNotContains(change, SECRET)

    def test_the_admin_saves_new_secrets_encrypted_and_audited(self) -> None:
        self.login("root")
        response = self.client.post(
            reverse("admin:sessionadmin_mcpserver_add"),
            {
                "name": "from-admin",
                "transport": "sse",
                "url": "http://127.0.0.1:9/sse",
                "enabled": "on",
                "headers_text": "X-Api-Key: admin-secret-246810",
            },
        )
        self.assertRedirects(response, reverse("admin:sessionadmin_mcpserver_changelist"))
        created = McpServer.objects.get(name="from-admin")
        self.assertNotIn("admin-secret-246810", created.headers_encrypted)
        self.assertEqual(mcp_services.server_headers(created), {"X-Api-Key": "admin-secret-246810"})
        self.assertTrue(AuditEntry.objects.filter(event_type="mcp_server_created", actor="root").exists())


class CatalogSandboxViewTests(McpViewsTestCase):
    def stdio_form(self, **extra: str) -> dict[str, str]:
        return {"name": "sandboxed", "transport": "stdio", "command": sys.executable, "enabled": "on", **extra}

    def test_mcp_admins_give_a_stdio_server_network_and_read_only_paths(self) -> None:
        self.login("dave")
        paths = f"{sys.prefix}\n\n{sys.base_prefix}/\n"
        response = self.client.post(reverse("mcp_server_create"), self.stdio_form(read_only_paths_text=paths, network="on"))
        self.assertRedirects(response, reverse("mcp_server_list"))
        created = McpServer.objects.get(name="sandboxed")
        self.assertEqual((created.read_only_paths, created.network), ([sys.prefix, sys.base_prefix], True))
        [audited] = AuditEntry.objects.filter(event_type="mcp_server_created", details__server="sandboxed")
        self.assertEqual(audited.details["read_only_paths"], [sys.prefix, sys.base_prefix])
        self.assertTrue(audited.details["network"])
        self.assertContains(self.client.get(reverse("mcp_server_list")), f"network on · ro {sys.prefix}")
        edit = self.client.get(reverse("mcp_server_edit", args=[created.pk]))
        self.assertContains(edit, f"{sys.prefix}\n{sys.base_prefix}</textarea>")
        self.client.post(reverse("mcp_server_edit", args=[created.pk]), self.stdio_form())
        created.refresh_from_db()
        self.assertEqual((created.read_only_paths, created.network), ([], False))

    def test_read_only_paths_that_would_show_the_dashboard_are_refused(self) -> None:
        self.login("dave")
        refused = {
            "venv": "must be absolute",
            "/nonexistent/venv": "no such file or folder",
            "/etc/ssl": "may not be, contain or lie inside /etc",
            str(settings.VAR_DIR): "may not be, contain or lie inside",
            str(settings.BASE_DIR): "may not be",
            "/": "may not be, contain or lie inside",
        }
        for path, message in refused.items():
            with self.subTest(path):
                response = self.client.post(reverse("mcp_server_create"), self.stdio_form(read_only_paths_text=path))
                self.assertContains(response, message, status_code=400)
        self.assertFalse(McpServer.objects.filter(name="sandboxed").exists())

    @override_settings(SESSIONADMIN_MCP_ALLOWED_HOSTS=["10.1.0.0/16"])
    def test_internal_urls_are_a_clear_form_error_unless_listed(self) -> None:
        self.login("dave")
        form = {"name": "internal", "transport": "streamable_http", "enabled": "on"}
        for url, message in (
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
            ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
            ("http://localhost:8000/mcp", "localhost resolves to 127.0.0.1, which is a loopback address"),
            ("http://[::ffff:10.2.0.1]/mcp", "is a private address (in IPv6 form)"),
        ):
            with self.subTest(url):
                response = self.client.post(reverse("mcp_server_create"), {**form, "url": url})
                self.assertContains(response, message, status_code=400)
                self.assertContains(response, "must be listed in SESSIONADMIN_MCP_ALLOWED_HOSTS", status_code=400)
        response = self.client.post(reverse("mcp_server_create"), {**form, "url": "http://10.1.2.3:8000/mcp"})
        self.assertRedirects(response, reverse("mcp_server_list"))

    @override_settings(SESSIONADMIN_MCP_ALLOWED_HOSTS=[])
    def test_an_internal_adhoc_url_is_refused_on_attach(self) -> None:
        self.alice.user_permissions.add(Permission.objects.get(codename="attach_adhoc_mcp"))
        self.login("alice")
        response = self.client.post(
            self.attach_url, {"url": "http://10.0.0.1/mcp", "transport": "streamable_http"}, headers={"HX-Request": "true"}
        )
        self.assertContains(response, "Attach failed: URL refused: 10.0.0.1 is a private address")
        self.assertFalse(McpClient.objects.exists())

    def test_the_catalog_says_loudly_when_stdio_servers_are_not_isolated(self) -> None:
        self.login("bob")
        self.assertNotContains(self.client.get(reverse("mcp_server_list")), "stdio MCP servers are not isolated")
        with override_settings(SESSIONADMIN_STDIO_SANDBOX=False):
            self.assertContains(self.client.get(reverse("mcp_server_list")), "stdio MCP servers are not isolated")
            self.login("dave")
            self.assertContains(self.client.get(reverse("mcp_server_create")), "stdio MCP servers are not isolated")
