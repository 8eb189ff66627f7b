"""``python manage.py setup``: create ``var/``, the secret key file and the broker's folders
when they are missing (``sessionadmin.bootstrap``). Safe to run any number of times; ``make run``
and ``manage.py run`` call it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from sessionadmin import bootstrap


class Command(BaseCommand):
    help = "Create var/, the secret key file and the filesystem broker's folders if they are missing."
    # It must work before anything else is in place (no key yet, no database).
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        created = bootstrap.prepare()
        for item in created:
            self.stdout.write(f"created {item}")
        if not created and options["verbosity"] >= 1:
            self.stdout.write("nothing to do: var/, the secret key and the broker folders are in place")
