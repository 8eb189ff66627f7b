"""One live connection to the server of one attached MCP client (an ``McpClient`` row).

The SDK's ``Client`` is entered and left in one long-lived task (anyio cancel scopes must be
exited by the task that entered them); other tasks send requests on it concurrently, the
JSON-RPC dispatcher multiplexes them. The task reconnects with backoff when the connection
drops, and stops for good on ``close()``.

A drop is noticed two ways: a transport that fails (an HTTP request that cannot connect, a
broken SSE stream) raises out of the ``Client`` context into this task; a stdio server that
exits ends its read stream, which ``_ObservedStream`` turns into the ``dropped`` event (the
SDK itself only wakes pending requests with CONNECTION_CLOSED).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from sessionadmin import mcp_client, metrics
from sessionadmin.mcp_client import McpError, ProcessHandle, Snapshot, Target
from sessionadmin.redaction import Redactor

logger = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_SECONDS = 10.0

CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
ERROR = "error"
CLOSED = "closed"


class Unavailable(Exception):
    """The upstream cannot take a request now (reconnecting, closed); ``str()`` says why."""


@dataclass
class ClientInfo:
    """What the gateway knows of an attached client, loaded from its row."""

    pk: int | None
    session_id: uuid.UUID
    client_id: str
    target: Target | None
    pinned: dict[str, Any] = field(default_factory=dict)
    quarantined: dict[str, Any] = field(default_factory=dict)
    status: str = CONNECTING
    # Why there is no target (catalog entry deleted, secrets unreadable): the client stays in error.
    target_error: str = ""


class _ObservedStream:
    """The transport's read stream, unchanged, except that its end sets ``ended``."""

    def __init__(self, inner: Any, ended: anyio.Event) -> None:
        self._inner = inner
        self._ended = ended

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    def __aiter__(self) -> _ObservedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _ObservedStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        # ``last_context`` (per-message contextvars) and anything else the dispatcher reads.
        return getattr(self._inner, name)


@contextlib.asynccontextmanager
async def _observed(transport: Any, ended: anyio.Event) -> AsyncIterator[tuple[Any, Any]]:
    async with transport as (read_stream, write_stream):
        yield _ObservedStream(read_stream, ended), write_stream


ListingHook = Callable[["Upstream", Snapshot, bool], Awaitable[None]]
StatusHook = Callable[["Upstream", str, str, bool], Awaitable[None]]


