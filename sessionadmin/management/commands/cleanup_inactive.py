"""End idle sessions now, through the same service as the periodic task. By default the
workspaces are removed right here (no worker needed); ``--enqueue`` hands them to the workers
like the scheduled run does. ``--dry-run`` prints the preview instead."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from sessionadmin import maintenance


class Command(BaseCommand):
    help = "End active sessions idle longer than their timeout (pinned sessions are skipped)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--idle-timeout", type=int, default=None, help="seconds; default: the periodic task's kwargs or the setting"
        )
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--enqueue", action="store_true", help="remove workspaces in the Celery workers")
        parser.add_argument("--dry-run", action="store_true", help="only show what would be ended and why")
        parser.add_argument("--actor", default="cli")

    def handle(
        self, *args: Any, idle_timeout: int | None, batch_size: int | None, enqueue: bool, dry_run: bool, actor: str, **opts: Any
    ) -> None:
        if dry_run:
            threshold = timedelta(seconds=idle_timeout) if idle_timeout else None
            preview = maintenance.preview_cleanup(threshold=threshold, limit=1000)
            for row in preview.rows:
                mark = "end " if row.would_end else "skip"
                self.stdout.write(f"{mark} {row.candidate.id} {row.candidate.user_id}@{row.candidate.org_id}: {row.why}")
            self.stdout.write(f"would end {preview.total} session(s), skip {preview.pinned} pinned")
            return
        run = maintenance.run_inactivity_cleanup(
            triggered_by=actor, idle_timeout_seconds=idle_timeout, batch_size=batch_size, inline=not enqueue
        )
        run.refresh_from_db()
        counts = run.counts
        if enqueue:
            self.stdout.write(
                f"marked {counts.get('sessions_marked', 0)} session(s) terminating; workers remove them (run {run.pk})"
            )
        else:
            ended, errors = counts.get("sessions_ended", 0), counts.get("errors", 0)
            self.stdout.write(f"ended {ended} session(s), {errors} error(s) (run {run.pk}, {run.outcome})")
