"""Real MCP servers for the tests and the benchmark (``server.py``), started as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SERVER_SCRIPT = Path(__file__).resolve().with_name("server.py")


def stdio_command() -> tuple[str, list[str]]:
    """Command and arguments of the stdio server, as a catalog entry holds them."""
    return sys.executable, [str(SERVER_SCRIPT), "stdio"]


class RunningServer:
    """``server.py`` over streamable HTTP or SSE on 127.0.0.1, on a port the server picks and
    reports, so parallel test runs never race for one."""

    def __init__(self, transport: str, *, token: str = "") -> None:
        args = [sys.executable, str(SERVER_SCRIPT), transport] + (["--token", token] if token else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"test MCP server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}" + ("/mcp" if transport == "streamable-http" else "/sse")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            # No graceful shutdown: uvicorn would wait for idle keep-alive and SSE streams.
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def process_gone(pid: int) -> bool:
    """True once the process no longer exists at all (reaped, not even a zombie)."""
    return not Path(f"/proc/{pid}").exists()
