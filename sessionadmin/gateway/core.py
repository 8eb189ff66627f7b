"""The gateway's state: sessions, their live upstream connections, tool calls in flight, the
dashboard's calls, the tokens it has checked, and the background work (audit batches, leases,
reconciliation with the database)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc

from sessionadmin import mcp_client, mcp_services, metrics, tracing
from sessionadmin.gateway.db import Database
from sessionadmin.gateway.results import present
from sessionadmin.gateway.upstream import CONNECTED, RECONNECTING, ClientInfo, Unavailable, Upstream
from sessionadmin.manager import InvalidInput, SessionNotFound
from sessionadmin.mcp_client import McpError, Snapshot
from sessionadmin.redaction import Redactor
from sessionadmin.secrets import SecretsError

logger = logging.getLogger(__name__)

GATEWAY_ACTOR = "system:mcp-gateway"
# A call in flight holds the session for this long, renewed while calls run.
LEASE_SECONDS = 60.0
RENEW_BEFORE_SECONDS = 30.0
RENEW_EVERY_SECONDS = 10.0
RECONCILE_EVERY_SECONDS = 30.0
AUDIT_FLUSH_SECONDS = 0.05
AUDIT_BATCH = 200
TOKEN_CACHE_SECONDS = 1.0
TOKEN_CACHE_MAX = 10_000
CUT_OFF_KEEP_SECONDS = 3600.0
CALLS_KEEP_SECONDS = 600.0
CALLS_MAX = 1000
HEALTH_CONCURRENCY = 10
# After a kill, in-flight calls get their error before the session's open HTTP exchanges
# (listen and GET streams) are cut.
EXCHANGE_CUT_DELAY = 0.2


class GatewayProblem(Exception):
    """An internal request cannot be served: ``status`` and ``kind`` go back to the caller."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class SessionEnded(Exception):
    pass


class SessionState:
    """One session as the gateway serves it."""

    def __init__(self, session_id: uuid.UUID, user_id: str, org_id: str) -> None:
        from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

        self.id = session_id
        self.user_id = user_id
        self.org_id = org_id
        self.upstreams: dict[str, Upstream] = {}
        self.calls_in_flight: set[anyio.CancelScope] = set()
        self.exchanges: set[anyio.CancelScope] = set()
        self.lease_until = 0.0
        self._lease_pending: anyio.Event | None = None
        # 2026 agents: subscriptions/listen streams of this session only.
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus, max_subscriptions=64)
        # 2025 agents: their MCP sessions (by Mcp-Session-Id), to notify on their GET streams.
        self.legacy: OrderedDict[str, Any] = OrderedDict()
        self.ended = False

    def remember_legacy(self, mcp_session_id: str, server_session: Any) -> None:
        self.legacy[mcp_session_id] = server_session
        self.legacy.move_to_end(mcp_session_id)
        while len(self.legacy) > 64:
            self.legacy.popitem(last=False)


@dataclass
class DashboardCall:
    id: str
    session_id: uuid.UUID
    actor: str
    started: float = field(default_factory=time.monotonic)
    status: str = "running"
    result: dict[str, Any] | None = None
    error: str = ""
    kind: str = ""
    client_id: str = ""
    tool: str = ""
    timeout: float | None = None


