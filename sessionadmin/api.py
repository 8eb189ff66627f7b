"""The runtime JSON API (``/api/v1/``) on django-ninja, plus ``/healthz``.

The schemas below state what is accepted (unknown fields are refused, types are strict, the
rules come from ``validation``) and the OpenAPI document at ``/api/v1/openapi.json`` is generated
from them. Every token endpoint authenticates through ``BearerToken`` (``tokens.authenticate``;
the heartbeat's one-SELECT lookup is its fast path, pinned to it by a test). Whatever ninja,
pydantic or a handler raises becomes ``{"error": {"code", "message", "fields"?}}``
(``error_response``), so no input makes a 500. A token scoped to an org sees only that org's
sessions; any other session is 404, exactly as if it did not exist. Writes go through the
session manager with ``actor=token.actor``, which audits them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import logging
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern, URLResolver, include, path, re_path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from ninja import NinjaAPI, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.params.models import Query as QueryParam
from ninja.params.models import QueryModel
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from sessionadmin import lifecycle, metrics, tokens
from sessionadmin.lifecycle import (
    InvalidInput,
    InvalidOrgID,
    MaxSessionsReached,
    WorkspaceCreationError,
)
from sessionadmin.models import AgentSession, AgentSessionQuerySet, ApiToken
from sessionadmin.validation import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_REASON_LENGTH,
    MAX_VARIABLE_VALUE_LENGTH,
    MAX_VARIABLES,
    VARIABLE_NAME_PATTERN,
    id_problem,
    text_problem,
    variables_problem,
)

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Sessions end by idle cleanup or an explicit DELETE; a client at a limit retries after this.
RETRY_AFTER_SECONDS = 30
BROKER_TIMEOUT_SECONDS = 1.0
GATEWAY_TIMEOUT_SECONDS = 1.0


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


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "a valid bearer token is required (Authorization: Bearer <token>)",
        headers={"WWW-Authenticate": 'Bearer realm="sessionadmin"'},
    )


# --- types: each rule comes from ``validation`` ----------------------------------------------


def checked_by(problem_of: Callable[[Any], str | None]) -> AfterValidator:
    """A pydantic validator from one of ``validation``'s ``*_problem`` functions."""

    def check(value: Any) -> Any:
        problem = problem_of(value)
        if problem:
            raise PydanticCustomError("invalid", problem)
        return value

    return AfterValidator(check)


ExternalId = Annotated[
    str,
    checked_by(id_problem),
    WithJsonSchema({"type": "string", "pattern": f"^{ID_PATTERN}$", "maxLength": MAX_ID_LENGTH}),
]
Variables = Annotated[
    dict[str, Any],
    checked_by(variables_problem),
    WithJsonSchema(
        {
            "type": "object",
            "description": "Prompt variables; `user_id`, `org_id` and `session_id` are reserved.",
            "maxProperties": MAX_VARIABLES,
            "propertyNames": {"pattern": f"^{VARIABLE_NAME_PATTERN}$"},
            "additionalProperties": {
                "anyOf": [{"type": "string", "maxLength": MAX_VARIABLE_VALUE_LENGTH}, {"type": "number"}, {"type": "boolean"}]
            },
        }
    ),
]
Reason = Annotated[str, Field(max_length=MAX_REASON_LENGTH), checked_by(text_problem)]


def page_size(value: Any) -> Any:
    # Plain ASCII digits only: int() would also take " 5", "+5", "5_0" and non-ASCII digits.
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 4):
        raise PydanticCustomError("invalid", f"must be an integer from 1 to {MAX_PAGE_SIZE}")
    return value


def encode_cursor(session: AgentSession) -> str:
    raw = f"{session.created_at.isoformat()}|{session.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: Any) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, sid = raw.partition("|")
        created_at = datetime.fromisoformat(at)
        if created_at.tzinfo is None:
            raise ValueError("naive time")
        return created_at.astimezone(UTC), uuid.UUID(sid)  # in UTC, or OverflowError now, not in a query
    except (TypeError, ValueError, OverflowError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise PydanticCustomError("invalid", "not a cursor returned by this API") from None


PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE), BeforeValidator(page_size)]
Cursor = Annotated[
    tuple[datetime, uuid.UUID],
    BeforeValidator(decode_cursor),
    WithJsonSchema({"type": "string", "description": "`next_cursor` of the previous page."}),
]


# --- request schemas ----------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateSession(Strict):
    user_id: ExternalId
    org_id: ExternalId
    variables: Variables = {}


