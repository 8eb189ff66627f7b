"""Who defines what runs (issue 11, item 2): only MCP admins change the MCP catalog, in the
dashboard and in the admin; a stdio command must be in SESSIONADMIN_STDIO_COMMANDS, for
everybody, superusers included, when an entry is saved and again at every connection."""

from __future__ import annotations

import sys

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.urls import reverse

from sessionadmin import mcp_services
from sessionadmin.mcp_services import NOT_ALLOWED, McpOperationFailed
from sessionadmin.models import AuditEntry, McpClient, McpServer
from sessionadmin.roles import MCP_ADMINS, OPERATORS, ensure_roles
from tests.base import PASSWORD, BaseTestCase, BaseTransactionTestCase
from tests.gateway import GatewayMixin
from tests.gateway import tearDownModule as stop_gateways
from tests.mcp_servers import SANDBOX_PATHS, stdio_command

OTHER_PYTHON = "/usr/bin/python3"


def tearDownModule() -> None:
    stop_gateways()


def stdio_form(name: str = "stdio-tool", command: str = sys.executable) -> dict[str, str]:
    return {"name": name, "transport": "stdio", "command": command, "args_text": "server.py\nstdio", "enabled": "on"}


class CatalogRightsTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        for user in (self.alice, self.bob, self.dave):
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        self.http_entry = mcp_services.save_server(
            McpServer(name="remote", transport="streamable_http", url="http://127.0.0.1:9/mcp"), actor="setup"
        )

    def login(self, user: str) -> None:
        self.client.login(username=user, password=PASSWORD)


class RolesTests(CatalogRightsTestCase):
    def test_it_keeps_three_groups_in_step(self) -> None:
        ensure_roles()
        operators = set(Group.objects.get(name=OPERATORS).permissions.values_list("codename", flat=True))
        mcp_admins = set(Group.objects.get(name=MCP_ADMINS).permissions.values_list("codename", flat=True))
        self.assertIn("operate_sessions", operators)
        self.assertTrue(operators.isdisjoint({"add_mcpserver", "change_mcpserver", "delete_mcpserver", "manage_mcp_catalog"}))
        self.assertIn("manage_mcp_catalog", mcp_admins)
        self.assertIn("view_mcpserver", mcp_admins)
        self.assertNotIn("operate_sessions", mcp_admins)
        self.assertNotIn("attach_adhoc_mcp", operators | mcp_admins)


