"""How web processes and Celery tasks talk to the MCP gateway: a small synchronous client of the
gateway's internal API (``/internal/...``), stdlib ``http.client`` only (no MCP SDK here).

Every call has a timeout. A gateway that cannot be reached is ``GatewayUnavailable`` ("gateway
unavailable: ..."), an error the operator reads, never a 500; an error the gateway reports
(a handshake that failed, an unknown client) is ``GatewayError`` with its ``kind``.

The internal API is authenticated by a shared secret (``SESSIONADMIN_GATEWAY_SECRET``, or an
HMAC of the secret key with a fixed label), sent as ``Authorization: Gateway <secret>``. It is
distinct from every session token, and the gateway accepts no session token on these routes.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from sessionadmin.manager import SessionError

SCHEME = "Gateway"
_LABEL = b"sessionadmin-gateway-internal-v1"


class GatewayUnavailable(SessionError):
    """The gateway did not answer (down, unreachable, timed out)."""

    kind = "gateway unavailable"


class GatewayError(SessionError):
    """The gateway answered with an error; ``kind`` is what went wrong (an MCP error kind such
    as "refused" or "timeout", or "not found", "invalid", "session ended")."""

    def __init__(self, message: str, *, kind: str, status: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def internal_secret() -> str:
    """The shared secret of the internal API (the same in every process of a deployment)."""
    configured = settings.SESSIONADMIN_GATEWAY_SECRET
    if configured:
        return str(configured)
    return hmac.new(str(settings.SECRET_KEY).encode(), _LABEL, hashlib.sha256).hexdigest()


def _request(method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
    base = urlsplit(settings.SESSIONADMIN_GATEWAY_INTERNAL_URL)
    timeout = timeout if timeout is not None else float(settings.SESSIONADMIN_GATEWAY_TIMEOUT_SECONDS)
    conn_cls = http.client.HTTPSConnection if base.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(base.hostname or "127.0.0.1", base.port, timeout=timeout)
    payload = json.dumps(body or {}).encode()
    headers = {"Authorization": f"{SCHEME} {internal_secret()}", "Content-Type": "application/json"}
    try:
        conn.request(method, base.path.rstrip("/") + path, body=payload if method != "GET" else None, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = "timed out" if isinstance(exc, socket.timeout | TimeoutError) else (getattr(exc, "strerror", None) or str(exc))
        raise GatewayUnavailable(f"gateway unavailable: {settings.SESSIONADMIN_GATEWAY_INTERNAL_URL} {reason}") from None
    finally:
        conn.close()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        raise GatewayUnavailable(f"gateway unavailable: unexpected answer (HTTP {response.status})") from None
    if response.status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        raise GatewayError(
            str(error.get("message") or f"HTTP {response.status}"), kind=str(error.get("kind") or "error"), status=response.status
        )
    return data if isinstance(data, dict) else {}


# --- operations ---------------------------------------------------------------------------------


def health(*, timeout: float = 1.0) -> dict[str, Any]:
    """The gateway's own ``/healthz`` (no secret needed; used by the web's ``/healthz``)."""
    return _request("GET", "/healthz", timeout=timeout)


def attach(
    session_id: uuid.UUID,
    *,
    client_id: str,
    server_id: int | None,
    url: str,
    transport: str,
    actor: str,
    timeout: float,
) -> dict[str, Any]:
    """Open a live connection for a new client; the gateway records the client (or the
    failure) itself. Returns ``{"client": pk}``. Ids only: the gateway reads the catalog."""
    body = {
        "client_id": client_id,
        "server_id": server_id,
        "url": url,
        "transport": transport,
        "actor": actor,
        "timeout": timeout,
    }
    return _request("POST", f"/internal/sessions/{session_id}/clients", body, timeout=timeout + _slack())


def refresh(client_pk: int, *, actor: str, timeout: float) -> dict[str, Any]:
    body = {"actor": actor, "timeout": timeout}
    return _request("POST", f"/internal/clients/{client_pk}/refresh", body, timeout=timeout + _slack())


def reload_clients(client_pks: Iterable[int]) -> dict[str, Any]:
    """The rows changed (detached, approved tools, new catalog target): read them again."""
    return _request("POST", "/internal/clients/reload", {"clients": [int(pk) for pk in client_pks]})


def close_sessions(session_ids: Iterable[uuid.UUID]) -> dict[str, Any]:
    """Cut sessions off: refuse their tokens, cancel their calls, close their connections."""
    return _request("POST", "/internal/sessions/close", {"sessions": [str(s) for s in session_ids]})


def start_call(client_pk: int, *, tool: str, arguments: dict[str, Any], actor: str, timeout: float | None = None) -> str:
    """Start a tool call from the dashboard; returns its id at once (the call runs in the gateway,
    for at most ``timeout`` seconds, or the call timeout)."""
    body = {"tool": tool, "arguments": arguments, "actor": actor, "timeout": timeout}
    data = _request("POST", f"/internal/clients/{client_pk}/calls", body)
    return str(data["call"])


def get_call(call_id: str, *, session_id: uuid.UUID, actor: str) -> dict[str, Any]:
    """``{"status": "running"}`` or the finished call (result or error); bound to the session
    and the operator who started it."""
    return _request("POST", f"/internal/calls/{call_id}", {"session": str(session_id), "actor": actor})


def ping_all(*, actor: str, timeout: float) -> dict[str, Any]:
    """Ping every live connection (the health pass); returns counts."""
    return _request("POST", "/internal/health", {"actor": actor}, timeout=timeout + _slack())


def drain(*, timeout: float = 5.0) -> dict[str, Any]:
    """Wait until no tool call is in flight and every audit entry is written."""
    return _request("POST", "/internal/drain", {"timeout": timeout}, timeout=timeout + _slack())


def _slack() -> float:
    return float(settings.SESSIONADMIN_GATEWAY_TIMEOUT_SECONDS)
