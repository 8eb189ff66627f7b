"""The one module that speaks MCP (the official ``mcp`` SDK, pinned ``mcp>=2.3,<3``).

Every operation opens its own connection, does its work within a deadline and closes it again:
``inspect`` (handshake + tools/resources/prompts), ``ping`` (handshake), ``call_tool`` and
``ping_many`` (many pings on one event loop, bounded concurrency). Nothing stays connected
between operations, so "connected" in the dashboard means "the last operation succeeded", at
the time it records.

This module owns:
- the sync/async boundary: callers are plain sync Django code; ``asgiref.async_to_sync`` runs
  the coroutine, or a helper thread when the calling thread already runs an event loop;
- the timeouts: one deadline (``anyio.fail_after``) around connect + work, and the SDK's own
  per-request read timeout;
- the errors: the SDK raises from inside task groups, so failures arrive wrapped in
  ``ExceptionGroup``s of httpx, OS and SDK exceptions; they all leave here as one ``McpError``
  whose ``kind`` says what went wrong and whose message never contains a secret;
- stdio children: started with the session workspace as cwd and an environment built from the
  catalog entry plus PATH/HOME/LANG, and always reaped (the SDK's stdio transport closes stdin,
  then terminates and kills the process tree, inside a cancellation shield, even on timeout).

The SDK (``import mcp``) costs about a second to import, so it is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

UNREACHABLE = "unreachable"
REFUSED = "refused"
TIMEOUT = "timeout"
PROTOCOL = "protocol error"
AUTH = "auth"
CLOSED = "connection closed"

# What the dashboard's environment may hand down to a stdio server; nothing else is inherited.
INHERITED_ENV = ("PATH", "HOME", "LANG")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_MESSAGE = 500
MAX_PAGES = 20
# A stdio server closed normally gets this long to exit after its stdin closes, then SIGTERM,
# then SIGKILL, each after STDIO_TERM_SECONDS.
STDIO_GRACE_SECONDS = 0.5
STDIO_TERM_SECONDS = 0.5
STDERR_TAIL_BYTES = 4096
MAX_LINE_BYTES = 64 * 1024 * 1024


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


# --- transports: how a Target becomes a pair of message streams ------------------------------


class ProcessHandle:
    """The stdio server process behind a transport: its pid (process group), the tail of what it
    wrote to stderr, and how hard to stop it. Filled in when the transport starts."""

    def __init__(self) -> None:
        self.pid: int | None = None
        # Seconds the server gets to exit on its own after its stdin closes; 0 for a kill.
        self.grace = STDIO_GRACE_SECONDS
        self._stderr = bytearray()

    def add_stderr(self, chunk: bytes) -> None:
        self._stderr += chunk
        if len(self._stderr) > STDERR_TAIL_BYTES:
            del self._stderr[: len(self._stderr) - STDERR_TAIL_BYTES]

    def stderr_tail(self) -> str:
        """The last non-empty line the server wrote to stderr."""
        lines = [line.strip() for line in self._stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def signal_group(self, signum: int) -> None:
        """Signal the server's whole process group (it runs in a session of its own), so its
        children go with it."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def open_transport(
    target: Target,
    *,
    timeout: float,
    read_timeout: float | None = None,
    probe: _Probe | None = None,
    process: ProcessHandle | None = None,
) -> Any:
    """The async context manager that connects to ``target`` and yields the SDK's
    ``(read_stream, write_stream)``: a stdio process of ours (see ``stdio_transport``), or the
    SDK's streamable-HTTP / SSE client with our HTTP client (shared TLS context, status probe,
    no redirects followed). The one place a Target becomes a connection: live gateway
    connections and one-shot operations both come through here. ``timeout`` bounds connecting
    and plain requests; ``read_timeout`` (default: the same) how long a response or an SSE
    stream may stay silent: a live connection sets it to the longest tool call it allows."""
    import httpx2

    probe = probe or _Probe()
    if target.transport == "stdio":
        return stdio_transport(target, process or ProcessHandle())
    read_timeout = read_timeout or timeout
    http_timeout = httpx2.Timeout(timeout, read=read_timeout)
    if target.transport == "streamable_http":
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(target.url, http_client=_http_client(probe, target.headers, http_timeout))
    if target.transport == "sse":
        from mcp.client.sse import sse_client

        def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> Any:
            return _http_client(probe, headers, timeout)

        return sse_client(
            target.url,
            headers=target.headers or None,
            timeout=timeout,
            sse_read_timeout=read_timeout,
            httpx_client_factory=factory,
        )
    raise McpError(PROTOCOL, f"unknown transport {target.transport!r}")


