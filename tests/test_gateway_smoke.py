from __future__ import annotations

import json
from pathlib import Path

from sessionadmin import mcp_services
from sessionadmin.models import McpServer
from tests.base import BaseTransactionTestCase
from tests.gateway import GatewayMixin, agent_client, run_async, tearDownModule  # noqa: F401
from tests.mcp_servers import RunningServer, stdio_command


class SmokeTests(GatewayMixin, BaseTransactionTestCase):
    def test_it_works(self) -> None:
        http = RunningServer("streamable-http")
        self.addCleanup(http.stop)
        session = self.manager().create_session("u1", "acme", actor="alice")
        command, args = stdio_command()
        stdio = mcp_services.save_server(McpServer(name="tools-stdio", transport="stdio", command=command, args=args), actor="alice")
        web = mcp_services.save_server(McpServer(name="tools-http", transport="streamable_http", url=http.url), actor="alice")
        mcp_services.add_client(session.id, server=stdio, actor="alice")
        mcp_services.add_client(session.id, server=web, actor="alice")
        config = json.loads((Path(session.workspace_path) / ".mcp.json").read_text())
        entry = config["mcpServers"]["sessionadmin"]
        token = entry["headers"]["Authorization"].split()[1]

        async def agent() -> list[str]:
            async with agent_client(entry["url"], token) as client:
                tools = await client.list_tools()
                r = await client.call_tool("tools-stdio__add", {"a": 1, "b": 2})
                r2 = await client.call_tool("tools-http__add", {"a": 1, "b": 5})
                return [t.name for t in tools.tools] + [str(r.structured_content), str(r2.structured_content)]

        out = run_async(agent)
        print(out)
        self.assertIn("tools-stdio__add", out)
        result = mcp_services.call_tool(session.id, "tools-stdio", "add", {"a": 2, "b": 3}, actor="alice")
        print(result)
