"""The gateway's ASGI front and its process.

Routes:
- ``/sessions/{session_id}/mcp`` — the session's MCP endpoint (streamable HTTP, both protocol
  eras), for ``Authorization: Bearer <token of that session>`` only. The front checks the token
  (401 unknown, 404 another session's or an ended session's), binds the SDK's MCP sessions to
  the sessionadmin session (a legacy ``Mcp-Session-Id`` created under session A answers 404 to a
  token of session B), records the exchange so a kill can cut it, and hands over to the SDK.
- ``/internal/...`` — the internal API of web processes and workers, for ``Authorization:
  Gateway <shared secret>`` only (never a session token).
- ``/healthz`` — liveness, no credentials.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from sessionadmin import logs
from sessionadmin.gateway.core import Gateway, GatewayProblem, SessionState
from sessionadmin.gateway.endpoint import STATE_KEY, build_server
from sessionadmin.gateway_client import SCHEME, internal_secret

logger = logging.getLogger(__name__)

current_state: contextvars.ContextVar[SessionState | None] = contextvars.ContextVar("sessionadmin_session", default=None)

MAX_INTERNAL_BODY = 1024 * 1024
_SESSION_PATH = re.compile(r"^/sessions/([0-9a-fA-F-]{32,36})/mcp/?$")
_Handler = Callable[[re.Match[str], dict[str, Any]], Awaitable[dict[str, Any]]]


async def _json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        self.gateway = gateway
        self.server = build_server(gateway)
        # JSON responses (no per-request SSE machinery); legacy MCP sessions idle for 30 min go.
        self.manager = StreamableHTTPSessionManager(self.server, json_response=True, session_idle_timeout=1800)
        self._secret = internal_secret().encode()
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("POST", re.compile(r"^/internal/sessions/([0-9a-fA-F-]{32,36})/clients$"), self._attach),
            ("POST", re.compile(r"^/internal/sessions/close$"), self._close_sessions),
            ("POST", re.compile(r"^/internal/clients/reload$"), self._reload),
            ("POST", re.compile(r"^/internal/clients/(\d+)/refresh$"), self._refresh),
            ("POST", re.compile(r"^/internal/clients/(\d+)/calls$"), self._start_call),
            ("POST", re.compile(r"^/internal/calls/([A-Za-z0-9_-]{1,64})$"), self._get_call),
            ("POST", re.compile(r"^/internal/health$"), self._health),
            ("POST", re.compile(r"^/internal/drain$"), self._drain),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        match = _SESSION_PATH.match(path)
        if match:
            await self._endpoint(match.group(1), scope, receive, send)
        elif path.startswith("/internal/"):
            await self._internal(scope, receive, send)
        elif path == "/metrics":
            await self._metrics(scope, send)
        elif path == "/healthz":
            gateway = self.gateway
            await _json(
                send,
                200 if gateway.ready.is_set() else 503,
                {
                    "status": "ok" if gateway.ready.is_set() else "starting",
                    "url": gateway.url,
                    "sessions": len(gateway.sessions),
                    "clients": len(gateway.upstreams),
                },
            )
        else:
            await _json(send, 404, {"error": {"kind": "not found", "message": "no such endpoint"}})

    # --- /metrics -------------------------------------------------------------------------------

    async def _metrics(self, scope: Scope, send: Send) -> None:
        """The gateway's own metrics, for the same credentials as the web tier's /metrics: a
        listed client address, or an API token with the metrics permission (401 with none, 403
        with a token that may not)."""
        from sessionadmin import metrics

        if scope["method"] not in ("GET", "HEAD"):
            await _json(send, 405, {"error": {"kind": "invalid", "message": "method not allowed"}})
            return
        client = scope.get("client") or ("", 0)
        if not metrics.allowed_address(str(client[0])):
            authorization = _header(scope, b"authorization")
            if not authorization:
                headers = [(b"www-authenticate", b'Bearer realm="sessionadmin metrics"')]
                await _json(send, 401, {"error": {"kind": "unauthorized", "message": "a metrics token is required"}}, headers)
                return
            if not await self.gateway.db.run(metrics.token_allows, authorization):
                await _json(send, 403, {"error": {"kind": "forbidden", "message": "this token may not read metrics"}})
                return
        live = metrics.live_clients_family(upstream.state for upstream in self.gateway.upstreams.values())
        body, content_type = metrics.exposition(metrics.registry_for(extra=[metrics.Fixed([live])]))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    # --- the session endpoint -----------------------------------------------------------------

    async def _endpoint(self, raw_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            session_id = uuid.UUID(raw_id)
        except ValueError:
            await _json(send, 404, {"error": {"kind": "not found", "message": "no such session"}})
            return
        authorization = _header(scope, b"authorization")
        scheme, _, token = authorization.partition(" ")
        status, state = (401, None) if scheme.lower() != "bearer" else await self.gateway.authenticate(token.strip(), session_id)
        if state is None:
            if status == 401:
                await _json(
                    send,
                    401,
                    {"error": {"kind": "unauthorized", "message": "a bearer token of this session is required"}},
                    [(b"www-authenticate", b'Bearer realm="sessionadmin"')],
                )
            else:
                await _json(send, 404, {"error": {"kind": "not found", "message": "no such active session"}})
            return
        scope[STATE_KEY] = state
        scope["user"] = _principal(state)
        # This request's task has its own context: its log lines name the session.
        logs.session_id.set(str(session_id))
        exchange = anyio.CancelScope()
        progress = {"started": False, "done": False}

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                progress["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                progress["done"] = True
            await send(message)

        state.exchanges.add(exchange)
        token_ctx = current_state.set(state)
        try:
            with exchange:
                await self.manager.handle_request(scope, receive, tracked)
        finally:
            current_state.reset(token_ctx)
            state.exchanges.discard(exchange)
        if exchange.cancelled_caught:
            # The session was killed while this exchange was open.
            if not progress["started"]:
                await _json(send, 404, {"error": {"kind": "session ended", "message": "this session has ended"}})
            elif not progress["done"]:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --- the internal API ---------------------------------------------------------------------

    async def _internal(self, scope: Scope, receive: Receive, send: Send) -> None:
        scheme, _, secret = _header(scope, b"authorization").partition(" ")
        if scheme != SCHEME or not hmac.compare_digest(secret.strip().encode(), self._secret):
            await _json(send, 403, {"error": {"kind": "forbidden", "message": "the internal API needs the gateway secret"}})
            return
        for method, pattern, handler in self._routes:
            match = pattern.match(scope["path"])
            if match is None:
                continue
            if scope["method"] != method:
                await _json(send, 405, {"error": {"kind": "invalid", "message": "method not allowed"}})
                return
            try:
                body = await _read_json(receive)
                answer = await handler(match, body)
            except GatewayProblem as exc:
                await _json(send, exc.status, {"error": {"kind": exc.kind, "message": str(exc)}})
                return
            except ValueError as exc:
                await _json(send, 400, {"error": {"kind": "invalid", "message": str(exc)[:500]}})
                return
            except Exception:
                logger.exception("internal API %s failed", scope["path"])
                await _json(send, 500, {"error": {"kind": "internal", "message": "the gateway failed; see its log"}})
                return
            await _json(send, 200, answer)
            return
        await _json(send, 404, {"error": {"kind": "not found", "message": "no such endpoint"}})

    async def _attach(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.attach(uuid.UUID(match.group(1)), body)

    async def _close_sessions(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return self.gateway.close_sessions([uuid.UUID(str(s)) for s in body.get("sessions", [])])

    async def _reload(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.reload([int(pk) for pk in body.get("clients", [])])

    async def _refresh(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.refresh(int(match.group(1)), body)

    async def _start_call(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return self.gateway.start_call(int(match.group(1)), body)

    async def _get_call(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return self.gateway.get_call(match.group(1), body)

    async def _health(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.ping_all(str(body.get("actor", "")))

    async def _drain(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.drain(min(float(body.get("timeout") or 5), 30))


def _principal(state: SessionState) -> Any:
    """The identity the SDK binds legacy MCP sessions to: the sessionadmin session (any of its
    tokens), never a particular token."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    principal = getattr(state, "_principal", None)
    if principal is None:
        principal = AuthenticatedUser(AccessToken(token="", client_id=f"sessionadmin-session:{state.id}", scopes=[]))
        state._principal = principal  # type: ignore[attr-defined]
    return principal


async def _read_json(receive: Receive) -> dict[str, Any]:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_INTERNAL_BODY:
            raise ValueError("request body too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    data = json.loads(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def bind_socket(bind: str) -> socket.socket:
    """A listening TCP socket for ``host:port`` (port 0 picks a free one). Created with
    IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted connections (with proto 0 it does
    not, and every keep-alive response waits ~40 ms for a delayed ACK)."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(gateway: Gateway, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Run the gateway until SIGINT/SIGTERM: its background work, the SDK's session manager and
    uvicorn on ``sock``; on the way out every upstream connection is closed (stdio processes
    stopped) and pending audit entries are written."""
    import uvicorn

    app = GatewayApp(gateway)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        async with app.manager.run():
            if on_ready is not None:
                on_ready()
            await server.serve([sock])
        tg.cancel_scope.cancel()
