"""The one owner of every state change of a session.

Each function is keyword-only and typed, validates with the model's own validators, changes
the rows and writes their audit entries in the same transaction (audit last, so that the
transaction's row locks are all taken before the audit trail's own lock):

- ``create``: limits checked under locks, the row, the workspace directory (inside the
  transaction, so a failed mkdir leaves no row and a failed commit removes the directory);
- ``touch``: activity, coalesced, not audited;
- ``update_prompt``, ``pin``, ``unpin``;
- ``end``: the one way a session stops, whoever asks (dashboard, admin, API, idle cleanup,
  commands): active sessions are marked ``terminating`` under row locks, audited, and their
  removal is enqueued when the transaction commits;
- ``finish``: the worker's half: close MCP clients, remove each workspace at the path stored on
  the session, mark ended, audit, and settle the run record. Idempotent, so a redelivered or
  re-enqueued batch is harmless.

The seed's ``SessionManager`` (manager.py) is a thin facade over these functions.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ParamSpec

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from sessionadmin import audit, metrics, workspaces
from sessionadmin.audit import AuditLogger
from sessionadmin.models import AgentSession, LimitLock, MaintenanceRun, Org
from sessionadmin.prompts import MAX_PROMPT_LENGTH, ComposedPrompt, DefaultPromptComposer, PromptComposer, sha256
from sessionadmin.validation import MAX_REASON_LENGTH, clean_variables, id_problem, text_problem, variables_problem

logger = logging.getLogger(__name__)

INACTIVITY_ACTOR = "system:inactivity-cleanup"
# MaintenanceRun.task of the runs that track the removal of ended sessions.
INACTIVITY_CLEANUP = "inactivity_cleanup"
WORKSPACE_REMOVAL = "workspace_removal"
# Removal tasks carry at most this many sessions each.
REMOVAL_BATCH = 500
# A run row keeps this many session ids; the audit trail has every one of them.
MAX_RECORDED_IDS = 1000


# --- errors (the seed's, plus ours); ``str()`` is meant for the operator ------------------------


class SessionError(Exception):
    """Base of every error of the session lifecycle."""


class SessionNotFound(SessionError):
    pass


class MaxSessionsReached(SessionError):
    def __init__(self, message: str, *, limit: str, current: int, maximum: int) -> None:
        super().__init__(message)
        self.limit = limit  # "global", "org" or "user"
        self.current = current
        self.maximum = maximum


class WorkspaceCreationError(SessionError):
    pass


class WorkspaceRemovalError(SessionError):
    pass


class InvalidUserID(SessionError):
    pass


class InvalidOrgID(SessionError):
    pass


class InvalidInput(SessionError):
    """Variables, prompts, reasons or pins that are malformed or too large."""


class MCPClientNotFound(SessionError):
    pass


def parse_session_id(session_id: uuid.UUID | str) -> uuid.UUID:
    """A UUID from ``str`` or ``UUID``; anything malformed is SessionNotFound, not a crash."""
    if isinstance(session_id, uuid.UUID):
        return session_id
    try:
        return uuid.UUID(str(session_id))
    except (ValueError, TypeError, AttributeError):
        raise SessionNotFound(f"session {audit.safe_repr(session_id, 60)} not found") from None


def check_reason(reason: object) -> str:
    """A stripped reason, or InvalidInput saying why it cannot be stored (never truncated)."""
    if reason is None:
        return ""
    if not isinstance(reason, str):
        raise InvalidInput("reason must be a string")
    reason = reason.strip()
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput(f"reason is longer than {MAX_REASON_LENGTH} characters")
    problem = text_problem(reason)
    if problem:
        raise InvalidInput(f"reason {problem}")
    return reason


# --- create -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Where and how many: the manager's configuration of a create."""

    workspace_root: str
    max_concurrent: int  # 0 = no global limit

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(workspace_root=str(settings.SESSIONADMIN_WORKSPACE_ROOT), max_concurrent=settings.SESSIONADMIN_MAX_CONCURRENT)


P = ParamSpec("P")