class DashboardCatalogTests(CatalogRightsTestCase):
    def test_an_operator_cannot_create_change_or_delete_an_entry(self) -> None:
        self.login("alice")
        edit = reverse("mcp_server_edit", args=[self.http_entry.pk])
        self.assertEqual(self.client.get(reverse("mcp_server_create")).status_code, 403)
        self.assertEqual(self.client.post(reverse("mcp_server_create"), stdio_form()).status_code, 403)
        self.assertEqual(self.client.get(edit).status_code, 403)
        changed = {"name": "remote", "transport": "streamable_http", "url": "http://127.0.0.1:6379/", "enabled": "on"}
        self.assertEqual(self.client.post(edit, changed).status_code, 403)
        self.assertEqual(self.client.post(reverse("mcp_server_delete", args=[self.http_entry.pk])).status_code, 403)
        self.assertEqual(list(McpServer.objects.values_list("name", "url")), [("remote", "http://127.0.0.1:9/mcp")])
        listing = self.client.get(reverse("mcp_server_list"))
        self.assertNotContains(listing, "New server")
        self.assertNotContains(listing, edit)
        self.assertContains(listing, "Only MCP admins change the catalog.")

    def test_an_mcp_admin_creates_changes_and_deletes_entries(self) -> None:
        self.login("dave")
        self.assertContains(self.client.get(reverse("mcp_server_list")), "New server")
        self.assertRedirects(self.client.post(reverse("mcp_server_create"), stdio_form()), reverse("mcp_server_list"))
        created = McpServer.objects.get(name="stdio-tool")
        self.assertEqual(created.command, sys.executable)
        edit = reverse("mcp_server_edit", args=[self.http_entry.pk])
        changed = {"name": "remote", "transport": "streamable_http", "url": "http://127.0.0.1:10/mcp", "enabled": "on"}
        self.assertRedirects(self.client.post(edit, changed), reverse("mcp_server_list"))
        self.assertEqual(McpServer.objects.get(pk=self.http_entry.pk).url, "http://127.0.0.1:10/mcp")
        self.assertRedirects(self.client.post(reverse("mcp_server_delete", args=[created.pk])), reverse("mcp_server_list"))
        events = list(AuditEntry.objects.filter(actor="dave").values_list("event_type", flat=True).order_by("id"))
        self.assertEqual(events, ["mcp_server_created", "mcp_server_updated", "mcp_server_deleted"])

    def test_a_command_outside_the_allow_list_is_refused_even_for_a_superuser(self) -> None:
        for user in ("dave", "root"):
            self.login(user)
            response = self.client.post(reverse("mcp_server_create"), stdio_form(command=OTHER_PYTHON))
            self.assertContains(response, f"{OTHER_PYTHON} is not an allowed stdio command", status_code=400)
            self.assertContains(response, sys.executable, status_code=400)  # it says what is allowed
            shell = self.client.post(reverse("mcp_server_create"), stdio_form(command="/bin/sh"))
            self.assertContains(shell, "/bin/sh is not an allowed stdio command", status_code=400)
            sneaky = self.client.post(reverse("mcp_server_create"), stdio_form(command=sys.executable + "/../python"))
            self.assertContains(sneaky, "must be an absolute, normalised path", status_code=400)
        self.assertFalse(McpServer.objects.filter(transport="stdio").exists())

    def test_an_empty_allow_list_refuses_every_stdio_entry(self) -> None:
        self.login("root")
        with override_settings(SESSIONADMIN_STDIO_COMMANDS=[]):
            form = self.client.get(reverse("mcp_server_create"), {"transport": "stdio"})
            self.assertContains(form, "no command is allowed on this installation")
            response = self.client.post(reverse("mcp_server_create"), stdio_form())
            self.assertContains(response, "No stdio command may run on this installation", status_code=400)
            self.assertContains(self.client.get(reverse("mcp_server_list")), "none: stdio servers cannot be saved or run.")
        self.assertFalse(McpServer.objects.filter(transport="stdio").exists())


class AdminCatalogTests(CatalogRightsTestCase):
    def test_an_operator_cannot_add_change_or_delete_in_the_admin(self) -> None:
        self.login("alice")
        change = reverse("admin:sessionadmin_mcpserver_change", args=[self.http_entry.pk])
        self.assertEqual(self.client.get(reverse("admin:sessionadmin_mcpserver_add")).status_code, 403)
        add = {"name": "sh", **stdio_form(name="sh", command="/bin/sh")}
        self.assertEqual(self.client.post(reverse("admin:sessionadmin_mcpserver_add"), add).status_code, 403)
        self.assertNotContains(self.client.get(change), 'name="_save"')  # view only
        changed = {"name": "remote", "transport": "streamable_http", "url": "http://127.0.0.1:6379/", "enabled": "on"}
        self.assertEqual(self.client.post(change, changed).status_code, 403)
        delete = reverse("admin:sessionadmin_mcpserver_delete", args=[self.http_entry.pk])
        self.assertEqual(self.client.post(delete, {"post": "yes"}).status_code, 403)
        changelist = reverse("admin:sessionadmin_mcpserver_changelist")
        self.client.post(changelist, {"action": "delete_selected", "_selected_action": [self.http_entry.pk], "post": "yes"})
        self.assertEqual(list(McpServer.objects.values_list("name", "url")), [("remote", "http://127.0.0.1:9/mcp")])

    def test_an_mcp_admin_adds_changes_and_deletes_through_the_services(self) -> None:
        self.login("dave")
        response = self.client.post(reverse("admin:sessionadmin_mcpserver_add"), stdio_form(name="from-admin"))
        self.assertRedirects(response, reverse("admin:sessionadmin_mcpserver_changelist"))
        created = McpServer.objects.get(name="from-admin")
        change = reverse("admin:sessionadmin_mcpserver_change", args=[self.http_entry.pk])
        changed = {"name": "remote", "transport": "streamable_http", "url": "http://127.0.0.1:10/mcp", "enabled": "on"}
        self.assertEqual(self.client.post(change, changed).status_code, 302)
        changelist = reverse("admin:sessionadmin_mcpserver_changelist")
        self.client.post(changelist, {"action": "delete_selected", "_selected_action": [created.pk], "post": "yes"})
        self.assertFalse(McpServer.objects.filter(pk=created.pk).exists())
        events = list(AuditEntry.objects.filter(actor="dave").values_list("event_type", flat=True).order_by("id"))
        self.assertEqual(events, ["mcp_server_created", "mcp_server_updated", "mcp_server_deleted"])

    def test_the_admin_refuses_a_command_outside_the_allow_list_for_a_superuser(self) -> None:
        self.login("root")
        response = self.client.post(reverse("admin:sessionadmin_mcpserver_add"), stdio_form(name="sh", command="/bin/sh"))
        self.assertContains(response, "/bin/sh is not an allowed stdio command")
        self.assertFalse(McpServer.objects.filter(name="sh").exists())


