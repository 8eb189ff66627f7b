"""Celery tasks: thin. Each takes ids, calls one service, and declares its own retry policy.

Every task is acknowledged late (settings: acks_late + reject_on_worker_lost), so a worker
that dies mid-task leaves the message to be delivered again; the services are idempotent, so a
second delivery is a no-op. Removals retry with exponential backoff (a retry is safe); the
periodic runs do not retry (the next beat tick is the retry) and record their failure instead.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from sessionadmin import maintenance
from sessionadmin.manager import INACTIVITY_ACTOR, WorkspaceRemovalError

CLEANUP_ACTOR = "system:workspace-removal"

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
def remove_workspace(self: Any, session_id: str, actor: str = CLEANUP_ACTOR) -> bool:
    """Second half of a cleanup for one terminating session: close MCP clients, remove the
    workspace, mark ended. A second delivery finds the session ended and does nothing. A
    failure is recorded on the session (last_error) and in the audit trail, then retried."""
    return bool(maintenance.remove_one(session_id, actor=actor).ended)


@shared_task(**REMOVAL_POLICY)
def remove_workspaces(
    self: Any, session_ids: list[str], run_id: int | None = None, batch: int | None = None, actor: str = INACTIVITY_ACTOR
) -> int:
    """The same for a batch of terminating sessions (the inactivity cleanup enqueues one per
    batch); adds its counts to the cleanup's run record."""
    return len(maintenance.remove_batch(session_ids, run_id=run_id, batch=batch, actor=actor).ended)


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def inactivity_cleanup(idle_timeout_seconds: int | None = None, batch_size: int | None = None, triggered_by: str = "beat") -> int:
    run = maintenance.run_inactivity_cleanup(
        triggered_by=triggered_by, idle_timeout_seconds=idle_timeout_seconds, batch_size=batch_size
    )
    return run.pk


@shared_task(acks_late=True, soft_time_limit=900, time_limit=960)
def reconcile_workspaces(triggered_by: str = "beat") -> int:
    return maintenance.reconcile(triggered_by=triggered_by).pk


@shared_task(acks_late=True, soft_time_limit=900, time_limit=960)
def purge_history(triggered_by: str = "beat") -> int:
    return maintenance.purge_history(triggered_by=triggered_by).pk


@shared_task(acks_late=True, soft_time_limit=50, time_limit=55)
def mcp_health(triggered_by: str = "beat") -> int:
    return maintenance.run_mcp_health(triggered_by=triggered_by).pk


@shared_task(bind=True, acks_late=True, soft_time_limit=10, time_limit=15)
def heartbeat(self: Any) -> None:
    """Sent by beat every 30 s: beat records its own heartbeat when it publishes this task
    (see celery.py), the worker that runs it records the worker's."""
    maintenance.record_heartbeat("worker", details={"hostname": self.request.hostname or ""})
