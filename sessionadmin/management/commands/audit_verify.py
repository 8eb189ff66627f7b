"""Verify the audit ledger: every entry's hash, its link to its predecessor, the sequence
numbers, and every signed checkpoint (signature, chain of signatures, agreement with the
entries), from the oldest anchor to the head. Exit 0 with a one-line summary when intact,
1 with the first failing entry (seq and id) and what is wrong otherwise.

``--export FILE`` also writes the bundle ``tools/verify_audit_bundle.py`` verifies without
Django or a database; ``--record`` keeps the result (as the daily beat task does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionadmin import ledger


class Command(BaseCommand):
    help = "Verify the audit ledger (hash chain and signed checkpoints); optionally export a bundle for auditors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--export", metavar="FILE", help="write a bundle (JSON lines) for tools/verify_audit_bundle.py")
        parser.add_argument(
            "--checkpoints",
            metavar="FILE",
            help="also require every checkpoint of this file (the copy kept outside the database)",
        )
        parser.add_argument("--record", action="store_true", help="record the result (shown in the admin)")
        parser.add_argument("--actor", default="cli")

    def handle(self, *args: Any, export: str | None, checkpoints: str | None, record: bool, actor: str, **opts: Any) -> None:
        if export:
            with Path(export).open("w", encoding="utf-8") as out:
                n = ledger.export(out)
            self.stderr.write(f"exported {n} entries to {export}")
        external = Path(checkpoints) if checkpoints else None
        if record:
            run = ledger.record_verification(triggered_by=actor, external=external)
            ok, message = bool(run.ok), run.message
        else:
            verdict = ledger.verify(external=external)
            ok, message = verdict.ok, verdict.summary()
        if not ok:
            raise CommandError(message, returncode=1)
        self.stdout.write(message)
