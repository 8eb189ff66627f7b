"""The one module that speaks MCP (the official ``mcp`` SDK, pinned ``mcp>=2.3,<3``).

Every operation opens its own connection, does its work within a deadline and closes it again:
``inspect`` (handshake + tools/resources/prompts), ``ping`` (handshake), ``call_tool`` and
``ping_many`` (many pings on one event loop, bounded concurrency). Nothing stays connected
between operations, so "connected" in the dashboard means "the last operation succeeded", at
the time it records.

The transports underneath are building blocks of their own, independent of that per-operation
structure (a long-lived client can hold them open): ``stdio_transport(target)`` runs a stdio
server (in its bubblewrap sandbox, ``sandbox.py``) and yields the (read, write) stream pair
``mcp.Client`` accepts; ``http_client(target)`` is the httpx2 client for streamable HTTP and SSE,
whose connections obey the outbound URL policy (``netpolicy.py``). Both cut any message from the
server above ``Target.max_result_bytes`` while it arrives (``mcp_limits.py``).

This module owns:
- the sync/async boundary: callers are plain sync Django code; ``asgiref.async_to_sync`` runs
  the coroutine, or a helper thread when the calling thread already runs an event loop;
- the timeouts: one deadline (``anyio.fail_after``) around connect + work, and the SDK's own
  per-request read timeout;
- the errors: the SDK raises from inside task groups, so failures arrive wrapped in
  ``ExceptionGroup``s of httpx, OS and SDK exceptions; they all leave here as one ``McpError``
  whose ``kind`` says what went wrong and whose message never contains a secret. Until an HTTP
  server has completed the MCP handshake, every failure reads the same ("no MCP server
  answered"), so the errors are no port or service scanner;
- stdio children: sandboxed, with the session workspace as working directory and an environment
  built from the catalog entry plus PATH/HOME/LANG, and always reaped: closing the transport
  kills bwrap, and with it every process of the sandbox.

The SDK (``import mcp``) costs about a second to import, so it is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sessionadmin import mcp_limits, netpolicy, redaction, sandbox
from sessionadmin.redaction import Redactor

T = TypeVar("T")
logger = logging.getLogger(__name__)

UNREACHABLE = "unreachable"
REFUSED = "refused"
TIMEOUT = "timeout"
PROTOCOL = "protocol error"
AUTH = "auth"
CLOSED = "connection closed"
SANDBOX = "sandbox unavailable"

# What the dashboard's environment may hand down to an unsandboxed stdio server.
INHERITED_ENV = ("PATH", "HOME", "LANG")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_MESSAGE = 500
MAX_PAGES = 20
READ_CHUNK = 64 * 1024
STDERR_TAIL_BYTES = 8 * 1024
# The SDK's legacy SSE client refuses events above 1 MiB (not configurable), so over SSE results
# are cut a little below that.
SSE_EVENT_LIMIT = 1024 * 1024 - 4 * 1024
# The stdio shutdown: the server gets this long to exit after its stdin closes, then is killed.
STDIO_GRACE_SECONDS = 2.0
NO_SERVER = "no MCP server answered"


class McpError(Exception):
    """An MCP operation failed. ``kind`` is one of unreachable, refused, timeout, protocol
    error, auth, connection closed; ``str()`` reads "<kind>: <what happened>"."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail[:MAX_MESSAGE]
        super().__init__(f"{kind}: {self.detail}")


@dataclass(frozen=True)
class Target:
    """How to reach one server. ``headers`` and ``env`` hold secrets: never log a Target."""

    transport: str  # "stdio", "streamable_http" or "sse"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None
    # stdio: run in the bubblewrap sandbox (see sandbox.py), with these host paths visible
    # read-only and, only when ``network``, the host's network.
    sandbox: bool = True
    network: bool = False
    read_only_paths: tuple[str, ...] = ()
    # HTTP: hosts (names, addresses, networks) exempt from the outbound URL policy.
    allowed_hosts: tuple[str, ...] = ()
    # Any message from the server above this is cut (see mcp_limits.py).
    max_result_bytes: int = mcp_limits.DEFAULT_LIMIT

    def secrets(self) -> list[str]:
        return [v for v in (*self.headers.values(), *self.env.values()) if v]

    def describe(self) -> str:
        """A printable name of the target: URL without credentials or query, or the command."""
        if self.transport == "stdio":
            return os.path.basename(self.command)
        parts = urlsplit(self.url)
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        return urlunsplit((parts.scheme, f"{parts.hostname or ''}{port}", parts.path, "", ""))


@dataclass
class Snapshot:
    """What a handshake found."""

    server_name: str
    server_version: str
    protocol_version: str
    capabilities: dict[str, Any]
    tools: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    resource_templates: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0


@dataclass
class ToolResult:
    text: list[str]
    structured: Any
    is_error: bool
    duration: float
    other_content: list[dict[str, Any]] = field(default_factory=list)


# --- the sync/async boundary ------------------------------------------------------------------


