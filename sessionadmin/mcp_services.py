"""Service layer for MCP: the catalog (McpServer), the clients attached to sessions (McpClient),
the tokens of the sessions' gateway endpoints (GatewayToken) and the pinned tool definitions.
Every write goes here, with its audit entry in the same transaction.

Live connections belong to the MCP gateway (``sessionadmin/gateway/``, its own process): web
processes and tasks reach it through ``gateway_client`` with ids only (never secrets), and the
gateway records what happens to its connections through the ``record_*`` functions below, run
in its database threads. So every state change of a client has one owner here, whichever
process it happens in.

Secrets (catalog header and environment values) are decrypted only by the gateway, to build a
connection target; nothing else ever sees them (the workspace's ``.mcp.json`` and the runtime
API carry the session's gateway endpoint and a bearer token of that session, nothing of the
upstream servers). Audit details, errors and logs name secrets, never show them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets as pysecrets
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from sessionadmin import audit, gateway_client, mcp_client, netpolicy, sandbox
from sessionadmin.gateway_client import GatewayError, GatewayUnavailable
from sessionadmin.lifecycle import InvalidInput, MCPClientNotFound, SessionError, SessionNotFound, parse_session_id
from sessionadmin.mcp_client import Snapshot, Target, ToolResult
from sessionadmin.models import AgentSession, AuditEntry, GatewayToken, McpClient, McpServer
from sessionadmin.redaction import Redactor, safe_url
from sessionadmin.secrets import SecretsError, decrypt_mapping, encrypt_mapping

logger = logging.getLogger(__name__)

HEALTH_ACTOR = "system:mcp-health"
MCP_JSON = ".mcp.json"
# The endpoint's one entry in .mcp.json and mcp-config.
CONFIG_NAME = "sessionadmin"
# Client ids name tools at the endpoint as "{client_id}__{tool}": "__" inside an id would be ambiguous.
CLIENT_ID_RE = re.compile(r"^(?!.*__)[a-z0-9][a-z0-9_-]{0,99}$")
TOKEN_SCHEME = "sgw"
TOKEN_PREFIX_LENGTH = len(TOKEN_SCHEME) + 1 + 8
# How long a dashboard call is polled from a plain (non-htmx) request before giving up.
SYNC_CALL_POLL_SECONDS = 0.05
# The kind of McpOperationFailed when policy forbids the connection (a stdio command that is
# not, or no longer, in SESSIONADMIN_STDIO_COMMANDS): nothing was started.
NOT_ALLOWED = "not allowed"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class McpOperationFailed(SessionError):
    """An MCP handshake or call failed, or the gateway could not be reached; ``kind`` is
    McpError's kind, or "gateway unavailable"."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def timeout_default() -> float:
    return float(settings.SESSIONADMIN_MCP_TIMEOUT_SECONDS)


def call_timeout() -> float:
    return float(settings.SESSIONADMIN_MCP_CALL_TIMEOUT_SECONDS)


def _gateway_failed(exc: GatewayError | GatewayUnavailable) -> SessionError:
    """The project error for what the gateway said (or that it could not be reached)."""
    if isinstance(exc, GatewayError):
        if exc.kind == "not found":
            return MCPClientNotFound(str(exc))
        if exc.kind == "session ended":
            return SessionNotFound(str(exc))
        if exc.kind == "invalid":
            return InvalidInput(str(exc))
    return McpOperationFailed(str(exc), kind=exc.kind)


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


def _target_changes(before: McpServer, after: McpServer) -> dict[str, dict[str, Any]]:
    """What changed in where an entry connects or what it runs: {"url": {"from", "to"}, ...}.
    URLs are recorded without credentials or query values."""
    changes: dict[str, dict[str, Any]] = {}
    if before.transport != after.transport:
        changes["transport"] = {"from": before.transport, "to": after.transport}
    if before.url != after.url:
        changes["url"] = {"from": safe_url(before.url), "to": safe_url(after.url)}
    if before.command != after.command:
        changes["command"] = {"from": before.command, "to": after.command}
    if [str(a) for a in before.args or []] != [str(a) for a in after.args or []]:
        changes["args"] = {"from": list(before.args or []), "to": list(after.args or [])}
    return changes


def _sandbox_changes(before: McpServer, after: McpServer) -> dict[str, dict[str, Any]]:
    """Changes of a stdio entry's sandbox, for the record (they do not move its secrets)."""
    changes: dict[str, dict[str, Any]] = {}
    if bool(before.network) != bool(after.network):
        changes["network"] = {"from": bool(before.network), "to": bool(after.network)}
    if list(before.read_only_paths or []) != list(after.read_only_paths or []):
        changes["read_only_paths"] = {"from": list(before.read_only_paths or []), "to": list(after.read_only_paths or [])}
    return changes