def _observed_create(func: Callable[P, AgentSession]) -> Callable[P, AgentSession]:
    """``sessionadmin_session_create_duration_seconds{status}``: every create, by outcome (an
    unexpected error, which has no status of its own, is not observed)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> AgentSession:
        started = time.perf_counter()
        status = ""
        try:
            session = func(*args, **kwargs)
            status = "success"
            return session
        except MaxSessionsReached as exc:
            status = f"limit_{exc.limit}"
            raise
        except WorkspaceCreationError:
            status = "workspace_error"
            raise
        except (InvalidUserID, InvalidOrgID, InvalidInput):
            status = "invalid"
            raise
        finally:
            if status:
                metrics.session_create_duration.labels(status).observe(time.perf_counter() - started)

    return wrapper


@_observed_create
def create(
    *,
    user_id: str,
    org_id: str,
    actor: str,
    limits: Limits | None = None,
    variables: dict[str, Any] | None = None,
    composer: PromptComposer | None = None,
    sink: AuditLogger | None = None,
) -> AgentSession:
    """A new active session with its workspace ``{root}/{user_id}/{session_id}`` (0700) and its
    composed prompt. Refusals (invalid ids or variables, unknown org, a full limit, a workspace
    that cannot be made) are audited and raised; nothing is left behind."""
    actor = actor or audit.SYSTEM_ACTOR
    limits = limits or Limits.from_settings()
    _validate_create(user_id, org_id, variables, actor=actor, sink=sink)
    session_id = uuid.uuid4()
    path = workspaces.workspace_path(limits.workspace_root, user_id, str(session_id))
    values = clean_variables(variables)
    try:
        with transaction.atomic():
            org = _lock_for_create(user_id, org_id, limits.max_concurrent)
            composed, prompt_error = _compose(composer, user_id, org, session_id, values)
            now = timezone.now()
            session = AgentSession(
                id=session_id,
                user_id=user_id,
                org=org,
                workspace_path=str(path),
                gateway=settings.SESSIONADMIN_GATEWAY_URL,
                system_prompt=composed.text,
                prompt_provenance=composed.provenance,
                variables=values,
                created_at=now,
                last_active_at=now,
                created_by=actor,
            )
            session.save(force_insert=True)
            workspaces.create_workspace(limits.workspace_root, user_id, str(session_id))
            entries = [audit.session_entry("session_created", session, actor, {"workspace_path": str(path)})]
            if prompt_error:
                entries.append(audit.session_entry("prompt_composition_failed", session, actor, {"error": prompt_error}))
            audit.write(entries, sink=sink)
    except workspaces.WorkspaceError as exc:
        _audit_refusal(
            "workspace_creation_failed", user_id, org_id, actor, {"error": str(exc), "session_id": str(session_id)}, sink
        )
        raise WorkspaceCreationError(f"failed to create workspace directory: {exc}") from exc
    except MaxSessionsReached as exc:
        details = {"reason": "max_sessions_reached", "limit": exc.limit, "current": exc.current, "maximum": exc.maximum}
        _audit_refusal("session_create_failed", user_id, org_id, actor, details, sink)
        raise
    except InvalidOrgID as exc:
        details = {"reason": "unknown_org", "org_id": audit.safe_repr(org_id), "error": str(exc)}
        _audit_refusal("session_create_failed", user_id, "", actor, details, sink)
        raise
    except BaseException:
        # Anything after the mkdir failed (the commit, say): the row is gone, so the directory
        # goes too. The id is a fresh UUID, so whatever is at that path is ours.
        workspaces.remove_workspace(limits.workspace_root, user_id, str(session_id))
        raise
    return session


def _validate_create(user_id: object, org_id: object, variables: object, *, actor: str, sink: AuditLogger | None) -> None:
    """The model's own rules (the validators of AgentSession.user_id, Org.id and
    AgentSession.variables), checked in the seed's order: user id first."""
    checks: list[tuple[str | None, type[SessionError], str, str]] = [
        (id_problem(user_id), InvalidUserID, "invalid_user_id", "invalid user ID"),
        (id_problem(org_id), InvalidOrgID, "invalid_org_id", "invalid org ID"),
        (variables_problem(variables), InvalidInput, "invalid_variables", "invalid variables"),
    ]
    for problem, error, reason, label in checks:
        if problem:
            safe_user = user_id if isinstance(user_id, str) and id_problem(user_id) is None else ""
            safe_org = org_id if isinstance(org_id, str) and id_problem(org_id) is None else ""
            details = {"reason": reason, "error": problem, "user_id": audit.safe_repr(user_id), "org_id": audit.safe_repr(org_id)}
            _audit_refusal("session_create_failed", safe_user, safe_org, actor, details, sink)
            raise error(f"{label}: {problem}")


