"""Maintenance services run by Celery beat (and by operators with "run now"): inactivity
cleanup, workspace removal, reconciliation of the workspace root, history purge, MCP health and
the liveness heartbeats. Each run writes one ``MaintenanceRun`` row.

How the inactivity cleanup scales: the periodic task walks idle candidates in keyset-ordered
batches (only ids, times and org ids are loaded, so memory does not grow with the number of
sessions), marks each batch ``terminating`` through ``SessionManager.begin_cleanups`` (skip-locked
row locks plus the idle cutoffs, so overlapping runs and fresh activity are respected) and enqueues
one ``remove_workspaces`` task per batch. That task calls ``finish_cleanups`` (bulk MCP close,
removal of each tree, one bulk UPDATE and one bulk audit insert per batch) and adds its counts to
the run row, which the last batch to finish closes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sessionadmin import audit, workspaces
from sessionadmin.manager import (
    INACTIVITY_ACTOR,
    Candidate,
    CleanupResult,
    SessionManager,
    WorkspaceRemovalError,
    batched,
    iter_idle,
)
from sessionadmin.models import AgentSession, AuditEntry, MaintenanceRun, ServiceHeartbeat

logger = logging.getLogger(__name__)

# Task names as recorded in MaintenanceRun.task.
INACTIVITY_CLEANUP = "inactivity_cleanup"
WORKSPACE_REMOVAL = "workspace_removal"
RECONCILIATION = "reconciliation"
HISTORY_PURGE = "history_purge"
MCP_HEALTH = "mcp_health"
RUNNABLE_NOW = (INACTIVITY_CLEANUP, RECONCILIATION, HISTORY_PURGE, MCP_HEALTH)

# The periodic task whose kwargs hold the operator-editable idle threshold.
INACTIVITY_PERIODIC_TASK = "sessionadmin: inactivity cleanup"

RECONCILE_ACTOR = "system:reconciliation"
PURGE_ACTOR = "system:history-purge"
# A run row keeps this many session ids; the audit trail has every one of them.
MAX_RECORDED_IDS = 1000
# Heartbeats come every 30 s; three missed ones mean the component is down.
HEARTBEAT_MAX_AGE_SECONDS = 90
HEARTBEAT_NAMES = ("worker", "beat")
# A run still "running" after this long lost its worker; reconciliation closes it.
ABANDONED_RUN_SECONDS = 3600
PURGE_CHUNK = 1000


# --- run records ------------------------------------------------------------------------------


def start_run(task: str, *, triggered_by: str, now: datetime | None = None) -> MaintenanceRun:
    return MaintenanceRun.objects.create(task=task, triggered_by=triggered_by[:200], started_at=now or timezone.now())


def finish_run(
    run: MaintenanceRun,
    *,
    counts: dict[str, int],
    session_ids: Sequence[str] = (),
    report: dict[str, Any] | None = None,
    error: str = "",
    outcome: str | None = None,
) -> MaintenanceRun:
    run.finished_at = timezone.now()
    run.counts = counts
    run.session_ids = list(session_ids)[:MAX_RECORDED_IDS]
    run.report = report or {}
    run.error = error[: audit.MAX_DETAIL_TEXT]
    run.outcome = outcome or (MaintenanceRun.Outcome.PARTIAL if error or counts.get("errors") else MaintenanceRun.Outcome.OK)
    run.save(update_fields=["finished_at", "counts", "session_ids", "report", "error", "outcome"])
    return run


def recent_runs(limit: int = 30) -> list[MaintenanceRun]:
    return list(MaintenanceRun.objects.defer("session_ids", "report").order_by("-started_at", "-id")[:limit])


# --- inactivity cleanup -----------------------------------------------------------------------


MIN_IDLE_TIMEOUT_SECONDS = 60


def idle_threshold() -> timedelta:
    """The global idle timeout: the periodic task's ``idle_timeout_seconds`` kwarg when an
    operator set one in the admin, else SESSIONADMIN_IDLE_TIMEOUT_SECONDS."""
    from django_celery_beat.models import PeriodicTask

    kwargs_text = PeriodicTask.objects.filter(name=INACTIVITY_PERIODIC_TASK).values_list("kwargs", flat=True).first()
    seconds = settings.SESSIONADMIN_IDLE_TIMEOUT_SECONDS
    if kwargs_text:
        import json

        try:
            configured = int(json.loads(kwargs_text).get("idle_timeout_seconds") or seconds)
            if configured < MIN_IDLE_TIMEOUT_SECONDS:
                raise ValueError(configured)
            seconds = configured
        except (ValueError, TypeError, AttributeError):
            logger.warning("ignoring malformed idle_timeout_seconds in the kwargs of %r", INACTIVITY_PERIODIC_TASK)
    return timedelta(seconds=seconds)


def run_inactivity_cleanup(
    *,
    triggered_by: str = "beat",
    idle_timeout_seconds: int | None = None,
    batch_size: int | None = None,
    inline: bool = False,
    now: datetime | None = None,
) -> MaintenanceRun:
    """End every idle, unpinned active session (actor ``system:inactivity-cleanup``, reason
    ``idle``). Each batch is marked terminating here; its workspaces are removed by one
    ``remove_workspaces`` task per batch, or right here with ``inline`` (the management command)."""
    now = now or timezone.now()
    if idle_timeout_seconds is not None and idle_timeout_seconds < MIN_IDLE_TIMEOUT_SECONDS:
        # A zero or negative threshold would put the cutoff in the future and end every session.
        raise ValueError(f"idle_timeout_seconds must be at least {MIN_IDLE_TIMEOUT_SECONDS}, got {idle_timeout_seconds}")
    threshold = timedelta(seconds=idle_timeout_seconds) if idle_timeout_seconds else idle_threshold()
    batch_size = batch_size or settings.SESSIONADMIN_CLEANUP_BATCH_SIZE
    run = start_run(INACTIVITY_CLEANUP, triggered_by=triggered_by, now=now)
    manager = SessionManager()
    marked_ids: list[str] = []
    marked = batches = 0
    try:
        for batch in batched(iter_idle(threshold, now=now, chunk=max(batch_size, 100)), batch_size):
            cutoffs = {c.id: c.cutoff(now) for c in batch}
            rows = manager.begin_cleanups(list(cutoffs), actor=INACTIVITY_ACTOR, reason="idle", idle_cutoffs=cutoffs)
            if not rows:
                continue
            ids = [str(r.id) for r in rows]
            marked += len(ids)
            if len(marked_ids) < MAX_RECORDED_IDS:
                marked_ids += ids[: MAX_RECORDED_IDS - len(marked_ids)]
            if inline:
                record_batch(run.pk, batches, manager.finish_cleanups(ids, actor=INACTIVITY_ACTOR))
            else:
                from sessionadmin.tasks import remove_workspaces

                remove_workspaces.delay_on_commit(ids, run_id=run.pk, batch=batches)
            batches += 1
    except Exception as exc:
        _close_planning(
            run.pk,
            marked=marked,
            batches=batches,
            session_ids=marked_ids,
            threshold=threshold,
            error=f"{type(exc).__name__}: {exc}",
        )
        raise
    return _close_planning(run.pk, marked=marked, batches=batches, session_ids=marked_ids, threshold=threshold)


def _close_planning(
    run_id: int, *, marked: int, batches: int, session_ids: list[str], threshold: timedelta, error: str = ""
) -> MaintenanceRun:
    """Record how many batches the run enqueued; the run is finished when every batch has
    reported (maybe already, when the batches were faster than this loop)."""
    with transaction.atomic():
        run = MaintenanceRun.objects.select_for_update().get(pk=run_id)
        run.counts = {"sessions_ended": 0, "directories_removed": 0, "errors": 0, **run.counts, "sessions_marked": marked}
        run.session_ids = session_ids
        run.report = {**run.report, "batches_total": batches, "threshold_seconds": int(threshold.total_seconds())}
        run.error = error[: audit.MAX_DETAIL_TEXT]
        fields = ["counts", "session_ids", "report", "error"]
        if error:
            run.outcome, run.finished_at = MaintenanceRun.Outcome.FAILED, timezone.now()
            fields += ["outcome", "finished_at"]
        elif len(run.report.get("batches_done", [])) >= batches:
            _finish_cleanup_run(run)
            fields += ["outcome", "finished_at"]
        run.save(update_fields=fields)
    return run


def _finish_cleanup_run(run: MaintenanceRun) -> None:
    run.finished_at = timezone.now()
    run.outcome = MaintenanceRun.Outcome.PARTIAL if run.report.get("failed") else MaintenanceRun.Outcome.OK


def record_batch(run_id: int | None, batch: int | None, result: CleanupResult) -> None:
    """Add one batch's outcome to its run. A redelivered or retried batch adds only what it
    newly ended (``finish_cleanups`` skips ended sessions) and is counted done once."""
    if run_id is None:
        return
    with transaction.atomic():
        run = MaintenanceRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return
        counts = {"sessions_ended": 0, "directories_removed": 0, "errors": 0, **run.counts}
        report = dict(run.report)
        failed: dict[str, str] = dict(report.get("failed", {}))
        for sid in result.ended:
            failed.pop(sid, None)
        failed.update({sid: err[:300] for sid, err in result.failed.items()})
        counts["sessions_ended"] += len(result.ended)
        counts["directories_removed"] += len(result.ended)
        counts["errors"] = len(failed)
        done = set(report.get("batches_done", []))
        if batch is not None:
            done.add(batch)
        report.update(batches_done=sorted(done), failed=failed)
        run.counts, run.report = counts, report
        fields = ["counts", "report"]
        total = report.get("batches_total")
        if run.finished_at is None and total is not None and len(done) >= total:
            _finish_cleanup_run(run)
            fields += ["outcome", "finished_at"]
        elif run.finished_at is not None and run.outcome != MaintenanceRun.Outcome.FAILED:
            run.outcome = MaintenanceRun.Outcome.PARTIAL if failed else MaintenanceRun.Outcome.OK
            fields.append("outcome")
        run.save(update_fields=fields)


def remove_batch(
    session_ids: Sequence[str], *, run_id: int | None = None, batch: int | None = None, actor: str = INACTIVITY_ACTOR
) -> CleanupResult:
    """Second half of the cleanup of a batch of terminating sessions. Raises
    WorkspaceRemovalError (after recording) when some could not be removed, so the task retries."""
    result = SessionManager().finish_cleanups(list(session_ids), actor=actor)
    record_batch(run_id, batch, result)
    if result.failed:
        raise WorkspaceRemovalError(
            f"{len(result.failed)} workspace(s) could not be removed: " + next(iter(result.failed.values()))
        )
    return result


def remove_one(session_id: str, *, actor: str, triggered_by: str = "") -> CleanupResult:
    """The removal task of one session (operator kill, API delete): its own run record."""
    run = start_run(WORKSPACE_REMOVAL, triggered_by=triggered_by or actor)
    result = SessionManager().finish_cleanups([session_id], actor=actor)
    finish_run(
        run,
        counts={"sessions_ended": len(result.ended), "directories_removed": len(result.ended), "errors": len(result.failed)},
        session_ids=[str(session_id)],
        report={"failed": result.failed} if result.failed else {},
        error=next(iter(result.failed.values()), ""),
    )
    if result.failed:
        raise WorkspaceRemovalError(result.failed[str(session_id)] if str(session_id) in result.failed else "removal failed")
    return result


def requeue_stuck_removals(*, reason: str, batch_size: int | None = None) -> int:
    """Enqueue the removal of every ``terminating`` session again (a worker died holding its
    task, or its retries ran out). Removal is idempotent, so a duplicate costs one query."""
    from sessionadmin.tasks import remove_workspaces

    batch_size = batch_size or settings.SESSIONADMIN_CLEANUP_BATCH_SIZE
    ids = [str(i) for i in AgentSession.objects.filter(status=AgentSession.Status.TERMINATING).values_list("id", flat=True)]
    for start in range(0, len(ids), batch_size):
        remove_workspaces.delay_on_commit(ids[start : start + batch_size])
    if ids:
        logger.info("re-enqueued the removal of %d terminating session(s) (%s)", len(ids), reason)
    return len(ids)


# --- preview ----------------------------------------------------------------------------------


@dataclass
class PreviewRow:
    candidate: Candidate
    idle_for: timedelta
    would_end: bool
    why: str


@dataclass
class Preview:
    threshold: timedelta
    total: int = 0
    pinned: int = 0
    rows: list[PreviewRow] = field(default_factory=list)


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d".replace(".0 d", " d")
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def preview_cleanup(*, now: datetime | None = None, threshold: timedelta | None = None, limit: int = 50) -> Preview:
    """What the next inactivity cleanup would end, and why; pinned sessions it would skip are
    listed too. ``total``/``pinned`` count every such session, ``rows`` shows the first ``limit``."""
    now = now or timezone.now()
    threshold = threshold or idle_threshold()
    preview = Preview(threshold=threshold)
    for c in iter_idle(threshold, now=now, include_pinned=True):
        idle_for = now - c.last_active_at
        source = f"org {c.org_id}'s idle timeout" if c.timeout_source == "org" else "global default"
        why = f"idle {_human(idle_for)} > {_human(c.timeout)} ({source})"
        pinned = c.pinned_until is not None and c.pinned_until > now
        busy = c.busy_until is not None and c.busy_until > now
        if pinned:
            preview.pinned += 1
            why += f"; skipped: pinned until {c.pinned_until:%Y-%m-%d %H:%M} UTC"
        elif busy:
            preview.pinned += 1
            why += "; skipped: a tool call is in flight"
        else:
            preview.total += 1
        pinned = pinned or busy
        if len(preview.rows) < limit:
            preview.rows.append(PreviewRow(candidate=c, idle_for=idle_for, would_end=not pinned, why=why))
    return preview


# --- reconciliation ---------------------------------------------------------------------------


def reconcile(*, triggered_by: str = "beat", now: datetime | None = None, root: Path | str | None = None) -> MaintenanceRun:
    """Compare the workspace root with the live sessions and repair what is safe: orphan
    directories older than the grace period are removed, directory modes set back to 0700,
    removals of terminating sessions enqueued again; everything else is reported. Entries are
    reached with O_NOFOLLOW directory descriptors: nothing outside the root, no symlink, is
    touched."""
    now = now or timezone.now()
    run = start_run(RECONCILIATION, triggered_by=triggered_by, now=now)
    root_path = Path(root or settings.SESSIONADMIN_WORKSPACE_ROOT).resolve()
    grace = settings.SESSIONADMIN_ORPHAN_GRACE_SECONDS
    counts = dict.fromkeys(
        (
            "orphans_removed",
            "orphans_recent",
            "modes_fixed",
            "missing",
            "removals_requeued",
            "unexpected",
            "user_dirs_removed",
            "errors",
        ),
        0,
    )
    report: dict[str, list[str]] = {"orphans_removed": [], "orphans_recent": [], "missing": [], "unexpected": [], "errors": []}
    touched: list[str] = []

    def note(kind: str, text: str) -> None:
        counts[kind] += 1
        if len(report[kind]) < 100:
            report[kind].append(text)

    live = {
        (user_id, str(sid)): status
        for sid, user_id, status in AgentSession.objects.live().values_list("id", "user_id", "status").iterator(chunk_size=2000)
    }
    seen: set[tuple[str, str]] = set()
    old_user_dirs: list[str] = []
    try:
        entries = list(workspaces.scan_root(root_path))
    except workspaces.WorkspaceError as exc:
        finish_run(run, counts=counts, report=report, error=str(exc), outcome=MaintenanceRun.Outcome.FAILED)
        return run
    children: dict[str, int] = {}
    for e in entries:
        if e.name is not None:
            children[e.user] = children.get(e.user, 0) + 1
    for e in entries:
        rel = e.user if e.name is None else f"{e.user}/{e.name}"
        if e.kind != "dir":
            note("unexpected", f"{rel} ({e.kind}; left alone)")
            continue
        key = (e.user, e.name or "")
        is_live = e.name is not None and key in live
        if e.name is None or is_live:
            if e.mode != workspaces.WORKSPACE_MODE:
                try:
                    workspaces.fix_mode(root_path, e.user, e.name)
                    counts["modes_fixed"] += 1
                except workspaces.WorkspaceError as exc:
                    note("errors", str(exc))
            if e.name is None and now.timestamp() - e.mtime > grace:
                old_user_dirs.append(e.user)
            if is_live:
                seen.add(key)
            continue
        if now.timestamp() - e.mtime <= grace:
            note("orphans_recent", rel)
            continue
        try:
            workspaces.remove_workspace(root_path, e.user, e.name)
            children[e.user] -= 1
            note("orphans_removed", rel)
            touched.append(e.name)
        except workspaces.WorkspaceError as exc:
            note("errors", str(exc))
    # User directories left empty (and untouched for the grace period) go too; rmdir refuses
    # a directory that a session creation has just filled again.
    for user in old_user_dirs:
        if not children.get(user) and workspaces.remove_empty_user_dir(root_path, user):
            counts["user_dirs_removed"] += 1
    for (user_id, sid), status in live.items():
        if (user_id, sid) not in seen and status == AgentSession.Status.ACTIVE:
            note("missing", f"{user_id}/{sid} (active session, directory missing)")
            touched.append(sid)
    # Terminating sessions (with or without a directory) get their removal enqueued again.
    counts["removals_requeued"] = requeue_stuck_removals(reason="reconciliation")
    counts["runs_closed"] = close_abandoned_runs(now=now)
    audit_entries: list[AuditEntry] = []
    if report["orphans_removed"]:
        # Deleting directories is destructive: the trail says which ones (at most 1,000 named).
        removed = report["orphans_removed"]
        audit_entries.append(
            audit.entry(
                "orphan_workspaces_removed", actor=RECONCILE_ACTOR, details={"count": len(removed), "paths": removed[:1000]}
            )
        )
    if counts["removals_requeued"]:
        audit_entries.append(
            audit.entry("removals_requeued", actor=RECONCILE_ACTOR, details={"count": counts["removals_requeued"]})
        )
    if audit_entries:
        with transaction.atomic():
            audit.write(audit_entries)
    finish_run(
        run,
        counts=counts,
        session_ids=touched,
        report={k: v for k, v in report.items() if v},
        outcome=MaintenanceRun.Outcome.PARTIAL if counts["errors"] else MaintenanceRun.Outcome.OK,
    )
    return run


def close_abandoned_runs(*, now: datetime) -> int:
    """Runs still "running" long after they started lost their worker (SIGKILL, host down)."""
    cutoff = now - timedelta(seconds=ABANDONED_RUN_SECONDS)
    return MaintenanceRun.objects.filter(outcome=MaintenanceRun.Outcome.RUNNING, started_at__lt=cutoff).update(
        outcome=MaintenanceRun.Outcome.FAILED, finished_at=now, error="abandoned: did not finish within an hour (worker lost?)"
    )


# --- history purge ----------------------------------------------------------------------------


def purge_history(*, triggered_by: str = "beat", now: datetime | None = None) -> MaintenanceRun:
    """Delete ended/failed session rows (with their MCP client rows) and old run records past
    SESSIONADMIN_HISTORY_RETENTION_DAYS, and audit entries past SESSIONADMIN_AUDIT_RETENTION_DAYS
    when that is set (0, the default, keeps them forever).

    ``AuditEntry.delete()`` raises on purpose (the trail is append-only for the application);
    this is the one place that removes entries, with a QuerySet delete, which issues the SQL
    DELETE without calling the model method. The purge writes its own audit entry."""
    now = now or timezone.now()
    run = start_run(HISTORY_PURGE, triggered_by=triggered_by, now=now)
    counts = {"sessions_purged": 0, "runs_purged": 0, "audit_entries_purged": 0}
    days = settings.SESSIONADMIN_HISTORY_RETENTION_DAYS
    audit_days = settings.SESSIONADMIN_AUDIT_RETENTION_DAYS
    if days > 0:
        cutoff = now - timedelta(days=days)
        old = AgentSession.objects.filter(status__in=[AgentSession.Status.ENDED, AgentSession.Status.FAILED], ended_at__lt=cutoff)
        counts["sessions_purged"] = _delete_in_chunks(old, AgentSession)
        runs = MaintenanceRun.objects.filter(started_at__lt=cutoff).exclude(pk=run.pk)
        counts["runs_purged"] = _delete_in_chunks(runs, MaintenanceRun)
    if audit_days > 0:
        counts["audit_entries_purged"] = _delete_in_chunks(
            AuditEntry.objects.filter(at__lt=now - timedelta(days=audit_days)), AuditEntry
        )
    with transaction.atomic():
        audit.write(
            [audit.entry("history_purged", actor=PURGE_ACTOR, details={**counts, "history_days": days, "audit_days": audit_days})]
        )
    return finish_run(run, counts=counts, report={"history_retention_days": days, "audit_retention_days": audit_days})


def _delete_in_chunks(qs: Any, model: Any) -> int:
    total = 0
    while True:
        ids = list(qs.values_list("pk", flat=True)[:PURGE_CHUNK])
        if not ids:
            return total
        with transaction.atomic():
            # QuerySet.delete: never Model.delete (which AuditEntry forbids).
            model.objects.filter(pk__in=ids).delete()
        total += len(ids)


# --- MCP health -------------------------------------------------------------------------------


def run_mcp_health(*, triggered_by: str = "beat") -> MaintenanceRun:
    """Ask the MCP gateway to ping its live connections (``mcp_services.health_pass``) and
    record the counts (checked, ok, failed, changed, reconnecting, reconnects). A gateway that
    cannot be reached is a failed run saying so."""
    from sessionadmin import mcp_services

    run = start_run(MCP_HEALTH, triggered_by=triggered_by)
    try:
        counts = mcp_services.health_pass()
    except mcp_services.McpOperationFailed as exc:
        return finish_run(run, counts={}, error=str(exc), outcome=MaintenanceRun.Outcome.FAILED)
    except Exception as exc:
        finish_run(run, counts={}, error=f"{type(exc).__name__}: {exc}", outcome=MaintenanceRun.Outcome.FAILED)
        raise
    return finish_run(run, counts=counts)


# --- heartbeats -------------------------------------------------------------------------------


def record_heartbeat(name: str, *, details: dict[str, Any] | None = None, now: datetime | None = None) -> None:
    ServiceHeartbeat.objects.update_or_create(name=name, defaults={"beat_at": now or timezone.now(), "details": details or {}})


def liveness(now: datetime | None = None) -> dict[str, Any]:
    """For /healthz: ``{"worker": {"last_seen", "age_seconds", "ok"}, "beat": {...}, "ok"}``.
    A component is ok when its last heartbeat is at most HEARTBEAT_MAX_AGE_SECONDS old."""
    now = now or timezone.now()
    rows = {r.name: r for r in ServiceHeartbeat.objects.filter(name__in=HEARTBEAT_NAMES)}
    out: dict[str, Any] = {}
    for name in HEARTBEAT_NAMES:
        row = rows.get(name)
        age = (now - row.beat_at).total_seconds() if row else None
        out[name] = {
            "last_seen": row.beat_at.isoformat() if row else None,
            "age_seconds": round(age, 1) if age is not None else None,
            "ok": age is not None and age <= HEARTBEAT_MAX_AGE_SECONDS,
        }
    out["ok"] = all(out[name]["ok"] for name in HEARTBEAT_NAMES)
    return out


# --- operators --------------------------------------------------------------------------------


def request_run(task: str, *, actor: str) -> None:
    """ "Run now" from the dashboard: audited, enqueued once the audit row is committed."""
    from sessionadmin import tasks

    by_name = {
        INACTIVITY_CLEANUP: tasks.inactivity_cleanup,
        RECONCILIATION: tasks.reconcile_workspaces,
        HISTORY_PURGE: tasks.purge_history,
        MCP_HEALTH: tasks.mcp_health,
    }
    if task not in by_name:
        raise ValueError(f"unknown maintenance task {task!r}")
    with transaction.atomic():
        audit.write([audit.entry("maintenance_run_requested", actor=actor, details={"task": task})])
        by_name[task].delay_on_commit(triggered_by=actor)