class ServiceAllowListTests(CatalogRightsTestCase):
    def test_a_script_cannot_save_a_command_outside_the_allow_list(self) -> None:
        with self.assertRaises(ValidationError) as ctx:
            mcp_services.save_server(McpServer(name="sh", transport="stdio", command="/bin/sh", args=["-c", "id"]), actor="root")
        self.assertIn("command", ctx.exception.message_dict)
        self.assertFalse(McpServer.objects.filter(name="sh").exists())

    def test_the_catalog_marks_entries_the_allow_list_does_not_hold(self) -> None:
        command, args = stdio_command()
        mcp_services.save_server(McpServer(name="tools-stdio", transport="stdio", command=command, args=args), actor="dave")
        # Written around the service layer (a script, an old row): still marked and refused.
        McpServer.objects.create(name="raw-sh", transport="stdio", command="/bin/sh", args=["-c", "id"])
        with override_settings(SESSIONADMIN_STDIO_COMMANDS=[OTHER_PYTHON]):
            self.login("bob")
            listing = self.client.get(reverse("mcp_server_list"))
            self.assertContains(listing, f"Refused at attach: {command} is not an allowed stdio command")
            self.assertContains(listing, "Refused at attach: /bin/sh is not an allowed stdio command")
            session = self.manager().create_session("u1", "acme", actor="alice")
            self.login("alice")
            panel = self.client.get(reverse("session_mcp", args=[session.id]))
            self.assertContains(panel, "tools-stdio (stdio) — not allowed")

    def test_what_the_gateway_connects_is_checked_again(self) -> None:
        """The gateway builds every target, at attach and at each (re)connect, through
        ``attach_target`` / ``load_clients``: a command the allow-list no longer holds gives no
        target, only the reason (the live connection is never opened)."""
        session = self.manager().create_session("u1", "acme", actor="alice")
        command, args = stdio_command()
        entry = mcp_services.save_server(
            McpServer(name="tools-stdio", transport="stdio", command=command, args=args, read_only_paths=list(SANDBOX_PATHS)),
            actor="dave",
        )
        McpClient.objects.create(session=session, client_id="tools-stdio", server=entry, transport="stdio")
        target, _ = mcp_services.attach_target(session.id, server_id=entry.pk, url="", transport="")
        self.assertEqual(target.command, command)
        with override_settings(SESSIONADMIN_STDIO_COMMANDS=[]):
            with self.assertRaises(McpOperationFailed) as ctx:
                mcp_services.attach_target(session.id, server_id=entry.pk, url="", transport="")
            self.assertEqual(ctx.exception.kind, NOT_ALLOWED)
            [state] = mcp_services.load_clients(gateway_url=session.gateway)
        self.assertIsNone(state["target"])
        self.assertTrue(state["target_error"].startswith("not allowed: catalog entry 'tools-stdio': No stdio command may run"))