def _audit_refusal(
    event_type: str, user_id: str, org_id: str, actor: str, details: dict[str, Any], sink: AuditLogger | None
) -> None:
    with transaction.atomic():
        audit.write([audit.entry(event_type, actor=actor, user_id=user_id, org_id=org_id, details=details)], sink=sink)


def _lock_for_create(user_id: str, org_id: str, max_concurrent: int) -> Org:
    """Take the locks that make check-then-insert atomic, and check every limit.

    Locks, in this order for every create whatever the settings (so creators queue and never
    deadlock): the global row, which also holds the trigger-maintained number of active
    sessions, then the org row. On SQLite the IMMEDIATE transaction holds the database write
    lock anyway. The org and per-user counts run as their own statement *after* the locks
    are held: in READ COMMITTED a count inside the locking statement would use the snapshot
    taken before the wait, and could be stale. Each count stops at its limit.
    """
    active_total = _lock_global_row()
    org = _select_org_for_update(org_id)
    if org is None:
        raise InvalidOrgID(f"invalid org ID: unknown org {org_id!r}")
    if max_concurrent and active_total >= max_concurrent:
        raise MaxSessionsReached(
            f"maximum concurrent sessions reached ({active_total}/{max_concurrent})",
            limit="global",
            current=active_total,
            maximum=max_concurrent,
        )
    limits: list[tuple[str, int | None, str, list[Any], str]] = [
        ("org", org.max_sessions, "AND org_id = %s", [org_id], f"org {org.id!r} has reached its limit of concurrent sessions"),
        (
            "user",
            org.max_sessions_per_user,
            "AND org_id = %s AND user_id = %s",
            [org_id, user_id],
            f"user {user_id!r} has reached the per-user limit of org {org.id!r}",
        ),
    ]
    checked = [(name, maximum, where, params, msg) for name, maximum, where, params, msg in limits if maximum]
    if not checked:
        return org
    counts = _count_active([(where, params, maximum) for _, maximum, where, params, _ in checked])
    for (limit, maximum, _, _, message), current in zip(checked, counts, strict=True):
        if current >= maximum:
            raise MaxSessionsReached(f"{message} ({current}/{maximum})", limit=limit, current=current, maximum=maximum)
    return org


def _lock_global_row() -> int:
    """Lock the global row and return the number of active sessions it holds."""
    counts = list(LimitLock.objects.select_for_update().filter(pk=1).values_list("active_sessions", flat=True))
    if not counts:
        # Created by the migration; a database flushed by the test runner lacks it.
        ensure_limit_row()
        counts = list(LimitLock.objects.select_for_update().filter(pk=1).values_list("active_sessions", flat=True))
    return counts[0]


def ensure_limit_row() -> None:
    """Create the global row with the exact number of active sessions, if it is missing."""
    LimitLock.objects.bulk_create([LimitLock(pk=1, active_sessions=AgentSession.objects.active().count())], ignore_conflicts=True)


_ORG_COLUMNS = ("id", "name", "prompt", "max_sessions", "max_sessions_per_user", "idle_timeout_seconds", "created_at")


def _select_org_for_update(org_id: str) -> Org | None:
    """The org row, locked until the end of the transaction (``FOR UPDATE`` where supported).
    Plain SQL: this is the hot path of every create, and the ORM's query compilation cost
    more than the query itself (``benchmark create``)."""
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(_ORG_COLUMNS)} FROM {Org._meta.db_table} WHERE id = %s{lock}", [org_id])
        row = cursor.fetchone()
    return Org.from_db(connection.alias, list(_ORG_COLUMNS), row) if row else None


def _count_active(filters: list[tuple[str, list[Any], int]]) -> list[int]:
    """Active sessions matching each filter, in one statement. Each count stops at its limit
    (``LIMIT maximum``), so a create costs O(limit), not O(sessions in the database)."""
    table = AgentSession._meta.db_table
    parts, params = [], []
    for where, where_params, maximum in filters:
        parts.append(f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE status = 'active' {where} LIMIT %s) AS c)")
        params += [*where_params, maximum]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        return [int(n) for n in cursor.fetchone()]


