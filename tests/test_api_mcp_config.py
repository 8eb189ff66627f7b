"""GET /api/v1/sessions/{id}/mcp-config: the session's gateway endpoint and a token minted for
the request, never anything of the upstream servers."""

from __future__ import annotations

from django.test.utils import override_settings

from sessionadmin import mcp_services
from sessionadmin.models import AgentSession, AuditEntry, GatewayToken, McpClient, McpServer
from tests.api_base import ApiTestCase

SECRET = "Bearer sk-live-0123456789abcdef"
ENV_SECRET = "env-value-4242-secret"


@override_settings(SESSIONADMIN_GATEWAY_URL="https://gw.example.com:8443")
class McpConfigTestCase(ApiTestCase):
    def attach(self, session: AgentSession) -> None:
        server = McpServer(name="docs", transport="streamable_http", url="https://mcp.example.com/mcp")
        mcp_services.set_server_secrets(server, headers={"Authorization": SECRET})
        server.save()
        stdio = McpServer(name="local", transport="stdio", command="/usr/bin/mcp-local", args=["--flag"])
        mcp_services.set_server_secrets(stdio, env={"API_KEY": ENV_SECRET})
        stdio.save()
        McpClient.objects.create(session=session, client_id="docs", server=server, transport="streamable_http")
        McpClient.objects.create(session=session, client_id="local", server=stdio, transport="stdio")

    def test_it_points_at_the_session_endpoint_with_a_fresh_token(self) -> None:
        session = self.create()
        self.attach(session)
        r = self.api("GET", f"/api/v1/sessions/{session.id}/mcp-config")
        self.assertEqual(r.status_code, 200)
        self.assertIn("no-store", r["Cache-Control"])
        body = r.json()
        entry = body["mcpServers"]["sessionadmin"]
        self.assertEqual(list(body["mcpServers"]), ["sessionadmin"])
        self.assertEqual(set(entry), {"type", "url", "headers"})
        self.assertEqual((entry["type"], entry["url"]), ("http", f"https://gw.example.com:8443/sessions/{session.id}/mcp"))
        token = entry["headers"]["Authorization"].removeprefix("Bearer ")
        stored = GatewayToken.objects.get(session=session)
        self.assertEqual(stored.token_hash, mcp_services.hash_gateway_token(token))
        self.assertNotIn(token, str(stored.__dict__))
        [issued] = AuditEntry.objects.filter(event_type="gateway_token_issued")
        self.assertEqual((issued.actor, issued.details), ("token:acme-runtime", {"prefix": token[:12], "for": "mcp-config"}))

    def test_no_upstream_url_command_header_or_env_value_reaches_the_runtime(self) -> None:
        session = self.create()
        self.attach(session)
        text = self.api("GET", f"/api/v1/sessions/{session.id}/mcp-config", token="platform").content.decode()
        for leaked in ("mcp.example.com", "/usr/bin/mcp-local", "--flag", "sk-live", ENV_SECRET, "API_KEY", "docs"):
            self.assertNotIn(leaked, text)

    def test_each_request_mints_its_own_token(self) -> None:
        session = self.create()
        first = self.api("GET", f"/api/v1/sessions/{session.id}/mcp-config").json()
        second = self.api("GET", f"/api/v1/sessions/{session.id}/mcp-config").json()
        self.assertNotEqual(first, second)
        self.assertEqual(GatewayToken.objects.filter(session=session).count(), 2)

    def test_it_is_404_for_another_orgs_session(self) -> None:
        theirs = self.create("user-1", "globex")
        self.attach(theirs)
        r = self.api("GET", f"/api/v1/sessions/{theirs.id}/mcp-config")
        self.assertEqual(r.status_code, 404)
        self.assertFalse(GatewayToken.objects.exists())
