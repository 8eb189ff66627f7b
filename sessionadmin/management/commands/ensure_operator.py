"""Make sure somebody can log in: on a database with no user, create the superuser ``admin``
(member of Operators and MCP admins) with a generated password printed once. Does nothing otherwise."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser

from sessionadmin.roles import MCP_ADMINS, OPERATORS, ensure_roles


class Command(BaseCommand):
    help = "Create a first operator (admin) with a generated password if no user exists yet."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user_model = get_user_model()
        if user_model.objects.exists():
            self.stdout.write("Users exist already; use `python manage.py changepassword <name>` to reset one.")
            return
        ensure_roles()
        password = secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(username=username, email="", password=password)
        user.groups.add(*Group.objects.filter(name__in=[OPERATORS, MCP_ADMINS]))
        bar = "=" * 64
        self.stdout.write(
            self.style.SUCCESS(
                f"{bar}\nFirst operator created. Log in with\n  username: {username}\n  password: {password}\n"
                f"(shown once; change it with `python manage.py changepassword {username}`)\n{bar}"
            )
        )