def compose_now(session: AgentSession, org: Org) -> tuple[ComposedPrompt, str]:
    """What the current layers compose for an existing session (the dashboard's preview): the
    same composition as at creation, built-in variables included."""
    variables = {str(k): str(v) for k, v in (session.variables or {}).items()}
    return _compose(None, session.user_id, org, session.id, variables)


def _compose(
    composer: PromptComposer | None, user_id: str, org: Org, session_id: uuid.UUID, variables: dict[str, str]
) -> tuple[ComposedPrompt, str]:
    """The composed prompt and, if composition failed, why (the session is still created)."""
    full = {**variables, "user_id": user_id, "org_id": org.id, "session_id": str(session_id)}
    composer = composer or DefaultPromptComposer()
    try:
        if isinstance(composer, DefaultPromptComposer):
            composed = composer.compose(user_id=user_id, org=org, variables=full)
        else:
            text = composer.compose_system_prompt(user_id, org.id, dict(full))
            if not isinstance(text, str):
                raise TypeError(f"composer returned {type(text).__name__}, not str")
            composed = ComposedPrompt(text=text, provenance=[{"kind": "custom", "composer": type(composer).__name__}])
        problem = prompt_problem(composed.text)
        if problem:
            raise ValueError(f"composed prompt {problem}")
        return composed, ""
    except Exception as exc:  # a composer is third-party code: any failure is recorded
        logger.warning("prompt composition failed for session %s: %s", session_id, exc)
        return ComposedPrompt(text=""), f"{type(exc).__name__}: {exc}"[: audit.MAX_DETAIL_TEXT]


def prompt_problem(prompt: object) -> str | None:
    if not isinstance(prompt, str):
        return "must be a string"
    if len(prompt) > MAX_PROMPT_LENGTH:
        return f"is longer than {MAX_PROMPT_LENGTH} characters"
    return text_problem(prompt)


# --- activity, prompt, pin ------------------------------------------------------------------------


def touch(*, session_id: uuid.UUID | str, now: datetime | None = None) -> bool:
    """Record activity. Writes at most once per session per activity resolution: the
    conditional UPDATE matches nothing while the last write is recent. Not audited (it is a
    heartbeat, not a change of state)."""
    sid = parse_session_id(session_id)
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS)
    return bool(AgentSession.objects.active().filter(pk=sid, last_active_at__lt=cutoff).update(last_active_at=now))


def _locked_active(session_id: uuid.UUID | str) -> AgentSession:
    sid = parse_session_id(session_id)
    session = AgentSession.objects.select_for_update().active().filter(pk=sid).first()
    if session is None:
        raise SessionNotFound(f"session {sid} not found")
    return session


def update_prompt(*, session_id: uuid.UUID | str, prompt: str, actor: str, sink: AuditLogger | None = None) -> AgentSession:
    problem = prompt_problem(prompt)
    if problem:
        raise InvalidInput(f"prompt {problem}")
    with transaction.atomic():
        row = _locked_active(session_id)
        old = row.system_prompt
        row.system_prompt = prompt
        row.save(update_fields=["system_prompt"])
        details = {"old_sha256": sha256(old), "new_sha256": sha256(prompt), "old_length": len(old), "new_length": len(prompt)}
        audit.write([audit.session_entry("system_prompt_updated", row, actor or audit.SYSTEM_ACTOR, details)], sink=sink)
    return row


def pin(
    *,
    session_id: uuid.UUID | str,
    until: datetime,
    reason: str,
    actor: str,
    now: datetime | None = None,
    sink: AuditLogger | None = None,
) -> AgentSession:
    """Keep an active session from idle cleanup until ``until``."""
    reason = check_reason(reason)
    if not reason:
        raise InvalidInput("a reason is required to pin a session")
    if until <= (now or timezone.now()):
        raise InvalidInput("the pin must end in the future")
    with transaction.atomic():
        row = _locked_active(session_id)
        row.pinned_until, row.pin_reason, row.pinned_by = until, reason, actor
        row.save(update_fields=["pinned_until", "pin_reason", "pinned_by"])
        details = {"until": until.isoformat(), "reason": reason}
        audit.write([audit.session_entry("session_pinned", row, actor, details)], sink=sink)
    return row