def run_sync(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function to completion from sync code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        from asgiref.sync import async_to_sync

        return async_to_sync(_as_coroutine)(fn)
    # async_to_sync refuses a thread that already runs a loop (e.g. under Playwright): run the
    # coroutine on its own loop in a helper thread and wait for it.
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = asyncio.run(_as_coroutine(fn))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=worker, name="mcp-client", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _as_coroutine(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


# --- public operations ------------------------------------------------------------------------


def inspect(target: Target, *, timeout: float) -> Snapshot:
    """Handshake, then list tools, resources and prompts (those the server advertises)."""
    return run_sync(lambda: _guarded(target, timeout, _inspect))


def ping(target: Target, *, timeout: float) -> float:
    """A handshake; returns its duration in seconds."""
    return run_sync(lambda: _guarded(target, timeout, _ping))


def call_tool(target: Target, name: str, arguments: dict[str, Any], *, timeout: float) -> ToolResult:
    """Call one tool. A tool that fails server-side is a result with ``is_error``; a transport
    or protocol failure is McpError."""

    async def op(client: Any) -> ToolResult:
        started = time.perf_counter()
        result = await client.call_tool(name, arguments)
        return tool_result(result, time.perf_counter() - started)

    return run_sync(lambda: _guarded(target, timeout, op))


def ping_many(targets: Sequence[Target], *, timeout: float, concurrency: int) -> list[McpError | None]:
    """Ping every target on one event loop, at most ``concurrency`` at a time. One entry per
    target, in order: None when it answered, else the McpError."""

    async def all_pings() -> list[McpError | None]:
        import anyio

        limiter = anyio.Semaphore(max(1, concurrency))
        out: list[McpError | None] = [None] * len(targets)

        async def one(index: int, target: Target) -> None:
            async with limiter:
                try:
                    await _guarded(target, timeout, _ping)
                except McpError as exc:
                    out[index] = exc

        async with anyio.create_task_group() as tg:
            for index, target in enumerate(targets):
                tg.start_soon(one, index, target)
        return out

    return run_sync(all_pings)


# --- connection and error mapping -------------------------------------------------------------


async def _guarded(target: Target, timeout: float, op: Callable[[Any], Awaitable[T]]) -> T:
    """Connect, run ``op(client)`` and disconnect within ``timeout`` seconds; any failure
    becomes McpError."""
    import anyio

    probe = Probe()
    stderr = StderrTail() if target.transport == "stdio" else None
    try:
        # What the SDK logs about this server meanwhile is redacted too (RedactingFilter).
        with redaction.scope(Redactor.for_target(target)), anyio.fail_after(timeout):
            async with _client(target, timeout, probe, stderr) as client:
                probe.connected = True
                return await op(client)
    except McpError:
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception | BaseExceptionGroup) or isinstance(exc, anyio.get_cancelled_exc_class()):
            raise
        raise map_error(exc, target, timeout, probe, stderr.last_line() if stderr else "") from None


class Probe:
    """What the HTTP side saw, for the error mapping: whether the MCP handshake completed,
    whether any answer was not an MCP one (an HTTP error status, another content type), and
    whether a 401/403 came with a Bearer challenge (what MCP's authorization spec requires)."""

    def __init__(self) -> None:
        self.connected = False
        self.not_mcp = False
        self.status: int | None = None
        self.bearer_challenge = False

    async def on_response(self, response: Any) -> None:
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        status = response.status_code
        if status >= 300 or (status == 200 and content_type not in ("application/json", "text/event-stream")):
            self.not_mcp = True
            self.status = status
        if response.status_code in (401, 403):
            challenge = response.headers.get("www-authenticate", "")
            self.bearer_challenge = challenge.lower().startswith("bearer")


class StderrTail:
    """The last few KiB a stdio server wrote to stderr (the rest is read and dropped, so a
    chatty server neither blocks nor fills a disk)."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.limit = limit
        self._data = bytearray()

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > self.limit:
            del self._data[: len(self._data) - self.limit]

    def last_line(self) -> str:
        lines = [line.strip() for line in self._data.decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""


class ProcessHandle(StderrTail):
    """A live stdio connection's process, as the gateway holds it: the tail of its stderr, and
    how long closing waits for it to exit before killing it (none on a session kill)."""

    def __init__(self) -> None:
        super().__init__()
        self.grace = STDIO_GRACE_SECONDS

    def stderr_tail(self) -> str:
        return self.last_line()


def open_transport(
    target: Target,
    *,
    timeout: float,
    read_timeout: float | None = None,
    probe: Probe | None = None,
    process: ProcessHandle | None = None,
) -> Any:
    """``transport`` for a long-lived connection: ``read_timeout`` (default ``timeout``) is how
    long an HTTP response or SSE stream may stay silent (the longest tool call allowed), and a
    stdio server's process is ``process``."""
    return transport(target, timeout=timeout, read_timeout=read_timeout, probe=probe, stderr=process or ProcessHandle())


def _client(target: Target, timeout: float, probe: Probe, stderr: StderrTail | None) -> Any:
    from mcp import Client

    return Client(transport(target, timeout=timeout, probe=probe, stderr=stderr), read_timeout_seconds=timeout, cache=None)


def transport(
    target: Target,
    *,
    timeout: float,
    read_timeout: float | None = None,
    probe: Probe | None = None,
    stderr: StderrTail | None = None,
) -> Any:
    """The transport of a target (an async context manager yielding the (read, write) stream
    pair ``mcp.Client`` accepts): ``stdio_transport``, or the SDK's streamable HTTP / SSE client
    on ``http_client``. ``timeout`` bounds connecting; ``read_timeout`` (default the same) how
    long a response may stay silent. The one place a Target becomes a connection: the gateway's
    live connections and the one-shot operations below both come through here."""
    import httpx2

    read_timeout = read_timeout or timeout
    if target.transport == "stdio":
        return stdio_transport(target, stderr=stderr)
    if target.transport == "streamable_http":
        return _streamable_http(target, http_client(target, timeout=httpx2.Timeout(timeout, read=read_timeout), probe=probe))
    if target.transport == "sse":
        from mcp.client.sse import sse_client

        def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> Any:
            return http_client(target, timeout=timeout, probe=probe, headers=headers)

        return sse_client(
            target.url,
            headers=target.headers or None,
            timeout=timeout,
            sse_read_timeout=read_timeout,
            httpx_client_factory=factory,
        )
    raise McpError(PROTOCOL, f"unknown transport {target.transport!r}")


@contextlib.asynccontextmanager
async def _streamable_http(target: Target, client: Any) -> AsyncIterator[Any]:
    """The SDK's streamable HTTP transport on our client, which it does not close itself."""
    from mcp.client.streamable_http import streamable_http_client

    # Our transport already cut every event to the limit; the SDK's own cap sits above it.
    async with (
        client,
        streamable_http_client(
            target.url, http_client=client, max_sse_event_size=target.max_result_bytes + READ_CHUNK
        ) as streams,
    ):
        yield streams


def stdio_env(catalog_env: dict[str, str]) -> dict[str, str]:
    """The environment of an unsandboxed stdio server: PATH/HOME/LANG of this process plus the
    catalog entry's own values. Nothing else of ours (database URL, secret key, broker URL) is
    passed."""
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": os.environ.get("LANG", "C.UTF-8")}
    if os.environ.get("HOME"):
        env["HOME"] = os.environ["HOME"]
    return env | dict(catalog_env)


# --- stdio --------------------------------------------------------------------------------------


@dataclass
class _Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    sandboxed: bool
    scratch: str | None = None  # a workspace made for a target without one, removed at close
    # bwrap's --info-fd pipe; each end is set to None once closed.
    info_read: int | None = None
    info_write: int | None = None


def _launch(target: Target) -> _Launch:
    if not target.sandbox:
        return _Launch([target.command, *target.args], stdio_env(target.env), target.cwd, sandboxed=False)
    bwrap = sandbox.bwrap_path()
    read_only = sandbox.check_read_only_paths(target.read_only_paths)
    sandbox.check_command(target.command, read_only)
    scratch = None if target.cwd else tempfile.mkdtemp(prefix="sessionadmin-sandbox-")
    workspace = target.cwd or scratch
    assert workspace is not None
    info_read, info_write = os.pipe()
    argv = sandbox.command(
        [target.command, *target.args],
        workspace=workspace,
        read_only_paths=read_only,
        network=target.network,
        bwrap=bwrap,
        info_fd=info_write,
    )
    env = sandbox.environment(target.env, lang=os.environ.get("LANG", "C.UTF-8"))
    return _Launch(argv, env, "/", sandboxed=True, scratch=scratch, info_read=info_read, info_write=info_write)


@contextlib.asynccontextmanager
async def stdio_transport(target: Target, *, stderr: StderrTail | None = None) -> AsyncIterator[tuple[Any, Any]]:
    """Run a stdio server and yield the (read_stream, write_stream) pair of ``SessionMessage``s
    that ``mcp.Client`` / ``ClientSession`` accept (modelled on the SDK's ``stdio_client``).

    The server runs in its sandbox unless ``target.sandbox`` is off. Its stdout is read in
    chunks: a line above ``target.max_result_bytes`` is never held whole; the answer it carried
    is replaced by a short one for the same request id (``mcp_limits``). Its stderr is kept as a
    bounded tail. Closing, even cancelled, closes stdin, gives the server STDIO_GRACE_SECONDS to
    exit, then kills it: a sandbox by killing its init (the kernel then kills every process of
    its PID namespace), an unsandboxed server by killing its process group. When closing
    returns, every process of a sandbox is gone."""
    import anyio
    import anyio.lowlevel
    import mcp_types
    from mcp.shared.message import SessionMessage

    launch = _launch(target)
    try:
        process = await anyio.open_process(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            start_new_session=True,
            pass_fds=() if launch.info_write is None else (launch.info_write,),
        )
    except BaseException:
        _release(launch)
        raise
    _close_info(launch, read=False)
    init: _SandboxInit | None = None
    limit = target.max_result_bytes
    pending = mcp_limits.Pending()
    read_writer, read_stream = anyio.create_memory_object_stream[Any](0)
    write_stream, write_reader = anyio.create_memory_object_stream[Any](0)
    writer_done = anyio.Event()
    stream_errors = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)

    def incoming(item: bytes | mcp_limits.Oversized) -> Any:
        if isinstance(item, mcp_limits.Oversized):
            stand_in = mcp_limits.replacement(item, pending, limit)
            if stand_in is None:
                logger.warning("dropped a %d-byte message from %s that was no answer to a request", item.size, target.describe())
                return None
            item = json.dumps(stand_in).encode()
        try:
            message = mcp_types.jsonrpc_message_adapter.validate_json(item, by_name=False)
        except ValueError as exc:
            return exc
        if isinstance(message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
            pending.pop(message.id)
        return SessionMessage(message)

    async def stdout_reader() -> None:
        assert process.stdout is not None
        splitter = mcp_limits.LineSplitter(limit)
        delivering = True
        async with read_writer:
            while True:
                try:
                    chunk = await process.stdout.receive(READ_CHUNK)
                except stream_errors:
                    return
                if not delivering:
                    continue  # the session is gone: drain, so the server never blocks on a full pipe
                for item in splitter.feed(chunk):
                    message = incoming(item)
                    if message is None:
                        continue
                    try:
                        await read_writer.send(message)
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        delivering = False
                        break

    async def stdin_writer() -> None:
        assert process.stdin is not None
        try:
            async with write_reader:
                async for session_message in write_reader:
                    message = session_message.message
                    if isinstance(message, mcp_types.JSONRPCRequest):
                        pending.add(message.id, message.method)
                    line = message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(line.encode())
        except stream_errors:
            # The server may still be alive: end the read side so no request waits forever.
            await read_writer.aclose()
        finally:
            writer_done.set()

    async def stderr_reader() -> None:
        assert process.stderr is not None
        while True:
            try:
                chunk = await process.stderr.receive(READ_CHUNK)
            except stream_errors:
                return
            if stderr is not None:
                stderr.add(chunk)

    try:
        if launch.info_read is not None:
            info_fd, launch.info_read = launch.info_read, None  # _SandboxInit.of closes it
            init = await _SandboxInit.of(info_fd, process.pid)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdout_reader)
            tg.start_soon(stdin_writer)
            tg.start_soon(stderr_reader)
            try:
                yield read_stream, write_stream
            finally:
                # Must finish even when the caller is cancelled, or the server would outlive us;
                # every wait inside is bounded.
                with anyio.CancelScope(shield=True):
                    read_stream.close()
                    write_stream.close()
                    with anyio.move_on_after(0.5):
                        await writer_done.wait()
                    await _stop_process(process, sandboxed=launch.sandboxed, init=init, grace=_grace(stderr))
                    for stream in (read_stream, write_stream, read_writer, write_reader):
                        await stream.aclose()
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None or (init is not None and not init.gone):
                # Failed or cancelled before the streams were up.
                await _stop_process(process, sandboxed=launch.sandboxed, init=init, grace=_grace(stderr))
        if init is not None:
            init.close()
        _release(launch)


