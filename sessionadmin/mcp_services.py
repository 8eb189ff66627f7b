"""Service layer for MCP: the catalog (McpServer) and the clients attached to sessions
(McpClient). Every write goes here, with its audit entry in the same transaction. Connections
are opened per operation by ``mcp_client.py`` (the only module that imports the SDK), always
outside a database transaction, so a slow server never holds a lock.

Secrets (catalog header and environment values) are decrypted only to build a connection target
or the workspace's ``.mcp.json``; audit details, errors and logs name them, never show them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets as pysecrets
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from sessionadmin import audit, lifecycle, mcp_client, netpolicy, sandbox
from sessionadmin.lifecycle import InvalidInput, MCPClientNotFound, SessionError, SessionNotFound, parse_session_id
from sessionadmin.mcp_client import McpError, Target, ToolResult
from sessionadmin.models import AgentSession, McpClient, McpServer
from sessionadmin.secrets import SecretsError, decrypt_mapping, encrypt_mapping, masked_mapping

logger = logging.getLogger(__name__)

HEALTH_ACTOR = "system:mcp-health"
DEFAULT_HEALTH_CONCURRENCY = 10
MCP_JSON = ".mcp.json"
CLIENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
# Failures after which a client is no longer "connected" (a slow tool is not a dead server).
DOWN_KINDS = {
    mcp_client.UNREACHABLE,
    mcp_client.REFUSED,
    mcp_client.AUTH,
    mcp_client.CLOSED,
    mcp_client.PROTOCOL,
    mcp_client.SANDBOX,
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class McpOperationFailed(SessionError):
    """An MCP handshake or call failed; ``kind`` is McpError's kind."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def timeout_default() -> float:
    return float(settings.SESSIONADMIN_MCP_TIMEOUT_SECONDS)


# --- catalog ------------------------------------------------------------------------------------


def server_headers(server: McpServer) -> dict[str, str]:
    return decrypt_mapping(server.headers_encrypted)


def server_env(server: McpServer) -> dict[str, str]:
    return decrypt_mapping(server.env_encrypted)


def stored_secrets(server: McpServer | None) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, env) of a catalog entry for editing forms; empty when unreadable (a changed
    key), so the operator can type them again instead of meeting an error page."""
    if server is None:
        return {}, {}
    try:
        return server_headers(server), server_env(server)
    except SecretsError:
        return {}, {}


def set_server_secrets(server: McpServer, *, headers: dict[str, str] | None = None, env: dict[str, str] | None = None) -> None:
    """Encrypt new header/env mappings onto the (unsaved) instance; None keeps the stored one."""
    if headers is not None:
        server.headers_encrypted = encrypt_mapping(headers)
    if env is not None:
        server.env_encrypted = encrypt_mapping(env)


def url_policy_error(url: str) -> str | None:
    """Why the outbound URL policy refuses ``url`` (resolved now), or None. The same policy
    holds again on every connection (``mcp_client``), on the addresses resolved then."""
    try:
        netpolicy.check_url(url, netpolicy.Allowed.parse(settings.SESSIONADMIN_MCP_ALLOWED_HOSTS))
    except netpolicy.PolicyRefused as exc:
        return str(exc)
    return None


def check_read_only_paths(paths: Sequence[str]) -> list[str]:
    """A catalog entry's sandbox read-only paths, normalized; ValueError (a SandboxPathError)
    for a relative or missing path, or one that would show the dashboard's own files (var/,
    the database, the workspaces, the repository as a whole)."""
    database = settings.DATABASES["default"]
    forbidden: list[str | Path] = [settings.VAR_DIR, settings.SESSIONADMIN_WORKSPACE_ROOT]
    if "sqlite" in str(database.get("ENGINE", "")):
        forbidden.append(Path(str(database["NAME"])))
    return sandbox.check_read_only_paths(paths, forbidden=forbidden, forbidden_whole=[settings.BASE_DIR])


def _check_server_policy(server: McpServer) -> None:
    errors: dict[str, str] = {}
    if server.transport == McpServer.Transport.STDIO:
        try:
            server.read_only_paths = check_read_only_paths([str(p) for p in server.read_only_paths or []])
        except ValueError as exc:
            errors["read_only_paths"] = str(exc)
    elif server.url:
        refused = url_policy_error(server.url)
        if refused:
            errors["url"] = refused
    if errors:
        raise ValidationError(errors)


def save_server(
    server: McpServer, *, actor: str, headers: dict[str, str] | None = None, env: dict[str, str] | None = None
) -> McpServer:
    """Create or update a catalog entry. Audited with the names of its secrets, not the values.
    Its URL must pass the outbound URL policy and its read-only paths the sandbox's checks."""
    creating = server._state.adding
    set_server_secrets(server, headers=headers, env=env)
    server.full_clean()
    _check_server_policy(server)
    with transaction.atomic():
        server.save()
        audit.write(
            [
                audit.entry(
                    "mcp_server_created" if creating else "mcp_server_updated",
                    actor=actor,
                    details={
                        "server": server.name,
                        "transport": server.transport,
                        "header_names": sorted(server_headers(server)),
                        "env_names": sorted(server_env(server)),
                        **(
                            {"network": server.network, "read_only_paths": list(server.read_only_paths or [])}
                            if server.transport == McpServer.Transport.STDIO
                            else {}
                        ),
                    },
                )
            ]
        )
        if not creating:
            # Live workspaces must not keep a stale URL or a rotated secret in .mcp.json.
            transaction.on_commit(lambda: _rewrite_configs_of([server.pk]))
    return server