class DeleteSession(Strict):
    reason: Reason = ""


NO_BODY = DeleteSession()  # DELETE's body is optional


class SessionFilters(BaseModel):
    """Query parameters arrive as strings, so these are converted (strictly: see ``page_size``)."""

    org_id: ExternalId | None = None
    user_id: ExternalId | None = None
    status: AgentSession.Status | None = None
    limit: PageSize = DEFAULT_PAGE_SIZE
    cursor: Cursor | None = None


# --- response schemas (the document; errors are written by ApiError.response) -----------------


class SessionOut(Schema):
    """What the runtime may know of a session: no prompt (see /system-prompt), no secrets."""

    id: uuid.UUID
    user_id: str
    org_id: str
    status: AgentSession.Status
    workspace_path: str
    variables: dict[str, str]
    created_at: datetime
    created_by: str
    last_active_at: datetime
    ended_at: datetime | None
    end_reason: str
    pinned_until: datetime | None


class SessionPage(Schema):
    sessions: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class Deleted(Schema):
    id: uuid.UUID
    status: Literal["terminating"]
    cleanup: Literal["enqueued", "pending"] = Field(
        description="`pending`: the broker refused the task; the maintenance enqueues the removal again."
    )


class SystemPrompt(Schema):
    session_id: uuid.UUID
    system_prompt: str
    layers: list[dict[str, Any]] = Field(description="The layers the prompt was composed from, in order.")


class GatewayEntry(Schema):
    type: Literal["http"]
    url: str
    headers: dict[str, str]


class McpConfig(Schema):
    """What an agent CLI reads: the one entry ``sessionadmin``, the session's gateway endpoint."""

    mcpServers: dict[Literal["sessionadmin"], GatewayEntry]


class Check(Schema):
    ok: bool
    age_seconds: float | None = None
    error: str = ""


class Health(Schema):
    status: Literal["ok", "fail"]
    checks: dict[str, Check]


class Limit(Schema):
    scope: Literal["global", "org", "user"]
    current: int
    maximum: int


class ErrorDetail(Schema):
    code: str
    message: str
    fields: dict[str, str] = Field(default_factory=dict, description="The problem with each field or parameter.")
    limit: Limit | None = Field(default=None, description="On 429: which limit is full.")


class Error(Schema):
    error: ErrorDetail


def errors(*statuses: int) -> dict[int, type[Error]]:
    """The documented error answers of an operation; every token endpoint may answer 401."""
    return {status: Error for status in (401, *statuses)}


# --- the API: parsing, authentication, errors -----------------------------------------------------


