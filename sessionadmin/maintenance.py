"""Maintenance services run by Celery beat (and by operators with "run now"): inactivity
cleanup, workspace removal, reconciliation of the workspace root, history purge, MCP health and
the liveness heartbeats. Each run writes one ``MaintenanceRun`` row.

How the inactivity cleanup scales: the periodic task walks idle candidates in keyset-ordered
batches (only ids, times and org ids are loaded, so memory does not grow with the number of
sessions) and ends each batch through ``lifecycle.end`` (skip-locked row locks plus the idle
cutoffs, so overlapping runs and fresh activity are respected), which enqueues one
``remove_workspaces`` task per batch. That task calls ``lifecycle.finish`` (bulk MCP close,
removal of each tree, one bulk UPDATE and one bulk audit insert per batch), which settles the
run record from its sessions: the run is done when none of them is terminating any more.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sessionadmin import audit, ledger, lifecycle, metrics, workspaces
from sessionadmin.lifecycle import (
    INACTIVITY_ACTOR,
    INACTIVITY_CLEANUP,
    MAX_RECORDED_IDS,
    WORKSPACE_REMOVAL,
    Candidate,
    iter_idle,
    start_run,
)
from sessionadmin.models import AgentSession, AuditCheckpoint, AuditEntry, MaintenanceRun, ServiceHeartbeat
from sessionadmin.validation import MIN_IDLE_TIMEOUT_SECONDS

logger = logging.getLogger(__name__)

# Task names as recorded in MaintenanceRun.task (the first two are lifecycle's).
RECONCILIATION = "reconciliation"
HISTORY_PURGE = "history_purge"
MCP_HEALTH = "mcp_health"
RUNNABLE_NOW = (INACTIVITY_CLEANUP, RECONCILIATION, HISTORY_PURGE, MCP_HEALTH)
# Every task name a run record may carry (the maintenance page filters by them).
TASKS = (INACTIVITY_CLEANUP, WORKSPACE_REMOVAL, RECONCILIATION, HISTORY_PURGE, MCP_HEALTH)

# The periodic task whose kwargs hold the operator-editable idle threshold.
INACTIVITY_PERIODIC_TASK = "sessionadmin: inactivity cleanup"

RECONCILE_ACTOR = "system:reconciliation"
PURGE_ACTOR = "system:history-purge"
# Heartbeats come every 30 s; three missed ones mean the component is down.
HEARTBEAT_MAX_AGE_SECONDS = 90
HEARTBEAT_NAMES = ("worker", "beat")
# A run still "running" after this long lost its worker; reconciliation closes it.
ABANDONED_RUN_SECONDS = 3600
PURGE_CHUNK = 1000


# --- run durations (sessionadmin/metrics.py) ------------------------------------------------------

P = ParamSpec("P")


def observed(task: str) -> Callable[[Callable[P, MaintenanceRun]], Callable[P, MaintenanceRun]]:
    """``sessionadmin_maintenance_run_duration_seconds{task,outcome}`` of each run: the run's own
    outcome (an inactivity cleanup whose removals are still going is ok: its walk is done), or
    failed when it raised."""

    def decorate(func: Callable[P, MaintenanceRun]) -> Callable[P, MaintenanceRun]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> MaintenanceRun:
            started, outcome = time.perf_counter(), "failed"
            try:
                run = func(*args, **kwargs)
                outcome = run.outcome if run.outcome in metrics.MAINTENANCE_OUTCOMES else "ok"
                return run
            finally:
                metrics.maintenance_run_duration.labels(task, outcome).observe(time.perf_counter() - started)

        return wrapper

    return decorate


# --- run records ---------------------------------------------------------------------------------


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


ROUTINE = "routine"  # recent_runs(show=ROUTINE): every run, the per-minute health passes too


def recent_runs(limit: int = 30, *, show: str = "") -> list[MaintenanceRun]:
    """The latest runs. By default without the MCP health passes that went fine (beat runs one a
    minute: they would push everything else off the page); ``show`` = a task name gives only
    that task's runs, ``ROUTINE`` every run."""
    runs = MaintenanceRun.objects.defer("session_ids", "report").order_by("-started_at", "-id")
    if show == ROUTINE:
        pass
    elif show:
        runs = runs.filter(task=show)
    else:
        runs = runs.exclude(task=MCP_HEALTH, outcome=MaintenanceRun.Outcome.OK)
    return list(runs[:limit])


