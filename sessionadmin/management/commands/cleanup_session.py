from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionadmin.manager import SessionError, SessionManager


class Command(BaseCommand):
    help = "End a session now: close its MCP clients, remove its workspace, mark it ended."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_id")
        parser.add_argument("--reason", default="")
        parser.add_argument("--actor", default="cli")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            SessionManager().cleanup_session(opts["session_id"], actor=opts["actor"], reason=opts["reason"])
        except SessionError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"ended session {opts['session_id']}")
