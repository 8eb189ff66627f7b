"""A legal but hostile-to-layout MCP server for the dashboard's layout tests: a 190-character
server name, 1,000 tools, the first ones with 2,000-character descriptions (one of them a single
unbroken word) and long tool names.

    python tests/mcp_servers/wide.py stdio
"""

from __future__ import annotations

import sys

from mcp.server import MCPServer

TOOLS = 1000
LONG = 12
NAME = "wide-" + "very-long-server-name-" * 8 + "end"

server = MCPServer(NAME, version="9" * 40, log_level="WARNING")


def _tool(index: int) -> None:
    def tool(value: str = "") -> str:
        return value

    if index == 0:
        description = "x" * 2000  # one unbroken word: only overflow-wrap:anywhere breaks it
    elif index < LONG:
        description = ("A long but legal description of this tool. " * 47)[:2000]
    else:
        description = f"Tool number {index}."
    name = f"tool_{index:04d}" + ("_" + "n" * 100 if index < 3 else "")
    server.add_tool(tool, name=name, description=description)


for number in range(TOOLS):
    _tool(number)


if __name__ == "__main__":
    sys.exit(server.run("stdio"))