class JsonObjectParser(Parser):
    """A body is an ``application/json`` object whose numbers are finite. Its size is checked
    before this by Django (``DATA_UPLOAD_MAX_MEMORY_SIZE``, chunked bodies included)."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        if not request.body.strip():
            return None  # type: ignore[return-value]  # no body: the schema's default or "required"
        if request.content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "the body must be application/json")
        try:
            body = json.loads(request.body, parse_constant=finite_float, parse_float=finite_float)
        except NonFinite:
            raise ApiError(400, "malformed_json", "the body has a number that is not finite (NaN, Infinity, 1e999)")
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ApiError(400, "malformed_json", "the body is not valid JSON")
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object")
        return body


class NonFinite(ValueError):
    pass


def finite_float(text: str) -> float:
    value = float(text)  # "NaN", "Infinity" and "1e999" all parse, and none is finite
    if not math.isfinite(value):
        raise NonFinite(text)
    return value


class ClosedQueryModel(QueryModel):
    """ninja drops query parameters its schema does not name (vitalik/django-ninja#702): an
    unknown or repeated one is refused here, before the values are checked."""

    @classmethod
    def get_request_data(cls, request: HttpRequest, api: NinjaAPI, path_params: dict[str, Any]) -> dict[str, Any] | None:
        known = cls.__ninja_flatten_map__  # type: ignore[attr-defined]
        problems = {
            name: "unknown parameter" if name not in known else "given more than once"
            for name, values in request.GET.lists()
            if name not in known or len(values) > 1
        }
        if problems:
            raise invalid(problems, "the query string is invalid")
        return super().get_request_data(request, api, path_params)


class ClosedQuery(QueryParam):  # type: ignore[misc]  # as ninja's own Param classes
    _model = ClosedQueryModel

    @classmethod
    def _param_source(cls) -> str:
        return "query"


class BearerToken(HttpBearer):
    """The one authenticator of the API: ``Authorization: Bearer <token>``, checked by
    ``tokens.authenticate`` (the heartbeat passes its own ``lookup``: see ``heartbeat_lookup``)."""

    def __init__(self, lookup: Callable[[HttpRequest, str], Any] | None = None) -> None:
        super().__init__()
        self.lookup = lookup or (lambda request, raw: tokens.authenticate(raw))

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return self.lookup(request, token.strip())


api = NinjaAPI(
    title="sessionadmin runtime API",
    version="1",
    description=(
        "JSON API for the agent runtime. Authenticate with `Authorization: Bearer <token>` "
        "(tokens: `manage.py create_api_token`). A token scoped to an org sees only that org's "
        'sessions; any other session is 404. Errors are `{"error": {"code", "message", "fields"?}}`.'
    ),
    auth=BearerToken(),
    parser=JsonObjectParser(),
    docs_url=None,  # no docs page: the document is enough, and nothing is loaded from a CDN
    docs_decorator=require_GET,
    urls_namespace="api",
)


def error_response(request: HttpRequest, exc: Exception) -> HttpResponse:
    return as_api_error(exc).response()


def as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthenticationError):
        return unauthorized()
    if isinstance(exc, ValidationError):
        return from_validation_errors(exc.errors)
    if isinstance(exc, HttpError):  # ninja wraps what the parser raises
        cause = exc.__cause__
        return cause if isinstance(cause, ApiError) else ApiError(exc.status_code, "invalid_request", exc.message)
    if isinstance(exc, RequestDataTooBig):
        return ApiError(413, "body_too_large", f"the body is larger than {settings.SESSIONADMIN_MAX_BODY_BYTES} bytes")
    if isinstance(exc, Http404):
        return ApiError(404, "not_found", "not found")
    if isinstance(exc, SuspiciousOperation):  # too many query parameters, say
        return ApiError(400, "invalid_request", "the request is malformed")
    logger.error("runtime API: unexpected %s", type(exc).__name__, exc_info=exc)
    return ApiError(500, "internal_error", "the server failed to answer this request")


MESSAGES = {"missing": "this field is required", "extra_forbidden": "unknown field"}


def from_validation_errors(errors: list[dict[str, Any]]) -> ApiError:
    """pydantic's errors as ``fields``. A bad path parameter (a session id) is a 404."""
    fields: dict[str, str] = {}
    for error in errors:
        source, *where = error["loc"]
        if source == "path":
            return not_found()
        if source == "body" and len(where) < 2:  # the body itself: absent, or null
            return ApiError(400, "invalid_request", "a JSON object body is required")
        name = str(where[1] if source == "body" else where[0])
        fields.setdefault(name, MESSAGES.get(error["type"], error["msg"]))
    if all(error["type"] == "extra_forbidden" for error in errors):
        return invalid(fields, "the body has unknown fields")
    return invalid(fields, "the query string is invalid" if errors[0]["loc"][0] == "query" else "the request is invalid")


for handled in (Exception, Http404, HttpError, ValidationError):
    api.add_exception_handler(handled, error_response)  # type: ignore[arg-type]  # instances only, never classes


# --- sessions -------------------------------------------------------------------------------------


def token_of(request: HttpRequest) -> ApiToken:
    return request.auth  # type: ignore[attr-defined]  # set by BearerToken


def sessions_of(token: ApiToken) -> AgentSessionQuerySet:
    """The sessions this token may see: its org's, or every one for an unscoped token."""
    qs = AgentSession.objects.all()
    return qs.filter(org_id=token.org_id) if token.org_id else qs


def get_visible_session(token: ApiToken, session_id: uuid.UUID) -> AgentSession:
    session = sessions_of(token).filter(pk=session_id).first()
    if session is None:
        raise not_found()
    return session


@api.post(
    "/sessions",
    response={201: SessionOut, **errors(400, 413, 415, 429, 503)},
    openapi_extra={
        "responses": {
            201: {"headers": {"Location": {"schema": {"type": "string"}}}},
            429: {"headers": {"Retry-After": {"required": True, "schema": {"type": "integer"}}}},
        }
    },
)
def create_session(request: HttpRequest, payload: CreateSession, response: HttpResponse) -> Status[AgentSession]:
    """Create a session (workspace, composed prompt)."""
    token = token_of(request)
    # An org out of the token's scope gets the very answer an unknown org gets.
    unknown_org = invalid({"org_id": "unknown org"})
    if token.org_id and payload.org_id != token.org_id:
        raise unknown_org
    try:
        session = lifecycle.create(user_id=payload.user_id, org_id=payload.org_id, actor=token.actor, variables=payload.variables)
    except InvalidOrgID:
        raise unknown_org
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
    response["Location"] = f"/api/v1/sessions/{session.id}"
    return Status(201, session)


@api.get("/sessions", response={200: SessionPage, **errors(400)})
def list_sessions(request: HttpRequest, filters: Annotated[SessionFilters, ClosedQuery(...)]) -> dict[str, Any]:
    """Sessions, newest first, keyset-paginated on (created_at, id): stable while sessions are created."""
    token = token_of(request)
    qs = sessions_of(token).order_by("-created_at", "-id")
    wanted = {"org_id": filters.org_id, "user_id": filters.user_id, "status": filters.status}
    qs = qs.filter(**{name: value for name, value in wanted.items() if value is not None})
    if filters.cursor:
        at, sid = filters.cursor
        qs = qs.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=sid))
    rows = list(qs[: filters.limit + 1])
    next_cursor = encode_cursor(rows[filters.limit - 1]) if len(rows) > filters.limit else None
    return {"sessions": rows[: filters.limit], "next_cursor": next_cursor}


