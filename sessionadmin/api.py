"""The runtime JSON API (``/api/v1/``) used by the agent runtime, plus ``/healthz``.

Plain function views: every token view is wrapped by ``token_view``, which exempts it from the
login middleware and CSRF (a bearer token is not a cookie, so there is nothing to forge), checks
the method, authenticates the token and turns ``ApiError`` into a JSON error::

    {"error": {"code": "...", "message": "...", "fields": {"name": "problem"}}}

Nothing a client sends can produce a 500: bodies are size-limited and parsed strictly, ids are
checked before they reach a query. A token scoped to an org sees only that org's sessions; any
other session is 404, exactly as if it did not exist. Writes go through the session manager with
``actor=token.actor``, which audits them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from sessionadmin import tokens
from sessionadmin.manager import (
    MAX_REASON_LENGTH,
    InvalidInput,
    InvalidOrgID,
    InvalidUserID,
    MaxSessionsReached,
    SessionManager,
    SessionNotFound,
    WorkspaceCreationError,
)
from sessionadmin.models import AgentSession, AgentSessionQuerySet, ApiToken
from sessionadmin.validation import id_problem, variables_problem

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Sessions end by idle cleanup or an explicit DELETE; a client at a limit retries after this.
RETRY_AFTER_SECONDS = 30
BROKER_TIMEOUT_SECONDS = 1.0
GATEWAY_TIMEOUT_SECONDS = 1.0

View = Callable[..., HttpResponse]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields, self.extra, self.headers = fields, extra or {}, headers or {}

    def response(self) -> JsonResponse:
        error: dict[str, Any] = {"code": self.code, "message": self.message, **self.extra}
        if self.fields:
            error["fields"] = self.fields
        return JsonResponse({"error": error}, status=self.status, headers=self.headers)


def not_found(what: str = "session") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def invalid(fields: dict[str, str], message: str = "the request is invalid") -> ApiError:
    return ApiError(400, "invalid_request", message, fields=fields)


# --- plumbing: decorator, token auth, body and query parsing --------------------------------


def api_endpoint(*methods: str) -> Callable[[View], View]:
    """No login, no CSRF, JSON 405 for other methods, ApiError -> JSON error."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(
                        405, "method_not_allowed", f"{request.method} is not allowed here", headers={"Allow": ", ".join(methods)}
                    )
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        return login_not_required(csrf_exempt(wrapper))

    return decorator