def delete_server(server: McpServer, *, actor: str) -> None:
    """Remove a catalog entry. Its open clients are closed (audited) and the workspaces'
    ``.mcp.json`` rewritten, so no agent keeps using a server the operators removed."""
    now = timezone.now()
    with transaction.atomic():
        name = server.name
        clients = list(
            McpClient.objects.select_for_update()
            .filter(server=server)
            .exclude(status=McpClient.Status.CLOSED)
            .select_related("session")
        )
        McpClient.objects.filter(pk__in=[c.pk for c in clients]).update(status=McpClient.Status.CLOSED, closed_at=now)
        server.delete()
        audit.write(
            [audit.entry("mcp_server_deleted", actor=actor, details={"server": name, "clients_closed": len(clients)})]
            + [
                audit.session_entry(
                    "mcp_client_closed", c.session, actor, {"client_id": c.client_id, "reason": "catalog entry deleted"}
                )
                for c in clients
            ]
        )
        session_ids = {c.session_id for c in clients}
        transaction.on_commit(lambda: _rewrite_configs_of(None, session_ids=session_ids))


def _rewrite_configs_of(server_ids: list[int] | None, *, session_ids: set[uuid.UUID] | None = None) -> None:
    """Rewrite ``.mcp.json`` of the live sessions using these servers (or these sessions).
    Best effort after commit: a workspace that cannot be written is logged, and the next
    attach, detach or refresh of that session writes it again."""
    sessions = AgentSession.objects.active()
    if server_ids is not None:
        sessions = sessions.filter(mcp_clients__server_id__in=server_ids).exclude(mcp_clients__status=McpClient.Status.CLOSED)
    else:
        sessions = sessions.filter(pk__in=session_ids or set())
    for session in sessions.distinct():
        try:
            write_mcp_json(session)
        except OSError as exc:
            logger.warning("cannot rewrite %s of session %s: %s", MCP_JSON, session.pk, exc.strerror or exc)


# --- targets and the workspace's .mcp.json ------------------------------------------------------


