"""The session manager: the seed's SessionManagerV2 in Python, and the one service layer through
which every state change of a session goes.

Each change validates its input, enforces the limits under a row lock, changes the rows and
writes its AuditEntry rows in the same transaction. Filesystem work (the workspace) is done
inside the create transaction, so a failed mkdir leaves no row, and after the terminating mark
on cleanup, so a failed removal leaves a visible ``terminating`` session to retry.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from sessionadmin import audit, workspaces
from sessionadmin.audit import AuditLogger
from sessionadmin.models import AgentSession, AuditEntry, LimitLock, Org
from sessionadmin.prompts import MAX_PROMPT_LENGTH, ComposedPrompt, DefaultPromptComposer, PromptComposer, sha256
from sessionadmin.validation import clean_variables, id_problem, variables_problem

logger = logging.getLogger(__name__)

INACTIVITY_ACTOR = "system:inactivity-cleanup"
MAX_REASON_LENGTH = 500


class SessionError(Exception):
    """Base of every error the manager raises; ``str()`` is meant for the operator."""


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


def check_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput(f"reason is longer than {MAX_REASON_LENGTH} characters")
    return reason


@dataclass
class CleanupResult:
    ended: list[str]
    failed: dict[str, str]


class SessionManager:
    def __init__(
        self,
        workspace_root: Path | str | None = None,
        max_concurrent: int | None = None,
        *,
        prompt_composer: PromptComposer | None = None,
        audit_logger: AuditLogger | None = None,
    ) -> None:
        self.workspace_root = Path(workspace_root or settings.SESSIONADMIN_WORKSPACE_ROOT).resolve()
        self.max_concurrent = settings.SESSIONADMIN_MAX_CONCURRENT if max_concurrent is None else max_concurrent
        if self.max_concurrent < 0:
            raise ValueError("max_concurrent must be >= 0 (0 = no global limit)")
        self.prompt_composer: PromptComposer = prompt_composer or DefaultPromptComposer()
        self.audit_logger = audit_logger

    def set_prompt_composer(self, composer: PromptComposer) -> None:
        self.prompt_composer = composer

    def set_audit_logger(self, audit_logger: AuditLogger | None) -> None:
        self.audit_logger = audit_logger

    def _audit(self, *entries: AuditEntry) -> None:
        audit.write(entries, sink=self.audit_logger)

    def _bind(self, session: AgentSession) -> AgentSession:
        session._manager = self
        return session

    # --- create ---------------------------------------------------------------------------

    def create_session(
        self,
        user_id: str,
        org_id: str,
        *,
        actor: str | None = None,
        variables: dict[str, Any] | None = None,
    ) -> AgentSession:
        actor = actor or audit.SYSTEM_ACTOR
        self._validate_create(user_id, org_id, variables, actor=actor)
        session_id = uuid.uuid4()
        path = workspaces.workspace_path(self.workspace_root, user_id, str(session_id))
        try:
            with transaction.atomic():
                org = self._lock_for_create(user_id, org_id)
                composed, prompt_error = self._compose(user_id, org, session_id, clean_variables(variables))
                now = timezone.now()
                session = AgentSession(
                    id=session_id,
                    user_id=user_id,
                    org=org,
                    workspace_path=str(path),
                    system_prompt=composed.text,
                    prompt_provenance=composed.provenance,
                    variables=clean_variables(variables),
                    created_at=now,
                    last_active_at=now,
                    created_by=actor,
                    gateway=settings.SESSIONADMIN_GATEWAY_URL,
                )
                session.save(force_insert=True)
                entries = [audit.session_entry("session_created", session, actor, {"workspace_path": str(path)})]
                if prompt_error:
                    entries.append(audit.session_entry("prompt_composition_failed", session, actor, {"error": prompt_error}))
                self._audit(*entries)
                workspaces.create_workspace(self.workspace_root, user_id, str(session_id))
        except workspaces.WorkspaceError as exc:
            self._audit_failure(
                "workspace_creation_failed", user_id, org_id, actor, {"error": str(exc), "session_id": str(session_id)}
            )
            raise WorkspaceCreationError(f"failed to create workspace directory: {exc}") from exc
        except MaxSessionsReached as exc:
            self._audit_failure(
                "session_create_failed",
                user_id,
                org_id,
                actor,
                {"reason": "max_sessions_reached", "limit": exc.limit, "current": exc.current, "maximum": exc.maximum},
            )
            raise
        except InvalidOrgID as exc:
            self._audit_failure(
                "session_create_failed",
                user_id,
                "",
                actor,
                {"reason": "unknown_org", "org_id": audit.safe_repr(org_id), "error": str(exc)},
            )
            raise
        except BaseException:
            # Anything after the mkdir failed (the commit, say): the row is gone, so the
            # directory goes too. The id is a fresh UUID, so whatever is at that path is ours.
            workspaces.remove_workspace(self.workspace_root, user_id, str(session_id))
            raise
        return self._bind(session)

    def _validate_create(self, user_id: object, org_id: object, variables: object, *, actor: str) -> None:
        # Checked in the seed's order: user id first.
        checks: list[tuple[str | None, type[SessionError], str, str]] = [
            (id_problem(user_id), InvalidUserID, "invalid_user_id", "invalid user ID"),
            (id_problem(org_id), InvalidOrgID, "invalid_org_id", "invalid org ID"),
            (variables_problem(variables), InvalidInput, "invalid_variables", "invalid variables"),
        ]
        for problem, error, reason, label in checks:
            if problem:
                safe_user = user_id if isinstance(user_id, str) and id_problem(user_id) is None else ""
                safe_org = org_id if isinstance(org_id, str) and id_problem(org_id) is None else ""
                self._audit_failure(
                    "session_create_failed",
                    safe_user,
                    safe_org,
                    actor,
                    {"reason": reason, "error": problem, "user_id": audit.safe_repr(user_id), "org_id": audit.safe_repr(org_id)},
                )
                raise error(f"{label}: {problem}")

    def _lock_for_create(self, user_id: str, org_id: str) -> Org:
        """Take the locks that make check-then-insert atomic, and check every limit.

        Locks, in this order for every create whatever the settings (so creators queue and never
        deadlock): the global row, which also holds the trigger-maintained number of active
        sessions, then the org row. On SQLite the IMMEDIATE transaction holds the database write
        lock anyway. The org and per-user counts run as their own statement *after* the locks
        are held: in READ COMMITTED a count inside the locking statement would use the snapshot
        taken before the wait, and could be stale. Each count stops at its limit.
        """
        active_total = self._lock_global_row()
        org = _select_org_for_update(org_id)
        if org is None:
            raise InvalidOrgID(f"invalid org ID: unknown org {org_id!r}")
        if self.max_concurrent and active_total >= self.max_concurrent:
            raise MaxSessionsReached(
                f"maximum concurrent sessions reached ({active_total}/{self.max_concurrent})",
                limit="global",
                current=active_total,
                maximum=self.max_concurrent,
            )
        limits: list[tuple[str, int | None, str, list[Any], str]] = [
            (
                "org",
                org.max_sessions,
                "AND org_id = %s",
                [org_id],
                f"org {org.id!r} has reached its limit of concurrent sessions",
            ),
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

    @staticmethod
    def _lock_global_row() -> int:
        """Lock the global row and return the number of active sessions it holds."""
        counts = list(LimitLock.objects.select_for_update().filter(pk=1).values_list("active_sessions", flat=True))
        if not counts:
            # Created by the migration; a database flushed by the test runner lacks it.
            ensure_limit_row()
            counts = list(LimitLock.objects.select_for_update().filter(pk=1).values_list("active_sessions", flat=True))
        return counts[0]

    def _compose(self, user_id: str, org: Org, session_id: uuid.UUID, variables: dict[str, str]) -> tuple[ComposedPrompt, str]:
        """The composed prompt and, if composition failed, why (the session is still created)."""
        full = {**variables, "user_id": user_id, "org_id": org.id, "session_id": str(session_id)}
        try:
            if isinstance(self.prompt_composer, DefaultPromptComposer):
                composed = self.prompt_composer.compose(user_id=user_id, org=org, variables=full)
            else:
                text = self.prompt_composer.compose_system_prompt(user_id, org.id, dict(full))
                if not isinstance(text, str):
                    raise TypeError(f"composer returned {type(text).__name__}, not str")
                composed = ComposedPrompt(
                    text=text, provenance=[{"kind": "custom", "composer": type(self.prompt_composer).__name__}]
                )
            if len(composed.text) > MAX_PROMPT_LENGTH:
                raise ValueError(f"composed prompt is longer than {MAX_PROMPT_LENGTH} characters")
            return composed, ""
        except Exception as exc:  # a composer is third-party code: any failure is recorded
            logger.warning("prompt composition failed for session %s: %s", session_id, exc)
            return ComposedPrompt(text=""), f"{type(exc).__name__}: {exc}"[: audit.MAX_DETAIL_TEXT]

    def _audit_failure(self, event_type: str, user_id: str, org_id: str, actor: str, details: dict[str, Any]) -> None:
        with transaction.atomic():
            self._audit(audit.entry(event_type, actor=actor, user_id=user_id, org_id=org_id, details=details))

    # --- reads ----------------------------------------------------------------------------

    def get_session(self, session_id: uuid.UUID | str) -> AgentSession:
        """An active session; counts as activity (``last_active_at`` moves, coalesced)."""
        sid = parse_session_id(session_id)
        session = AgentSession.objects.select_related("org").active().filter(pk=sid).first()
        if session is None:
            raise SessionNotFound(f"session {sid} not found")
        now = timezone.now()
        if self.touch(sid, now=now):
            session.last_active_at = now
        return self._bind(session)

    def count_user_sessions(self, user_id: str) -> int:
        return AgentSession.objects.active().for_user(user_id).count()

    def count_all_sessions(self) -> int:
        return AgentSession.objects.active().count()

    def list_sessions(self, user_id: str) -> list[AgentSession]:
        rows = AgentSession.objects.select_related("org").active().for_user(user_id).order_by("created_at")
        return [self._bind(s) for s in rows]

    # --- activity, prompt, pin ------------------------------------------------------------

    def touch(self, session_id: uuid.UUID | str, *, now: datetime | None = None) -> bool:
        """Record activity. Writes at most once per session per activity resolution: the
        conditional UPDATE matches nothing while the last write is recent. Not audited (it
        is a heartbeat, not a change of state)."""
        sid = parse_session_id(session_id)
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=settings.SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS)
        return bool(AgentSession.objects.active().filter(pk=sid, last_active_at__lt=cutoff).update(last_active_at=now))

    def _locked_active(self, session_id: uuid.UUID | str) -> AgentSession:
        sid = parse_session_id(session_id)
        session = AgentSession.objects.select_for_update().active().filter(pk=sid).first()
        if session is None:
            raise SessionNotFound(f"session {sid} not found")
        return session

    def update_system_prompt(
        self, session: AgentSession | uuid.UUID | str, prompt: str, *, actor: str | None = None
    ) -> AgentSession:
        if not isinstance(prompt, str):
            raise InvalidInput("prompt must be a string")
        if len(prompt) > MAX_PROMPT_LENGTH:
            raise InvalidInput(f"prompt is longer than {MAX_PROMPT_LENGTH} characters")
        session_id = session.id if isinstance(session, AgentSession) else session
        with transaction.atomic():
            row = self._locked_active(session_id)
            old = row.system_prompt
            row.system_prompt = prompt
            row.save(update_fields=["system_prompt"])
            self._audit(
                audit.session_entry(
                    "system_prompt_updated",
                    row,
                    actor or audit.SYSTEM_ACTOR,
                    {"old_sha256": sha256(old), "new_sha256": sha256(prompt), "old_length": len(old), "new_length": len(prompt)},
                )
            )
        if isinstance(session, AgentSession):
            session.system_prompt = prompt
        return self._bind(row)

    def pin_session(
        self, session_id: uuid.UUID | str, *, until: datetime, reason: str, actor: str, now: datetime | None = None
    ) -> AgentSession:
        """Keep an active session from idle cleanup until ``until``."""
        reason = check_reason(reason)
        if not reason:
            raise InvalidInput("a reason is required to pin a session")
        if until <= (now or timezone.now()):
            raise InvalidInput("the pin must end in the future")
        with transaction.atomic():
            row = self._locked_active(session_id)
            row.pinned_until, row.pin_reason, row.pinned_by = until, reason, actor
            row.save(update_fields=["pinned_until", "pin_reason", "pinned_by"])
            self._audit(audit.session_entry("session_pinned", row, actor, {"until": until.isoformat(), "reason": reason}))
        return self._bind(row)

    def unpin_session(self, session_id: uuid.UUID | str, *, actor: str) -> AgentSession:
        with transaction.atomic():
            row = self._locked_active(session_id)
            row.pinned_until, row.pin_reason, row.pinned_by = None, "", ""
            row.save(update_fields=["pinned_until", "pin_reason", "pinned_by"])
            self._audit(audit.session_entry("session_unpinned", row, actor))
        return self._bind(row)

    # --- cleanup --------------------------------------------------------------------------

    def cleanup_session(self, session_id: uuid.UUID | str, *, actor: str | None = None, reason: str = "") -> None:
        """End a session: mark terminating, close its MCP clients, remove its workspace, mark
        ended. A second call is SessionNotFound. If the removal fails the session stays
        ``terminating`` with the error and WorkspaceRemovalError is raised."""
        session = self.begin_cleanup(session_id, actor=actor, reason=reason)
        result = self.finish_cleanups([session.id], actor=actor or audit.SYSTEM_ACTOR)
        if str(session.id) in result.failed:
            raise WorkspaceRemovalError(result.failed[str(session.id)])

    def begin_cleanup(self, session_id: uuid.UUID | str, *, actor: str | None = None, reason: str = "") -> AgentSession:
        """Mark one session terminating (the first half of a cleanup). Terminating sessions
        are accepted too, so an operator can retry a stuck removal."""
        actor = actor or audit.SYSTEM_ACTOR
        reason = check_reason(reason)
        sid = parse_session_id(session_id)
        with transaction.atomic():
            row = AgentSession.objects.select_for_update().live().filter(pk=sid).first()
            if row is None:
                raise SessionNotFound(f"session {sid} not found")
            if row.status == AgentSession.Status.ACTIVE:
                row.status = AgentSession.Status.TERMINATING
                row.ended_by, row.end_reason = actor, reason
                row.save(update_fields=["status", "ended_by", "end_reason"])
                self._audit(audit.session_entry("session_terminating", row, actor, {"reason": reason}))
                _cut_off_on_commit([row.id])
        return self._bind(row)

    def begin_cleanups(
        self, session_ids: Sequence[uuid.UUID], *, actor: str, reason: str, idle_cutoffs: dict[uuid.UUID, datetime] | None = None
    ) -> list[AgentSession]:
        """Mark many active sessions terminating in one transaction. Rows another worker has
        locked or already moved are skipped (never an error), so overlapping runs never end
        the same session twice. With ``idle_cutoffs`` (id -> time), a session active since
        its cutoff (touched after it was selected) is skipped too."""
        reason = check_reason(reason)
        now = timezone.now()
        with transaction.atomic():
            qs = AgentSession.objects.active().filter(pk__in=list(session_ids))
            rows = list(
                qs.select_for_update(skip_locked=True).only(
                    "id", "user_id", "org_id", "status", "last_active_at", "pinned_until", "busy_until"
                )
            )
            if idle_cutoffs is not None:
                # Re-checked under the lock: touched, pinned or busy with a tool call since it was
                # selected means kept.
                rows = [
                    r
                    for r in rows
                    if r.id in idle_cutoffs
                    and r.last_active_at < idle_cutoffs[r.id]
                    and not (r.pinned_until and r.pinned_until > now)
                    and not (r.busy_until and r.busy_until > now)
                ]
            if not rows:
                return []
            AgentSession.objects.filter(pk__in=[r.id for r in rows], status=AgentSession.Status.ACTIVE).update(
                status=AgentSession.Status.TERMINATING, ended_by=actor, end_reason=reason
            )
            self._audit(*(audit.session_entry("session_terminating", r, actor, {"reason": reason}, at=now) for r in rows))
            _cut_off_on_commit([r.id for r in rows])
        return rows

    def kill_sessions(self, session_ids: Sequence[uuid.UUID], *, actor: str, reason: str) -> tuple[int, CleanupResult]:
        """End several active sessions now (bulk kill from the dashboard or the admin): mark
        them terminating, then clean them up. Returns how many were marked (sessions no longer
        active are left alone) and the cleanup result."""
        marked = self.begin_cleanups(session_ids, actor=actor, reason=reason)
        return len(marked), self.finish_cleanups([s.id for s in marked], actor=actor)

    def finish_cleanups(self, session_ids: Iterable[uuid.UUID | str], *, actor: str) -> CleanupResult:
        """The second half of a cleanup, for sessions already terminating: close MCP clients,
        remove workspaces, mark ended. Safe to run twice: ended sessions are skipped."""
        ids = [parse_session_id(s) for s in session_ids]
        sessions = list(
            AgentSession.objects.filter(pk__in=ids, status=AgentSession.Status.TERMINATING).only(
                "id", "user_id", "org_id", "created_at", "status"
            )
        )
        if not sessions:
            return CleanupResult(ended=[], failed={})
        self._close_mcp_clients(sessions, actor=actor)
        removed: list[AgentSession] = []
        failed: dict[str, str] = {}
        for session in sessions:
            try:
                workspaces.remove_workspace(self.workspace_root, session.user_id, str(session.id))
                removed.append(session)
            except workspaces.WorkspaceError as exc:
                failed[str(session.id)] = str(exc)
        ended = self._mark_ended(removed, actor=actor)
        if failed:
            self._record_removal_failures(sessions, failed, actor=actor)
        return CleanupResult(ended=ended, failed=failed)

    def _close_mcp_clients(self, sessions: Sequence[AgentSession], *, actor: str) -> None:
        """Close every open MCP client of these sessions, one audit entry per client."""
        from sessionadmin import mcp_services  # the MCP layer imports this module

        mcp_services.close_clients_of_sessions([s.id for s in sessions], actor=actor)

    def _mark_ended(self, sessions: Sequence[AgentSession], *, actor: str) -> list[str]:
        if not sessions:
            return []
        now = timezone.now()
        with transaction.atomic():
            # Only rows still terminating move, so a second delivery of the same cleanup
            # writes nothing and audits nothing.
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
            self._audit(
                *(
                    audit.session_entry(
                        "session_cleaned_up",
                        s,
                        actor,
                        {"duration_seconds": round((now - s.created_at).total_seconds(), 3), "reason": s.end_reason},
                        at=now,
                    )
                    for s in locked
                )
            )
        return [str(s.id) for s in locked]

    def _record_removal_failures(self, sessions: Sequence[AgentSession], failed: dict[str, str], *, actor: str) -> None:
        by_id = {str(s.id): s for s in sessions}
        with transaction.atomic():
            for sid, error in failed.items():
                AgentSession.objects.filter(pk=sid, status=AgentSession.Status.TERMINATING).update(
                    last_error=error[: audit.MAX_DETAIL_TEXT], cleanup_attempts=F("cleanup_attempts") + 1
                )
            self._audit(
                *(
                    audit.session_entry("workspace_removal_failed", by_id[sid], actor, {"error": err[: audit.MAX_DETAIL_TEXT]})
                    for sid, err in failed.items()
                )
            )

    def cleanup_inactive_sessions(
        self, threshold: timedelta, *, now: datetime | None = None, actor: str = INACTIVITY_ACTOR, batch_size: int | None = None
    ) -> list[str]:
        """End active sessions idle longer than ``threshold`` (an org's idle timeout overrides
        it; pinned sessions are skipped). Returns the ids that were ended."""
        now = now or timezone.now()
        batch_size = batch_size or settings.SESSIONADMIN_CLEANUP_BATCH_SIZE
        ended: list[str] = []
        for batch in batched(iter_idle(threshold, now=now, chunk=max(batch_size, 100)), batch_size):
            cutoffs = {c.id: c.cutoff(now) for c in batch}
            marked = self.begin_cleanups(list(cutoffs), actor=actor, reason="idle", idle_cutoffs=cutoffs)
            ended += self.finish_cleanups([s.id for s in marked], actor=actor).ended
        return ended


def _cut_off_on_commit(session_ids: Sequence[uuid.UUID]) -> None:
    """The session ended: once the terminating mark commits, the MCP gateway refuses its token,
    cancels its tool calls in flight and closes its upstream connections."""
    from sessionadmin import mcp_services  # the MCP layer imports this module

    mcp_services.cut_off_on_commit(session_ids)


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
    can mark rows as they go and memory stays flat whatever the number of sessions. With
    ``include_pinned``, pinned sessions and sessions with a tool call in flight come too (the
    preview shows them as skipped)."""
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


def ensure_limit_row() -> None:
    """Create the global row with the exact number of active sessions, if it is missing."""
    LimitLock.objects.bulk_create([LimitLock(pk=1, active_sessions=AgentSession.objects.active().count())], ignore_conflicts=True)


_ORG_COLUMNS = ("id", "name", "prompt", "max_sessions", "max_sessions_per_user", "idle_timeout_seconds", "created_at")


def _select_org_for_update(org_id: str) -> Org | None:
    """The org row, locked until the end of the transaction (``FOR UPDATE`` where supported).
    Plain SQL: this is the hot path of every create, and the ORM's query compilation cost
    more than the query itself."""
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


def min_org_threshold(threshold: timedelta) -> timedelta:
    """The shortest idle timeout in force anywhere, for a first index-backed filter."""
    shortest = (
        Org.objects.filter(idle_timeout_seconds__isnull=False)
        .order_by("idle_timeout_seconds")
        .values_list("idle_timeout_seconds", flat=True)
        .first()
    )
    return min(threshold, timedelta(seconds=shortest)) if shortest else threshold