@api.get("/sessions/{session_id}", response={200: SessionOut, **errors(404)})
def get_session(request: HttpRequest, session_id: uuid.UUID) -> AgentSession:
    """One session (no secrets, no prompt)."""
    return get_visible_session(token_of(request), session_id)


@api.delete("/sessions/{session_id}", response={202: Deleted, **errors(400, 404, 413, 415)})
def delete_session(request: HttpRequest, session_id: uuid.UUID, payload: DeleteSession = NO_BODY) -> Status[dict[str, Any]]:
    """End a session: marked terminating now (a second call is 404), the workspace removed by a
    worker. If the broker refuses the task the answer is still 202, with ``"cleanup": "pending"``:
    the session stays terminating and the maintenance enqueues it again, so the client has
    nothing to retry."""
    token = token_of(request)
    cleanup = end_session(token, session_id, reason=payload.reason)
    return Status(202, {"id": session_id, "status": AgentSession.Status.TERMINATING, "cleanup": cleanup})


def end_session(token: ApiToken, session_id: uuid.UUID, *, reason: str) -> Literal["enqueued", "pending"]:
    """``lifecycle.end`` within the token's scope: of two concurrent DELETEs exactly one marks
    the session (the other finds it terminating: 404). "pending" only when the broker refused
    the removal task (a ``None``, still to be sent when an outer transaction commits, is sent)."""
    try:
        ended = lifecycle.end(session_ids=[session_id], actor=token.actor, reason=reason, within=sessions_of(token))
    except InvalidInput as exc:
        raise invalid({"reason": str(exc)}) from exc
    if not ended.sessions:
        raise not_found()
    return "pending" if ended.enqueued is False else "enqueued"


class Heartbeat(NamedTuple):
    """What the heartbeat's lookup found for a usable token."""

    token_id: int
    token_stale: bool  # its last_used_at is older than tokens.LAST_USED_RESOLUTION_SECONDS
    session_found: bool  # the session is active and in the token's scope
    session_stale: bool  # its last_active_at is older than the activity resolution
    now: datetime


def heartbeat_lookup(request: HttpRequest, raw: str) -> Heartbeat | None:
    """The heartbeat's fast path: the usable token whose plaintext is ``raw`` and the session of
    the path, in one SELECT, or None (401).

    Raw SQL on purpose: it is the same filter as ``ApiToken.objects.usable()`` and
    ``sessions_of(token).active()``, in one round trip and without the ORM's query compilation,
    which cost more than the database itself here (``benchmark api``: the generic path, two ORM
    queries, lost far more than 10% of heartbeat throughput). ``tests/test_api_activity.py`` pins
    it to ``tokens.authenticate``. Times are compared in SQL, so SQLite (text) and PostgreSQL agree.
    """
    if not tokens.looks_like_token(raw):
        return None
    try:
        session_id = uuid.UUID(request.resolver_match.kwargs["session_id"])  # type: ignore[union-attr]
    except ValueError:
        session_id = uuid.UUID(int=0)  # still authenticated first: 401 comes before 404
    now = timezone.now()
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
    return Heartbeat(int(row[0]), bool(row[2]), bool(row[3]), bool(row[4]), now)