# --- inactivity cleanup -----------------------------------------------------------------------


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


@observed(INACTIVITY_CLEANUP)
def run_inactivity_cleanup(
    *,
    triggered_by: str = "beat",
    idle_timeout_seconds: int | None = None,
    batch_size: int | None = None,
    inline: bool = False,
    worker: str = "",
    now: datetime | None = None,
) -> MaintenanceRun:
    """End every idle, unpinned, not busy active session (actor ``system:inactivity-cleanup``,
    reason ``idle``) through ``lifecycle.end_idle``; the workers remove the workspaces, or this
    process does with ``inline`` (the management command, for a machine with no worker)."""
    now = now or timezone.now()
    if idle_timeout_seconds is not None and idle_timeout_seconds < MIN_IDLE_TIMEOUT_SECONDS:
        # A zero or negative threshold would put the cutoff in the future and end every session.
        raise ValueError(f"idle_timeout_seconds must be at least {MIN_IDLE_TIMEOUT_SECONDS}, got {idle_timeout_seconds}")
    threshold = timedelta(seconds=idle_timeout_seconds) if idle_timeout_seconds else idle_threshold()
    run = start_run(INACTIVITY_CLEANUP, triggered_by=triggered_by, now=now, worker=worker)
    # Still planning: batches finished meanwhile do not close the run before the walk ends.
    MaintenanceRun.objects.filter(pk=run.pk).update(report={"planning": True})
    run.report = {"planning": True}
    marked: list[str] = []
    error = ""
    try:
        for batch in lifecycle.end_idle(threshold=threshold, run=run, batch_size=batch_size, enqueue=not inline, now=now):
            marked += batch.ids
            if inline:
                lifecycle.finish(session_ids=batch.ids, actor=INACTIVITY_ACTOR)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _close_planning(run.pk, marked=marked, threshold=threshold, error=error)
    run.refresh_from_db()
    return run


def _close_planning(run_id: int, *, marked: list[str], threshold: timedelta, error: str = "") -> None:
    """Record what the walk marked and let the run settle (maybe at once: every batch may have
    been removed before the walk ended, or nothing was idle)."""
    with transaction.atomic():
        run = MaintenanceRun.objects.select_for_update().get(pk=run_id)
        run.counts = {"sessions_ended": 0, "directories_removed": 0, "errors": 0, **run.counts, "sessions_marked": len(marked)}
        run.session_ids = marked[:MAX_RECORDED_IDS]
        run.report = {k: v for k, v in run.report.items() if k != "planning"} | {
            "threshold_seconds": int(threshold.total_seconds())
        }
        fields = ["counts", "session_ids", "report"]
        if error:
            run.error, run.outcome, run.finished_at = (
                error[: audit.MAX_DETAIL_TEXT],
                MaintenanceRun.Outcome.FAILED,
                timezone.now(),
            )
            fields += ["error", "outcome", "finished_at"]
        run.save(update_fields=fields)
    if not error:
        lifecycle.settle_runs([run_id])


def requeue_stuck_removals(*, reason: str) -> int:
    """Enqueue the removal of every ``terminating`` session again (a worker died holding its
    task, the broker refused it, or its retries ran out). Each session keeps its run record,
    and removal is idempotent, so a duplicate costs one query."""
    ids = list(AgentSession.objects.filter(status=AgentSession.Status.TERMINATING).values_list("id", flat=True))
    count = lifecycle.retry_removal(session_ids=ids)
    if count:
        logger.info("re-enqueued the removal of %d terminating session(s) (%s)", count, reason)
    return count