def unpin(*, session_id: uuid.UUID | str, actor: str, sink: AuditLogger | None = None) -> AgentSession:
    with transaction.atomic():
        row = _locked_active(session_id)
        row.pinned_until, row.pin_reason, row.pinned_by = None, "", ""
        row.save(update_fields=["pinned_until", "pin_reason", "pinned_by"])
        audit.write([audit.session_entry("session_unpinned", row, actor)], sink=sink)
    return row


# --- end: the first half, wherever it is asked for ------------------------------------------------


@dataclass
class Ended:
    """What ``end`` did: the sessions it marked, the run record that tracks their removal, and
    whether the removal was handed to the broker (None until the transaction commits, or when
    the caller does the removal itself; False when the broker refused it, in which case the
    sessions stay terminating and the maintenance enqueues them again)."""

    sessions: list[AgentSession] = field(default_factory=list)
    run_id: int | None = None
    enqueued: bool | None = None

    @property
    def ids(self) -> list[str]:
        return [str(s.id) for s in self.sessions]


def end(
    *,
    session_ids: Sequence[uuid.UUID | str],
    actor: str,
    reason: str,
    within: Any = None,
    idle_cutoffs: dict[uuid.UUID, datetime] | None = None,
    run: MaintenanceRun | None = None,
    enqueue: bool = True,
    now: datetime | None = None,
    sink: AuditLogger | None = None,
) -> Ended:
    """End sessions: mark the active ones ``terminating`` (who and why recorded), audit each as
    ``session_terminating``, and when the transaction commits enqueue the removal of their
    workspaces (``tasks.remove_workspaces``, one task per REMOVAL_BATCH) unless ``enqueue`` is
    False (the caller then calls ``finish`` itself).

    - ``within``: a queryset the sessions must belong to (an API token's org scope);
    - ``idle_cutoffs`` (id -> time): the idle cleanup; a session active since its cutoff, pinned,
      or with a tool call in flight (``busy_until``) is skipped, re-checked under the lock;
    - rows another transaction holds are skipped (``SKIP LOCKED``) when ending several, so
      overlapping runs never wait on each other and never end a session twice; a single
      session is waited for.

    Sessions no longer active are left alone (never an error). Their removal is tracked by a
    ``MaintenanceRun`` (``run``, or a new ``workspace_removal`` one)."""
    reason = check_reason(reason)
    ids = list(dict.fromkeys(parse_session_id(s) for s in session_ids))
    now = now or timezone.now()
    result = Ended()
    if not ids:
        return result
    with transaction.atomic():
        scope: Any = within if within is not None else AgentSession.objects.all()
        qs = scope.filter(pk__in=ids, status=AgentSession.Status.ACTIVE)
        skip_locked = idle_cutoffs is not None or len(ids) > 1
        rows = list(
            qs.select_for_update(skip_locked=skip_locked).only(
                "id", "user_id", "org_id", "status", "last_active_at", "pinned_until", "busy_until", "created_at"
            )
        )
        if idle_cutoffs is not None:
            rows = [r for r in rows if r.id in idle_cutoffs and _still_idle(r, idle_cutoffs[r.id], now)]
        if not rows:
            return result
        if run is None:
            run = start_run(WORKSPACE_REMOVAL, triggered_by=actor, now=now, session_ids=[str(r.id) for r in rows])
        AgentSession.objects.filter(pk__in=[r.id for r in rows], status=AgentSession.Status.ACTIVE).update(
            status=AgentSession.Status.TERMINATING, ended_by=actor[:200], end_reason=reason, cleanup_run=run
        )
        for row in rows:
            row.status, row.ended_by, row.end_reason, row.cleanup_run_id = AgentSession.Status.TERMINATING, actor, reason, run.pk
        result.sessions, result.run_id = rows, run.pk
        # Counted when the transaction commits: a rolled-back ending ended nothing.
        ended_counter = metrics.sessions_ended.labels(metrics.end_reason(actor=actor, idle=idle_cutoffs is not None))
        transaction.on_commit(lambda: ended_counter.inc(len(rows)))
        if enqueue:
            transaction.on_commit(lambda: setattr(result, "enqueued", _send_removal(result.ids, actor)))
        # A session that ended must lose its MCP connections and agent endpoint at once, not
        # when the worker gets to it.
        transaction.on_commit(lambda: _cut_off(result.ids))
        audit.write((audit.session_entry("session_terminating", r, actor, {"reason": reason}, at=now) for r in rows), sink=sink)
    return result


