"""``python manage.py benchmark <name> [options]``: runs ``sessionadmin.benchmarks.<name>``.
Figures are printed; nothing here asserts timings (the test suite never does either)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import sessionadmin.benchmarks


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(sessionadmin.benchmarks.__path__) if not m.name.startswith("_"))


class Command(BaseCommand):
    help = "Run a benchmark and print its figures: " + ", ".join(available()) + " (or all)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="name", required=True)
        for name in available():
            module = importlib.import_module(f"sessionadmin.benchmarks.{name}")
            sub_parser = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else "")
            if hasattr(module, "add_arguments"):
                module.add_arguments(sub_parser)
        sub.add_parser("all", help="run every benchmark with its defaults")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        names = available() if name == "all" else [name]
        for each in names:
            module = importlib.import_module(f"sessionadmin.benchmarks.{each}")
            if name == "all":
                parser = CommandParser()
                if hasattr(module, "add_arguments"):
                    module.add_arguments(parser)
                options = {**options, **vars(parser.parse_args([]))}
            self.stdout.write(self.style.MIGRATE_HEADING(f"== benchmark {each}"))
            try:
                module.run(self.stdout, **options)
            except CommandError:
                raise
            except Exception as exc:
                raise CommandError(f"benchmark {each} failed: {exc}") from exc