@api.post("/sessions/{session_id}/activity", auth=BearerToken(heartbeat_lookup), response={204: None, **errors(404)})
def report_activity(request: HttpRequest, session_id: uuid.UUID) -> Status[None]:
    """Heartbeat: the session is in use. Written at most once per activity resolution."""
    found: Heartbeat = request.auth  # type: ignore[attr-defined]
    if found.token_stale:
        tokens.mark_used(found.token_id, now=found.now)
    if not found.session_found:
        raise not_found()
    if found.session_stale:
        touch_session(session_id, now=found.now)
        metrics.HEARTBEAT_WRITTEN.inc()
    else:
        metrics.HEARTBEAT_COALESCED.inc()
    return Status(204, None)


def touch_session(session_id: uuid.UUID, *, now: datetime) -> None:
    """The manager's coalescing ``touch``, committed without waiting for the WAL flush on
    PostgreSQL: a heartbeat lost in a database crash only makes the session look idle a moment
    earlier (far less than the resolution), and the flush wait was most of a heartbeat's cost."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
        lifecycle.touch(session_id=session_id, now=now)


@api.get("/sessions/{session_id}/system-prompt", response={200: SystemPrompt, **errors(404)})
def get_system_prompt(request: HttpRequest, session_id: uuid.UUID) -> dict[str, Any]:
    """The composed system prompt and the layers it came from."""
    session = get_visible_session(token_of(request), session_id)
    return {"session_id": session.id, "system_prompt": session.system_prompt, "layers": session.prompt_provenance}


@api.get("/sessions/{session_id}/mcp-config", response={200: McpConfig, **errors(404, 503)})
def get_mcp_config(request: HttpRequest, session_id: uuid.UUID, response: HttpResponse) -> dict[str, Any]:
    """`mcpServers` with one entry, `sessionadmin`: the session's MCP endpoint on its gateway and a
    bearer token minted for this session alone (each request mints one, audited by prefix). No
    upstream URL, command, header or environment value is ever returned."""
    from sessionadmin import mcp_services

    token = token_of(request)
    session = get_visible_session(token, session_id)
    config = mcp_services.mcp_config_for(session, actor=token.actor)
    # Carries a bearer token: never cached by anything between us and the runtime.
    response["Cache-Control"] = "no-store"
    return config


# --- health ---------------------------------------------------------------------------------------


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


@api.get("/healthz", auth=None, response={200: Health, 503: Health}, exclude_unset=True)
def healthz(request: HttpRequest) -> Status[dict[str, Any]]:
    """Database, broker, MCP gateway, worker and beat liveness: 200 when all are alive, else 503.
    No token."""
    checks: dict[str, dict[str, Any]] = {"database": check_database(), "broker": check_broker(), "gateway": check_gateway()}
    unknown = {"ok": False, "age_seconds": None, "error": "unknown: the database is unreachable"}
    try:
        checks.update(check_liveness() if checks["database"]["ok"] else {"worker": unknown, "beat": unknown})
    except DatabaseError:
        checks.update({"worker": unknown, "beat": unknown})
    ok = all(check["ok"] for check in checks.values())
    return Status(200 if ok else 503, {"status": "ok" if ok else "fail", "checks": checks})


# --- routes -----------------------------------------------------------------------------------------


def unknown_endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    return ApiError(404, "not_found", "no such endpoint").response()


def api_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A view of the API: no login, no CSRF (a bearer token is not a cookie), a Content-Length
    that is a number, and ninja's plain text 405 as our JSON error (``Allow`` kept)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not (request.META.get("CONTENT_LENGTH") or "0").isdigit():  # Django's request.body would raise
            return ApiError(400, "invalid_request", "Content-Length is not a number").response()
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = ", ".join(sorted(method.strip() for method in response["Allow"].split(",")))
            message = f"{request.method} is not allowed here"
            return ApiError(405, "method_not_allowed", message, headers={"Allow": allowed}).response()
        return response

    return login_not_required(csrf_exempt(wrapper))


def urlpatterns() -> list[URLPattern | URLResolver]:
    """The API's routes, ``/healthz`` at the root too, and a JSON 404 for anything else under
    ``/api/v1/``."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        assert isinstance(pattern, URLPattern)
        pattern.callback = api_view(pattern.callback)
    health = next(p.callback for p in patterns if isinstance(p, URLPattern) and p.name == "healthz")
    unknown = api_view(unknown_endpoint)
    return [
        path("healthz", health, name="healthz"),
        path("api/v1/", unknown),  # before ninja's own root view, a 404 in HTML
        path("api/v1/", include((patterns, app_name), namespace=namespace)),
        re_path(r"^api/v1/", unknown),
    ]
