"""A hostile MCP server for the sandbox and limit tests: its tools try to read what a stdio
server must not see, leave processes behind and send oversized answers.

    python tests/mcp_servers/hostile.py stdio
    python tests/mcp_servers/hostile.py streamable-http|sse  # prints PORT <n>, like server.py
    python tests/mcp_servers/hostile.py raw-stdio           # hand-written JSON-RPC, see below

``raw-stdio`` speaks JSON-RPC by hand (no SDK) to send what the SDK never would: the answer's
``id`` after a 50 MB ``result``, and an oversized notification before it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

ORPHAN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(1_000_000).decode("utf-8", "replace")
    except OSError as exc:
        return f"ERROR: {type(exc).__name__}: {exc.strerror}"


def environ_everywhere() -> dict[str, str]:
    """/proc/<pid>/environ of every process this server can see, its parent's, and its own."""
    out: dict[str, str] = {}
    for entry in sorted(os.listdir("/proc")):
        if entry.isdigit():
            out[entry] = _read(f"/proc/{entry}/environ").replace("\0", "\n")
    out["parent"] = _read(f"/proc/{os.getppid()}/environ").replace("\0", "\n")
    out["self"] = _read("/proc/self/environ").replace("\0", "\n")
    return out


def visible_pids() -> list[int]:
    return sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def read_file(path: str) -> str:
    return _read(path)


def list_dir(path: str) -> list[str] | str:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return f"ERROR: {type(exc).__name__}: {exc.strerror}"


def write_here(name: str, text: str) -> str:
    """Write a file in the working directory (or anywhere, given an absolute path); returns its
    absolute path as the server sees it, or the error."""
    path = Path.cwd() / name
    try:
        path.write_text(text)
    except OSError as exc:
        return f"ERROR: {type(exc).__name__}: {exc.strerror}"
    return str(path)


def connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=5):
            return "connected"
    except OSError as exc:
        return f"ERROR: {type(exc).__name__}: {exc.strerror or exc}"


def spawn_orphan(token: str, hang: bool = False) -> int:
    """Leave a detached grandchild behind (its own session, SIGTERM ignored, ``token`` on its
    command line so the test finds it from outside). Then wait until the test has seen it (a
    ``release`` file in the working directory), or hang forever when ``hang``."""
    marker = Path.cwd() / f"orphan-{token}.pid"
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            marker.write_text(str(os.getpid()))
            os.execv(sys.executable, [sys.executable, "-c", ORPHAN, token])
        os._exit(0)
    os.wait()
    release = Path.cwd() / f"release-{token}"
    deadline = time.monotonic() + 60
    while (hang or not release.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(marker.read_text()) if marker.exists() else -1


def big(size: int) -> str:
    return "x" * size


def serve_sdk(transport: str) -> None:
    from mcp.server import MCPServer

    server = MCPServer("sessionadmin-hostile-server", version="6.6.6", log_level="WARNING")
    for fn in (environ_everywhere, visible_pids, read_file, list_dir, write_here, connect, spawn_orphan):
        server.tool()(fn)
    # Unstructured: the text once, not again as structured content.
    server.tool(structured_output=False)(big)
    if transport == "stdio":
        server.run("stdio")
        return
    import anyio
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    app = server.streamable_http_app() if transport == "streamable-http" else server.sse_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    anyio.run(uvicorn.Server(config).serve, [sock])


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve_raw() -> None:
    """initialize, tools/list and tools/call of one tool, ``big_id_last``; its answer puts
    ``id`` after the result, and an oversized log notification goes first."""
    for line in sys.stdin:
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        if request_id is None:
            continue
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "sessionadmin-raw-server", "version": "0.0.1"},
            }
            _send({"jsonrpc": "2.0", "id": request_id, "result": result})
        elif method == "tools/list":
            tool = {"name": "big_id_last", "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}}}}
            _send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": [tool]}})
        elif method == "tools/call":
            size = int(message["params"]["arguments"]["size"])
            log = {"level": "info", "data": "n" * size}
            _send({"jsonrpc": "2.0", "method": "notifications/message", "params": log})
            content = [{"type": "text", "text": "y" * size}]
            _send({"result": {"content": content, "isError": False}, "jsonrpc": "2.0", "id": request_id})
        else:
            _send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"no {method}"}})


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "raw-stdio":
        serve_raw()
    else:
        serve_sdk(mode)