def settle_open_runs(*, worker: str, now: datetime | None = None) -> int:
    """At worker start: close as failed the runs this worker (same hostname) was executing when
    it died (a planning walk, a reconciliation, a purge, a health pass), and settle every
    removal run still open from its sessions (their removals are re-enqueued right after by
    ``requeue_stuck_removals``). Returns how many runs it closed as failed."""
    now = now or timezone.now()
    closed = 0
    if worker:
        closed = (
            _interrupted_runs()
            .filter(worker=worker, started_at__lt=now)
            .update(
                outcome=MaintenanceRun.Outcome.FAILED,
                finished_at=now,
                error=f"worker lost: {worker} stopped before the run ended",
            )
        )
    open_removals = MaintenanceRun.objects.filter(
        outcome=MaintenanceRun.Outcome.RUNNING, task__in=[INACTIVITY_CLEANUP, WORKSPACE_REMOVAL]
    )
    lifecycle.settle_runs(list(open_removals.values_list("pk", flat=True)))
    return closed


def _interrupted_runs() -> Any:
    """Runs still "running" whose own task is not done: an idle walk still planning, or a
    one-shot task (a run that only waits for its sessions' removals is not one of them)."""
    running = MaintenanceRun.objects.filter(outcome=MaintenanceRun.Outcome.RUNNING)
    return running.filter(report__planning=True) | running.filter(task__in=[RECONCILIATION, HISTORY_PURGE, MCP_HEALTH])


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


