from __future__ import annotations

from sessionadmin import mcp_services
from sessionadmin.models import AgentSession, McpClient, McpServer
from tests.api_base import ApiTestCase

SECRET = "Bearer sk-live-0123456789abcdef"


class McpConfigTestCase(ApiTestCase):
    def attach(self, session: AgentSession) -> None:
        server = McpServer(name="docs", transport="streamable_http", url="https://mcp.example.com/mcp")
        mcp_services.set_server_secrets(server, headers={"Authorization": SECRET})
        server.save()
        McpClient.objects.create(session=session, client_id="docs", server=server, transport="streamable_http")
        McpClient.objects.create(
            session=session, client_id="gone", transport="sse", url="https://old.example.com/sse", status="closed"
        )

    def test_it_masks_secrets_for_a_token_that_may_not_read_them(self) -> None:
        session = self.create()
        self.attach(session)
        r = self.api("GET", f"/api/v1/sessions/{session.id}/mcp-config")
        self.assertEqual(r.status_code, 200)
        self.assertIn("no-store", r["Cache-Control"])
        servers = r.json()["mcpServers"]
        self.assertEqual(list(servers), ["docs"])
        self.assertEqual((servers["docs"]["type"], servers["docs"]["url"]), ("http", "https://mcp.example.com/mcp"))
        self.assertNotIn(SECRET, r.content.decode())
        self.assertNotIn("sk-live", r.content.decode())

    def test_it_gives_secrets_to_a_token_allowed_to_read_them(self) -> None:
        session = self.create()
        self.attach(session)
        r = self.api("GET", f"/api/v1/sessions/{session.id}/mcp-config", token="platform")
        self.assertEqual(r.json()["mcpServers"]["docs"]["headers"], {"Authorization": SECRET})

    def test_it_is_empty_without_clients(self) -> None:
        session = self.create()
        self.assertEqual(self.api("GET", f"/api/v1/sessions/{session.id}/mcp-config").json(), {"mcpServers": {}})

    def test_it_is_404_for_another_orgs_session(self) -> None:
        theirs = self.create("user-1", "globex")
        self.attach(theirs)
        r = self.api("GET", f"/api/v1/sessions/{theirs.id}/mcp-config")
        self.assertEqual(r.status_code, 404)
        self.assertNotIn("sk-live", r.content.decode())