@contextlib.asynccontextmanager
async def stdio_transport(target: Target, handle: ProcessHandle) -> AsyncIterator[tuple[Any, Any]]:
    """Run a stdio server and exchange newline-delimited JSON-RPC with it.

    Like the SDK's ``stdio_client`` (its own session and process group, pipes bridged to
    memory streams), plus what a long-lived connection needs: the pid is known (``handle``),
    stderr is kept as a bounded tail in memory instead of a file that grows for days, and
    closing stops the *group* after ``handle.grace`` seconds (0 on a session kill: no grace),
    SIGTERM then SIGKILL, so the server's children go too and nothing outlives the connection.
    """
    import anyio
    import mcp_types
    from mcp.shared.message import SessionMessage

    process = await anyio.open_process(
        [target.command, *target.args],
        env=stdio_env(target.env),
        cwd=target.cwd,
        start_new_session=True,
    )
    handle.pid = process.pid
    read_writer, read_stream = anyio.create_memory_object_stream[Any](0)
    write_stream, write_reader = anyio.create_memory_object_stream[Any](0)
    stderr_done = anyio.Event()

    async def stdout_reader() -> None:
        assert process.stdout is not None
        buffer = b""
        try:
            async with read_writer:
                async for chunk in process.stdout:
                    lines = (buffer + chunk).split(b"\n")
                    buffer = lines.pop()
                    if len(buffer) > MAX_LINE_BYTES:
                        raise ValueError("the server sent a line longer than the limit")
                    for line in lines:
                        if not line.strip():
                            continue
                        try:
                            item: Any = SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                        except ValueError as exc:
                            item = exc
                        await read_writer.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, ValueError, OSError):
            pass

    async def stderr_reader() -> None:
        assert process.stderr is not None
        try:
            async for chunk in process.stderr:
                handle.add_stderr(chunk)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass
        finally:
            stderr_done.set()

    async def stdin_writer() -> None:
        assert process.stdin is not None
        try:
            async with write_reader:
                async for message in write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server stopped reading: end the session's view of the connection too.
            await read_writer.aclose()

    async def stop() -> None:
        read_stream.close()
        write_stream.close()
        assert process.stdin is not None
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
        if not await _exited(process, handle.grace):
            handle.signal_group(signal.SIGTERM)
            if not await _exited(process, STDIO_TERM_SECONDS):
                handle.signal_group(signal.SIGKILL)
                await _exited(process, STDIO_TERM_SECONDS)
        # Whatever the server started and left behind in its group goes too.
        handle.signal_group(signal.SIGKILL)
        with anyio.move_on_after(STDIO_TERM_SECONDS):
            await stderr_done.wait()
        with anyio.move_on_after(STDIO_TERM_SECONDS):
            await process.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        tg.start_soon(stderr_reader)
        tg.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                await stop()
            tg.cancel_scope.cancel()


async def _exited(process: Any, timeout: float) -> bool:
    """Whether the process exited within ``timeout`` (polled: ``wait()`` would also wait for
    pipe EOF, which a child holding the pipes can delay forever)."""
    import anyio

    deadline = anyio.current_time() + timeout
    while process.returncode is None:
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(0.01)
    return True


# --- connection and error mapping -------------------------------------------------------------


async def _guarded(target: Target, timeout: float, op: Callable[[Any], Awaitable[T]]) -> T:
    """Connect, run ``op(client)`` and disconnect within ``timeout`` seconds; any failure
    becomes McpError."""
    import anyio

    probe = _Probe()
    process = ProcessHandle()
    try:
        with anyio.fail_after(timeout):
            async with _client(target, timeout, probe, process) as client:
                return await op(client)
    except McpError:
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception | BaseExceptionGroup) or isinstance(exc, anyio.get_cancelled_exc_class()):
            raise
        raise map_error(exc, target, timeout, probe, process.stderr_tail()) from None


class _Probe:
    """Remembers the last HTTP error status seen, which the streamable-HTTP transport turns
    into a generic JSON-RPC error (so a 401 would otherwise look like any server error)."""

    def __init__(self) -> None:
        self.status: int | None = None

    async def on_response(self, response: Any) -> None:
        if response.status_code >= 400:
            self.status = response.status_code


@functools.cache
def _ssl_context() -> Any:
    """One TLS context for every connection: building one loads the CA bundle, which costs
    ~100 ms of CPU, more than a whole MCP handshake on a LAN."""
    import httpx2

    return httpx2.create_ssl_context()


def _http_client(probe: _Probe, headers: dict[str, str] | None, timeout: Any) -> Any:
    """The SDK's default HTTP client (``create_mcp_http_client``: no redirects followed, the
    given timeouts) with a shared TLS context and our status probe."""
    import httpx2

    return httpx2.AsyncClient(
        headers=headers or None,
        timeout=timeout,
        verify=_ssl_context(),
        event_hooks={"response": [probe.on_response]},
    )