def target_for(client: McpClient, session: AgentSession) -> Target:
    """How to reach a client's server now: catalog entries are read at each operation."""
    if client.server_id is None:
        if not client.url:
            raise McpOperationFailed(
                f"{mcp_client.PROTOCOL}: the catalog entry of {client.client_id!r} was deleted", kind=mcp_client.PROTOCOL
            )
        return Target(client.transport, url=client.url, **_http_policy())
    server = client.server
    assert server is not None
    return _target_of_server(server, session)


def _http_policy() -> dict[str, Any]:
    return {
        "allowed_hosts": tuple(settings.SESSIONADMIN_MCP_ALLOWED_HOSTS),
        "max_result_bytes": int(settings.SESSIONADMIN_MCP_MAX_RESULT_BYTES),
    }


def _target_of_server(server: McpServer, session: AgentSession) -> Target:
    if server.transport == McpServer.Transport.STDIO:
        return Target(
            "stdio",
            command=server.command,
            args=tuple(str(a) for a in server.args or []),
            env=server_env(server),
            cwd=session.workspace_path,
            sandbox=bool(settings.SESSIONADMIN_STDIO_SANDBOX),
            network=server.network,
            read_only_paths=tuple(str(p) for p in server.read_only_paths or []),
            max_result_bytes=int(settings.SESSIONADMIN_MCP_MAX_RESULT_BYTES),
        )
    return Target(server.transport, url=server.url, headers=server_headers(server), **_http_policy())


def _entry_of(client: McpClient, *, include_secrets: bool) -> dict[str, Any] | None:
    server = client.server
    if server is None:
        if client.transport == McpServer.Transport.STDIO:
            return None  # its catalog entry (the only source of a command) is gone
        return {"type": "http" if client.transport == "streamable_http" else "sse", "url": client.url}
    if server.transport == McpServer.Transport.STDIO:
        entry: dict[str, Any] = {"command": server.command, "args": [str(a) for a in server.args or []]}
        env = server_env(server)
        if env:
            entry["env"] = env if include_secrets else masked_mapping(env)
        return entry
    entry = {"type": "http" if server.transport == McpServer.Transport.STREAMABLE_HTTP else "sse", "url": server.url}
    headers = server_headers(server)
    if headers:
        entry["headers"] = headers if include_secrets else masked_mapping(headers)
    return entry


def mcp_config_for(session: AgentSession, *, include_secrets: bool) -> dict[str, Any]:
    """The session's ``.mcp.json`` document, ``{"mcpServers": {client_id: entry}}``, in the
    format agent CLIs read: stdio -> command/args/env, streamable HTTP -> {"type": "http",
    "url", "headers"}, SSE -> {"type": "sse", ...}. Header/env values are masked unless
    ``include_secrets``. Every attached (not closed) client is listed."""
    clients = McpClient.objects.filter(session_id=session.pk).exclude(status=McpClient.Status.CLOSED).select_related("server")
    entries = {c.client_id: _entry_of(c, include_secrets=include_secrets) for c in clients.order_by("client_id")}
    return {"mcpServers": {client_id: entry for client_id, entry in entries.items() if entry is not None}}


