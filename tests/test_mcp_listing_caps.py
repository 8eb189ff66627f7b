"""Listing caps (issue 11, item 6, the listing part): what is stored of a server's tools,
resources and prompts is capped per client (count and bytes, long texts and schemas too), the
page says how many were left out and shows only the first items, the rest a page at a time;
stderr tails keep their end only. The caps apply where listings are recorded: in the gateway."""

from __future__ import annotations

import json

from django.test import SimpleTestCase
from django.urls import reverse

from sessionadmin import mcp_client, mcp_services
from sessionadmin.models import McpClient, McpServer
from sessionadmin.redaction import MARK, Redactor
from tests.base import PASSWORD, BaseTransactionTestCase
from tests.gateway import GatewayMixin, RunningGateway
from tests.gateway import tearDownModule as stop_gateways
from tests.mcp_servers import LEAKY_SCRIPT, RunningServer

BULK = 10_000
LISTING_TIMEOUT = 120
SERVERS: dict[str, RunningServer] = {}
# A gateway of its own with other caps (they are read where listings are recorded).
SMALL_CAPS = {"SESSIONADMIN_MCP_MAX_LIST_ITEMS": "40", "SESSIONADMIN_MCP_MAX_LISTING_BYTES": "60000"}
SMALL: dict[str, RunningGateway] = {}


def setUpModule() -> None:
    SERVERS["many"] = RunningServer("streamable-http", script=LEAKY_SCRIPT, options=("--tools", str(BULK)))
    SERVERS["long"] = RunningServer("streamable-http", script=LEAKY_SCRIPT, options=("--tools", "50", "--long"))


def tearDownModule() -> None:
    stop_gateways()
    for gateway in SMALL.values():
        gateway.stop()
    for server in SERVERS.values():
        server.stop()


class ListingCapsTestCase(GatewayMixin, BaseTransactionTestCase):
    @property
    def many(self) -> RunningServer:
        return SERVERS["many"]

    @property
    def long(self) -> RunningServer:
        return SERVERS["long"]

    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u1", "acme", actor="alice")
        self.client.login(username="alice", password=PASSWORD)

    def attach(self, server: RunningServer, name: str) -> McpClient:
        entry = mcp_services.save_server(McpServer(name=name, transport="streamable_http", url=server.url), actor="dave")
        # Listing 10,000 tools costs the SDK seconds of CPU on each side: no deadline race here.
        return mcp_services.add_client(self.session.id, server=entry, actor="alice", timeout=LISTING_TIMEOUT)


class CountCapTests(ListingCapsTestCase):
    def test_ten_thousand_tools_are_capped_and_the_page_stays_small(self) -> None:
        client = self.attach(self.many, "many")
        self.assertEqual(len(client.tools), 1000)
        base = len([t for t in client.tools if not t["name"].startswith("bulk0")])  # its own tools come first
        self.assertEqual(client.listing_omitted, {"tools": BULK - (1000 - base)})
        stored = McpClient.objects.get(pk=client.pk)
        self.assertEqual((len(stored.tools), stored.listing_omitted), (1000, client.listing_omitted))

        detail = self.client.get(reverse("session_detail", args=[self.session.id]))
        panel = self.client.get(reverse("session_mcp", args=[self.session.id]), headers={"HX-Request": "true"})
        full_panel = self.client.get(reverse("session_mcp", args=[self.session.id]))
        for response in (detail, panel, full_panel):
            self.assertEqual(response.status_code, 200)
            self.assertLess(len(response.content), 100_000)  # was 5.3 MB with every tool inline
        omitted = f"{BULK - (1000 - base):,}"
        self.assertContains(panel, f'Tools (1,000) <span class="form-error small">{omitted} more not stored</span>')
        self.assertContains(panel, "All 1,000 tools")
        self.assertEqual(panel.content.decode().count("data-tool="), 25)

        listing = reverse("session_mcp_listing", args=[self.session.id, "many", "tools"])
        first = self.client.get(listing)
        self.assertContains(first, f'1,000 stored, <span class="form-error">{omitted} more left out')
        self.assertContains(first, "page 1 of 10")
        self.assertLess(len(first.content), 100_000)
        last = self.client.get(listing, {"page": 10})
        self.assertContains(last, "page 10 of 10")
        self.assertContains(last, f"bulk{999 - base:05d}")  # the last one stored
        self.assertEqual(self.client.get(reverse("session_mcp_listing", args=[self.session.id, "many", "nope"])).status_code, 404)
        self.client.force_login(self.root)  # the admin counts the listings instead of dumping them
        self.root.is_staff = True
        self.root.save(update_fields=["is_staff"])
        change = self.client.get(reverse("admin:sessionadmin_mcpclient_change", args=[client.pk]))
        self.assertContains(change, f"1000 tools, 0 resources, 0 prompts stored; left out: {BULK - (1000 - base)} tools")
        self.assertLess(len(change.content), 100_000)

    def test_only_the_tools_kept_are_pinned_and_served(self) -> None:
        client = self.attach(self.many, "many")
        self.assertEqual(len(client.pinned_tools), 1000)  # the endpoint serves pinned tools only
        self.assertEqual(set(client.pinned_tools), {t["name"] for t in client.tools})
        mcp_services.refresh_client(self.session.id, "many", actor="alice", timeout=LISTING_TIMEOUT)
        self.assertEqual(McpClient.objects.get(pk=client.pk).quarantined_tools, {})  # those past the cap are not "new"