class Gateway:
    def __init__(self, *, url: str, timeout: float, call_timeout: float, max_result_bytes: int, db: Database) -> None:
        self.url = url
        self.timeout = timeout
        self.call_timeout = call_timeout
        self.max_result_bytes = max_result_bytes
        self.db = db
        self.sessions: dict[uuid.UUID, SessionState] = {}
        self.upstreams: dict[int, Upstream] = {}
        self.cut_off: dict[uuid.UUID, float] = {}
        self._tokens: OrderedDict[str, tuple[float, tuple[uuid.UUID, str, str, bool] | None]] = OrderedDict()
        self.calls: OrderedDict[str, DashboardCall] = OrderedDict()
        self._audit: list[Any] = []
        self._audit_wakeup = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.calls_in_flight = 0
        self.started_at = time.time()
        self.ready = anyio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._audit_writer)
            tg.start_soon(self._lease_renewer)
            tg.start_soon(self._reconciler)
            await self._open_all()
            self.ready.set()
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    for upstream in list(self.upstreams.values()):
                        upstream.close()
                    with anyio.move_on_after(5):
                        for upstream in list(self.upstreams.values()):
                            await upstream.wait_closed()
                    await self._flush_audit()

    async def _open_all(self) -> None:
        """At start: reconnect every open client of the active sessions this gateway serves."""
        for state in await self.db.run(mcp_services.load_clients, gateway_url=self.url):
            self._start(state)

    def _start(self, row: dict[str, Any], *, pending: bool = False, timeout: float | None = None) -> Upstream:
        info = ClientInfo(
            pk=row["pk"],
            session_id=row["session_id"],
            client_id=row["client_id"],
            target=row["target"],
            pinned=row.get("pinned", {}),
            quarantined=row.get("quarantined", {}),
            target_error=row.get("target_error", ""),
        )
        upstream = Upstream(
            info,
            timeout=timeout or self.timeout,
            # Silence on a response or an SSE stream is fine up to the longest call allowed.
            read_timeout=max(self.call_timeout, 300.0),
            on_listing=self._on_listing,
            on_status=self._on_status,
            pending=pending,
        )
        if not pending:
            state = self.session(info.session_id, row.get("user_id", ""), row.get("org_id", ""))
            state.upstreams[info.client_id] = upstream
            assert info.pk is not None
            self.upstreams[info.pk] = upstream
        assert self._tg is not None
        self._tg.start_soon(self._run_upstream, upstream)
        return upstream

    async def _run_upstream(self, upstream: Upstream) -> None:
        try:
            await upstream.run()
        except Exception:
            logger.exception("MCP upstream %s crashed", upstream.label)
        finally:
            self._forget(upstream)

    def session(self, session_id: uuid.UUID, user_id: str = "", org_id: str = "") -> SessionState:
        state = self.sessions.get(session_id)
        if state is None:
            state = self.sessions[session_id] = SessionState(session_id, user_id, org_id)
        elif user_id and not state.user_id:
            state.user_id, state.org_id = user_id, org_id
        return state

    # --- what upstreams report ------------------------------------------------------------------

    async def _on_listing(self, upstream: Upstream, snapshot: Snapshot, reconnected: bool) -> None:
        if upstream.pending or upstream.info.pk is None:
            return
        await self._record_listing(upstream, snapshot, GATEWAY_ACTOR)

    async def _record_listing(self, upstream: Upstream, snapshot: Snapshot, actor: str) -> None:
        assert upstream.info.pk is not None
        stored = await self.db.run(mcp_services.record_listing, upstream.info.pk, snapshot, actor=actor)
        if stored is not None:
            upstream.info.pinned, upstream.info.quarantined = stored["pinned"], stored["quarantined"]
        state = self.sessions.get(upstream.info.session_id)
        if state is not None:
            await self.notify_changed(state)

    async def _on_status(self, upstream: Upstream, status: str, error: str, reconnected: bool) -> None:
        if upstream.pending or upstream.info.pk is None or upstream.closed:
            return
        try:
            await self.db.run(
                mcp_services.record_status, upstream.info.pk, status, error=error, actor=GATEWAY_ACTOR, reconnected=reconnected
            )
        except Exception:
            logger.exception("cannot record the status of MCP upstream %s", upstream.label)

    async def notify_changed(self, state: SessionState) -> None:
        """Tell the session's connected agents that what the endpoint lists changed."""
        from mcp.server.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged

        for event in (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()):
            await state.bus.publish(event)
        for server_session in list(state.legacy.values()):
            # Best effort: a legacy agent without an open GET stream simply misses it.
            with anyio.move_on_after(1):
                await server_session.send_tool_list_changed()
                await server_session.send_prompt_list_changed()
                await server_session.send_resource_list_changed()

    # --- tokens -------------------------------------------------------------------------------

    async def authenticate(self, raw_token: str, session_id: uuid.UUID) -> tuple[int, SessionState | None]:
        """(HTTP status, session): 200 with the session, 401 for an unknown token, 404 for a
        token of another session or of a session that is no longer active."""
        if not raw_token or len(raw_token) > 200:
            return 401, None
        digest = hashlib.sha256(raw_token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._tokens.get(digest)
        if cached is None or cached[0] < now:
            found = await self.db.run(mcp_services.session_for_token, digest)
            self._tokens[digest] = (now + TOKEN_CACHE_SECONDS, found)
            self._tokens.move_to_end(digest)
            while len(self._tokens) > TOKEN_CACHE_MAX:
                self._tokens.popitem(last=False)
        else:
            found = cached[1]
        if found is None:
            return 401, None
        sid, user_id, org_id, active = found
        if sid != session_id:
            return 404, None
        if not active or sid in self.cut_off:
            return 404, None
        return 200, self.session(sid, user_id, org_id)

    # --- attach, reload, close --------------------------------------------------------------------

    async def attach(self, session_id: uuid.UUID, body: dict[str, Any]) -> dict[str, Any]:
        if session_id in self.cut_off:
            raise GatewayProblem(404, "session ended", f"session {session_id} has ended")
        client_id, actor = str(body.get("client_id", "")), str(body.get("actor", "")) or GATEWAY_ACTOR
        server_id = body.get("server_id")
        url, transport = str(body.get("url") or ""), str(body.get("transport") or "")
        timeout = float(body.get("timeout") or self.timeout)
        try:
            target, ids = await self.db.run(
                mcp_services.attach_target, session_id, server_id=server_id, url=url, transport=transport
            )
        except SessionNotFound as exc:
            raise GatewayProblem(404, "session ended", str(exc)) from None
        except (InvalidInput, SecretsError) as exc:
            raise GatewayProblem(400, "invalid", str(exc)) from None
        except mcp_services.McpOperationFailed as exc:  # policy: a stdio command no longer allowed
            label = {"client_id": client_id, "server": body.get("server_name", ""), "transport": transport}
            await self.db.run(mcp_services.record_add_failed, session_id, label, kind=exc.kind, error=str(exc), actor=actor)
            raise GatewayProblem(502, exc.kind, str(exc)) from None
        upstream = self._start(
            {"pk": None, "session_id": session_id, "client_id": client_id, "target": target}, pending=True, timeout=timeout
        )
        await upstream.first_result.wait()
        snapshot = upstream.snapshot if upstream.client is not None else None
        if snapshot is None:
            upstream.close()
            error = upstream.first_error or McpError(mcp_client.CLOSED, f"{target.describe()} closed the connection")
            label = {"client_id": client_id, "server": body.get("server_name", ""), "transport": target.transport}
            label["target"] = target.describe()
            await self.db.run(mcp_services.record_add_failed, session_id, label, kind=error.kind, error=str(error), actor=actor)
            raise GatewayProblem(502, error.kind, str(error))
        try:
            row = await self.db.run(
                mcp_services.record_attached,
                session_id,
                client_id=client_id,
                server_id=server_id,
                url=url,
                transport=target.transport,
                actor=actor,
                target=target,
                snapshot=snapshot,
            )
        except SessionNotFound as exc:
            upstream.close(fast=True)
            raise GatewayProblem(404, "session ended", str(exc)) from None
        except InvalidInput as exc:
            upstream.close(fast=True)
            raise GatewayProblem(400, "invalid", str(exc)) from None
        except mcp_services.McpOperationFailed as exc:
            upstream.close(fast=True)
            raise GatewayProblem(502, exc.kind, str(exc)) from None
        if session_id in self.cut_off:
            upstream.close(fast=True)
            raise GatewayProblem(404, "session ended", f"session {session_id} has ended")
        upstream.info.pinned, upstream.info.quarantined = dict(row.pinned_tools), {}
        state = self.session(session_id, ids["user_id"], ids["org_id"])
        state.upstreams[client_id] = upstream
        self.upstreams[row.pk] = upstream
        upstream.timeout = self.timeout
        upstream.activate(row.pk)
        await self.notify_changed(state)
        return {"client": row.pk}

    async def reload(self, client_pks: list[int]) -> dict[str, Any]:
        """Rows changed in the database (detached, tools approved, catalog entry edited or
        deleted): bring the live connections in line."""
        rows = {
            row["pk"]: row for row in await self.db.run(mcp_services.load_clients, gateway_url=self.url, client_pks=client_pks)
        }
        touched: set[uuid.UUID] = set()
        for pk in client_pks:
            upstream, row = self.upstreams.get(pk), rows.get(pk)
            if row is None:
                if upstream is not None:
                    upstream.close()
                    self._forget(upstream)
                    touched.add(upstream.info.session_id)
                continue
            touched.add(row["session_id"])
            if upstream is None or upstream.closed:
                if row["session_id"] not in self.cut_off:
                    self._start(row)
                continue
            if row["target"] != upstream.info.target:
                upstream.close()
                self._forget(upstream)
                self._start(row)
                continue
            upstream.info.pinned, upstream.info.quarantined = row["pinned"], row["quarantined"]
        for sid in touched:
            state = self.sessions.get(sid)
            if state is not None:
                await self.notify_changed(state)
        return {"reloaded": len(client_pks)}

    def _forget(self, upstream: Upstream) -> None:
        pk = upstream.info.pk
        if pk is not None and self.upstreams.get(pk) is upstream:
            del self.upstreams[pk]
        state = self.sessions.get(upstream.info.session_id)
        if state is not None and state.upstreams.get(upstream.info.client_id) is upstream:
            del state.upstreams[upstream.info.client_id]

    def close_sessions(self, session_ids: list[uuid.UUID]) -> dict[str, Any]:
        """Cut sessions off at once: their tokens are refused from now on, their calls in flight
        are cancelled (each agent gets an error), their listen and GET streams end, and their
        upstream connections close (stdio servers with no grace period)."""
        now = time.monotonic()
        closed = 0
        for sid in session_ids:
            self.cut_off[sid] = now
            state = self.sessions.pop(sid, None)
            if state is None:
                continue
            state.ended = True
            for scope in list(state.calls_in_flight):
                scope.cancel()
            state.listen.close()
            for upstream in list(state.upstreams.values()):
                upstream.close(fast=True)
                self._forget(upstream)
                closed += 1
            if state.exchanges and self._tg is not None:
                self._tg.start_soon(self._cut_exchanges, state)
        for digest, (_, found) in list(self._tokens.items()):
            if found is not None and found[0] in self.cut_off:
                self._tokens.pop(digest, None)
        for sid, at in list(self.cut_off.items()):
            if now - at > CUT_OFF_KEEP_SECONDS:
                del self.cut_off[sid]
        return {"closed": closed}

    async def _cut_exchanges(self, state: SessionState) -> None:
        await anyio.sleep(EXCHANGE_CUT_DELAY)
        for scope in list(state.exchanges):
            scope.cancel()

    # --- tool calls -----------------------------------------------------------------------------

    async def call(
        self,
        state: SessionState,
        upstream: Upstream,
        tool: str,
        arguments: dict[str, Any],
        *,
        actor: str,
        timeout: float | None = None,
        traceparent: str = "",
        mcp_session_id: str = "",
    ) -> Any:
        """Call a tool on a live connection for the agent or an operator: refused when the tool
        is quarantined, held as session activity with a lease while it runs, cancelled if the
        session is killed, audited (``mcp_tool_called``), and its result redacted and capped.
        Returns the (redacted) ``CallToolResult``; raises McpError, Unavailable, SessionEnded,
        or ToolRefused. ``traceparent``: the agent's trace context, which the call's span
        (sessionadmin/tracing.py) continues."""
        started = time.perf_counter()
        outcome, error, kind = "failed", "", ""
        span = tracing.start_tool_call(tool, session_id=str(state.id), mcp_session_id=mcp_session_id, traceparent=traceparent)
        self.calls_in_flight += 1
        try:
            refusal = self.refusal(upstream, tool)
            if refusal:
                outcome, error, kind = "refused", refusal, "quarantined"
                raise ToolRefused(refusal)
            await self.hold(state)
            scope = anyio.CancelScope()
            state.calls_in_flight.add(scope)
            try:
                with scope:
                    limit = min(timeout or self.call_timeout, self.call_timeout)
                    result = await upstream.call_tool(tool, arguments, timeout=limit)
            finally:
                state.calls_in_flight.discard(scope)
            if scope.cancelled_caught or state.ended:
                outcome, kind, error = "cancelled", "session ended", "the session ended during the call"
                raise SessionEnded(error)
            outcome = "error" if result.is_error else "ok"
            assert upstream.info.target is not None
            return present(result, Redactor.for_target(upstream.info.target), self.max_result_bytes)
        except McpError as exc:
            error, kind = str(exc), exc.kind
            raise
        except Unavailable as exc:
            error, kind = str(exc), "unavailable"
            raise
        finally:
            self.calls_in_flight -= 1
            duration = time.perf_counter() - started
            _observe_call(upstream, actor, outcome, duration)
            tracing.end_tool_call(span, error_type=_error_type(outcome, kind))
            self.audit(
                mcp_services.tool_call_entry(
                    session_id=state.id,
                    user_id=state.user_id,
                    org_id=state.org_id,
                    actor=actor,
                    client_id=upstream.info.client_id,
                    tool=tool,
                    arguments=arguments,
                    duration=duration,
                    outcome=outcome,
                    error=error,
                    kind=kind,
                    at=datetime.now(UTC),
                    redactor=Redactor.for_target(upstream.info.target),
                )
            )

    def refusal(self, upstream: Upstream, tool: str) -> str:
        """Why a tool may not be called now ("" if it may)."""
        if tool in upstream.info.quarantined:
            return (
                f"tool {tool!r} of client {upstream.info.client_id!r} changed since it was approved and is quarantined "
                "until an operator reviews it"
            )
        if tool not in upstream.info.pinned:
            return f"tool {tool!r} of client {upstream.info.client_id!r} was not approved"
        return ""

    async def hold(self, state: SessionState) -> None:
        """Make sure the session's lease (``busy_until``) covers a call starting now; one
        database write per session per renewal window, shared by concurrent calls."""
        while state.lease_until - time.time() < RENEW_BEFORE_SECONDS:
            pending = state._lease_pending
            if pending is not None:
                await pending.wait()
                continue
            state._lease_pending = event = anyio.Event()
            try:
                until = time.time() + LEASE_SECONDS
                active = await self.db.run(mcp_services.hold_sessions, [state.id], until=datetime.fromtimestamp(until, UTC))
                if state.id not in active:
                    self.close_sessions([state.id])
                    raise SessionEnded(f"session {state.id} has ended")
                state.lease_until = until
            finally:
                state._lease_pending = None
                event.set()
            if state.ended:
                raise SessionEnded(f"session {state.id} has ended")

    # --- dashboard calls ------------------------------------------------------------------------

    def start_call(self, client_pk: int, body: dict[str, Any]) -> dict[str, Any]:
        upstream = self.upstreams.get(client_pk)
        if upstream is None:
            raise GatewayProblem(404, "not found", f"MCP client {client_pk} is not open on this gateway")
        state = self.sessions.get(upstream.info.session_id)
        if state is None:
            raise GatewayProblem(404, "session ended", f"session {upstream.info.session_id} has ended")
        arguments = body.get("arguments")
        if not isinstance(arguments, dict):
            raise GatewayProblem(400, "invalid", "tool arguments must be a JSON object")
        record = DashboardCall(
            id=secrets.token_urlsafe(16),
            session_id=state.id,
            actor=str(body.get("actor", "")),
            client_id=upstream.info.client_id,
            tool=str(body.get("tool", "")),
            timeout=float(body["timeout"]) if body.get("timeout") else None,
        )
        self._prune_calls()
        self.calls[record.id] = record
        assert self._tg is not None
        self._tg.start_soon(self._run_dashboard_call, record, state, upstream, arguments)
        return {"call": record.id}

    async def _run_dashboard_call(
        self, record: DashboardCall, state: SessionState, upstream: Upstream, arguments: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        try:
            result = await self.call(state, upstream, record.tool, arguments, actor=record.actor, timeout=record.timeout)
        except McpError as exc:
            record.status, record.kind, record.error = "failed", exc.kind, str(exc)
        except (Unavailable, ToolRefused, SessionEnded) as exc:
            record.status, record.kind, record.error = "failed", _kind_of(exc), str(exc)
        except Exception as exc:  # never lose a call record to a bug
            logger.exception("dashboard call failed")
            record.status, record.kind, record.error = "failed", "internal", type(exc).__name__
        else:
            shown = mcp_client.tool_result(result, time.perf_counter() - started)
            record.result = {
                "text": shown.text,
                "structured": shown.structured,
                "is_error": shown.is_error,
                "duration": shown.duration,
                "other_content": shown.other_content,
            }
            record.status = "done"

    def get_call(self, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
        record = self.calls.get(call_id)
        if record is None or str(record.session_id) != str(body.get("session")) or record.actor != str(body.get("actor")):
            raise GatewayProblem(404, "not found", "no such call (it may have expired)")
        out: dict[str, Any] = {"status": record.status, "client_id": record.client_id, "tool": record.tool}
        if record.status == "done":
            out["result"] = record.result
        elif record.status == "failed":
            out["kind"], out["error"] = record.kind, record.error
        else:
            out["elapsed"] = round(time.monotonic() - record.started, 1)
        return out

    def _prune_calls(self) -> None:
        now = time.monotonic()
        while self.calls:
            oldest = next(iter(self.calls.values()))
            if len(self.calls) < CALLS_MAX and now - oldest.started < CALLS_KEEP_SECONDS:
                break
            self.calls.popitem(last=False)

    # --- refresh and health -----------------------------------------------------------------

    async def refresh(self, client_pk: int, body: dict[str, Any]) -> dict[str, Any]:
        actor = str(body.get("actor", ""))
        upstream = self.upstreams.get(client_pk)
        if upstream is None:
            raise GatewayProblem(404, "not found", f"MCP client {client_pk} is not open on this gateway")
        try:
            snapshot = await upstream.refresh(timeout=float(body.get("timeout") or self.timeout))
        except (McpError, Unavailable) as exc:
            # Already reconnecting: what stops the reconnect is the news, not "reconnecting".
            error = upstream.last_error if isinstance(exc, Unavailable) and upstream.last_error else str(exc)
            status = RECONNECTING if upstream.state == RECONNECTING or isinstance(exc, McpError) else upstream.state
            await self.db.run(mcp_services.record_status, client_pk, status, error=error, actor=actor)
            return {"status": status, "error": error}
        await self._record_listing(upstream, snapshot, actor)
        await self.db.run(mcp_services.record_status, client_pk, CONNECTED, error="", actor=actor)
        return {"status": CONNECTED, "tools": len(snapshot.tools)}

    async def ping_all(self, actor: str) -> dict[str, Any]:
        """The health pass: first the connections are reconciled with the database (clients
        closed or sessions ended meanwhile are closed), then one round trip on every live
        connection (no new connection, no new process)."""
        await self.reconcile()
        upstreams = list(self.upstreams.values())
        counts = {"checked": len(upstreams), "ok": 0, "failed": 0, "changed": 0, "reconnecting": 0}
        ok: list[int] = []
        limiter = anyio.Semaphore(HEALTH_CONCURRENCY)

        async def one(upstream: Upstream) -> None:
            async with limiter:
                started = time.perf_counter()
                transport = metrics.mcp_transport(upstream.info.target.transport if upstream.info.target else "")
                try:
                    await upstream.ping()
                    metrics.mcp_operation_duration.labels("ping", transport, "ok").observe(time.perf_counter() - started)
                except (McpError, Unavailable) as exc:
                    metrics.mcp_operation_duration.labels("ping", transport, "error").observe(time.perf_counter() - started)
                    counts["failed"] += 1
                    if upstream.state == RECONNECTING:
                        counts["reconnecting"] += 1
                    if upstream.info.pk is not None and not upstream.closed:
                        status = RECONNECTING if upstream.state in (CONNECTED, RECONNECTING) else upstream.state
                        if await self.db.run(mcp_services.record_status, upstream.info.pk, status, error=str(exc), actor=actor):
                            counts["changed"] += 1
                    return
                counts["ok"] += 1
                if upstream.info.pk is not None:
                    ok.append(upstream.info.pk)

        async with anyio.create_task_group() as tg:
            for upstream in upstreams:
                tg.start_soon(one, upstream)
        await self.db.run(mcp_services.record_verified, ok)
        counts["reconnects"] = sum(u.reconnects for u in upstreams)
        return counts

    async def drain(self, timeout: float) -> dict[str, Any]:
        """Wait (at most ``timeout``) until no tool call is in flight, then write every pending
        audit entry: after it, the database holds the record of every call made so far."""
        with anyio.move_on_after(timeout):
            while self.calls_in_flight:
                await anyio.sleep(0.02)
        await self._flush_audit()
        return {"calls_in_flight": self.calls_in_flight}

    # --- background ---------------------------------------------------------------------------

    def audit(self, entry: Any) -> None:
        self._audit.append(entry)
        if len(self._audit) >= AUDIT_BATCH:
            self._audit_wakeup.set()

    async def _audit_writer(self) -> None:
        """Tool-call entries are written in batches (one transaction every 50 ms at most), off
        the calls' path; a graceful stop flushes what is left."""
        while True:
            with anyio.move_on_after(AUDIT_FLUSH_SECONDS):
                await self._audit_wakeup.wait()
            self._audit_wakeup = anyio.Event()
            await self._flush_audit()

    async def _flush_audit(self) -> None:
        while self._audit:
            batch, self._audit = self._audit[:AUDIT_BATCH], self._audit[AUDIT_BATCH:]
            try:
                await self.db.run(mcp_services.write_tool_calls, batch)
            except Exception:
                logger.exception("cannot write %d tool-call audit entries; retrying", len(batch))
                self._audit = batch + self._audit
                await anyio.sleep(1)
                return

    async def _lease_renewer(self) -> None:
        while True:
            await anyio.sleep(RENEW_EVERY_SECONDS)
            now = time.time()
            busy = [s for s in self.sessions.values() if s.calls_in_flight and s.lease_until - now < RENEW_BEFORE_SECONDS]
            if not busy:
                continue
            until = now + LEASE_SECONDS
            try:
                active = set(
                    await self.db.run(mcp_services.hold_sessions, [s.id for s in busy], until=datetime.fromtimestamp(until, UTC))
                )
            except Exception:
                logger.exception("cannot renew the leases of busy sessions")
                continue
            for state in busy:
                if state.id in active:
                    state.lease_until = until

    async def _reconciler(self) -> None:
        """A lost message never keeps a connection alive: connections whose row was closed or
        whose session ended are closed, and sessions no longer active are cut off."""
        while True:
            await anyio.sleep(RECONCILE_EVERY_SECONDS)
            try:
                await self.reconcile()
            except Exception:
                logger.exception("gateway reconciliation failed")

    async def reconcile(self) -> None:
        pks = list(self.upstreams)
        still_open = await self.db.run(mcp_services.open_client_pks, pks)
        for pk in pks:
            upstream = self.upstreams.get(pk)
            if pk not in still_open and upstream is not None:
                upstream.close()
                self._forget(upstream)
        sids = list(self.sessions)
        active = await self.db.run(mcp_services.sessions_still_active, sids)
        ended = [sid for sid in sids if sid not in active]
        if ended:
            self.close_sessions(ended)


class ToolRefused(Exception):
    pass


def _observe_call(upstream: Upstream, actor: str, outcome: str, duration: float) -> None:
    """The call's metrics: every call is counted; one refused before it reached the server is not
    an MCP operation, so it has no duration."""
    metrics.mcp_tool_calls.labels(metrics.actor_kind(actor), outcome).inc()
    if outcome != "refused":
        transport = metrics.mcp_transport(upstream.info.target.transport if upstream.info.target else "")
        status = "ok" if outcome == "ok" else "error"
        metrics.mcp_operation_duration.labels("tools/call", transport, status).observe(duration)


def _error_type(outcome: str, kind: str) -> str:
    """``error.type`` of a call's span: "tool_error" for a result with isError (the MCP
    conventions' value), else what went wrong; "" when it succeeded."""
    if outcome == "ok":
        return ""
    if outcome == "error":
        return "tool_error"
    return kind or outcome


def _kind_of(exc: Exception) -> str:
    if isinstance(exc, ToolRefused):
        return "quarantined"
    if isinstance(exc, SessionEnded):
        return "session ended"
    return "unavailable"
