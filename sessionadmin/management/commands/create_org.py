from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionadmin import services
from sessionadmin.manager import SessionError


class Command(BaseCommand):
    help = "Create an org (its id is the platform's external org id)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("org_id")
        parser.add_argument("--name", help="display name (defaults to the id)")
        parser.add_argument("--prompt", default="", help="the org's prompt layer")
        parser.add_argument("--max-sessions", type=int, help="concurrent active sessions in the org")
        parser.add_argument("--max-sessions-per-user", type=int, help="concurrent active sessions per user in the org")
        parser.add_argument("--idle-timeout", type=int, dest="idle_timeout_seconds", help="idle timeout in seconds")
        parser.add_argument("--actor", default="cli")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            org = services.create_org(
                org_id=opts["org_id"],
                name=opts["name"] or opts["org_id"],
                prompt=opts["prompt"],
                actor=opts["actor"],
                max_sessions=opts["max_sessions"],
                max_sessions_per_user=opts["max_sessions_per_user"],
                idle_timeout_seconds=opts["idle_timeout_seconds"],
            )
        except SessionError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"created org {org.id} ({org.name})")