def write_mcp_json(session: AgentSession) -> None:
    """Rewrite ``{workspace}/.mcp.json`` atomically (temp file + rename), mode 0600. Every
    directory below the workspace root is opened with O_NOFOLLOW and the file is created
    relative to the workspace's descriptor, so a planted symlink is never followed (a link
    at ``.mcp.json`` itself is replaced, not written through)."""
    document = json.dumps(mcp_config_for(session, include_secrets=True), indent=2, sort_keys=True) + "\n"
    path = Path(session.workspace_path)
    root_fd = os.open(path.parent.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        user_fd = os.open(path.parent.name, _DIR_FLAGS, dir_fd=root_fd)
        try:
            ws_fd = os.open(path.name, _DIR_FLAGS, dir_fd=user_fd)
        finally:
            os.close(user_fd)
    finally:
        os.close(root_fd)
    try:
        tmp = f".mcp.json.{pysecrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=ws_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                # No fsync: the database is the record and the file is regenerated from it on
                # every attach/detach; the rename alone makes a reader see old or new, never half.
                fh.write(document)
            os.replace(tmp, MCP_JSON, src_dir_fd=ws_fd, dst_dir_fd=ws_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=ws_fd)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(ws_fd)


def _rewrite_config(session: AgentSession) -> None:
    try:
        write_mcp_json(session)
    except OSError as exc:
        raise McpOperationFailed(f"cannot write {MCP_JSON} in the workspace: {exc.strerror or exc}", kind="workspace") from exc


# --- attach, detach, read -----------------------------------------------------------------------


def _active_session(session_id: uuid.UUID | str, *, lock: bool = False) -> AgentSession:
    sid = parse_session_id(session_id)
    qs = AgentSession.objects.select_for_update() if lock else AgentSession.objects.all()
    session = qs.active().filter(pk=sid).first()
    if session is None:
        raise SessionNotFound(f"session {sid} not found")
    return session


def _check_client_id(client_id: str) -> str:
    if not CLIENT_ID_RE.match(client_id):
        raise InvalidInput("client id must be 1-100 lowercase letters, digits, '-' or '_', starting with a letter or digit")
    return client_id


def _check_adhoc_url(url: str, transport: str) -> str:
    if transport not in (McpServer.Transport.STREAMABLE_HTTP, McpServer.Transport.SSE):
        raise InvalidInput("an ad-hoc server must use streamable HTTP or SSE (stdio commands come from the catalog only)")
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise InvalidInput("an ad-hoc server needs an http(s) URL without credentials in it")
    if len(url) > 2000:
        raise InvalidInput("URL is too long")
    refused = url_policy_error(url)
    if refused:
        raise InvalidInput(f"URL refused: {refused}")
    return url


def add_client(
    session_id: uuid.UUID | str,
    *,
    actor: str,
    server: McpServer | int | str | None = None,
    url: str = "",
    transport: str = McpServer.Transport.STREAMABLE_HTTP,
    client_id: str = "",
    timeout: float | None = None,
) -> McpClient:
    """Attach a server to an active session: a real handshake (initialize + list tools,
    resources, prompts) within ``timeout``, then the client row, its audit entry and the
    rewritten ``.mcp.json``, in one transaction. A failed handshake is audited
    (``mcp_client_add_failed``), leaves no row, and raises McpOperationFailed."""
    session = _active_session(session_id)
    catalog = _resolve_server(server) if server is not None and server != "" else None
    if catalog is None:
        url = _check_adhoc_url(url, transport)
        target = Target(transport, url=url, **_http_policy())
        default_id = slugify((urlsplit(url).hostname or "server").replace(".", "-"))
    else:
        refused = url_policy_error(catalog.url) if catalog.transport != McpServer.Transport.STDIO else None
        if refused:
            raise InvalidInput(f"URL of {catalog.name} refused: {refused}")
        target = _target_of_server(catalog, session)
        transport, url = catalog.transport, catalog.url
        default_id = slugify(catalog.name)
    client_id = _check_client_id(client_id or default_id[:100] or "server")
    if McpClient.objects.filter(session_id=session.id, client_id=client_id).exclude(status=McpClient.Status.CLOSED).exists():
        raise InvalidInput(f"client id {client_id!r} is already attached to this session")
    label = {
        "client_id": client_id,
        "server": catalog.name if catalog else "",
        "transport": transport,
        "target": target.describe(),
    }
    try:
        snapshot = mcp_client.inspect(target, timeout=timeout or timeout_default())
    except McpError as exc:
        with transaction.atomic():
            audit.write(
                [audit.session_entry("mcp_client_add_failed", session, actor, {**label, "kind": exc.kind, "error": str(exc)})]
            )
        raise McpOperationFailed(str(exc), kind=exc.kind) from None
    now = timezone.now()
    with transaction.atomic():
        session = _active_session(session.id, lock=True)
        # Closed clients of the same id stay as the session's history.
        if McpClient.objects.filter(session_id=session.id, client_id=client_id).exclude(status=McpClient.Status.CLOSED).exists():
            raise InvalidInput(f"client id {client_id!r} is already attached to this session")
        client = McpClient(
            session=session,
            client_id=client_id,
            server=catalog,
            transport=transport,
            url=url if catalog is None else "",
            status=McpClient.Status.CONNECTED,
            created_at=now,
            created_by=actor,
        )
        _apply_snapshot(client, snapshot, now)
        client.save(force_insert=True)
        _rewrite_config(session)
        lifecycle.touch(session_id=session.id)
        audit.write(
            [
                audit.session_entry(
                    "mcp_client_added",
                    session,
                    actor,
                    {
                        **label,
                        "server_name": snapshot.server_name,
                        "server_version": snapshot.server_version,
                        "protocol_version": snapshot.protocol_version,
                        "tools": len(snapshot.tools),
                    },
                )
            ]
        )
    return client


def _resolve_server(server: McpServer | int | str) -> McpServer:
    if isinstance(server, McpServer):
        found: McpServer | None = server
    elif isinstance(server, int) or (isinstance(server, str) and server.isdigit()):
        found = McpServer.objects.filter(pk=int(server)).first()
    else:
        found = McpServer.objects.filter(name=server).first()
    if found is None or not found.enabled:
        raise InvalidInput("no such enabled MCP server in the catalog")
    return found


def _apply_snapshot(client: McpClient, snapshot: mcp_client.Snapshot, now: Any) -> None:
    client.server_name = snapshot.server_name[:200]
    client.server_version = snapshot.server_version[:100]
    client.protocol_version = snapshot.protocol_version[:50]
    client.capabilities = snapshot.capabilities
    client.tools = snapshot.tools
    client.resources = snapshot.resources
    client.prompts = snapshot.prompts
    client.last_verified_at = now
    client.last_error = ""


def remove_client(session_id: uuid.UUID | str, client_id: str, *, actor: str) -> McpClient:
    """Close and detach one client (the row stays, closed, for the record)."""
    now = timezone.now()
    with transaction.atomic():
        session = _active_session(session_id, lock=True)
        client = _open_client(session.id, client_id, lock=True)
        client.status, client.closed_at = McpClient.Status.CLOSED, now
        client.save(update_fields=["status", "closed_at"])
        _rewrite_config(session)
        lifecycle.touch(session_id=session.id)
        audit.write([audit.session_entry("mcp_client_removed", session, actor, {"client_id": client.client_id})])
    return client


def _open_client(session_id: uuid.UUID, client_id: str, *, lock: bool = False) -> McpClient:
    # ``of=self``: PostgreSQL cannot lock the nullable side of the join to the catalog.
    qs = McpClient.objects.select_for_update(of=("self",)) if lock else McpClient.objects.all()
    client = (
        qs.filter(session_id=session_id, client_id=str(client_id)[:100])
        .exclude(status=McpClient.Status.CLOSED)
        .select_related("server")
        .first()
    )
    if client is None:
        raise MCPClientNotFound(f"MCP client {audit.safe_repr(client_id, 60)} not found in session {session_id}")
    return client


def get_client(session_id: uuid.UUID | str, client_id: str) -> McpClient:
    return _open_client(parse_session_id(session_id), client_id)


def list_clients(session_id: uuid.UUID | str) -> list[McpClient]:
    sid = parse_session_id(session_id)
    return list(McpClient.objects.filter(session_id=sid).exclude(status=McpClient.Status.CLOSED).select_related("server"))


# --- refresh, call, health ----------------------------------------------------------------------


def refresh_client(session_id: uuid.UUID | str, client_id: str, *, actor: str, timeout: float | None = None) -> McpClient:
    """Redo the handshake and the listings; record the result (an error is recorded, not raised)."""
    session = _active_session(session_id)
    client = _open_client(session.id, client_id)
    try:
        snapshot: mcp_client.Snapshot | None = mcp_client.inspect(
            target_for(client, session), timeout=timeout or timeout_default()
        )
        error = ""
    except (McpError, McpOperationFailed) as exc:
        snapshot, error = None, str(exc)
    now = timezone.now()
    with transaction.atomic():
        row = _open_client(session.id, client_id, lock=True)
        before = row.status
        if snapshot is not None:
            _apply_snapshot(row, snapshot, now)
            row.status = McpClient.Status.CONNECTED
        else:
            row.status, row.last_error = McpClient.Status.ERROR, error
        row.save(
            update_fields=[
                "server_name",
                "server_version",
                "protocol_version",
                "capabilities",
                "tools",
                "resources",
                "prompts",
                "last_verified_at",
                "last_error",
                "status",
            ]
        )
        if row.status != before:
            audit.write([_status_entry(session, row, actor, before, error)])
    lifecycle.touch(session_id=session.id)
    return row


def _status_entry(session: AgentSession, client: McpClient, actor: str, before: str, error: str) -> Any:
    details = {"client_id": client.client_id, "from": before, "to": client.status}
    if error:
        details["error"] = error[: audit.MAX_DETAIL_TEXT]
    return audit.session_entry("mcp_client_status_changed", session, actor, details)


def call_tool(
    session_id: uuid.UUID | str, client_id: str, tool: str, arguments: dict[str, Any], *, actor: str, timeout: float | None = None
) -> ToolResult:
    """Call a tool of an attached client. Audited as ``mcp_tool_called`` with the tool name,
    duration and error flag (the arguments are not recorded). A tool that fails server-side
    is a result with ``is_error``; a transport failure raises McpOperationFailed and, unless
    it was a timeout, marks the client ``error``."""
    if not isinstance(arguments, dict):
        raise InvalidInput("tool arguments must be a JSON object")
    session = _active_session(session_id)
    client = _open_client(session.id, client_id)
    lifecycle.touch(session_id=session.id)
    target = target_for(client, session)
    started = timezone.now()
    try:
        result: ToolResult | None = mcp_client.call_tool(target, str(tool), arguments, timeout=timeout or timeout_default())
        error, kind = "", ""
    except McpError as exc:
        result, error, kind = None, str(exc), exc.kind
    duration = result.duration if result else (timezone.now() - started).total_seconds()
    details: dict[str, Any] = {
        "client_id": client.client_id,
        "tool": str(tool)[:200],
        "duration_ms": round(duration * 1000, 1),
        "is_error": bool(result.is_error) if result else True,
        "arguments": "redacted",
    }
    if kind:
        details["kind"], details["error"] = kind, error[: audit.MAX_DETAIL_TEXT]
    with transaction.atomic():
        entries = [audit.session_entry("mcp_tool_called", session, actor, details)]
        if result is not None and client.status == McpClient.Status.ERROR:
            changed = McpClient.objects.filter(pk=client.pk, status=McpClient.Status.ERROR).update(
                status=McpClient.Status.CONNECTED, last_verified_at=timezone.now(), last_error=""
            )
            if changed:
                client.status = McpClient.Status.CONNECTED
                entries.append(_status_entry(session, client, actor, McpClient.Status.ERROR, ""))
        elif kind in DOWN_KINDS and client.status == McpClient.Status.CONNECTED:
            changed = McpClient.objects.filter(pk=client.pk, status=McpClient.Status.CONNECTED).update(
                status=McpClient.Status.ERROR, last_error=error
            )
            if changed:
                client.status = McpClient.Status.ERROR
                entries.append(_status_entry(session, client, actor, McpClient.Status.CONNECTED, error))
        audit.write(entries)
    if result is None:
        raise McpOperationFailed(error, kind=kind)
    return result


def health_pass(
    *, concurrency: int = DEFAULT_HEALTH_CONCURRENCY, timeout: float | None = None, actor: str = HEALTH_ACTOR
) -> dict[str, int]:
    """Handshake with every attached client of active sessions, ``concurrency`` at a time on
    one event loop, and record the outcome: ``last_verified_at`` moves on success; a status
    change (connected <-> error) is written with a conditional UPDATE (a client closed
    meanwhile stays closed) and audited; an unchanged status is not. Returns counts."""
    clients = list(
        McpClient.objects.filter(
            status__in=[McpClient.Status.CONNECTED, McpClient.Status.ERROR], session__status=AgentSession.Status.ACTIVE
        )
        .select_related("session", "server")
        .order_by("pk")
    )
    targets: list[Target | None] = []
    for client in clients:
        try:
            targets.append(target_for(client, client.session))
        except (McpOperationFailed, SessionError, ValueError) as exc:
            logger.warning("MCP client %s of session %s has no usable target: %s", client.client_id, client.session_id, exc)
            targets.append(None)
    reachable = [t for t in targets if t is not None]
    outcomes = iter(mcp_client.ping_many(reachable, timeout=timeout or timeout_default(), concurrency=concurrency))
    results: list[str | None] = []
    for t in targets:
        if t is None:
            results.append(f"{mcp_client.PROTOCOL}: the catalog entry was deleted")
        else:
            failure = next(outcomes)
            results.append(str(failure) if failure else None)
    now = timezone.now()
    counts = {"checked": len(clients), "ok": 0, "failed": 0, "changed": 0}
    ok_unchanged: list[int] = []
    entries = []
    with transaction.atomic():
        for client, error in zip(clients, results, strict=True):
            counts["ok" if error is None else "failed"] += 1
            new = McpClient.Status.CONNECTED if error is None else McpClient.Status.ERROR
            if new == client.status:
                if error is None:
                    ok_unchanged.append(client.pk)
                continue
            fields: dict[str, Any] = {"status": new, "last_error": error or ""}
            if error is None:
                fields["last_verified_at"] = now
            if McpClient.objects.filter(pk=client.pk, status=client.status).update(**fields):
                counts["changed"] += 1
                before, client.status = client.status, new
                entries.append(_status_entry(client.session, client, actor, before, error or ""))
        if ok_unchanged:
            McpClient.objects.filter(pk__in=ok_unchanged, status=McpClient.Status.CONNECTED).update(last_verified_at=now)
        if entries:
            audit.write(entries)
    return counts


# --- session cleanup ----------------------------------------------------------------------------


def sessions_ended(session_ids: Sequence[str]) -> None:
    """Called by ``lifecycle.end`` once sessions are marked terminating: nothing an agent or an
    operator starts may reach their MCP servers any more. Every operation checks that its
    session is active before it connects (``_active_session``) and connections last one
    operation, so there is no connection to cut here; the worker records the clients closed."""


def close_clients_of_sessions(session_ids: Sequence[uuid.UUID], *, actor: str) -> int:
    """Close every open client of these sessions (session cleanup calls this before the
    workspace goes). One ``mcp_client_closed`` entry per client. Returns how many closed.
    No connection outlives an operation (stdio children are reaped when each operation
    ends), so closing is recording: nothing is left running to stop. ``.mcp.json`` is not
    rewritten: the workspace is about to be removed."""
    now = timezone.now()
    with transaction.atomic():
        clients = list(
            McpClient.objects.select_for_update()
            .filter(session_id__in=list(session_ids))
            .exclude(status=McpClient.Status.CLOSED)
            .select_related("session")
        )
        if not clients:
            return 0
        McpClient.objects.filter(pk__in=[c.pk for c in clients]).update(status=McpClient.Status.CLOSED, closed_at=now)
        audit.write(
            audit.entry(
                "mcp_client_closed",
                actor=actor,
                user_id=c.session.user_id,
                org_id=c.session.org_id,
                session_id=c.session_id,
                details={"client_id": c.client_id, "reason": "session cleanup"},
                at=now,
            )
            for c in clients
        )
    return len(clients)