class Upstream:
    """The live connection of one client. ``run()`` is its task."""

    def __init__(
        self,
        info: ClientInfo,
        *,
        timeout: float,
        read_timeout: float,
        on_listing: ListingHook,
        on_status: StatusHook,
        pending: bool = False,
    ) -> None:
        self.info = info
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.on_listing = on_listing
        self.on_status = on_status
        # A pending upstream belongs to an attach in progress: it connects once, reports, and
        # either becomes live (``activate``) or is closed; it never retries on its own.
        self.pending = pending
        self.state = CONNECTING
        self.last_error = ""
        self.client: Any = None
        self.snapshot: Snapshot | None = None
        self.process = ProcessHandle()
        self.reconnects = 0
        self.first_result: anyio.Event = anyio.Event()
        self.first_error: McpError | None = None
        self._activated = anyio.Event()
        self._stop = anyio.Event()
        self._dropped = anyio.Event()
        self._relist = anyio.Event()
        self._probe = mcp_client.Probe()
        self._done = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    # --- control --------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{self.info.client_id}@{self.info.session_id}"

    def activate(self, pk: int) -> None:
        self.info.pk = pk
        self.pending = False
        self._activated.set()

    def close(self, *, fast: bool = False) -> None:
        """Stop for good: the connection is cancelled wherever it is (connecting, holding) and
        closed. ``fast`` (a session kill): a stdio server gets no grace period."""
        if fast:
            self.process.grace = 0.0
        self.state = CLOSED
        self._stop.set()
        if self._scope is not None:
            self._scope.cancel()

    async def wait_closed(self) -> None:
        await self._done.wait()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    # --- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.state = CLOSED
            self.client = None
            self.first_result.set()
            self._done.set()

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        attempt = 0
        while not self._stop.is_set():
            if self.info.target is None:
                self.state, self.last_error = ERROR, self.info.target_error or "no target"
                await self.on_status(self, ERROR, self.last_error, False)
                await self._stop.wait()
                return
            attempt += 1
            reconnecting = attempt > 1
            began = time.monotonic()
            try:
                await self._connected_session(reconnecting)
                if time.monotonic() - began > STABLE_SECONDS:
                    # It held a while: a fresh drop, not a server that dies at every connect.
                    backoff = BACKOFF_FIRST
            except Exception as exc:  # the SDK raises from deep inside task groups
                error = mcp_client.map_error(exc, self.info.target, self.timeout, self._probe, self.process.stderr_tail())
                self.last_error = str(error)
                if self.first_error is None and not self.first_result.is_set():
                    self.first_error = error
                logger.info("MCP upstream %s: %s", self.label, error)
            finally:
                self.client = None
            if self.pending or self._stop.is_set():
                return
            if self.state == CONNECTED or self.state == CONNECTING:
                self.state = RECONNECTING
                await self.on_status(self, RECONNECTING, self.last_error, False)
            with anyio.move_on_after(backoff):
                await self._stop.wait()
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connected_session(self, reconnecting: bool) -> None:
        """Connect, list, then hold the connection until it drops or ``close()`` cancels it.
        The handshake and first listing run under the MCP timeout; the hold has no deadline."""
        from mcp import Client

        assert self.info.target is not None
        self._dropped = anyio.Event()
        self.process = ProcessHandle()
        transport = mcp_client.open_transport(
            self.info.target, timeout=self.timeout, read_timeout=self.read_timeout, probe=self._probe, process=self.process
        )
        client = Client(
            _observed(transport, self._dropped), read_timeout_seconds=None, cache=None, message_handler=self._on_message
        )
        with anyio.CancelScope(deadline=anyio.current_time() + self.timeout) as scope:
            self._scope = scope
            if self._stop.is_set():
                scope.cancel()
            async with client:
                # Past the handshake an HTTP failure may say more than "no MCP server answered"
                # (the URL policy keeps errors before it vague: no port scanning through us).
                self._probe.connected = True
                async with anyio.create_task_group() as tg:
                    # Subscribed to list changes (within the handshake's deadline) before the
                    # listing and before anyone can call: a change from then on is seen, even
                    # one a tool makes on its very first call.
                    await tg.start(self._listen_for_changes, client)
                    snapshot = await mcp_client.snapshot_of(client)
                    scope.deadline = math.inf
                    self.client, self.snapshot, self.last_error = client, snapshot, ""
                    self.first_result.set()
                    if self.pending:
                        await self._activated.wait()
                    tg.start_soon(self._relister, client)
                    self.state = CONNECTED
                    if reconnecting:
                        self.reconnects += 1
                        metrics.mcp_reconnects.inc()
                    await self.on_listing(self, snapshot, reconnecting)
                    await self.on_status(self, CONNECTED, "", reconnecting)
                    await self._dropped.wait()
                    tg.cancel_scope.cancel()
                self.client = None
                self.last_error = f"{mcp_client.CLOSED}: {self.info.target.describe()} closed the connection"
                stderr = self.process.stderr_tail()
                if stderr:
                    self.last_error += f" (server said: {Redactor.for_target(self.info.target).cut(stderr, 200)})"
        if scope.cancelled_caught and not self._stop.is_set():
            raise TimeoutError(f"no answer within {self.timeout:g} s")

    # --- upstream change notifications --------------------------------------------------------

    async def _on_message(self, message: Any) -> None:
        # Legacy connections: list-changed notifications arrive here.
        method = getattr(getattr(message, "root", message), "method", "") or getattr(message, "method", "")
        if method in (
            "notifications/tools/list_changed",
            "notifications/prompts/list_changed",
            "notifications/resources/list_changed",
        ):
            self._relist.set()

    async def _listen_for_changes(self, client: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """On 2026 connections list-changed arrives only on a ``subscriptions/listen`` stream.

        Reports started once the first subscription is acknowledged (or could not be made).
        A later subscription relists at once: changes while none was open left no event.
        """
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        caps = client.server_capabilities
        wanted = {
            "tools_list_changed": bool(caps and caps.tools and caps.tools.list_changed),
            "prompts_list_changed": bool(caps and caps.prompts and caps.prompts.list_changed),
            "resources_list_changed": bool(caps and caps.resources and caps.resources.list_changed),
        }
        if client.protocol_version not in MODERN_PROTOCOL_VERSIONS or not any(wanted.values()):
            task_status.started()
            return
        first = True
        while True:
            try:
                async with client.listen(**wanted) as subscription:
                    if first:
                        task_status.started()
                    else:
                        self._relist.set()
                    first = False
                    async for _event in subscription:
                        self._relist.set()
            except Exception as exc:  # not served, or lost: listen again later
                logger.debug("MCP upstream %s: listen ended: %s", self.label, exc)
            if first:
                task_status.started()
                first = False
            await anyio.sleep(5)

    async def _relister(self, client: Any) -> None:
        while True:
            await self._relist.wait()
            self._relist = anyio.Event()
            try:
                with anyio.fail_after(self.timeout):
                    snapshot = await mcp_client.snapshot_of(client)
            except Exception as exc:
                logger.info("MCP upstream %s: listing failed: %s", self.label, type(exc).__name__)
                continue
            self.snapshot = snapshot
            await self.on_listing(self, snapshot, False)

    # --- requests -----------------------------------------------------------------------------

    def _live(self) -> Any:
        client = self.client
        if client is None or self.state != CONNECTED:
            if self.state == RECONNECTING:
                raise Unavailable(f"client {self.info.client_id} is reconnecting: {self.last_error}")
            raise Unavailable(f"client {self.info.client_id} is not connected ({self.state})")
        return client

    async def call_tool(self, name: str, arguments: dict[str, Any], *, timeout: float | None) -> Any:
        """The upstream ``CallToolResult``; McpError when the call could not be made."""
        client = self._live()
        try:
            with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
                return await client.call_tool(name, arguments)
        except Exception as exc:
            raise self._failed(exc, timeout) from None

    async def read_resource(self, uri: str) -> Any:
        client = self._live()
        try:
            with anyio.fail_after(self.timeout):
                return await client.read_resource(uri)
        except Exception as exc:
            raise self._failed(exc, self.timeout) from None

    async def get_prompt(self, name: str, arguments: dict[str, str] | None) -> Any:
        client = self._live()
        try:
            with anyio.fail_after(self.timeout):
                return await client.get_prompt(name, arguments)
        except Exception as exc:
            raise self._failed(exc, self.timeout) from None

    async def refresh(self, *, timeout: float) -> Snapshot:
        """List again on the live connection (the caller records the listing)."""
        client = self._live()
        try:
            with anyio.fail_after(timeout):
                snapshot = await mcp_client.snapshot_of(client)
        except Exception as exc:
            raise self._failed(exc, timeout) from None
        self.snapshot = snapshot
        return snapshot

    async def ping(self) -> float:
        """A round trip on the live connection: ``ping`` on 2025 connections, a
        ``server/discover`` re-sent at the negotiated version on 2026 ones (ping is gone)."""
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        client = self._live()
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                    await client.session.send_discover(client.protocol_version)
                else:
                    await client.session.send_ping()
        except Exception as exc:
            raise self._failed(exc, self.timeout) from None
        return time.perf_counter() - started

    def _failed(self, exc: BaseException, timeout: float | None) -> McpError:
        assert self.info.target is not None
        error = mcp_client.map_error(exc, self.info.target, timeout or self.timeout, self._probe, self.process.stderr_tail())
        if error.kind in (mcp_client.CLOSED, mcp_client.REFUSED, mcp_client.UNREACHABLE):
            # The connection is gone: reconnect (a timeout or a tool's own error is not a drop).
            self._dropped.set()
        return error