def _still_idle(row: AgentSession, cutoff: datetime, now: datetime) -> bool:
    """Touched, pinned or busy since it was selected means kept."""
    if row.last_active_at >= cutoff:
        return False
    if row.pinned_until and row.pinned_until > now:
        return False
    return not (row.busy_until and row.busy_until > now)


def retry_removal(*, session_ids: Sequence[uuid.UUID | str], actor: str = INACTIVITY_ACTOR) -> int:
    """Enqueue the removal of sessions that are terminating already (a removal that failed,
    or whose task was lost): they keep their run record. Returns how many were enqueued."""
    ids = [
        str(i)
        for i in AgentSession.objects.filter(
            pk__in=[parse_session_id(s) for s in session_ids], status=AgentSession.Status.TERMINATING
        ).values_list("id", flat=True)
    ]
    if ids:
        transaction.on_commit(lambda: _send_removal(ids, actor))
    return len(ids)


def _send_removal(ids: list[str], actor: str) -> bool:
    """Hand the removal to the workers; a broker that refuses is logged, not raised: the
    sessions stay terminating and the maintenance enqueues them again."""
    from sessionadmin.tasks import remove_workspaces

    try:
        for start in range(0, len(ids), REMOVAL_BATCH):
            remove_workspaces.apply_async(args=[ids[start : start + REMOVAL_BATCH]], kwargs={"actor": actor})
    except Exception as exc:  # kombu raises transport-specific errors (and the URL may hold a password)
        logger.warning("could not enqueue the removal of %d session(s): %s", len(ids), type(exc).__name__)
        return False
    return True


def _cut_off(session_ids: list[str]) -> None:
    """Tell the MCP layer these sessions ended (best effort; the worker closes them again)."""
    from sessionadmin import mcp_services

    try:
        mcp_services.sessions_ended(session_ids)
    except Exception:
        logger.exception("could not cut off the MCP connections of %d ended session(s)", len(session_ids))


def end_idle(
    *,
    threshold: timedelta,
    actor: str = INACTIVITY_ACTOR,
    run: MaintenanceRun | None = None,
    batch_size: int | None = None,
    enqueue: bool = True,
    now: datetime | None = None,
    sink: AuditLogger | None = None,
) -> list[Ended]:
    """End every idle, unpinned, not busy active session (reason ``idle``), batch by batch
    along the keyset walk of ``iter_idle``; returns one ``Ended`` per batch that marked some."""
    now = now or timezone.now()
    batch_size = batch_size or settings.SESSIONADMIN_CLEANUP_BATCH_SIZE
    done: list[Ended] = []
    for batch in batched(iter_idle(threshold, now=now, chunk=max(batch_size, 100)), batch_size):
        cutoffs = {c.id: c.cutoff(now) for c in batch}
        ended = end(
            session_ids=list(cutoffs),
            actor=actor,
            reason="idle",
            idle_cutoffs=cutoffs,
            run=run,
            enqueue=enqueue,
            now=now,
            sink=sink,
        )
        if ended.sessions:
            done.append(ended)
    return done


# --- finish: the worker's half ----------------------------------------------------------------------


