"""End a session, like the dashboard's kill: marked terminating now, its workspace removed by the
Celery workers. ``--inline`` does the removal in this process (for a machine with no worker)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionadmin import lifecycle
from sessionadmin.manager import SessionError, SessionManager


class Command(BaseCommand):
    help = "End a session now: mark it terminating; the workers close its MCP clients and remove its workspace."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_id")
        parser.add_argument("--reason", default="")
        parser.add_argument("--actor", default="cli")
        parser.add_argument("--inline", action="store_true", help="remove the workspace here instead of in a worker")

    def handle(self, *args: Any, session_id: str, reason: str, actor: str, inline: bool, **opts: Any) -> None:
        try:
            if inline:
                SessionManager().cleanup_session(session_id, actor=actor, reason=reason)
                self.stdout.write(f"ended session {session_id}")
                return
            ended = lifecycle.end(session_ids=[session_id], actor=actor, reason=reason)
        except SessionError as exc:
            raise CommandError(str(exc)) from exc
        if not ended.sessions:
            raise CommandError(f"session {session_id} is not active")
        queued = "the broker is unreachable: the maintenance retries" if ended.enqueued is False else "the workers remove it"
        self.stdout.write(f"session {session_id} is terminating; {queued}")