class AttachAllowListTests(GatewayMixin, BaseTransactionTestCase):
    """Through the real gateway."""

    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u1", "acme", actor="alice")
        command, args = stdio_command()
        self.entry = mcp_services.save_server(
            McpServer(name="tools-stdio", transport="stdio", command=command, args=args, read_only_paths=list(SANDBOX_PATHS)),
            actor="dave",
        )
        self.http_entry = mcp_services.save_server(
            McpServer(name="remote", transport="streamable_http", url="http://127.0.0.1:9/mcp"), actor="dave"
        )

    def test_an_allowed_command_runs_and_one_no_longer_allowed_is_refused_and_audited(self) -> None:
        client = mcp_services.add_client(self.session.id, server=self.entry, actor="alice")
        self.assertEqual(client.status, McpClient.Status.CONNECTED)
        McpServer.objects.create(name="raw-sh", transport="stdio", command="/bin/sh", args=["-c", "id"])
        with override_settings(SESSIONADMIN_STDIO_COMMANDS=[OTHER_PYTHON]):
            for name in ("raw-sh", "tools-stdio"):
                with self.assertRaises(McpOperationFailed) as ctx:
                    mcp_services.add_client(self.session.id, server=name, client_id=f"again-{name}", actor="alice")
                self.assertEqual(ctx.exception.kind, NOT_ALLOWED)
        refused = AuditEntry.objects.filter(event_type="mcp_client_add_failed").order_by("id")
        self.assertEqual(
            [(e.details["server"], e.details["kind"]) for e in refused], [("raw-sh", NOT_ALLOWED), ("tools-stdio", NOT_ALLOWED)]
        )
        self.assertEqual(list(McpClient.objects.values_list("client_id", flat=True)), ["tools-stdio"])

    def test_operators_still_attach_catalog_entries_and_only_the_adhoc_right_gives_urls(self) -> None:
        self.client.login(username="alice", password=PASSWORD)
        attach = reverse("session_mcp_attach", args=[self.session.id])
        response = self.client.post(attach, {"url": "http://127.0.0.1:9/mcp", "transport": "streamable_http"})
        self.assertContains(response, "Choose a catalog server.", status_code=400)
        response = self.client.post(attach, {"server": self.http_entry.pk}, headers={"HX-Request": "true"})
        self.assertContains(response, "Attach failed: unreachable:")  # it tried: nothing listens there
        self.assertEqual(AuditEntry.objects.get(event_type="mcp_client_add_failed").actor, "alice")
        self.client.login(username="dave", password=PASSWORD)  # an MCP admin has no session rights
        self.assertEqual(self.client.post(attach, {"server": self.http_entry.pk}).status_code, 403)


class CatalogFormTransportTests(CatalogRightsTestCase):
    def test_it_shows_only_the_chosen_transports_fields_and_swaps_them_for_htmx(self) -> None:
        self.login("root")
        http = self.client.get(reverse("mcp_server_create")).content.decode()
        self.assertIn('name="url"', http)
        self.assertNotIn('name="command"', http)
        self.assertIn('hx-get="/mcp/servers/new/" hx-trigger="change" hx-target="#transport-fields"', http)
        swapped = self.client.get(reverse("mcp_server_create"), {"transport": "stdio"}, headers={"HX-Request": "true"})
        body = swapped.content.decode()
        self.assertTrue(body.lstrip().startswith('<fieldset id="transport-fields"'))
        self.assertIn('name="command"', body)
        self.assertIn('name="env_text"', body)
        self.assertNotIn('name="url"', body)
        self.assertNotIn('name="name"', body)
        # Checkboxes sit inside their label, before its text.
        self.assertIn('<label class="check"><input type="checkbox" name="network"', body)
