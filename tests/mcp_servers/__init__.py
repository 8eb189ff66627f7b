"""Real MCP servers for the tests and the benchmark (``server.py``), started as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SERVER_SCRIPT = Path(__file__).resolve().with_name("server.py")
HOSTILE_SCRIPT = Path(__file__).resolve().with_name("hostile.py")
LEAKY_SCRIPT = Path(__file__).resolve().with_name("leaky.py")
# What a sandboxed test server must see read-only: the venv, the interpreter it links to, and
# this folder (the scripts); nothing else of the repository.
SANDBOX_PATHS = (sys.prefix, sys.base_prefix, str(SERVER_SCRIPT.parent))


def stdio_command() -> tuple[str, list[str]]:
    """Command and arguments of the stdio server, as a catalog entry holds them."""
    return sys.executable, [str(SERVER_SCRIPT), "stdio"]


def hostile_command(mode: str = "stdio") -> tuple[str, list[str]]:
    """Command and arguments of the hostile server (``hostile.py``) in one of its modes."""
    return sys.executable, [str(HOSTILE_SCRIPT), mode]


def leaky_stdio_command(*options: str) -> tuple[str, list[str]]:
    """Command and arguments of the leaky server (``leaky.py``: it quotes its secrets back)."""
    return sys.executable, [str(LEAKY_SCRIPT), "stdio", *options]


class RunningServer:
    """``server.py`` (or ``script`` with ``options``, e.g. the leaky server) over streamable
    HTTP or SSE on 127.0.0.1, on a port the server picks and reports, so parallel test runs
    never race for one."""

    def __init__(
        self,
        transport: str,
        *,
        token: str = "",
        log_headers: Path | None = None,
        script: Path = SERVER_SCRIPT,
        options: tuple[str, ...] = (),
    ) -> None:
        args = [sys.executable, str(script), transport, *options] + (["--token", token] if token else [])
        if log_headers is not None:
            args += ["--log-headers", str(log_headers)]
        self.log_headers = log_headers
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"test MCP server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}" + ("/mcp" if transport == "streamable-http" else "/sse")

    def logged_requests(self) -> list[dict[str, Any]]:
        """The requests the server saw (with ``log_headers``): method, path and headers."""
        if self.log_headers is None or not self.log_headers.exists():
            return []
        return [json.loads(line) for line in self.log_headers.read_text().splitlines() if line.strip()]

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


def processes_with(marker: str, *, where: str = "cmdline") -> list[int]:
    """Host pids of live (not zombie) processes whose ``cmdline`` or ``environ`` contains
    ``marker``: how a test finds a sandboxed process, whose own pid is one of its namespace."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / where).read_bytes() and not _zombie(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _zombie(entry: Path) -> bool:
    for line in (entry / "status").read_text().splitlines():
        if line.startswith("State:"):
            return "Z" in line.split()[1]
    return False