@observed(RECONCILIATION)
def reconcile(
    *, triggered_by: str = "beat", now: datetime | None = None, root: Path | str | None = None, worker: str = ""
) -> MaintenanceRun:
    """Compare the workspace root with the live sessions and repair what is safe: orphan
    directories older than the grace period are removed, directory modes set back to 0700,
    removals of terminating sessions enqueued again; everything else is reported. Entries are
    reached with O_NOFOLLOW directory descriptors: nothing outside the root, no symlink, is
    touched."""
    now = now or timezone.now()
    run = start_run(RECONCILIATION, triggered_by=triggered_by, now=now, worker=worker)
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

    # Keyed by the stored path's last two parts: a session created under an earlier root is
    # looked for where it was created, not under today's root.
    live: dict[tuple[str, str], tuple[str, str]] = {
        (user_id, str(sid)): (status, path)
        for sid, user_id, status, path in AgentSession.objects.live()
        .values_list("id", "user_id", "status", "workspace_path")
        .iterator(chunk_size=2000)
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
    for (user_id, sid), (status, path) in live.items():
        if (user_id, sid) in seen or status != AgentSession.Status.ACTIVE:
            continue
        if Path(path).parent.parent != root_path and os.path.isdir(path):
            continue  # alive under the root it was created in
        note("missing", f"{user_id}/{sid} (active session, directory missing)")
        touched.append(sid)
    # Terminating sessions (with or without a directory) get their removal enqueued again.
    counts["removals_requeued"] = requeue_stuck_removals(reason="reconciliation")
    counts["runs_closed"] = close_abandoned_runs(now=now, exclude=run.pk)
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


def close_abandoned_runs(*, now: datetime, exclude: int | None = None) -> int:
    """Runs other than removals still "running" long after they started lost their worker
    (SIGKILL, host down) and no worker of the same name came back to close them. Removal runs
    stay open while their sessions are terminating: they are settled from those sessions."""
    stale = _interrupted_runs().filter(started_at__lt=now - timedelta(seconds=ABANDONED_RUN_SECONDS))
    if exclude is not None:
        stale = stale.exclude(pk=exclude)
    return stale.update(
        outcome=MaintenanceRun.Outcome.FAILED, finished_at=now, error="abandoned: did not finish within an hour (worker lost?)"
    )


# --- history purge ----------------------------------------------------------------------------


@observed(HISTORY_PURGE)
def purge_history(*, triggered_by: str = "beat", now: datetime | None = None, worker: str = "") -> MaintenanceRun:
    """Delete ended/failed session rows (with their MCP client rows) and old run records past
    SESSIONADMIN_HISTORY_RETENTION_DAYS, and audit entries past SESSIONADMIN_AUDIT_RETENTION_DAYS
    when that is set (0, the default, keeps them forever).

    Each chunk is deleted in a transaction that also writes its ``history_purged`` entry, so no
    deletion exists without its record, even if the purge dies half-way.

    ``AuditEntry.delete()`` raises on purpose (the trail is append-only for the application);
    this is the one place that removes entries, with a QuerySet delete, which issues the SQL
    DELETE without calling the model method. Audit entries go only up to a signed checkpoint,
    through the ledger's purge path (``purge_audit``): the database refuses any other deletion."""
    now = now or timezone.now()
    run = start_run(HISTORY_PURGE, triggered_by=triggered_by, now=now, worker=worker)
    counts = {"sessions_purged": 0, "runs_purged": 0, "audit_entries_purged": 0}
    days = settings.SESSIONADMIN_HISTORY_RETENTION_DAYS
    audit_days = settings.SESSIONADMIN_AUDIT_RETENTION_DAYS
    policy = {"history_days": days, "audit_days": audit_days}
    if days > 0:
        cutoff = now - timedelta(days=days)
        old = AgentSession.objects.filter(status__in=[AgentSession.Status.ENDED, AgentSession.Status.FAILED], ended_at__lt=cutoff)
        counts["sessions_purged"] = _delete_in_chunks(old, AgentSession, "sessions", policy)
        runs = MaintenanceRun.objects.filter(started_at__lt=cutoff).exclude(pk=run.pk)
        counts["runs_purged"] = _delete_in_chunks(runs, MaintenanceRun, "runs", policy)
    report: dict[str, Any] = {"history_retention_days": days, "audit_retention_days": audit_days}
    if audit_days > 0:
        counts["audit_entries_purged"], report["audit_anchor"] = purge_audit(
            older_than=now - timedelta(days=audit_days), policy=policy
        )
    return finish_run(run, counts=counts, report=report)


def purge_audit(*, older_than: datetime, policy: dict[str, int]) -> tuple[int, int | None]:
    """Delete audit entries older than ``older_than`` that a signed checkpoint covers, one
    checkpoint interval per transaction, oldest first: after each step the oldest entry left
    follows a checkpoint exactly (the anchor verification starts from), so a purge that dies
    half-way still leaves a verifiable ledger. Entries newer than the newest such checkpoint
    wait for the next run. Returns (entries deleted, the anchor checkpoint's id)."""
    anchor = ledger.purge_anchor(older_than=older_than)
    if anchor is None:
        return 0, None
    total = 0
    oldest = AuditEntry.objects.order_by("seq").values_list("seq", flat=True).first() or anchor.length + 1
    steps = list(
        AuditCheckpoint.objects.filter(length__gte=oldest, length__lt=anchor.length)
        .order_by("length")
        .values_list("length", flat=True)
    )
    for through in dict.fromkeys([*steps, anchor.length]):
        cp = AuditCheckpoint.objects.filter(length=through).order_by("id").first()
        with transaction.atomic():
            deleted = ledger.purge_through(through)
            if deleted:
                details = {
                    "what": "audit_entries",
                    "count": deleted,
                    "through_seq": through,
                    "anchor_checkpoint": cp.pk if cp else None,
                    **policy,
                }
                audit.write([audit.entry("history_purged", actor=PURGE_ACTOR, details=details)])
        total += deleted
    return total, anchor.pk


def _delete_in_chunks(qs: Any, model: Any, what: str, policy: dict[str, int]) -> int:
    total = 0
    while True:
        ids = list(qs.values_list("pk", flat=True)[:PURGE_CHUNK])
        if not ids:
            return total
        with transaction.atomic():
            # QuerySet.delete: never Model.delete (which AuditEntry forbids).
            model.objects.filter(pk__in=ids).delete()
            details = {"what": what, "count": len(ids), **policy}
            if what == "sessions":
                details["session_ids"] = [str(i) for i in ids]
            audit.write([audit.entry("history_purged", actor=PURGE_ACTOR, details=details)])
        total += len(ids)


# --- MCP health -------------------------------------------------------------------------------


@observed(MCP_HEALTH)
def run_mcp_health(*, triggered_by: str = "beat", worker: str = "") -> MaintenanceRun:
    """Ask the MCP gateway to ping its live connections (``mcp_services.health_pass``) and
    record the counts (checked, ok, failed, changed, reconnecting, reconnects). A gateway that
    cannot be reached is a failed run saying so."""
    from sessionadmin import mcp_services

    run = start_run(MCP_HEALTH, triggered_by=triggered_by, worker=worker)
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


class BrokerUnavailable(Exception):
    """The task could not be handed to the broker; nothing was queued."""


def request_run(task: str, *, actor: str) -> None:
    """ "Run now" from the dashboard: sent to the broker, then audited; a broker that refuses
    raises BrokerUnavailable and audits nothing (nothing was queued)."""
    from sessionadmin import tasks

    by_name = {
        INACTIVITY_CLEANUP: tasks.inactivity_cleanup,
        RECONCILIATION: tasks.reconcile_workspaces,
        HISTORY_PURGE: tasks.purge_history,
        MCP_HEALTH: tasks.mcp_health,
    }
    if task not in by_name:
        raise ValueError(f"unknown maintenance task {task!r}")
    try:
        by_name[task].apply_async(kwargs={"triggered_by": actor})
    except Exception as exc:  # kombu raises transport-specific errors (and the URL may hold a password)
        logger.warning("could not queue %s: %s", task, type(exc).__name__)
        raise BrokerUnavailable("the task queue (broker) is unreachable, so nothing was queued; try again later") from exc
    with transaction.atomic():
        audit.write([audit.entry("maintenance_run_requested", actor=actor, details={"task": task})])


# --- figures for /metrics (read at scrape time) ------------------------------------------------


def terminating_count() -> int:
    return AgentSession.objects.filter(status=AgentSession.Status.TERMINATING).count()


def last_successes() -> dict[str, datetime]:
    """Task -> when a run of it last finished ok."""
    from django.db.models import Max

    rows = (
        MaintenanceRun.objects.filter(outcome=MaintenanceRun.Outcome.OK, finished_at__isnull=False)
        .values("task")
        .annotate(last=Max("finished_at"))
    )
    return {row["task"]: row["last"] for row in rows}


def limit_usage() -> dict[str, float]:
    """The fullest of each kind of limit, as active/maximum: the global limit, the fullest org
    (of those with a limit), the fullest user of an org with a per-user limit. Bounded: one
    number per kind, whatever the number of orgs and users."""
    from django.db.models import Count, Q

    from sessionadmin.models import LimitLock, Org

    out = {"global": 0.0, "org": 0.0, "user": 0.0}
    maximum = settings.SESSIONADMIN_MAX_CONCURRENT
    if maximum:
        total = LimitLock.objects.filter(pk=1).values_list("active_sessions", flat=True).first() or 0
        out["global"] = total / maximum
    limits = {
        org_id: (per_org, per_user)
        for org_id, per_org, per_user in Org.objects.filter(
            Q(max_sessions__isnull=False) | Q(max_sessions_per_user__isnull=False)
        ).values_list("id", "max_sessions", "max_sessions_per_user")
    }
    if not limits:
        return out
    active = AgentSession.objects.active().filter(org_id__in=list(limits))
    for row in active.values("org_id").annotate(n=Count("pk")):
        per_org = limits[row["org_id"]][0]
        if per_org:
            out["org"] = max(out["org"], row["n"] / per_org)
    user_limited = [org_id for org_id, (_, per_user) in limits.items() if per_user]
    if user_limited:
        for row in active.filter(org_id__in=user_limited).values("org_id", "user_id").annotate(n=Count("pk")):
            per_user = limits[row["org_id"]][1]
            out["user"] = max(out["user"], row["n"] / per_user)
    return out