class SmallCapsTests(ListingCapsTestCase):
    """Caps are settings: a gateway started with smaller ones stores less."""

    def setUp(self) -> None:
        if "gateway" not in SMALL:
            SMALL["gateway"] = RunningGateway(extra_env=SMALL_CAPS)
        override = SMALL["gateway"].settings()
        override.enable()
        self.addCleanup(override.disable)
        super().setUp()  # the session records the small gateway as its own

    def tearDown(self) -> None:
        from sessionadmin import gateway_client

        gateway_client.close_sessions([self.session.id])
        super().tearDown()

    def test_the_count_cap_is_a_setting(self) -> None:
        client = self.attach(self.many, "many")
        self.assertEqual((len(client.tools), len(client.pinned_tools)), (40, 40))
        listed = len(client.tools) + client.listing_omitted["tools"]
        self.assertGreater(listed, BULK)
        refreshed = mcp_services.refresh_client(self.session.id, "many", actor="alice", timeout=LISTING_TIMEOUT)
        self.assertEqual((len(refreshed.tools), refreshed.listing_omitted), (40, {"tools": listed - 40}))

    def test_the_listing_byte_budget_leaves_out_what_does_not_fit(self) -> None:
        client = self.attach(self.long, "long")
        base = len([t for t in client.tools if not t["name"].startswith("bulk0")])  # small, listed first
        self.assertLess(len(client.tools) - base, 30)
        self.assertEqual(len(client.tools) + client.listing_omitted["tools"], base + 50)
        self.assertLess(len(json.dumps(client.tools)), 60_000)


class SizeCapTests(ListingCapsTestCase):
    def test_long_descriptions_and_schemas_are_capped_in_storage(self) -> None:
        client = self.attach(self.long, "long")
        bulk = [t for t in client.tools if t["name"].startswith("bulk0")]
        self.assertEqual(len(bulk), 50)
        self.assertTrue(all(len(t["description"]) == mcp_services.DESCRIPTION_CHARS for t in bulk))
        self.assertTrue(all(t["description"].endswith("…") for t in bulk))
        self.assertTrue(all(t["input_schema"] == {} and t["schema_omitted_bytes"] > mcp_services.MAX_SCHEMA_BYTES for t in bulk))
        # A tool whose schema was left out is called with a JSON object of arguments.
        url = reverse("session_mcp_tool", args=[self.session.id, "long", "bulk00007"])
        self.assertContains(self.client.get(url), "input schema was too large to keep")
        response = self.client.post(url, {"arguments": '{"value": 7}'})  # a plain POST waits for the result
        self.assertContains(response, '<pre class="result-text">7</pre>', html=False)
        refused = self.client.post(url, {"arguments": "[1]"}, headers={"HX-Request": "true"})
        self.assertContains(refused, "The arguments must be a JSON object.")


class CutTests(SimpleTestCase):
    def test_a_cut_never_leaves_half_a_secret(self) -> None:
        secret = "half-secret-Zz9-000"
        r = Redactor([secret])
        for offset in range(0, 25):
            text = "x" * (100 - offset) + secret + " tail"
            cut = r.cut(text, 100)
            self.assertLessEqual(len(cut), 100)
            self.assertNotIn(secret[:8], cut)
        self.assertEqual(r.cut(f"short {secret}", 100), f"short {MARK}")


class StderrTailTests(SimpleTestCase):
    def test_a_huge_stderr_keeps_only_its_tail(self) -> None:
        tail = mcp_client.StderrTail()
        chunk = ("noise " * 20 + "\n").encode() * 512
        for _ in range(50 * 1024 * 1024 // len(chunk)):
            tail.add(chunk)
        tail.add(b"the last words\n")
        self.assertEqual(tail.last_line(), "the last words")
        self.assertLessEqual(len(tail._data), mcp_client.STDERR_TAIL_BYTES)
