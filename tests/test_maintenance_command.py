"""``manage.py cleanup_inactive``: the inactivity cleanup from the command line."""

from __future__ import annotations

import os
from datetime import timedelta
from io import StringIO

from django.core.management import call_command
from django.utils import timezone

from sessionadmin.models import AgentSession, MaintenanceRun
from tests.base import BaseTestCase


class CleanupInactiveCommandTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.idle = self.manager().create_session("user-1", "acme")
        self.recent = self.manager().create_session("user-2", "acme")
        AgentSession.objects.filter(pk=self.idle.pk).update(last_active_at=timezone.now() - timedelta(hours=3))

    def test_it_ends_idle_sessions_inline(self) -> None:
        out = StringIO()
        call_command("cleanup_inactive", "--idle-timeout", "3600", stdout=out)
        run = MaintenanceRun.objects.get()
        self.assertEqual(out.getvalue().strip(), f"ended 1 session(s), 0 error(s) (run {run.pk}, ok)")
        self.assertEqual(AgentSession.objects.get(pk=self.idle.pk).status, "ended")
        self.assertEqual(AgentSession.objects.get(pk=self.recent.pk).status, "active")
        self.assertFalse(os.path.exists(self.idle.workspace_path))
        self.assertEqual(run.triggered_by, "cli")

    def test_it_previews_with_dry_run(self) -> None:
        out = StringIO()
        call_command("cleanup_inactive", "--idle-timeout", "3600", "--dry-run", stdout=out)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], f"end  {self.idle.id} user-1@acme: idle 3 h > 1 h (global default)")
        self.assertEqual(lines[1], "would end 1 session(s), skip 0 pinned")
        self.assertEqual(AgentSession.objects.get(pk=self.idle.pk).status, "active")
        self.assertFalse(MaintenanceRun.objects.exists())
