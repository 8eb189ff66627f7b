"""A leaky MCP server for the redaction and listing-cap tests, run as its own process (the
sandbox and result-size tests have ``hostile.py``).

    python tests/mcp_servers/leaky.py stdio [--tools N] [--long]
    python tests/mcp_servers/leaky.py streamable-http [--reject] [--tools N] [--long]

It tries to leak what it was given back to the dashboard:

- over HTTP, ``token_echo`` answers ``invalid api token: <token>`` with the token part of the
  ``Authorization: Bearer <token>`` header it received, ``token_fail`` fails with it (an error
  result) and ``token_protocol_error`` answers with a JSON-RPC error quoting it; with
  ``--reject`` every request is answered by a JSON-RPC error quoting it, so the handshake itself
  fails with the secret in the message;
- ``environ`` returns its whole environment (text and structured content); ``stderr_exit``
  prints ``$API_KEY`` to stderr and dies mid-call; ``env_protocol_error`` answers with a JSON-RPC
  error quoting it;
- its name, version and the description of ``keyed`` quote ``$API_KEY`` (stdio: the catalog
  entry's environment), so the listings stored from it carry the secret too;
- ``--tools N`` lists N more tools (``bulk00000``...), ``--long`` gives each a 15 KB
  description and a ~40 KB input schema.

Over HTTP it binds 127.0.0.1 on a port it picks and prints ``PORT <n>`` once it listens.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

KEY = os.environ.get("API_KEY", "")
server = MCPServer(f"leaky {KEY}".strip(), version=f"6.6.6 {KEY}".strip(), log_level="WARNING")


def _token(ctx: Context) -> str:
    auth = (ctx.headers or {}).get("authorization", "")
    return auth.split(" ", 1)[1] if " " in auth else auth


@server.tool()
def token_echo(ctx: Context) -> str:
    """Complain about the credential it was sent, quoting it."""
    return f"invalid api token: {_token(ctx)}"


@server.tool()
def token_fail(ctx: Context) -> str:
    """Fail (an error result), quoting the credential it was sent."""
    raise ToolError(f"invalid api token: {_token(ctx)}")


@server.tool()
def token_protocol_error(ctx: Context) -> str:
    """Answer the call with a JSON-RPC error quoting the credential it was sent."""
    raise MCPError(-32602, f"invalid api token: {_token(ctx)}")


@server.tool()
def environ() -> dict[str, Any]:
    """Its whole environment."""
    return {"env": dict(os.environ)}


@server.tool()
def stderr_exit() -> str:
    """Print the API key to stderr and die mid-call."""
    print(f"fatal: could not authenticate with key {KEY}", file=sys.stderr, flush=True)
    os._exit(1)


@server.tool()
def env_protocol_error() -> str:
    """Answer the call with a JSON-RPC error quoting the API key."""
    raise MCPError(-32602, f"invalid api key: {KEY}")


@server.tool(description=f"Uses the key {KEY} for everything.")
def keyed() -> str:
    return "ok"


def _bulk(count: int, long: bool) -> None:
    """Add ``count`` tools cheaply (copies of one, as building each from a function would take
    a minute for 10,000)."""
    if not count:
        return

    def bulk(value: int = 0) -> int:
        return value

    # Unstructured and briefly described: 10,000 of them stay under the 4 MiB message cap.
    server.add_tool(bulk, name="bulk", structured_output=False)
    base = server._tool_manager.get_tool("bulk")
    assert base is not None
    # Long: a 15 KB description and a ~40 KB input schema each (50 of them stay under the 4 MiB
    # message cap, far over what is stored of one tool).
    description = ("A tool with a long description. " * 500)[:15_000] if long else "A bulk tool."
    parameters = base.parameters
    if long:
        props = {f"field_{i:05d}": {"type": "string", "description": "x" * 40} for i in range(500)}
        parameters = {"type": "object", "properties": props}
    for i in range(count):
        name = f"bulk{i:05d}"
        server._tool_manager._tools[name] = base.model_copy(
            update={"name": name, "description": description, "parameters": parameters}
        )


def _reject(app: Any) -> Any:
    """Answer every JSON-RPC request with an error that quotes the bearer token."""

    async def rejecting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request_id = json.loads(body).get("id")
        except (ValueError, AttributeError):
            request_id = None
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        token = auth.split(" ", 1)[1] if " " in auth else auth
        error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": f"invalid api token: {token}"}}
        payload = json.dumps(error).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return rejecting


def serve_http(reject: bool) -> None:
    import anyio
    import uvicorn

    app = server.streamable_http_app()
    asgi = _reject(app) if reject else app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on")
    anyio.run(uvicorn.Server(config).serve, [sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "streamable-http"])
    parser.add_argument("--reject", action="store_true")
    parser.add_argument("--tools", type=int, default=0)
    parser.add_argument("--long", action="store_true")
    args = parser.parse_args()
    _bulk(args.tools, args.long)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        serve_http(args.reject)


if __name__ == "__main__":
    sys.exit(main())
