from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionadmin.manager import SessionError, SessionManager


class Command(BaseCommand):
    help = "Create a session for a user in an org; prints its id and workspace."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user_id")
        parser.add_argument("org_id")
        parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="prompt variable (repeatable)")
        parser.add_argument("--actor", default="cli")
        parser.add_argument("--json", action="store_true", help="print the session info as JSON")

    def handle(self, *args: Any, **opts: Any) -> None:
        variables: dict[str, str] = {}
        for item in opts["var"]:
            name, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--var expects NAME=VALUE, got {item!r}")
            variables[name] = value
        try:
            session = SessionManager().create_session(opts["user_id"], opts["org_id"], actor=opts["actor"], variables=variables)
        except SessionError as exc:
            raise CommandError(str(exc)) from exc
        if opts["json"]:
            self.stdout.write(json.dumps(session.get_session_info(), default=str))
        else:
            self.stdout.write(f"{session.id} {session.workspace_path}")