@dataclass
class Finished:
    ended: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def finish(*, session_ids: Iterable[uuid.UUID | str], actor: str, sink: AuditLogger | None = None) -> Finished:
    """The second half of ending, for sessions already terminating: close their MCP clients,
    remove each workspace at the path stored on the session (checked to be that session's own
    ``{root}/{user_id}/{session_id}``; already gone is success), mark them ended and audit it;
    a failure is recorded on the session (``last_error``) and audited, and the session stays
    terminating. Sessions already ended are skipped, so a second delivery does nothing."""
    from sessionadmin import mcp_services  # the MCP layer imports this module

    ids = [parse_session_id(s) for s in session_ids]
    sessions = list(
        AgentSession.objects.filter(pk__in=ids, status=AgentSession.Status.TERMINATING).only(
            "id", "user_id", "org_id", "created_at", "status", "workspace_path", "end_reason", "cleanup_run"
        )
    )
    result = Finished()
    if not sessions:
        return result
    mcp_services.close_clients_of_sessions([s.id for s in sessions], actor=actor)
    removed: list[AgentSession] = []
    for session in sessions:
        started = time.perf_counter()
        try:
            workspaces.remove_session_workspace(session.workspace_path, user_id=session.user_id, session_id=str(session.id))
            removed.append(session)
        except workspaces.WorkspaceError as exc:
            result.failed[str(session.id)] = str(exc)
        status = "failed" if str(session.id) in result.failed else "ok"
        metrics.workspace_removal_duration.labels(status).observe(time.perf_counter() - started)
    result.ended = _mark_ended(removed, actor=actor, sink=sink)
    if result.failed:
        _record_removal_failures(sessions, result.failed, actor=actor, sink=sink)
    settle_runs({s.cleanup_run_id for s in sessions if s.cleanup_run_id})
    return result


def _mark_ended(sessions: Sequence[AgentSession], *, actor: str, sink: AuditLogger | None) -> list[str]:
    if not sessions:
        return []
    now = timezone.now()
    with transaction.atomic():
        # Only rows still terminating move, so a concurrent or second delivery of the same
        # batch writes nothing and audits nothing.
        locked = list(
            AgentSession.objects.select_for_update()
            .filter(pk__in=[s.id for s in sessions], status=AgentSession.Status.TERMINATING)
            .only("id", "user_id", "org_id", "created_at", "end_reason")
        )
        if not locked:
            return []
        AgentSession.objects.filter(pk__in=[s.id for s in locked]).update(
            status=AgentSession.Status.ENDED, ended_at=now, last_error=""
        )
        audit.write(
            (
                audit.session_entry(
                    "session_cleaned_up",
                    s,
                    actor,
                    {"duration_seconds": round((now - s.created_at).total_seconds(), 3), "reason": s.end_reason},
                    at=now,
                )
                for s in locked
            ),
            sink=sink,
        )
    return [str(s.id) for s in locked]


def _record_removal_failures(
    sessions: Sequence[AgentSession], failed: dict[str, str], *, actor: str, sink: AuditLogger | None
) -> None:
    by_id = {str(s.id): s for s in sessions}
    with transaction.atomic():
        for sid, error in failed.items():
            AgentSession.objects.filter(pk=sid, status=AgentSession.Status.TERMINATING).update(
                last_error=error[: audit.MAX_DETAIL_TEXT], cleanup_attempts=F("cleanup_attempts") + 1
            )
        audit.write(
            (
                audit.session_entry("workspace_removal_failed", by_id[sid], actor, {"error": err[: audit.MAX_DETAIL_TEXT]})
                for sid, err in failed.items()
            ),
            sink=sink,
        )


# --- run records of endings -------------------------------------------------------------------------


def start_run(
    task: str, *, triggered_by: str, now: datetime | None = None, worker: str = "", session_ids: Sequence[str] = ()
) -> MaintenanceRun:
    return MaintenanceRun.objects.create(
        task=task,
        triggered_by=triggered_by[:200],
        started_at=now or timezone.now(),
        worker=worker[:200],
        session_ids=list(session_ids)[:MAX_RECORDED_IDS],
    )