def save_server(
    server: McpServer, *, actor: str, headers: dict[str, str] | None = None, env: dict[str, str] | None = None
) -> McpServer:
    """Create or update a catalog entry. Audited with the names of its secrets, not the values.
    Its URL must pass the outbound URL policy and its read-only paths the sandbox's checks.

    Secrets are bound to their target: when the transport, URL, command or arguments change,
    stored headers and environment values that were not entered again in this same save are
    removed (``server.secrets_cleared`` says which), so a credential never follows an entry to
    another host or program. ``mcp_server_updated`` records the old and new target. Live
    connections of an updated entry reconnect to its new target once this commits."""
    creating = server._state.adding
    # Validation (the URL policy resolves host names) happens before the row is locked.
    server.full_clean()
    _check_server_policy(server)
    with transaction.atomic():
        before = None if creating else McpServer.objects.select_for_update().filter(pk=server.pk).first()
        changes = _target_changes(before, server) if before is not None else {}
        cleared: list[str] = []
        if changes and before is not None:
            if headers is None and before.headers_encrypted:
                headers = {}
                cleared.append("headers")
            if env is None and before.env_encrypted:
                env = {}
                cleared.append("env")
        set_server_secrets(server, headers=headers, env=env)
        server.save()
        server.secrets_cleared = tuple(cleared)
        details: dict[str, Any] = {
            "server": server.name,
            "transport": server.transport,
            "header_names": sorted(server_headers(server)),
            "env_names": sorted(server_env(server)),
        }
        if server.transport == McpServer.Transport.STDIO:
            details |= {"network": server.network, "read_only_paths": list(server.read_only_paths or [])}
        if creating:
            details["target"] = safe_url(server.url) if server.url else [server.command, *server.args]
        else:
            details["changes"] = changes | (_sandbox_changes(before, server) if before is not None else {})
            details["secrets_cleared"] = cleared
        # An argument may repeat a secret value (``--token=...``): the record shows neither.
        redactor = Redactor.for_server(server) + (Redactor.for_server(before) if before is not None else Redactor())
        event = "mcp_server_created" if creating else "mcp_server_updated"
        audit.write([audit.entry(event, actor=actor, details=redactor.json(details))])
        if not creating:
            pks = list(
                McpClient.objects.filter(server=server).exclude(status=McpClient.Status.CLOSED).values_list("pk", flat=True)
            )
            if pks:
                transaction.on_commit(lambda: _tell_gateway(gateway_client.reload_clients, pks))
    return server


def delete_server(server: McpServer, *, actor: str) -> None:
    """Remove a catalog entry. Its open clients are closed (audited) and, once this commits,
    their live connections (and stdio processes) too."""
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
        pks = [c.pk for c in clients]
        if pks:
            transaction.on_commit(lambda: _tell_gateway(gateway_client.reload_clients, pks))


def _tell_gateway(call: Any, *args: Any) -> None:
    """Best effort after commit: the database is the record, and the gateway reconciles its
    connections with it periodically, so a gateway that is down misses nothing for long."""
    try:
        call(*args)
    except (GatewayError, GatewayUnavailable) as exc:
        logger.warning("could not tell the MCP gateway: %s", exc)


# --- targets (read by the gateway only) ---------------------------------------------------------


def target_for(client: McpClient, session: AgentSession) -> Target:
    """How to reach a client's server now: catalog entries are read at each (re)connect."""
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
    """The connection target of a catalog entry. The stdio allow-list is checked here, before
    every connection, so an entry saved before the list changed (or written around the
    service layer) never runs."""
    if server.transport == McpServer.Transport.STDIO:
        refusal = server.refusal
        if refusal:
            raise McpOperationFailed(f"{NOT_ALLOWED}: catalog entry {server.name!r}: {refusal}", kind=NOT_ALLOWED)
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


# --- the session's endpoint: tokens, .mcp.json, mcp-config --------------------------------------


def endpoint_url(session: AgentSession) -> str:
    """``{gateway}/sessions/{id}/mcp``: the one MCP server an agent of this session talks to."""
    base = (session.gateway or settings.SESSIONADMIN_GATEWAY_URL).rstrip("/")
    return f"{base}/sessions/{session.id}/mcp"


def hash_gateway_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def mint_gateway_token(session: AgentSession, *, actor: str, purpose: str) -> str:
    """A new bearer token for the session's endpoint; only its hash is stored. Audited
    (``gateway_token_issued``) with its prefix and what it was issued for."""
    raw = f"{TOKEN_SCHEME}_{pysecrets.token_hex(4)}_{pysecrets.token_urlsafe(32)}"
    now = timezone.now()
    with transaction.atomic():
        GatewayToken.objects.create(
            session=session,
            prefix=raw[:TOKEN_PREFIX_LENGTH],
            token_hash=hash_gateway_token(raw),
            created_at=now,
            created_by=actor,
        )
        audit.write(
            [
                audit.session_entry(
                    "gateway_token_issued", session, actor, {"prefix": raw[:TOKEN_PREFIX_LENGTH], "for": purpose}, at=now
                )
            ]
        )
    return raw


def mcp_config_document(session: AgentSession, token: str) -> dict[str, Any]:
    return {
        "mcpServers": {
            CONFIG_NAME: {"type": "http", "url": endpoint_url(session), "headers": {"Authorization": f"Bearer {token}"}}
        }
    }


def mcp_config_for(session: AgentSession, *, actor: str) -> dict[str, Any]:
    """The runtime API's ``mcp-config``: the session's endpoint with a token minted for this
    request. No upstream URL, command, header or env value, whatever is attached."""
    return mcp_config_document(session, mint_gateway_token(session, actor=actor, purpose="mcp-config"))