def token_view(*methods: str) -> Callable[[View], View]:
    """``api_endpoint`` plus bearer-token authentication: the view gets ``(request, token, ...)``."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def authenticated(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            return view(request, authenticate(request), *args, **kwargs)

        return api_endpoint(*methods)(authenticated)

    return decorator


def bearer_token(request: HttpRequest) -> str:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    return raw.strip() if scheme.lower() == "bearer" else ""


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "a valid bearer token is required (Authorization: Bearer <token>)",
        headers={"WWW-Authenticate": 'Bearer realm="sessionadmin"'},
    )


def authenticate(request: HttpRequest) -> ApiToken:
    token = tokens.authenticate(bearer_token(request))
    if token is None:
        raise unauthorized()
    return token


def _reject_nan(constant: str) -> None:
    raise ValueError(f"{constant} is not valid JSON")


def read_json_object(request: HttpRequest, allowed: set[str], *, required: bool) -> dict[str, Any]:
    """The request body as a JSON object with only ``allowed`` keys; ``{}`` when optional and empty."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "invalid_request", "Content-Length is not a number")
    too_big = ApiError(413, "body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
    if declared > MAX_BODY_BYTES:
        raise too_big
    # Read at most one byte more than allowed: a chunked body has no Content-Length to trust.
    data = request.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise too_big
    if not data.strip():
        if required:
            raise ApiError(400, "invalid_request", "a JSON object body is required")
        return {}
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    try:
        body = json.loads(data, parse_constant=_reject_nan)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ApiError(400, "malformed_json", "the body is not valid JSON")
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    unknown = {name: "unknown field" for name in body if name not in allowed}
    if unknown:
        raise invalid(unknown, "the body has unknown fields")
    return body


def query_params(request: HttpRequest, allowed: set[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    problems: dict[str, str] = {}
    for name, values in request.GET.lists():
        if name not in allowed:
            problems[name] = "unknown parameter"
        elif len(values) > 1:
            problems[name] = "given more than once"
        else:
            params[name] = values[0]
    if problems:
        raise invalid(problems, "the query string is invalid")
    return params


def parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found()


# --- sessions -------------------------------------------------------------------------------


def sessions_of(token: ApiToken) -> AgentSessionQuerySet:
    """The sessions this token may see: its org's, or every one for an unscoped token."""
    qs = AgentSession.objects.all()
    return qs.filter(org_id=token.org_id) if token.org_id else qs


def get_visible_session(token: ApiToken, session_id: str) -> AgentSession:
    session = sessions_of(token).filter(pk=parse_uuid(session_id)).first()
    if session is None:
        raise not_found()
    return session


def session_json(session: AgentSession) -> dict[str, Any]:
    """What the runtime may know of a session: no prompt (see /system-prompt), no secrets."""
    return {
        "id": str(session.id),
        "user_id": session.user_id,
        "org_id": session.org_id,
        "status": session.status,
        "workspace_path": session.workspace_path,
        "variables": session.variables,
        "created_at": session.created_at,
        "created_by": session.created_by,
        "last_active_at": session.last_active_at,
        "ended_at": session.ended_at,
        "end_reason": session.end_reason,
        "pinned_until": session.pinned_until,
    }


@token_view("GET", "POST")
def sessions(request: HttpRequest, token: ApiToken) -> HttpResponse:
    if request.method == "POST":
        return create_session(request, token)
    return list_sessions(request, token)


def create_session(request: HttpRequest, token: ApiToken) -> HttpResponse:
    body = read_json_object(request, {"user_id", "org_id", "variables"}, required=True)
    problems: dict[str, str] = {}
    for name in ("user_id", "org_id"):
        problem = id_problem(body[name]) if name in body else "this field is required"
        if problem:
            problems[name] = problem
    if "variables" in body:
        problem = "must be an object" if body["variables"] is None else variables_problem(body["variables"])
        if problem:
            problems["variables"] = problem
    if problems:
        raise invalid(problems)
    # An org out of the token's scope gets the very answer an unknown org gets.
    unknown_org = invalid({"org_id": "unknown org"})
    if token.org_id and body["org_id"] != token.org_id:
        raise unknown_org
    try:
        session = SessionManager().create_session(
            body["user_id"], body["org_id"], actor=token.actor, variables=body.get("variables")
        )
    except InvalidOrgID:
        raise unknown_org
    except (InvalidUserID, InvalidInput) as exc:  # already checked above; kept for safety
        raise invalid({"user_id" if isinstance(exc, InvalidUserID) else "variables": str(exc)})
    except MaxSessionsReached as exc:
        raise ApiError(
            429,
            "max_sessions_reached",
            str(exc),
            extra={"limit": {"scope": exc.limit, "current": exc.current, "maximum": exc.maximum}},
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    except WorkspaceCreationError:
        logger.exception("workspace creation failed for an API session create by %s", token.actor)
        raise ApiError(503, "workspace_unavailable", "the session's workspace could not be created; try again later")
    return JsonResponse(session_json(session), status=201, headers={"Location": f"/api/v1/sessions/{session.id}"})


def encode_cursor(session: AgentSession) -> str:
    raw = f"{session.created_at.isoformat()}|{session.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, sid = raw.partition("|")
        created_at = datetime.fromisoformat(at)
        if created_at.tzinfo is None:
            raise ValueError("naive time")
        return created_at, uuid.UUID(sid)
    except (ValueError, binascii.Error):
        raise invalid({"cursor": "not a cursor returned by this API"})


def list_sessions(request: HttpRequest, token: ApiToken) -> HttpResponse:
    """Newest first, keyset-paginated on (created_at, id): stable while sessions are created."""
    params = query_params(request, {"org_id", "user_id", "status", "cursor", "limit"})
    problems: dict[str, str] = {}
    for name in ("org_id", "user_id"):
        problem = id_problem(params[name]) if name in params else None
        if problem:
            problems[name] = problem
    if "status" in params and params["status"] not in AgentSession.Status.values:
        problems["status"] = "must be one of " + ", ".join(AgentSession.Status.values)
    limit = DEFAULT_PAGE_SIZE
    if "limit" in params:
        # Plain ASCII digits only: int() would also take " 5", "+5", "5_0" and non-ASCII digits.
        raw_limit = params["limit"]
        limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4 else 0
        if not 1 <= limit <= MAX_PAGE_SIZE:
            problems["limit"] = f"must be an integer from 1 to {MAX_PAGE_SIZE}"
    after = decode_cursor(params["cursor"]) if "cursor" in params else None
    if problems:
        raise invalid(problems, "the query string is invalid")
    qs = sessions_of(token).order_by("-created_at", "-id")
    filters = {"org_id": params.get("org_id"), "user_id": params.get("user_id"), "status": params.get("status")}
    qs = qs.filter(**{name: value for name, value in filters.items() if value is not None})
    if after:
        qs = qs.filter(Q(created_at__lt=after[0]) | Q(created_at=after[0], id__lt=after[1]))
    rows = list(qs[: limit + 1])
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return JsonResponse({"sessions": [session_json(s) for s in rows[:limit]], "next_cursor": next_cursor})


@token_view("GET", "DELETE")
def session_detail(request: HttpRequest, token: ApiToken, session_id: str) -> HttpResponse:
    if request.method == "DELETE":
        return delete_session(request, token, session_id)
    return JsonResponse(session_json(get_visible_session(token, session_id)))


def delete_session(request: HttpRequest, token: ApiToken, session_id: str) -> HttpResponse:
    """Mark the session terminating (audited) and enqueue the workspace removal; 202.

    A terminating session is already gone for this endpoint (404). If the broker is down the
    answer is still 202 with ``"cleanup": "pending"``: the session stays terminating and the
    maintenance retries stuck cleanups, so the client has nothing to retry."""
    body = read_json_object(request, {"reason"}, required=False)
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason.strip()) > MAX_REASON_LENGTH:
        raise invalid({"reason": f"must be a string of at most {MAX_REASON_LENGTH} characters"})
    sid = parse_uuid(session_id)
    with transaction.atomic():
        # Locked so that of two concurrent DELETEs exactly one gets 202.
        found = sessions_of(token).active().select_for_update().filter(pk=sid).values_list("pk", flat=True).first()
        if found is None:
            raise not_found()
        try:
            session = SessionManager().begin_cleanup(sid, actor=token.actor, reason=reason)
        except SessionNotFound:
            raise not_found()
    enqueued = enqueue_workspace_removal(str(sid))
    body = {"id": str(sid), "status": session.status, "cleanup": "enqueued" if enqueued else "pending"}
    return JsonResponse(body, status=202)


def enqueue_workspace_removal(session_id: str) -> bool:
    """Send the removal after commit; False (logged) if the broker refused it."""
    from sessionadmin.tasks import remove_workspace

    try:
        remove_workspace.delay_on_commit(session_id)
    except Exception as exc:  # any broker failure: the maintenance retries terminating sessions
        logger.warning("could not enqueue workspace removal of %s: %s", session_id, type(exc).__name__)
        return False
    return True


@api_endpoint("POST")
def session_activity(request: HttpRequest, session_id: str) -> HttpResponse:
    """The heartbeat, the API's hot path: one SELECT authenticates the token and reads the
    session at once (see ``heartbeat_lookup``); the session is written at most once per
    activity resolution, through the manager's coalescing ``touch``."""
    raw = bearer_token(request)
    try:
        sid: uuid.UUID | None = uuid.UUID(session_id)
    except ValueError:
        sid = None  # still authenticated first: 401 comes before 404
    now = timezone.now()
    found = heartbeat_lookup(raw, sid or uuid.UUID(int=0), now=now) if tokens.looks_like_token(raw) else None
    if found is None:
        raise unauthorized()
    token_id, token_stale, session_found, session_stale = found
    if token_stale:
        tokens.mark_used(token_id, now=now)
    if sid is None or not session_found:
        raise not_found()
    if session_stale:
        touch_session(sid, now=now)
    return HttpResponse(status=204)


def touch_session(session_id: uuid.UUID, *, now: datetime) -> None:
    """The manager's coalescing ``touch``, committed without waiting for the WAL flush on
    PostgreSQL: a heartbeat lost in a database crash only makes the session look idle a moment
    earlier (far less than the resolution), and the flush wait was most of a heartbeat's cost."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
        SessionManager().touch(session_id, now=now)


def heartbeat_lookup(raw: str, session_id: uuid.UUID, *, now: datetime) -> tuple[int, bool, bool, bool] | None:
    """``(token id, token last use is stale, session found, session activity is stale)`` for a
    usable token whose plaintext is ``raw``, or None.

    Raw SQL on purpose: it is the same filter as ``ApiToken.objects.usable()`` and
    ``sessions_of(token).active()``, in one round trip and without the ORM's query compilation,
    which cost more than the database itself here (see ``benchmark api``). Times are compared in
    SQL, so the result is the same on SQLite (text) and PostgreSQL.
    """
    token_table, session_table = ApiToken._meta.db_table, AgentSession._meta.db_table
    sql = f"""
        SELECT t.id, t.token_hash,
               (t.last_used_at IS NULL OR t.last_used_at < %s),
               s.id IS NOT NULL,
               s.last_active_at < %s
        FROM {token_table} t
        LEFT JOIN {session_table} s
          ON s.id = %s AND s.status = %s AND (t.org_id IS NULL OR s.org_id = t.org_id)
        WHERE t.prefix = %s AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > %s)
    """  # table names come from the models; every value is a parameter
    ops = connection.ops
    resolution = timedelta(seconds=settings.SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS)
    params = [
        ops.adapt_datetimefield_value(tokens.last_used_cutoff(now)),
        ops.adapt_datetimefield_value(now - resolution),
        AgentSession._meta.pk.get_db_prep_value(session_id, connection),
        AgentSession.Status.ACTIVE.value,
        raw[: tokens.PREFIX_LENGTH],
        ops.adapt_datetimefield_value(now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None or not hmac.compare_digest(row[1], tokens.hash_token(raw)):
        return None
    return int(row[0]), bool(row[2]), bool(row[3]), bool(row[4])


@token_view("GET")
def session_system_prompt(request: HttpRequest, token: ApiToken, session_id: str) -> HttpResponse:
    session = get_visible_session(token, session_id)
    return JsonResponse(
        {"session_id": str(session.id), "system_prompt": session.system_prompt, "layers": session.prompt_provenance}
    )


@token_view("GET")
def session_mcp_config(request: HttpRequest, token: ApiToken, session_id: str) -> HttpResponse:
    from sessionadmin import mcp_services

    session = get_visible_session(token, session_id)
    # Each request mints a token of the session's gateway endpoint (audited with its prefix).
    config = mcp_services.mcp_config_for(session, actor=token.actor)
    # Carries a bearer token: never cached by anything between us and the runtime.
    return JsonResponse(config, headers={"Cache-Control": "no-store"})


@api_endpoint("GET")
def openapi_document(request: HttpRequest) -> HttpResponse:
    from sessionadmin.openapi import document

    return JsonResponse(document())


@api_endpoint("GET", "POST", "PUT", "PATCH", "DELETE")
def unknown_endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    raise ApiError(404, "not_found", "no such endpoint")


# --- health ---------------------------------------------------------------------------------


def check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        logger.warning("healthz: database check failed: %s", type(exc).__name__)
        return {"ok": False, "error": "database unreachable"}
    return {"ok": True}


def check_broker() -> dict[str, Any]:
    from sessionadmin.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS)
    except Exception as exc:  # kombu raises transport-specific errors; the URL may hold a password
        logger.warning("healthz: broker check failed: %s", type(exc).__name__)
        return {"ok": False, "error": "broker unreachable"}
    return {"ok": True}


def check_gateway() -> dict[str, Any]:
    """The MCP gateway's own health URL, within 1 s."""
    from sessionadmin import gateway_client

    try:
        answer = gateway_client.health(timeout=GATEWAY_TIMEOUT_SECONDS)
    except (gateway_client.GatewayUnavailable, gateway_client.GatewayError) as exc:
        logger.warning("healthz: gateway check failed: %s", exc)
        return {"ok": False, "error": "gateway unreachable"}
    if answer.get("status") != "ok":
        return {"ok": False, "error": f"gateway {answer.get('status', 'not ready')}"}
    return {"ok": True, "clients": answer.get("clients", 0)}


def check_liveness() -> dict[str, dict[str, Any]]:
    """Worker and beat heartbeat ages (``maintenance.liveness`` reads ServiceHeartbeat)."""
    from sessionadmin.maintenance import liveness

    found = liveness()
    out: dict[str, dict[str, Any]] = {}
    for name in ("worker", "beat"):
        ok, age = bool(found[name]["ok"]), found[name]["age_seconds"]
        out[name] = {"ok": ok, "age_seconds": age, **({} if ok else {"error": "no recent heartbeat"})}
    return out


@api_endpoint("GET")
def healthz(request: HttpRequest) -> HttpResponse:
    """No auth: 200 when the database, the broker, the MCP gateway, a worker and beat are all
    alive, else 503."""
    checks: dict[str, dict[str, Any]] = {"database": check_database(), "broker": check_broker(), "gateway": check_gateway()}
    unknown = {"ok": False, "age_seconds": None, "error": "unknown: the database is unreachable"}
    try:
        checks.update(check_liveness() if checks["database"]["ok"] else {"worker": unknown, "beat": unknown})
    except DatabaseError:
        checks.update({"worker": unknown, "beat": unknown})
    ok = all(check["ok"] for check in checks.values())
    return JsonResponse({"status": "ok" if ok else "fail", "checks": checks}, status=200 if ok else 503)