def _client(target: Target, timeout: float, probe: _Probe, process: ProcessHandle) -> Any:
    from mcp import Client

    transport = open_transport(target, timeout=timeout, probe=probe, process=process)
    return Client(transport, read_timeout_seconds=timeout, cache=None)


def stdio_env(catalog_env: dict[str, str]) -> dict[str, str]:
    """The environment of a stdio server: PATH/HOME/LANG of this process plus the catalog
    entry's own values. Nothing else of ours (database URL, secret key, broker URL) is passed.
    (The SDK also hands down its own short safe list: LOGNAME, SHELL, TERM, USER.)"""
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": os.environ.get("LANG", "C.UTF-8")}
    if os.environ.get("HOME"):
        env["HOME"] = os.environ["HOME"]
    return env | dict(catalog_env)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in out and len(out) < 10:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def map_error(exc: BaseException, target: Target, timeout: float, probe: _Probe | None = None, stderr: str = "") -> McpError:
    """One McpError (kind + a message without secrets) for whatever the SDK, httpx2 or the OS
    raised, however deep in exception groups."""
    error = _classify(_leaves(exc), target, timeout, probe or _Probe(), stderr)
    return McpError(error.kind, redact(error.detail, target.secrets()))


def _classify(leaves: list[BaseException], target: Target, timeout: float, probe: _Probe, stderr: str) -> McpError:
    import httpx2
    from mcp.shared.exceptions import MCPError

    where = target.describe()
    if probe.status in (401, 403):
        return McpError(AUTH, f"{where} answered HTTP {probe.status}: check the credentials (headers) of this server")
    for leaf in leaves:
        if isinstance(leaf, httpx2.HTTPStatusError) and leaf.response.status_code in (401, 403):
            return McpError(AUTH, f"{where} answered HTTP {leaf.response.status_code}: check the credentials of this server")
    for leaf in leaves:
        if isinstance(leaf, TimeoutError | httpx2.TimeoutException) or (isinstance(leaf, MCPError) and leaf.code == -32001):
            return McpError(TIMEOUT, f"{where} did not answer within {timeout:g} s")
    for leaf in leaves:
        if isinstance(leaf, httpx2.ConnectError | OSError):
            chain = _chain(leaf)
            if (
                any(isinstance(e, ConnectionRefusedError) for e in chain)
                or "refused" in str(leaf).lower()
                or ("All connection attempts failed" in str(leaf) and _is_loopback(target))
            ):
                return McpError(REFUSED, f"connection to {where} was refused (is the server running?)")
            if isinstance(leaf, FileNotFoundError | PermissionError) and target.transport == "stdio":
                return McpError(UNREACHABLE, f"cannot start {where}: {leaf.strerror or leaf}")
            return McpError(UNREACHABLE, f"cannot reach {where}: {leaf}")
        if isinstance(leaf, httpx2.HTTPStatusError):
            return McpError(PROTOCOL, f"{where} answered HTTP {leaf.response.status_code}")
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            if leaf.code == -32000 or "closed" in leaf.message.lower():
                extra = f" (server said: {stderr[:200]})" if stderr else ""
                return McpError(CLOSED, f"{where} closed the connection before answering{extra}")
            if probe.status is not None:
                return McpError(PROTOCOL, f"{where} answered HTTP {probe.status} ({leaf.message})")
            return McpError(PROTOCOL, f"{where}: {leaf.message} (code {leaf.code})")
    first = leaves[0] if leaves else None
    if isinstance(first, (httpx2.TransportError, *anyio_closed_errors())):
        return McpError(CLOSED, f"{where} closed the connection: {type(first).__name__}")
    return McpError(PROTOCOL, f"{where}: {type(first).__name__}: {first}"[:MAX_MESSAGE])


def anyio_closed_errors() -> tuple[type[BaseException], ...]:
    import anyio

    return (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)


def _is_loopback(target: Target) -> bool:
    return (urlsplit(target.url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "[redacted]")
    return text


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


def tool_result(result: Any, duration: float) -> ToolResult:
    text: list[str] = []
    other: list[dict[str, Any]] = []
    for block in getattr(result, "content", None) or []:
        if getattr(block, "type", "") == "text":
            text.append(block.text)
        else:
            other.append({"type": getattr(block, "type", "unknown")})
    return ToolResult(
        text=text,
        structured=getattr(result, "structured_content", None),
        is_error=bool(getattr(result, "is_error", False)),
        duration=duration,
        other_content=other,
    )
