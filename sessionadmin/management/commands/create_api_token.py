"""``create_api_token NAME [--org ORG] [--expires-in-days N] [--metrics]``: create a
runtime API token and print its plaintext once (only a hash is stored)."""

from __future__ import annotations

import getpass
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from sessionadmin import tokens
from sessionadmin.models import Org


class Command(BaseCommand):
    help = "Create a runtime API token; the token is printed once and cannot be shown again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--org", help="scope the token to this org id (default: every org)")
        parser.add_argument("--expires-in-days", type=int, help="the token stops working after this many days")
        parser.add_argument("--actor", help="recorded in the audit trail (default: cli:<os user>)")
        parser.add_argument("--metrics", action="store_true", help="the token may scrape /metrics (for Prometheus)")

    def handle(
        self,
        *args: Any,
        name: str,
        org: str | None,
        expires_in_days: int | None,
        actor: str | None,
        metrics: bool = False,
        **options: Any,
    ) -> None:
        scope = None
        if org is not None:
            scope = Org.objects.filter(pk=org).first()
            if scope is None:
                raise CommandError(f"unknown org {org!r}")
        if expires_in_days is not None and expires_in_days < 1:
            raise CommandError("--expires-in-days must be at least 1")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            token, raw = tokens.create_token(
                name=name,
                actor=actor or f"cli:{getpass.getuser()}",
                org=scope,
                expires_at=expires_at,
                can_read_metrics=metrics,
            )
        except tokens.TokenError as exc:
            raise CommandError(str(exc))
        self.stderr.write(f"Token {token.name!r} created (prefix {token.prefix}); it is shown once:")
        # The plaintext alone on stdout, so `TOKEN=$(manage.py create_api_token x)` works.
        self.stdout.write(raw)
