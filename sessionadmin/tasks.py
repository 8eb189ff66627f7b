"""Celery tasks: thin. Each takes ids, calls one service, and declares its own retry policy.

Every task is acknowledged late (settings: acks_late + reject_on_worker_lost), so a worker
that dies mid-task leaves the message to be delivered again; the services are idempotent, so a
second delivery is a no-op. Removals retry with exponential backoff (a retry is safe); the
periodic runs do not retry (the next beat tick is the retry) and record their failure instead.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from sessionadmin import ledger, lifecycle, maintenance, metrics
from sessionadmin.lifecycle import INACTIVITY_ACTOR, WORKSPACE_REMOVAL, WorkspaceRemovalError

REMOVAL_POLICY: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (WorkspaceRemovalError, SoftTimeLimitExceeded),
    "max_retries": 5,
    "retry_backoff": 5,
    "retry_backoff_max": 600,
    "retry_jitter": False,
    "soft_time_limit": 300,
    "time_limit": 360,
}


@shared_task(**REMOVAL_POLICY)
def remove_workspaces(self: Any, session_ids: list[str], actor: str = INACTIVITY_ACTOR, **_: Any) -> int:
    """The worker's half of ending sessions (``lifecycle.finish``): close MCP clients, remove
    the workspaces, mark ended, settle the run record. A second delivery finds the sessions
    ended and does nothing. Failures are recorded on the sessions and in the audit trail, then
    retried (the task raises so that Celery's retry policy applies). Extra keyword arguments
    (``run_id``, ``batch``) of messages queued by earlier versions are ignored: the run is
    found from the sessions now."""
    started, outcome = time.perf_counter(), "failed"
    try:
        result = lifecycle.finish(session_ids=session_ids, actor=actor)
        outcome = "partial" if result.failed else "ok"
    finally:
        metrics.maintenance_run_duration.labels(WORKSPACE_REMOVAL, outcome).observe(time.perf_counter() - started)
    if result.failed:
        raise WorkspaceRemovalError(
            f"{len(result.failed)} workspace(s) could not be removed: " + next(iter(result.failed.values()))
        )
    return len(result.ended)


@shared_task(bind=True, acks_late=True, soft_time_limit=600, time_limit=660)
def inactivity_cleanup(
    self: Any, idle_timeout_seconds: int | None = None, batch_size: int | None = None, triggered_by: str = "beat"
) -> int:
    run = maintenance.run_inactivity_cleanup(
        triggered_by=triggered_by,
        idle_timeout_seconds=idle_timeout_seconds,
        batch_size=batch_size,
        worker=self.request.hostname or "",
    )
    return run.pk


@shared_task(bind=True, acks_late=True, soft_time_limit=900, time_limit=960)
def reconcile_workspaces(self: Any, triggered_by: str = "beat") -> int:
    return maintenance.reconcile(triggered_by=triggered_by, worker=self.request.hostname or "").pk


@shared_task(bind=True, acks_late=True, soft_time_limit=900, time_limit=960)
def purge_history(self: Any, triggered_by: str = "beat") -> int:
    return maintenance.purge_history(triggered_by=triggered_by, worker=self.request.hostname or "").pk


@shared_task(bind=True, acks_late=True, soft_time_limit=50, time_limit=55)
def mcp_health(self: Any, triggered_by: str = "beat") -> int:
    return maintenance.run_mcp_health(triggered_by=triggered_by, worker=self.request.hostname or "").pk


@shared_task(bind=True, acks_late=True, soft_time_limit=10, time_limit=15)
def heartbeat(self: Any) -> None:
    """Sent by beat every 30 s: beat records its own heartbeat when it publishes this task
    (see celery.py), the worker that runs it records the worker's."""
    maintenance.record_heartbeat("worker", details={"hostname": self.request.hostname or ""})


@shared_task(bind=True, acks_late=True, soft_time_limit=120, time_limit=130)
def audit_checkpoint(self: Any) -> int | None:
    """Sign the audit ledger's state (every 5 minutes by default; skipped when nothing changed)."""
    cp = ledger.checkpoint()
    return cp.pk if cp else None


@shared_task(bind=True, acks_late=True, soft_time_limit=3000, time_limit=3060)
def audit_verify(self: Any, triggered_by: str = "beat") -> int:
    """Verify the whole ledger and record the result (daily, or an auditor's request)."""
    return ledger.record_verification(triggered_by=triggered_by).pk