def session_for_token(token_hash: str) -> tuple[uuid.UUID, str, str, bool] | None:
    """(session id, user id, org id, session is active) for a gateway token hash, or None."""
    row = (
        GatewayToken.objects.filter(token_hash=token_hash)
        .values_list("session_id", "session__user_id", "session__org_id", "session__status")
        .first()
    )
    if row is None:
        return None
    return row[0], row[1], row[2], row[3] == AgentSession.Status.ACTIVE


def write_mcp_json(session: AgentSession, *, actor: str) -> bool:
    """Write ``{workspace}/.mcp.json`` (the session's endpoint and a newly minted token) unless
    it already points at the endpoint. Returns whether it wrote. Atomic (temp file + rename),
    mode 0600; every directory below the workspace root is opened with O_NOFOLLOW and the file
    is created relative to the workspace's descriptor, so a planted symlink is never followed
    (a link at ``.mcp.json`` itself is replaced, not written through)."""
    ws_fd = _open_workspace(session)
    try:
        if _current_config_url(ws_fd) == endpoint_url(session):
            return False
        document = json.dumps(mcp_config_document(session, mint_gateway_token(session, actor=actor, purpose=MCP_JSON)), indent=2)
        tmp = f".mcp.json.{pysecrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=ws_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(document + "\n")
            os.replace(tmp, MCP_JSON, src_dir_fd=ws_fd, dst_dir_fd=ws_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=ws_fd)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(ws_fd)
    return True