def _grace(stderr: StderrTail | None) -> float:
    return stderr.grace if isinstance(stderr, ProcessHandle) else STDIO_GRACE_SECONDS


class _SandboxInit:
    """The sandbox's init process (its PID namespace's pid 1), held as a pidfd: polling it
    readable means the init has exited, and by then the kernel has killed and reaped every other
    process of the namespace; signalling it SIGKILL ends the whole sandbox."""

    def __init__(self, pidfd: int | None) -> None:
        self.pidfd = pidfd
        self.gone = pidfd is None

    @classmethod
    async def of(cls, info_fd: int, bwrap_pid: int) -> _SandboxInit:
        """Read bwrap's --info-fd (closed when bwrap has written it, or has failed) and open a
        pidfd on the init it names, checking it is still bwrap's child (not a reused pid)."""
        import anyio

        data = b""
        os.set_blocking(info_fd, False)
        try:
            while True:
                await anyio.wait_readable(info_fd)
                try:
                    chunk = os.read(info_fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(info_fd)
        try:
            pid = int(json.loads(data)["child-pid"])
            pidfd = os.pidfd_open(pid)
        except (ValueError, KeyError, TypeError, OSError):
            return cls(None)  # bwrap failed before starting the sandbox, or it is already over
        if _parent_of(pid) != bwrap_pid:
            os.close(pidfd)
            return cls(None)
        return cls(pidfd)

    async def wait(self, timeout: float) -> bool:
        import anyio

        if self.pidfd is None or self.gone:
            return True
        with anyio.move_on_after(timeout):
            await anyio.wait_readable(self.pidfd)
            self.gone = True
        return self.gone

    def kill(self) -> None:
        if self.pidfd is not None and not self.gone:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _parent_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(errors="replace").splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


async def _stop_process(process: Any, *, sandboxed: bool, init: _SandboxInit | None, grace: float = STDIO_GRACE_SECONDS) -> None:
    """Close stdin, give the server ``grace`` seconds, then kill: a sandbox through its init
    (and bwrap's process group), an unsandboxed server's process group (SIGTERM, SIGKILL)."""
    import anyio

    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdin.aclose()
    if sandboxed:
        if not await _sandbox_over(process, init, grace):
            if init is not None:
                init.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if not await _sandbox_over(process, init, STDIO_GRACE_SECONDS):
                logger.warning("stdio MCP sandbox %d is still alive after SIGKILL", process.pid)
    elif not await _exited(process, grace):
        from mcp.os.posix.utilities import terminate_posix_process_tree

        await terminate_posix_process_tree(process, STDIO_GRACE_SECONDS)
        if not await _exited(process, STDIO_GRACE_SECONDS):
            logger.warning("stdio MCP server %d is still alive after SIGKILL", process.pid)
    for pipe in (process.stdout, process.stderr):
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await pipe.aclose()
    # The asyncio subprocess transport stays open (and warns at GC) while anything holds a pipe.
    close = getattr(getattr(getattr(process, "_process", None), "_transport", None), "close", None)
    if callable(close):
        with contextlib.suppress(PermissionError):
            close()


async def _sandbox_over(process: Any, init: _SandboxInit | None, timeout: float) -> bool:
    """bwrap has exited and so has the sandbox's init (bwrap may exit a moment before it)."""
    return await _exited(process, timeout) and (init is None or await init.wait(timeout))


async def _exited(process: Any, timeout: float) -> bool:
    """Whether the process exited within ``timeout`` (polling returncode: asyncio's wait()
    also waits for the pipes, which a surviving child may hold)."""
    import anyio

    deadline = anyio.current_time() + timeout
    while process.returncode is None:
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(0.01)
    return True


def _close_info(launch: _Launch, *, read: bool) -> None:
    fd = launch.info_read if read else launch.info_write
    if fd is not None:
        os.close(fd)
    if read:
        launch.info_read = None
    else:
        launch.info_write = None


def _release(launch: _Launch) -> None:
    _close_info(launch, read=True)
    _close_info(launch, read=False)
    if launch.scratch:
        shutil.rmtree(launch.scratch, ignore_errors=True)


# --- HTTP ---------------------------------------------------------------------------------------


@functools.cache
def _ssl_context() -> Any:
    """One TLS context for every connection: building one loads the CA bundle, which costs
    ~100 ms of CPU, more than a whole MCP handshake on a LAN."""
    import httpx2

    return httpx2.create_ssl_context()


def http_client(target: Target, *, timeout: Any, probe: Probe | None = None, headers: dict[str, str] | None = None) -> Any:
    """The httpx2 client for an HTTP target: its catalog headers, no redirects followed, no
    proxy from the environment, and ``guarded_transport``. ``timeout`` is seconds or an
    ``httpx2.Timeout``."""
    import httpx2

    limit = target.max_result_bytes if target.transport != "sse" else min(target.max_result_bytes, SSE_EVENT_LIMIT)
    hooks = {"response": [probe.on_response]} if probe is not None else {}
    return httpx2.AsyncClient(
        headers=(headers if headers is not None else target.headers) or None,
        timeout=timeout if isinstance(timeout, httpx2.Timeout) else httpx2.Timeout(timeout, read=timeout),
        follow_redirects=False,
        trust_env=False,
        event_hooks=hooks,
        transport=guarded_transport(netpolicy.Allowed.parse(target.allowed_hosts), limit=limit),
    )


def guarded_transport(allowed: netpolicy.Allowed, *, limit: int) -> Any:
    """An httpx2 transport whose connections obey the outbound URL policy (the host is resolved
    once per connection, every address checked, and the connection made to a checked address;
    the Host header and TLS SNI keep the name) and whose responses are cut to ``limit`` bytes
    per JSON body or SSE event. Redirects are stripped of their Location: never followed (not
    even within the origin, which the SDK would do) and never reflected in an error."""
    import httpcore2
    import httpx2

    class PolicyBackend(httpcore2.AsyncNetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore2.AnyIOBackend()

        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> Any:
            import anyio

            try:
                with anyio.fail_after(timeout):
                    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = netpolicy.unique_addresses(info[4][0] for info in infos)
                netpolicy.check_addresses(host, addresses, allowed)
            except netpolicy.PolicyRefused as exc:
                logger.warning("outbound MCP connection refused: %s", exc)
                raise httpcore2.ConnectError("refused by the outbound URL policy") from None
            except (OSError, TimeoutError) as exc:
                raise httpcore2.ConnectError(f"cannot resolve {host}") from exc
            last: Exception | None = None
            for address in addresses:
                try:
                    return await self._inner.connect_tcp(
                        str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                    )
                except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                    last = exc
            assert last is not None
            raise last

        async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
            raise httpcore2.ConnectError("unix sockets are not allowed")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    class GuardedTransport(httpx2.AsyncHTTPTransport):
        def __init__(self) -> None:
            super().__init__(verify=_ssl_context(), trust_env=False)
            # httpx2's transport takes no network backend: its pool is replaced by one with ours.
            self._pool = httpcore2.AsyncConnectionPool(
                ssl_context=_ssl_context(),
                max_connections=100,
                max_keepalive_connections=20,
                keepalive_expiry=5.0,
                network_backend=PolicyBackend(),
            )
            self.pending = mcp_limits.Pending()

        async def handle_async_request(self, request: Any) -> Any:
            # A compressed body would be cut before it is inflated; ask for none (and refuse to
            # inflate one sent anyway, below).
            request.headers["Accept-Encoding"] = "identity"
            request_id = _note_request(request, self.pending)
            response = await super().handle_async_request(request)
            redirect = 300 <= response.status_code < 400
            dropped = {b"content-encoding", b"content-length"} | ({b"location"} if redirect else set())
            headers = [(k, v) for k, v in response.headers.raw if k.lower() not in dropped]
            content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            kind = {"application/json": "json", "text/event-stream": "sse"}.get(content_type, "other")
            stream = CappedStream(response.stream, kind=kind, limit=limit, pending=self.pending, request_id=request_id)
            return httpx2.Response(response.status_code, headers=headers, stream=stream, extensions=response.extensions)

    class CappedStream(httpx2.AsyncByteStream):
        def __init__(self, inner: Any, *, kind: str, limit: int, pending: mcp_limits.Pending, request_id: Any) -> None:
            self._inner, self._kind, self._limit, self._pending, self._request_id = inner, kind, limit, pending, request_id

        def _stand_in(self, item: mcp_limits.Oversized) -> bytes | None:
            stand_in = mcp_limits.replacement(item, self._pending, self._limit, fallback_id=self._request_id)
            if stand_in is None:
                logger.warning("dropped a %d-byte message that was no answer to a request", item.size)
                return None
            return json.dumps(stand_in).encode()

        async def __aiter__(self) -> AsyncIterator[bytes]:
            if self._kind == "json":
                body = mcp_limits.MessageBuffer(self._limit)
                async for chunk in self._inner:
                    body.add(chunk)
                item = body.finish()
                yield (self._stand_in(item) or b"") if isinstance(item, mcp_limits.Oversized) else item
            elif self._kind == "sse":
                events = mcp_limits.SseSplitter(self._limit)
                async for chunk in self._inner:
                    for event in events.feed(chunk):
                        yield self._event(event)
                for event in events.flush():
                    yield self._event(event)
            else:
                seen = 0
                async for chunk in self._inner:
                    yield chunk[: max(0, self._limit - seen)]
                    seen += len(chunk)
                    if seen >= self._limit:
                        break

        def _event(self, event: bytes | mcp_limits.Oversized) -> bytes:
            if isinstance(event, bytes):
                return event
            data = self._stand_in(event)
            return b"event: message\ndata: " + data + b"\n\n" if data else b""

        async def aclose(self) -> None:
            await self._inner.aclose()

    return GuardedTransport()


def _note_request(request: Any, pending: mcp_limits.Pending) -> Any:
    """Remember the id and method of a JSON-RPC request we POST (our own, small, body), so an
    oversized answer can be replaced by one for the same request."""
    if request.method != "POST":
        return None
    try:
        body = json.loads(request.content)
    except (ValueError, TypeError, RuntimeError):
        return None
    if isinstance(body, dict) and isinstance(body.get("method"), str) and "id" in body:
        pending.add(body["id"], body["method"])
        return body["id"]
    return None


# --- errors -------------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def map_error(exc: BaseException, target: Target, timeout: float, probe: Probe | None = None, stderr: str = "") -> McpError:
    """One McpError (kind + a message without secrets) for whatever a connection raised."""
    probe = probe or Probe()
    leaves = _leaves(exc)
    if target.transport == "stdio":
        error = _classify_stdio(leaves, target, timeout, stderr)
    else:
        error = _classify_http(leaves, target, timeout, probe)
    return McpError(error.kind, Redactor.for_target(target).text(error.detail))


def _classify_stdio(leaves: list[BaseException], target: Target, timeout: float, stderr: str) -> McpError:
    from mcp.shared.exceptions import MCPError

    where = target.describe()
    for leaf in leaves:
        if isinstance(leaf, sandbox.SandboxUnavailable):
            return McpError(SANDBOX, str(leaf))
        if isinstance(leaf, sandbox.SandboxPathError):
            return McpError(UNREACHABLE, f"cannot start {where}: {leaf}")
        if isinstance(leaf, FileNotFoundError | PermissionError):
            return McpError(UNREACHABLE, f"cannot start {where}: {leaf.strerror or leaf}")
    if target.sandbox and stderr.startswith("bwrap: "):
        if "execvp" in stderr:
            return McpError(UNREACHABLE, f"cannot start {where}: {stderr.removeprefix('bwrap: ')}")
        return McpError(SANDBOX, f"{stderr} (set SESSIONADMIN_STDIO_SANDBOX=off only where bwrap cannot run)")
    for leaf in leaves:
        if isinstance(leaf, TimeoutError) or (isinstance(leaf, MCPError) and leaf.code == -32001):
            return McpError(TIMEOUT, f"{where} did not answer within {timeout:g} s")
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            if leaf.code == -32000 or "closed" in leaf.message.lower():
                extra = f" (server said: {stderr[:200]})" if stderr else ""
                return McpError(CLOSED, f"{where} closed the connection before answering{extra}")
            return McpError(PROTOCOL, f"{where}: {leaf.message} (code {leaf.code})")
    first = leaves[0] if leaves else None
    if isinstance(first, anyio_closed_errors()):
        extra = f" (server said: {stderr[:200]})" if stderr else ""
        return McpError(CLOSED, f"{where} closed the connection{extra}")
    if isinstance(first, OSError):
        return McpError(UNREACHABLE, f"cannot start {where}: {first.strerror or first}")
    return McpError(PROTOCOL, f"{where}: {type(first).__name__}: {first}"[:MAX_MESSAGE])


def _classify_http(leaves: list[BaseException], target: Target, timeout: float, probe: Probe) -> McpError:
    """Before the handshake completed, one answer for everything (connection refused, reset,
    TLS failure, a name that does not resolve, the URL policy, an HTTP error status, a page
    that is not MCP, a timeout): what it would tell apart is what a port scanner wants to know.
    Two exceptions: a 401/403 with a Bearer challenge (an MCP server asking for credentials)
    and a JSON-RPC error from a server that answered in MCP's own content types. After the
    handshake, the server is a known MCP server and errors say what happened."""
    from mcp.shared.exceptions import MCPError

    where = target.describe()
    if probe.status in (401, 403) and probe.bearer_challenge:
        return McpError(AUTH, f"{where} answered HTTP {probe.status}: check the credentials (headers) of this server")
    if not probe.connected:
        for leaf in leaves:
            # Codes the SDK itself gives a connection that failed, or an answer it could not use.
            if isinstance(leaf, MCPError) and not probe.not_mcp and leaf.code not in (-32000, -32001, -32600, -32700):
                return McpError(PROTOCOL, f"{where}: {leaf.message} (code {leaf.code})")
        return McpError(UNREACHABLE, f"could not connect to the MCP server at {where}: {NO_SERVER}")
    import httpx2

    for leaf in leaves:
        if isinstance(leaf, TimeoutError | httpx2.TimeoutException) or (isinstance(leaf, MCPError) and leaf.code == -32001):
            return McpError(TIMEOUT, f"{where} did not answer within {timeout:g} s")
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            if leaf.code == -32000 or "closed" in leaf.message.lower():
                return McpError(CLOSED, f"{where} closed the connection before answering")
            if probe.not_mcp and probe.status is not None:
                return McpError(PROTOCOL, f"{where} answered HTTP {probe.status}")
            return McpError(PROTOCOL, f"{where}: {leaf.message} (code {leaf.code})")
    first = leaves[0] if leaves else None
    if isinstance(first, (httpx2.TransportError, OSError, *anyio_closed_errors())):
        return McpError(CLOSED, f"{where} closed the connection: {type(first).__name__}")
    return McpError(PROTOCOL, f"{where}: {type(first).__name__}"[:MAX_MESSAGE])


def anyio_closed_errors() -> tuple[type[BaseException], ...]:
    import anyio

    return (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` without these secrets (see ``sessionadmin.redaction``)."""
    return Redactor(secrets).text(text)


# --- results as plain data --------------------------------------------------------------------


async def _ping(client: Any) -> float:
    # The handshake already happened when the client was entered (discover on current
    # servers, initialize on older ones); ping itself is gone from the 2026 protocol.
    return 0.0


async def _inspect(client: Any) -> Snapshot:
    return await snapshot_of(client)


def tool_definition(tool: Any) -> dict[str, Any]:
    """What an operator reviews and what is pinned: name, title, description, input and output
    schema, annotations (as plain JSON)."""
    annotations = getattr(tool, "annotations", None)
    return {
        "name": tool.name,
        "title": tool.title or "",
        "description": tool.description or "",
        "input_schema": tool.input_schema or {},
        "output_schema": tool.output_schema,
        "annotations": annotations.model_dump(mode="json", exclude_none=True, by_alias=True) if annotations else None,
    }


def definition_sha256(definition: dict[str, Any]) -> str:
    """SHA-256 of a tool definition in canonical JSON (sorted keys, compact)."""
    return hashlib.sha256(canonical_json(definition).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


async def snapshot_of(client: Any) -> Snapshot:
    """Server info and every listing (tools, resources, resource templates, prompts) of a
    connected client; the listings run concurrently on the one connection, each following its
    pagination cursor."""
    import anyio

    started = time.perf_counter()
    caps = client.server_capabilities
    info = client.server_info
    snapshot = Snapshot(
        server_name=getattr(info, "name", "") or "",
        server_version=getattr(info, "version", "") or "",
        protocol_version=str(client.protocol_version or ""),
        capabilities=caps.model_dump(mode="json", exclude_none=True, by_alias=True) if caps else {},
    )

    async def tools() -> None:
        snapshot.tools = [tool_definition(t) for t in await _all_pages(client.list_tools, "tools")]

    async def resources() -> None:
        snapshot.resources = [
            {
                "uri": str(r.uri),
                "name": r.name,
                "title": r.title or "",
                "description": r.description or "",
                "mime_type": r.mime_type or "",
            }
            for r in await _all_pages(client.list_resources, "resources")
        ]

    async def templates() -> None:
        snapshot.resource_templates = [
            {
                "uri_template": str(t.uri_template),
                "name": t.name,
                "title": t.title or "",
                "description": t.description or "",
                "mime_type": t.mime_type or "",
            }
            for t in await _all_pages(client.list_resource_templates, "resource_templates")
        ]

    async def prompts() -> None:
        snapshot.prompts = [
            {
                "name": p.name,
                "title": p.title or "",
                "description": p.description or "",
                "arguments": [
                    {"name": a.name, "description": a.description or "", "required": bool(a.required)}
                    for a in (p.arguments or [])
                ],
            }
            for p in await _all_pages(client.list_prompts, "prompts")
        ]

    async with anyio.create_task_group() as tg:
        if caps is None or caps.tools is not None:
            tg.start_soon(tools)
        if caps is not None and caps.resources is not None:
            tg.start_soon(resources)
            tg.start_soon(templates)
        if caps is not None and caps.prompts is not None:
            tg.start_soon(prompts)
    snapshot.duration = time.perf_counter() - started
    return snapshot


async def _all_pages(fetch: Callable[..., Awaitable[Any]], attribute: str) -> list[Any]:
    items: list[Any] = []
    cursor = None
    for _ in range(MAX_PAGES):
        page = await fetch(cursor=cursor)
        items.extend(getattr(page, attribute))
        cursor = getattr(page, "next_cursor", None)
        if not cursor:
            break
    return items


# What a result may show inline. Only raster images (an SVG can carry script) and common audio
# formats become data: URLs, and only up to this size (decoded); anything else is described.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
INLINE_AUDIO_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/mpeg", "audio/ogg", "audio/webm", "audio/mp4", "audio/flac"})
MAX_INLINE_BYTES = 512 * 1024
MAX_SHOWN_TEXT = 100_000
LINK_SCHEMES = ("http", "https")


def _decoded_size(data: object) -> int | None:
    """The size of valid base64 ``data`` once decoded, or None if it is not base64."""
    import base64
    import binascii

    if not isinstance(data, str):
        return None
    try:
        return len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return None


def _inline(data: object, mime: str, allowed: frozenset[str]) -> dict[str, Any]:
    """``data_url`` when the media may be shown inline, else ``refused`` saying why."""
    size = _decoded_size(data)
    if size is None:
        return {"bytes": 0, "data_url": "", "refused": "not valid base64"}
    if mime not in allowed:
        return {"bytes": size, "data_url": "", "refused": f"{mime or 'no type'} is not shown inline"}
    if size > MAX_INLINE_BYTES:
        return {"bytes": size, "data_url": "", "refused": f"larger than {MAX_INLINE_BYTES // 1024} KiB"}
    return {"bytes": size, "data_url": f"data:{mime};base64,{data}", "refused": ""}


def _annotations(block: Any) -> dict[str, Any]:
    notes = getattr(block, "annotations", None)
    if notes is None:
        return {}
    out = {"audience": [str(a) for a in (notes.audience or [])], "priority": notes.priority}
    out["last_modified"] = str(getattr(notes, "last_modified", "") or "")
    return {k: v for k, v in out.items() if v not in (None, "", [])}


def _link(uri: str) -> str:
    """``uri`` as an href if it is a plain web link; "" for any other scheme (javascript:, data:,
    file:, custom), which is then shown as text only."""
    return uri if urlsplit(uri).scheme.lower() in LINK_SCHEMES else ""


def content_block(block: Any) -> dict[str, Any]:
    """A non-text content block as the dashboard shows it: plain, JSON-serializable values;
    media as data: URLs only when ``_inline`` allows it."""
    kind = str(getattr(block, "type", "") or "unknown")
    mime = str(getattr(block, "mime_type", "") or "").lower().split(";")[0].strip()
    out: dict[str, Any] = {"type": kind, "mime_type": mime, "annotations": _annotations(block)}
    if kind == "image":
        out.update(_inline(getattr(block, "data", None), mime, INLINE_IMAGE_TYPES))
    elif kind == "audio":
        out.update(_inline(getattr(block, "data", None), mime, INLINE_AUDIO_TYPES))
    elif kind == "resource_link":
        uri = str(getattr(block, "uri", "") or "")
        out.update(
            uri=uri,
            href=_link(uri),
            name=str(getattr(block, "name", "") or ""),
            title=str(getattr(block, "title", "") or ""),
            description=str(getattr(block, "description", "") or ""),
        )
    elif kind == "resource":
        resource = getattr(block, "resource", None)
        uri = str(getattr(resource, "uri", "") or "")
        out.update(uri=uri, mime_type=str(getattr(resource, "mime_type", "") or "").lower())
        text = getattr(resource, "text", None)
        if isinstance(text, str):
            out["text"] = text[:MAX_SHOWN_TEXT]
        else:
            # Offered as a download only, typed application/octet-stream whatever it claims.
            shown = _inline(getattr(resource, "blob", None), "application/octet-stream", frozenset({"application/octet-stream"}))
            out.update(shown, filename=(uri.rstrip("/").rsplit("/", 1)[-1] or "resource")[:100])
    return out


def tool_result(result: Any, duration: float) -> ToolResult:
    text: list[str] = []
    other: list[dict[str, Any]] = []
    for block in getattr(result, "content", None) or []:
        if getattr(block, "type", "") == "text":
            text.append(block.text)
        else:
            other.append(content_block(block))
    return ToolResult(
        text=text,
        structured=getattr(result, "structured_content", None),
        is_error=bool(getattr(result, "is_error", False)),
        duration=duration,
        other_content=other,
    )