def settle_runs(run_ids: Iterable[int]) -> None:
    """Bring the counts and outcome of these runs up to date from their sessions: a run is
    done when none of its sessions is terminating any more (``ok``), or when each one left has
    failed at least once (``partial``, until a retry succeeds). Counted from the rows, so a
    batch delivered twice, or re-enqueued after its worker died, still counts each session
    once and never leaves its run ``running``. A run still planning (the idle walk has not
    reached its end) is settled by the planner when it is done."""
    for run_id in sorted(run_ids):
        with transaction.atomic():
            run = MaintenanceRun.objects.select_for_update().filter(pk=run_id).first()
            if run is None or run.outcome == MaintenanceRun.Outcome.FAILED or run.report.get("planning"):
                continue
            stats = AgentSession.objects.filter(cleanup_run_id=run_id).aggregate(
                ended=Count("pk", filter=Q(status=AgentSession.Status.ENDED)),
                left=Count("pk", filter=Q(status=AgentSession.Status.TERMINATING)),
                failing=Count("pk", filter=Q(status=AgentSession.Status.TERMINATING, cleanup_attempts__gt=0)),
            )
            failed = dict(
                AgentSession.objects.filter(
                    cleanup_run_id=run_id, status=AgentSession.Status.TERMINATING, cleanup_attempts__gt=0
                ).values_list("id", "last_error")[:100]
            )
            run.counts = {
                **run.counts,
                "sessions_ended": stats["ended"],
                "directories_removed": stats["ended"],
                "errors": stats["failing"],
            }
            run.report = (
                {**run.report, "failed": {str(k): v[:300] for k, v in failed.items()}}
                if failed
                else {k: v for k, v in run.report.items() if k != "failed"}
            )
            if stats["left"] == 0:
                run.outcome = MaintenanceRun.Outcome.OK
            elif stats["left"] == stats["failing"]:
                run.outcome = MaintenanceRun.Outcome.PARTIAL
            else:
                run.outcome = MaintenanceRun.Outcome.RUNNING
            run.finished_at = None if run.outcome == MaintenanceRun.Outcome.RUNNING else (run.finished_at or timezone.now())
            run.error = next(iter(failed.values()), "")[: audit.MAX_DETAIL_TEXT] if failed else ""
            run.save(update_fields=["counts", "report", "outcome", "finished_at", "error"])


# --- the idle walk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    id: uuid.UUID
    user_id: str
    org_id: str
    last_active_at: datetime
    timeout: timedelta
    timeout_source: str  # "global" or "org"
    pinned_until: datetime | None = None
    busy_until: datetime | None = None

    def cutoff(self, now: datetime) -> datetime:
        return now - self.timeout


def org_timeouts() -> dict[str, timedelta]:
    return {
        org_id: timedelta(seconds=seconds)
        for org_id, seconds in Org.objects.filter(idle_timeout_seconds__isnull=False).values_list("id", "idle_timeout_seconds")
        if seconds
    }


def iter_idle(threshold: timedelta, *, now: datetime, chunk: int = 1000, include_pinned: bool = False) -> Iterator[Candidate]:
    """Active sessions idle longer than their org's timeout (or ``threshold``), oldest first.

    Walked by keyset on (last_active_at, id) with only the columns it needs, so that callers
    can mark rows as they go and memory stays flat whatever the number of sessions. Pinned
    sessions and sessions with a tool call in flight (the gateway's ``busy_until`` lease) are
    left out, unless ``include_pinned`` (the preview shows them as skipped)."""
    overrides = org_timeouts()
    sessions = AgentSession.objects.active().filter(last_active_at__lt=now - min_org_threshold(threshold))
    if not include_pinned:
        sessions = sessions.not_pinned(now).not_busy(now)
    qs = sessions.order_by("last_active_at", "id").values_list(
        "id", "user_id", "org_id", "last_active_at", "pinned_until", "busy_until"
    )
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        page = qs
        if after is not None:
            page = qs.filter(Q(last_active_at__gt=after[0]) | Q(last_active_at=after[0], id__gt=after[1]))
        rows: list[tuple[uuid.UUID, str, str, datetime, datetime | None, datetime | None]] = list(page[:chunk])
        for sid, user_id, org_id, last_active_at, pinned_until, busy_until in rows:
            timeout = overrides.get(org_id, threshold)
            if last_active_at < now - timeout:
                source = "org" if org_id in overrides else "global"
                yield Candidate(sid, user_id, org_id, last_active_at, timeout, source, pinned_until, busy_until)
        if len(rows) < chunk:
            return
        after = (rows[-1][3], rows[-1][0])


def batched(items: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    batch: list[Candidate] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def min_org_threshold(threshold: timedelta) -> timedelta:
    """The shortest idle timeout in force anywhere, for a first index-backed filter."""
    shortest = (
        Org.objects.filter(idle_timeout_seconds__isnull=False)
        .order_by("idle_timeout_seconds")
        .values_list("idle_timeout_seconds", flat=True)
        .first()
    )
    return min(threshold, timedelta(seconds=shortest)) if shortest else threshold