def _open_workspace(session: AgentSession) -> int:
    path = Path(session.workspace_path)
    root_fd = os.open(path.parent.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        user_fd = os.open(path.parent.name, _DIR_FLAGS, dir_fd=root_fd)
        try:
            return os.open(path.name, _DIR_FLAGS, dir_fd=user_fd)
        finally:
            os.close(user_fd)
    finally:
        os.close(root_fd)


def _current_config_url(ws_fd: int) -> str | None:
    try:
        fd = os.open(MCP_JSON, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=ws_fd)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(64 * 1024))
        return str(data["mcpServers"][CONFIG_NAME]["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- attach, detach, read (web side) ------------------------------------------------------------


def _active_session(session_id: uuid.UUID | str, *, lock: bool = False) -> AgentSession:
    sid = parse_session_id(session_id)
    qs = AgentSession.objects.select_for_update() if lock else AgentSession.objects.all()
    session = qs.active().filter(pk=sid).first()
    if session is None:
        raise SessionNotFound(f"session {sid} not found")
    return session


def _check_client_id(client_id: str) -> str:
    if not CLIENT_ID_RE.match(client_id):
        raise InvalidInput(
            "client id must be 1-100 lowercase letters, digits, '-' or '_' (no '__'), starting with a letter or digit"
        )
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
    """Attach a server to an active session. The gateway opens the live connection (handshake,
    then tools, resources and prompts, within ``timeout``) and, if it works, records the client,
    pins its tools and writes ``.mcp.json`` (``record_attached``); a failure is audited
    (``mcp_client_add_failed``), leaves no client and raises McpOperationFailed."""
    session = _active_session(session_id)
    catalog = _resolve_server(server) if server is not None and server != "" else None
    if catalog is None:
        url = _check_adhoc_url(url, transport)
        default_id = slugify((urlsplit(url).hostname or "server").replace(".", "-"))
    else:
        refused = url_policy_error(catalog.url) if catalog.transport != McpServer.Transport.STDIO else None
        if refused:
            raise InvalidInput(f"URL of {catalog.name} refused: {refused}")
        transport, url = catalog.transport, ""
        default_id = slugify(catalog.name)
    client_id = _check_client_id(client_id or default_id.replace("__", "_")[:100] or "server")
    if McpClient.objects.filter(session_id=session.id, client_id=client_id).exclude(status=McpClient.Status.CLOSED).exists():
        raise InvalidInput(f"client id {client_id!r} is already attached to this session")
    if catalog is not None and catalog.refusal:
        # Refused here, audited, and nothing started (the gateway checks again when it connects).
        error = f"{NOT_ALLOWED}: catalog entry {catalog.name!r}: {catalog.refusal}"
        label = {
            "client_id": client_id,
            "server": catalog.name,
            "transport": transport,
            "target": os.path.basename(catalog.command),
        }
        record_add_failed(session.id, label, kind=NOT_ALLOWED, error=error, actor=actor)
        raise McpOperationFailed(error, kind=NOT_ALLOWED)
    timeout = timeout or timeout_default()
    try:
        answer = gateway_client.attach(
            session.id,
            client_id=client_id,
            server_id=catalog.pk if catalog else None,
            url=url,
            transport=transport,
            actor=actor,
            timeout=timeout,
        )
    except GatewayUnavailable as exc:
        label = {"client_id": client_id, "server": catalog.name if catalog else "", "transport": transport}
        record_add_failed(session.id, label, kind=exc.kind, error=str(exc), actor=actor)
        raise McpOperationFailed(str(exc), kind=exc.kind) from None
    except GatewayError as exc:
        raise _gateway_failed(exc) from None
    return McpClient.objects.select_related("server").get(pk=answer["client"])


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


def _apply_snapshot(client: McpClient, snapshot: Snapshot, now: datetime, redactor: Redactor) -> None:
    """Store what a handshake found. All of it is the server's own text: redacted, and capped
    (see ``_stored_listing``) so a server listing 10,000 tools cannot bloat the row or a page."""
    client.server_name = redactor.cut(snapshot.server_name, 200)
    client.server_version = redactor.cut(snapshot.server_version, 100)
    client.protocol_version = redactor.cut(snapshot.protocol_version, 50)
    capabilities = snapshot.capabilities if isinstance(snapshot.capabilities, dict) else {}
    if _json_size(capabilities) > MAX_CAPABILITIES_BYTES:
        capabilities = {str(name)[:NAME_CHARS]: {} for name in list(capabilities)[:50]}
    client.capabilities = redactor.json(capabilities)
    client.tools, tools_out = _stored_listing(snapshot.tools, _stored_tool, redactor)
    client.resources, resources_out = _stored_listing(snapshot.resources, _stored_resource, redactor)
    client.prompts, prompts_out = _stored_listing(snapshot.prompts, _stored_prompt, redactor)
    omitted = {"tools": tools_out, "resources": resources_out, "prompts": prompts_out}
    client.listing_omitted = {kind: n for kind, n in omitted.items() if n}
    client.last_verified_at = now
    client.last_error = ""


# What is stored of one listed item: names and titles, descriptions, and an input schema up to
# this size (a bigger one is left out: the tool is then called with a JSON object of arguments).
NAME_CHARS = 200
DESCRIPTION_CHARS = 2000
MAX_SCHEMA_BYTES = 32 * 1024
MAX_CAPABILITIES_BYTES = 16 * 1024


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        return MAX_SCHEMA_BYTES + 1  # unserialisable is as good as too big


def _stored_tool(item: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": redactor.cut(str(item.get("name") or ""), NAME_CHARS),
        "title": redactor.cut(str(item.get("title") or ""), NAME_CHARS),
        "description": redactor.cut(str(item.get("description") or ""), DESCRIPTION_CHARS),
    }
    schema = item.get("input_schema") if isinstance(item.get("input_schema"), dict) else {}
    size = _json_size(schema)
    if size > MAX_SCHEMA_BYTES:
        out["input_schema"], out["schema_omitted_bytes"] = {}, size
    else:
        out["input_schema"] = redactor.json(schema)
    for key in ("output_schema", "annotations"):
        value = item.get(key)
        if isinstance(value, dict) and _json_size(value) <= MAX_SCHEMA_BYTES:
            out[key] = redactor.json(value)
    return out


def _stored_resource(item: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    return {
        "uri": redactor.cut(str(item.get("uri") or ""), DESCRIPTION_CHARS),
        "name": redactor.cut(str(item.get("name") or ""), NAME_CHARS),
        "description": redactor.cut(str(item.get("description") or ""), DESCRIPTION_CHARS),
        "mime_type": redactor.cut(str(item.get("mime_type") or ""), NAME_CHARS),
    }


def _stored_prompt(item: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    arguments = item.get("arguments") if isinstance(item.get("arguments"), list) else []
    return {
        "name": redactor.cut(str(item.get("name") or ""), NAME_CHARS),
        "description": redactor.cut(str(item.get("description") or ""), DESCRIPTION_CHARS),
        "arguments": [
            {"name": redactor.cut(str(a.get("name") or ""), NAME_CHARS), "required": bool(a.get("required"))}
            for a in (arguments or [])[:100]
            if isinstance(a, dict)
        ],
    }


def _stored_listing(
    items: list[dict[str, Any]], store: Callable[[dict[str, Any], Redactor], dict[str, Any]], redactor: Redactor
) -> tuple[list[dict[str, Any]], int]:
    """The items to store, in the server's order, and how many were left out: at most
    SESSIONADMIN_MCP_MAX_LIST_ITEMS items and SESSIONADMIN_MCP_MAX_LISTING_BYTES bytes."""
    max_items = settings.SESSIONADMIN_MCP_MAX_LIST_ITEMS
    budget = settings.SESSIONADMIN_MCP_MAX_LISTING_BYTES
    kept: list[dict[str, Any]] = []
    for item in items[:max_items]:
        stored = store(item if isinstance(item, dict) else {}, redactor)
        budget -= _json_size(stored)
        if budget < 0:
            break
        kept.append(stored)
    return kept, len(items) - len(kept)


def _mcp_entry(event: str, session: AgentSession, actor: str, details: dict[str, Any], redactor: Redactor) -> Any:
    """An audit entry about one session's MCP client, its details redacted (they may quote
    what the server said)."""
    return audit.session_entry(event, session, actor, redactor.json(details))


def remove_client(session_id: uuid.UUID | str, client_id: str, *, actor: str) -> McpClient:
    """Detach one client (the row stays, closed, for the record); its live connection (and
    stdio process) is closed once this commits."""
    now = timezone.now()
    with transaction.atomic():
        session = _active_session(session_id, lock=True)
        client = _open_client(session.id, client_id, lock=True)
        client.status, client.closed_at = McpClient.Status.CLOSED, now
        client.save(update_fields=["status", "closed_at"])
        audit.write([audit.session_entry("mcp_client_removed", session, actor, {"client_id": client.client_id})])
        pk = client.pk
        transaction.on_commit(lambda: _tell_gateway(gateway_client.reload_clients, [pk]))
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


# --- refresh, calls, health, approval (web side, through the gateway) ---------------------------


def refresh_client(session_id: uuid.UUID | str, client_id: str, *, actor: str, timeout: float | None = None) -> McpClient:
    """Re-list tools, resources and prompts on the live connection. The outcome is recorded by
    the gateway (an unreachable server is a status, not an exception); the row is returned."""
    session = _active_session(session_id)
    client = _open_client(session.id, client_id)
    try:
        gateway_client.refresh(client.pk, actor=actor, timeout=timeout or timeout_default())
    except GatewayError as exc:
        if exc.kind == "not found":
            raise McpOperationFailed(f"the gateway has no live connection for {client.client_id}: {exc}", kind="unavailable")
        raise _gateway_failed(exc) from None
    except GatewayUnavailable as exc:
        raise McpOperationFailed(str(exc), kind=exc.kind) from None
    client.refresh_from_db()
    return client


def start_tool_call(
    session_id: uuid.UUID | str, client_id: str, tool: str, arguments: dict[str, Any], *, actor: str, timeout: float | None = None
) -> str:
    """Start a tool call on the client's live connection and return its id at once: the call
    runs in the gateway (a slow tool holds no web worker), ``tool_call_status`` reads it."""
    if not isinstance(arguments, dict):
        raise InvalidInput("tool arguments must be a JSON object")
    session = _active_session(session_id)
    client = _open_client(session.id, client_id)
    try:
        return gateway_client.start_call(client.pk, tool=str(tool), arguments=arguments, actor=actor, timeout=timeout)
    except GatewayError as exc:
        if exc.kind == "not found":  # the row is open but its connection is not (yet) on the gateway
            raise McpOperationFailed(f"the gateway has no live connection for {client.client_id}: {exc}", kind="unavailable")
        raise _gateway_failed(exc) from None
    except GatewayUnavailable as exc:
        raise McpOperationFailed(str(exc), kind=exc.kind) from None


def tool_call_status(session_id: uuid.UUID | str, call_id: str, *, actor: str) -> dict[str, Any]:
    """``{"status": "running", ...}`` or ``{"status": "done", "result": ToolResult}`` or
    ``{"status": "failed", "kind", "error"}``, for the operator who started the call."""
    try:
        data = gateway_client.get_call(call_id, session_id=parse_session_id(session_id), actor=actor)
    except GatewayError as exc:
        raise _gateway_failed(exc) from None
    except GatewayUnavailable as exc:
        raise McpOperationFailed(str(exc), kind=exc.kind) from None
    if data.get("status") == "done":
        data["result"] = ToolResult(**data["result"])
    return data


def call_tool(
    session_id: uuid.UUID | str, client_id: str, tool: str, arguments: dict[str, Any], *, actor: str, timeout: float | None = None
) -> ToolResult:
    """Call a tool and wait for its result (scripts, the seed's API, tests; the dashboard uses
    ``start_tool_call`` and polls). A tool that fails server-side is a result with
    ``is_error``; a failed call raises McpOperationFailed."""
    call_id = start_tool_call(session_id, client_id, tool, arguments, actor=actor, timeout=timeout)
    deadline = time.monotonic() + (timeout or call_timeout()) + float(settings.SESSIONADMIN_GATEWAY_TIMEOUT_SECONDS)
    while True:
        status = tool_call_status(session_id, call_id, actor=actor)
        if status["status"] == "done":
            result: ToolResult = status["result"]
            return result
        if status["status"] == "failed":
            raise McpOperationFailed(str(status.get("error", "")), kind=str(status.get("kind", "")))
        if time.monotonic() > deadline:
            raise McpOperationFailed(f"{mcp_client.TIMEOUT}: the call did not finish in time", kind=mcp_client.TIMEOUT)
        time.sleep(SYNC_CALL_POLL_SECONDS)


def health_pass(*, actor: str = HEALTH_ACTOR, timeout: float | None = None) -> dict[str, int]:
    """Ask the gateway to ping every live connection (no new connection, no new process); it
    records status changes. Returns counts: checked, ok, failed, changed, reconnecting,
    reconnects (re-established connections since the gateway started)."""
    try:
        answer = gateway_client.ping_all(actor=actor, timeout=timeout or timeout_default())
    except (GatewayError, GatewayUnavailable) as exc:
        raise McpOperationFailed(str(exc), kind=exc.kind) from None
    return {k: int(v) for k, v in answer.items() if isinstance(v, int)}


def approve_tool(session_id: uuid.UUID | str, client_id: str, tool: str, *, actor: str) -> McpClient:
    """An operator reviewed a quarantined tool's new definition: pin it (``mcp_tool_approved``)
    and let the agent see and call it again."""
    with transaction.atomic():
        session = _active_session(session_id, lock=True)
        client = _open_client(session.id, client_id, lock=True)
        held = (client.quarantined_tools or {}).get(tool)
        if held is None:
            raise InvalidInput(f"tool {audit.safe_repr(tool, 60)} is not quarantined")
        old = (client.pinned_tools or {}).get(tool, {}).get("sha256")
        client.pinned_tools = {
            **(client.pinned_tools or {}),
            tool: {"sha256": held["new_sha256"], "definition": held["definition"]},
        }
        client.quarantined_tools = {k: v for k, v in (client.quarantined_tools or {}).items() if k != tool}
        client.save(update_fields=["pinned_tools", "quarantined_tools"])
        audit.write(
            [
                audit.session_entry(
                    "mcp_tool_approved",
                    session,
                    actor,
                    {"client_id": client.client_id, "tool": tool[:200], "old_sha256": old, "new_sha256": held["new_sha256"]},
                )
            ]
        )
        pk = client.pk
        transaction.on_commit(lambda: _tell_gateway(gateway_client.reload_clients, [pk]))
    return client


# --- session end ----------------------------------------------------------------------------------


def sessions_ended(session_ids: Sequence[uuid.UUID | str]) -> None:
    """Called by ``lifecycle.end`` once the terminating mark has committed: the gateway refuses
    the sessions' tokens, cancels their tool calls in flight and closes their upstream
    connections (the worker's half tells it again; closing twice is harmless)."""
    ids = [uuid.UUID(str(s)) for s in session_ids]
    if ids:
        _tell_gateway(gateway_client.close_sessions, ids)


def close_clients_of_sessions(session_ids: Sequence[uuid.UUID], *, actor: str) -> int:
    """Close every open client of these sessions (session cleanup calls this before the
    workspace goes). One ``mcp_client_closed`` entry per client. Returns how many closed. The
    gateway closes the live connections (it already did when the sessions were marked
    terminating; telling it again is harmless)."""
    now = timezone.now()
    with transaction.atomic():
        clients = list(
            McpClient.objects.select_for_update()
            .filter(session_id__in=list(session_ids))
            .exclude(status=McpClient.Status.CLOSED)
            .select_related("session")
        )
        if clients:
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
    if session_ids:
        _tell_gateway(gateway_client.close_sessions, list(session_ids))
    return len(clients)


# --- what the gateway records (run in the gateway's database threads) ---------------------------


def load_clients(*, gateway_url: str, client_pks: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """The open clients of active sessions served by this gateway (all of them, or these), with
    their targets (secrets decrypted) and pins: what the gateway (re)connects."""
    qs = (
        McpClient.objects.filter(session__status=AgentSession.Status.ACTIVE)
        .exclude(status=McpClient.Status.CLOSED)
        .filter(Q(session__gateway=gateway_url) | Q(session__gateway=""))
        .select_related("session", "server")
        .order_by("pk")
    )
    if client_pks is not None:
        qs = qs.filter(pk__in=list(client_pks))
    return [_client_state(c) for c in qs]


def _client_state(client: McpClient) -> dict[str, Any]:
    try:
        target: Target | None = target_for(client, client.session)
        target_error = ""
    except (McpOperationFailed, SecretsError) as exc:
        target, target_error = None, str(exc)
    return {
        "pk": client.pk,
        "session_id": client.session_id,
        "user_id": client.session.user_id,
        "org_id": client.session.org_id,
        "client_id": client.client_id,
        "target": target,
        "target_error": target_error,
        "pinned": dict(client.pinned_tools or {}),
        "quarantined": dict(client.quarantined_tools or {}),
        "status": client.status,
    }


def attach_target(session_id: uuid.UUID, *, server_id: int | None, url: str, transport: str) -> tuple[Target, dict[str, Any]]:
    """The target of an attach in progress (the catalog entry read and decrypted here, in the
    gateway) and the session's ids."""
    session = _active_session(session_id)
    if server_id is not None:
        server = McpServer.objects.filter(pk=server_id, enabled=True).first()
        if server is None:
            raise InvalidInput("no such enabled MCP server in the catalog")
        target = _target_of_server(server, session)
    else:
        target = Target(transport, url=_check_adhoc_url(url, transport), **_http_policy())
    return target, {"user_id": session.user_id, "org_id": session.org_id}


def record_add_failed(session_id: uuid.UUID, label: dict[str, Any], *, kind: str, error: str, actor: str) -> None:
    """``mcp_client_add_failed``, its error redacted with the secrets of the catalog entry it
    names (an ad-hoc URL has none stored; credentials in URLs are always redacted)."""
    with transaction.atomic():
        session = AgentSession.objects.filter(pk=session_id).first()
        if session is None:
            return
        server = McpServer.objects.filter(name=label.get("server")).first() if label.get("server") else None
        details = {**label, "kind": kind, "error": error[: audit.MAX_DETAIL_TEXT]}
        audit.write([_mcp_entry("mcp_client_add_failed", session, actor, details, Redactor.for_server(server))])


def listed_tools(snapshot: Snapshot) -> list[dict[str, Any]]:
    """The tools of a listing that are pinned and served: the first
    SESSIONADMIN_MCP_MAX_LIST_ITEMS (those past the cap are never pinned, so the endpoint
    neither lists nor calls them, and they are not quarantined either)."""
    return list(snapshot.tools[: settings.SESSIONADMIN_MCP_MAX_LIST_ITEMS])


def pins_of(snapshot: Snapshot, redactor: Redactor) -> dict[str, Any]:
    """The pin of every listed tool: the hash of its definition as the server sent it, and a
    copy of the definition for review, redacted (it is stored and shown)."""
    return {
        t["name"]: {"sha256": mcp_client.definition_sha256(t), "definition": redactor.json(t)} for t in listed_tools(snapshot)
    }


def record_attached(
    session_id: uuid.UUID,
    *,
    client_id: str,
    server_id: int | None,
    url: str,
    transport: str,
    actor: str,
    target: Target,
    snapshot: Snapshot,
) -> McpClient:
    """The gateway's live connection works: record the client with what it lists, pin every
    tool definition, audit ``mcp_client_added`` and write ``.mcp.json`` (first attach), in one
    transaction under the session's lock (a session ended meanwhile is SessionNotFound and
    nothing is recorded)."""
    now = timezone.now()
    with transaction.atomic():
        session = _active_session(session_id, lock=True)
        # Closed clients of the same id stay as the session's history.
        if McpClient.objects.filter(session_id=session.id, client_id=client_id).exclude(status=McpClient.Status.CLOSED).exists():
            raise InvalidInput(f"client id {client_id!r} is already attached to this session")
        catalog = McpServer.objects.filter(pk=server_id).first() if server_id is not None else None
        redactor = Redactor.for_server(catalog) if catalog is not None else Redactor.for_url(url)
        client = McpClient(
            session=session,
            client_id=client_id,
            server=catalog,
            transport=transport,
            url=url if catalog is None else "",
            status=McpClient.Status.CONNECTED,
            created_at=now,
            created_by=actor,
            pinned_tools=pins_of(snapshot, redactor),
            quarantined_tools={},
        )
        _apply_snapshot(client, snapshot, now, redactor)
        client.save(force_insert=True)
        try:
            write_mcp_json(session, actor=actor)
        except OSError as exc:
            raise McpOperationFailed(
                f"cannot write {MCP_JSON} in the workspace: {exc.strerror or exc}", kind="workspace"
            ) from exc
        _touch(session.id, now)
        # Last: the ledger head lock serialises every audit writer.
        audit.write(
            [
                _mcp_entry(
                    "mcp_client_added",
                    session,
                    actor,
                    {
                        "client_id": client_id,
                        "server": catalog.name if catalog else "",
                        "transport": transport,
                        "target": target.describe(),
                        "server_name": client.server_name,
                        "server_version": client.server_version,
                        "protocol_version": client.protocol_version,
                        "tools": len(snapshot.tools),
                        "listing_omitted": client.listing_omitted,
                    },
                    redactor,
                )
            ]
        )
    return client


def _open_client_for_update(client_pk: int) -> McpClient | None:
    """The client row locked for a change reported by its live connection; None once closed
    (a closed client stays closed whatever a late report says)."""
    return (
        McpClient.objects.select_for_update(of=("self",))
        .filter(pk=client_pk)
        .exclude(status=McpClient.Status.CLOSED)
        .select_related("session", "server")
        .first()
    )


def record_listing(client_pk: int, snapshot: Snapshot, *, actor: str) -> dict[str, Any] | None:
    """A later listing of a live connection (refresh, reconnect, upstream list_changed): store
    it, and quarantine every tool whose definition differs from its pin or that was not there
    at attach (``mcp_tool_changed`` with old and new hashes, once per new definition).
    Returns ``{"pinned", "quarantined"}`` as now stored, or None if the client is closed."""
    now = timezone.now()
    with transaction.atomic():
        client = _open_client_for_update(client_pk)
        if client is None:
            return None
        redactor = Redactor.for_client(client)
        pinned = dict(client.pinned_tools or {})
        quarantined = dict(client.quarantined_tools or {})
        entries = []
        for definition in listed_tools(snapshot):
            name = definition["name"]
            new = mcp_client.definition_sha256(definition)
            old = pinned.get(name, {}).get("sha256")
            if new == old:
                quarantined.pop(name, None)
                continue
            if quarantined.get(name, {}).get("new_sha256") == new:
                continue  # already held for review
            quarantined[name] = {
                "old_sha256": old,
                "new_sha256": new,
                "definition": redactor.json(definition),
                "at": now.isoformat(),
            }
            entries.append(
                audit.session_entry(
                    "mcp_tool_changed",
                    client.session,
                    actor,
                    redactor.json({"client_id": client.client_id, "tool": name[:200], "old_sha256": old, "new_sha256": new}),
                    at=now,
                )
            )
        listed = {t["name"] for t in listed_tools(snapshot)}
        quarantined = {k: v for k, v in quarantined.items() if k in listed}
        _apply_snapshot(client, snapshot, now, redactor)
        client.quarantined_tools = quarantined
        client.save(
            update_fields=[
                "server_name",
                "server_version",
                "protocol_version",
                "capabilities",
                "tools",
                "resources",
                "prompts",
                "listing_omitted",
                "last_verified_at",
                "last_error",
                "quarantined_tools",
            ]
        )
        if entries:
            audit.write(entries)
    return {"pinned": pinned, "quarantined": quarantined}


def record_status(client_pk: int, status: str, *, error: str, actor: str, reconnected: bool = False) -> bool:
    """A live connection changed state (connected, reconnecting, error): a conditional UPDATE
    (a closed client stays closed) audited as ``mcp_client_status_changed`` when the status
    changes; a reconnect is counted. Returns whether the status changed."""
    now = timezone.now()
    with transaction.atomic():
        client = _open_client_for_update(client_pk)
        if client is None:
            return False
        error = Redactor.for_client(client).text(error)
        before = client.status
        fields: dict[str, Any] = {"status": status, "last_error": error[: audit.MAX_DETAIL_TEXT]}
        if status == McpClient.Status.CONNECTED:
            fields["last_verified_at"] = now
        if reconnected:
            fields["reconnects"] = client.reconnects + 1
        McpClient.objects.filter(pk=client.pk).update(**fields)
        if before == status:
            return False
        details: dict[str, Any] = {"client_id": client.client_id, "from": before, "to": status}
        if error:
            details["error"] = error[: audit.MAX_DETAIL_TEXT]
        if reconnected:
            details["reconnects"] = client.reconnects + 1
        audit.write([audit.session_entry("mcp_client_status_changed", client.session, actor, details, at=now)])
    return True


def record_verified(client_pks: Sequence[int]) -> None:
    """The health pass reached these connections."""
    if client_pks:
        McpClient.objects.filter(pk__in=list(client_pks), status=McpClient.Status.CONNECTED).update(
            last_verified_at=timezone.now()
        )


def tool_call_entry(
    *,
    session_id: uuid.UUID,
    user_id: str,
    org_id: str,
    actor: str,
    client_id: str,
    tool: str,
    arguments: Any,
    duration: float,
    outcome: str,
    error: str = "",
    kind: str = "",
    at: datetime | None = None,
    redactor: Redactor | None = None,
) -> AuditEntry:
    """The ``mcp_tool_called`` entry of one call: who, which client and tool, how long, the
    outcome (ok, error, failed, refused, cancelled) and a SHA-256 of the canonical arguments
    (sorted-key compact JSON), never the arguments themselves."""
    details: dict[str, Any] = {
        "client_id": client_id,
        "tool": str(tool)[:200],
        "duration_ms": round(duration * 1000, 1),
        "outcome": outcome,
        "is_error": outcome != "ok",
        "arguments_sha256": hashlib.sha256(mcp_client.canonical_json(arguments).encode()).hexdigest(),
    }
    if kind:
        details["kind"] = kind
    if error:
        details["error"] = error[: audit.MAX_DETAIL_TEXT]
    details = (redactor or Redactor()).json(details)  # the error may quote the server
    return audit.entry(
        "mcp_tool_called", actor=actor, user_id=user_id, org_id=org_id, session_id=session_id, details=details, at=at
    )


def write_tool_calls(entries: Sequence[AuditEntry]) -> None:
    """The gateway's batch of ``mcp_tool_called`` entries, in one transaction."""
    if entries:
        with transaction.atomic():
            audit.write(entries)


def hold_sessions(session_ids: Sequence[uuid.UUID], *, until: datetime, now: datetime | None = None) -> list[uuid.UUID]:
    """Tool calls are in flight in these sessions: the lease (``busy_until``) runs to ``until``,
    and the call is activity (``last_active_at`` moves; the gateway calls this at most once per
    session per lease renewal, which is within the activity resolution). Returns the sessions
    still active."""
    now = now or timezone.now()
    ids = list(session_ids)
    if not ids:
        return []
    with transaction.atomic():
        active = list(AgentSession.objects.active().filter(pk__in=ids).values_list("pk", flat=True))
        AgentSession.objects.active().filter(pk__in=active).update(busy_until=until)
        cutoff = now - timedelta(seconds=settings.SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS)
        AgentSession.objects.active().filter(pk__in=active, last_active_at__lt=cutoff).update(last_active_at=now)
    return active


def _touch(session_id: uuid.UUID, now: datetime) -> None:
    cutoff = now - timedelta(seconds=settings.SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS)
    AgentSession.objects.filter(pk=session_id, status=AgentSession.Status.ACTIVE, last_active_at__lt=cutoff).update(
        last_active_at=now
    )


def sessions_still_active(session_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The gateway's reconciliation: which of its sessions are still active."""
    return set(AgentSession.objects.active().filter(pk__in=list(session_ids)).values_list("pk", flat=True))


def open_client_pks(client_pks: Sequence[int]) -> set[int]:
    return set(
        McpClient.objects.filter(pk__in=list(client_pks), session__status=AgentSession.Status.ACTIVE)
        .exclude(status=McpClient.Status.CLOSED)
        .values_list("pk", flat=True)
    )


def recent_tool_calls(session_id: uuid.UUID, *, limit: int = 20) -> list[AuditEntry]:
    """The session page's live feed: its latest ``mcp_tool_called`` entries, newest first."""
    return list(AuditEntry.objects.filter(session_id=session_id, event_type="mcp_tool_called").order_by("-at", "-id")[:limit])
