"""Celery tasks: thin. Each takes ids, calls one service, and declares its own retry policy."""

from __future__ import annotations

from celery import shared_task

from sessionadmin.manager import SessionManager

CLEANUP_ACTOR = "system:workspace-removal"


@shared_task(
    bind=True, acks_late=True, max_retries=5, retry_backoff=True, retry_backoff_max=600,
    soft_time_limit=300, time_limit=360,
)
def remove_workspace(self, session_id: str, actor: str = CLEANUP_ACTOR) -> bool:  # type: ignore[no-untyped-def]
    """Second half of a cleanup for one terminating session: close MCP clients, remove the
    workspace, mark ended. A second delivery finds the session ended and does nothing."""
    result = SessionManager().finish_cleanups([session_id], actor=actor)
    if result.failed:
        # The failure is recorded on the session (last_error) and in the audit trail.
        raise self.retry(countdown=None)
    return bool(result.ended)
