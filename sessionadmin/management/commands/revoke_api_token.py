"""``revoke_api_token NAME``: revoke a runtime API token (it stops working at once)."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionadmin import tokens


class Command(BaseCommand):
    help = "Revoke a runtime API token by name."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--actor", help="recorded in the audit trail (default: cli:<os user>)")

    def handle(self, *args: Any, name: str, actor: str | None, **options: Any) -> None:
        try:
            token = tokens.revoke_token(name=name, actor=actor or f"cli:{getpass.getuser()}")
        except tokens.TokenNotFound as exc:
            raise CommandError(str(exc))
        self.stdout.write(f"Token {token.name!r} ({token.prefix}) revoked at {token.revoked_at:%Y-%m-%d %H:%M:%S}.")
