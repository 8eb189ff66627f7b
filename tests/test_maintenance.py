"""Maintenance services, in process (the worker tests are in test_tasks_worker.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import time_machine
from django.test import override_settings

from sessionadmin import ledger, lifecycle, maintenance
from sessionadmin.models import AgentSession, AuditEntry, MaintenanceRun, McpClient, Org, ServiceHeartbeat
from tests.base import BaseTestCase
from tests.celery_worker import QueueProbe

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class MaintenanceTestCase(BaseTestCase):
    def idle_session(self, user_id: str, org_id: str = "acme", *, idle: timedelta) -> AgentSession:
        session = self.manager().create_session(user_id, org_id, actor="alice")
        Path(session.workspace_path, "notes.txt").write_text("x")
        AgentSession.objects.filter(pk=session.pk).update(last_active_at=NOW - idle)
        return session

    def status(self, session: AgentSession) -> str:
        return AgentSession.objects.values_list("status", flat=True).get(pk=session.pk)


class InactivityCleanupTestCase(MaintenanceTestCase):
    def test_it_ends_idle_sessions_inline_and_records_the_run(self) -> None:
        Org.objects.filter(pk="globex").update(idle_timeout_seconds=600)
        idle = self.idle_session("user-1", idle=timedelta(hours=2))
        org_idle = self.idle_session("user-2", "globex", idle=timedelta(minutes=20))
        recent = self.idle_session("user-3", idle=timedelta(minutes=20))
        pinned = self.idle_session("user-4", idle=timedelta(hours=5))
        AgentSession.objects.filter(pk=pinned.pk).update(pinned_until=NOW + timedelta(hours=1))

        with time_machine.travel(NOW, tick=False):
            run = maintenance.run_inactivity_cleanup(triggered_by="cli", idle_timeout_seconds=3600, batch_size=1, inline=True)

        run.refresh_from_db()
        self.assertEqual((self.status(idle), self.status(org_idle)), ("ended", "ended"))
        self.assertEqual((self.status(recent), self.status(pinned)), ("active", "active"))
        self.assertFalse(os.path.exists(idle.workspace_path))
        self.assertTrue(os.path.exists(pinned.workspace_path))
        self.assertEqual(run.outcome, "ok")
        self.assertEqual(run.finished_at, NOW)
        self.assertEqual(run.counts, {"sessions_marked": 2, "sessions_ended": 2, "directories_removed": 2, "errors": 0})
        # Oldest activity first.
        self.assertEqual(run.session_ids, [str(idle.id), str(org_idle.id)])
        self.assertEqual(run.report, {"threshold_seconds": 3600})
        self.assertEqual(set(AgentSession.objects.filter(cleanup_run=run).values_list("pk", flat=True)), {idle.pk, org_idle.pk})
        ended = AgentSession.objects.get(pk=idle.pk)
        self.assertEqual((ended.ended_by, ended.end_reason), ("system:inactivity-cleanup", "idle"))

    def test_it_enqueues_one_removal_task_per_batch_on_commit(self) -> None:
        for i in range(5):
            self.idle_session(f"user-{i}", idle=timedelta(hours=2))

        probe = QueueProbe()
        self.addCleanup(probe.close)
        with time_machine.travel(NOW, tick=False), self.captureOnCommitCallbacks(execute=True):
            run = maintenance.run_inactivity_cleanup(idle_timeout_seconds=3600, batch_size=2)

        sent = probe.messages()
        self.assertEqual([(task, len(args[0]), kwargs) for task, args, kwargs in sent], [
            ("sessionadmin.tasks.remove_workspaces", 2, {"actor": "system:inactivity-cleanup"}),
            ("sessionadmin.tasks.remove_workspaces", 2, {"actor": "system:inactivity-cleanup"}),
            ("sessionadmin.tasks.remove_workspaces", 1, {"actor": "system:inactivity-cleanup"}),
        ])  # fmt: skip
        run.refresh_from_db()
        self.assertEqual(run.outcome, "running")
        self.assertEqual(run.counts["sessions_marked"], 5)
        self.assertEqual(AgentSession.objects.filter(status="terminating", cleanup_run=run).count(), 5)

    def test_it_finishes_the_run_when_the_last_batch_reports_twice(self) -> None:
        a = self.idle_session("user-a", idle=timedelta(hours=2))
        b = self.idle_session("user-b", idle=timedelta(hours=2))
        with time_machine.travel(NOW, tick=False), self.captureOnCommitCallbacks():
            run = maintenance.run_inactivity_cleanup(idle_timeout_seconds=3600, batch_size=1)

        lifecycle.finish(session_ids=[a.id], actor="system:inactivity-cleanup")
        run.refresh_from_db()
        self.assertEqual((run.outcome, run.counts["sessions_ended"]), ("running", 1))
        lifecycle.finish(session_ids=[b.id], actor="system:inactivity-cleanup")
        lifecycle.finish(session_ids=[b.id, a.id], actor="system:inactivity-cleanup")  # a redelivery

        run.refresh_from_db()
        self.assertEqual(run.outcome, "ok")
        self.assertEqual(run.counts["sessions_ended"], 2)
        self.assertEqual(AuditEntry.objects.filter(event_type="session_cleaned_up").count(), 2)
        self.assertFalse(AuditEntry.objects.filter(event_type="workspace_removal_failed").exists())

    def test_it_takes_the_threshold_from_the_periodic_task_kwargs(self) -> None:
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        every, _ = IntervalSchedule.objects.get_or_create(every=300, period="seconds")
        PeriodicTask.objects.update_or_create(
            name=maintenance.INACTIVITY_PERIODIC_TASK,
            defaults={
                "task": "sessionadmin.tasks.inactivity_cleanup",
                "interval": every,
                "kwargs": '{"idle_timeout_seconds": 7200}',
            },
        )
        self.assertEqual(maintenance.idle_threshold(), timedelta(hours=2))


class PreviewTestCase(MaintenanceTestCase):
    def test_it_lists_what_would_end_and_why(self) -> None:
        Org.objects.filter(pk="globex").update(idle_timeout_seconds=600)
        idle = self.idle_session("user-1", idle=timedelta(hours=26))
        org_idle = self.idle_session("user-2", "globex", idle=timedelta(minutes=20))
        self.idle_session("user-3", idle=timedelta(hours=1))
        pinned = self.idle_session("user-4", idle=timedelta(hours=30))
        AgentSession.objects.filter(pk=pinned.pk).update(pinned_until=NOW + timedelta(hours=1))

        preview = maintenance.preview_cleanup(now=NOW, threshold=timedelta(hours=24))

        self.assertEqual((preview.total, preview.pinned), (2, 1))
        self.assertEqual([r.candidate.id for r in preview.rows], [pinned.id, idle.id, org_idle.id])
        self.assertEqual(
            [r.why for r in preview.rows],
            [
                "idle 1.2 d > 1 d (global default); skipped: pinned until 2026-11-20 13:00 UTC",
                "idle 1.1 d > 1 d (global default)",
                "idle 20 min > 10 min (org globex's idle timeout)",
            ],
        )
        self.assertEqual([r.would_end for r in preview.rows], [False, True, True])


class ReconcileTestCase(MaintenanceTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.outside = Path(tempfile.mkdtemp(prefix="sessionadmin-outside-"))
        self.addCleanup(shutil.rmtree, self.outside, ignore_errors=True)
        (self.outside / "keep.txt").write_text("precious")

    def orphan(self, user: str, name: str, *, age: int) -> Path:
        path = self.workspace_root / user / name
        path.parent.mkdir(exist_ok=True, mode=0o700)
        path.mkdir(mode=0o700)
        (path / "left.txt").write_text("x")
        old = time.time() - age
        os.utime(path, (old, old))
        os.utime(path.parent, (old, old))
        return path

    @override_settings(SESSIONADMIN_ORPHAN_GRACE_SECONDS=3600)
    def test_it_repairs_what_is_safe_and_reports_the_rest(self) -> None:
        live = self.manager().create_session("user-1", "acme")
        os.chmod(live.workspace_path, 0o755)
        missing = self.manager().create_session("user-2", "acme")
        shutil.rmtree(missing.workspace_path)
        stuck = self.manager().create_session("user-3", "acme")
        lifecycle.end(session_ids=[stuck.id], actor="alice", reason="", enqueue=False)
        old_orphan = self.orphan("user-9", "0b6f5a6e-1111-4222-8333-444455556666", age=7200)
        new_orphan = self.orphan("user-1", "1b6f5a6e-1111-4222-8333-444455556666", age=10)
        os.symlink(self.outside, self.workspace_root / "user-1" / "2b6f5a6e-1111-4222-8333-444455556666")
        os.symlink(self.outside, self.workspace_root / "linked-user")
        os.chmod(self.outside, 0o755)
        outside_mode = 0o755

        probe = QueueProbe()
        self.addCleanup(probe.close)
        with self.captureOnCommitCallbacks(execute=True):
            run = maintenance.reconcile(triggered_by="alice")

        self.assertEqual(run.outcome, "ok")
        self.assertEqual(
            run.counts,
            {
                "orphans_removed": 1, "orphans_recent": 1, "modes_fixed": 1, "missing": 1, "removals_requeued": 1,
                "unexpected": 2, "user_dirs_removed": 1, "errors": 0, "runs_closed": 0,
            },
        )  # fmt: skip
        self.assertFalse(old_orphan.exists())
        self.assertFalse(old_orphan.parent.exists())  # its now empty, old user directory
        self.assertTrue(new_orphan.exists())
        self.assertEqual(os.stat(live.workspace_path).st_mode & 0o777, 0o700)
        self.assertEqual((self.outside / "keep.txt").read_text(), "precious")
        self.assertEqual(os.stat(self.outside).st_mode & 0o777, outside_mode)
        self.assertEqual(run.report["missing"], [f"user-2/{missing.id} (active session, directory missing)"])
        self.assertEqual(sorted(run.report["unexpected"]), [
            "linked-user (symlink; left alone)", "user-1/2b6f5a6e-1111-4222-8333-444455556666 (symlink; left alone)",
        ])  # fmt: skip
        # The stuck removal, enqueued again.
        self.assertEqual(
            probe.messages(),
            [("sessionadmin.tasks.remove_workspaces", [[str(stuck.id)]], {"actor": "system:inactivity-cleanup"})],
        )
        self.assertEqual(self.status(live), "active")
        removed = AuditEntry.objects.get(event_type="orphan_workspaces_removed")
        self.assertEqual(removed.details, {"count": 1, "paths": ["user-9/0b6f5a6e-1111-4222-8333-444455556666"]})


class IdleThresholdGuardTestCase(MaintenanceTestCase):
    def test_it_refuses_a_threshold_that_would_end_every_session(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        for seconds in (-3600, 0, 59):
            with self.subTest(seconds=seconds), self.assertRaisesMessage(ValueError, "at least 60"):
                maintenance.run_inactivity_cleanup(idle_timeout_seconds=seconds, inline=True)
        self.assertEqual(self.status(session), "active")


class PurgeTestCase(MaintenanceTestCase):
    def ended_session(self, user_id: str, *, ended_days_ago: int) -> AgentSession:
        session = self.manager().create_session(user_id, "acme")
        self.manager().cleanup_session(session.id, actor="alice")
        AgentSession.objects.filter(pk=session.pk).update(ended_at=NOW - timedelta(days=ended_days_ago))
        return session

    @override_settings(SESSIONADMIN_HISTORY_RETENTION_DAYS=30, SESSIONADMIN_AUDIT_RETENTION_DAYS=0)
    def test_it_purges_old_ended_sessions_and_keeps_the_audit_trail(self) -> None:
        old = self.ended_session("user-1", ended_days_ago=31)
        McpClient.objects.create(session=old, client_id="fs", transport="stdio")
        recent = self.ended_session("user-2", ended_days_ago=29)
        active = self.manager().create_session("user-3", "acme")
        MaintenanceRun.objects.update(started_at=NOW - timedelta(days=40))
        entries = AuditEntry.objects.count()

        with time_machine.travel(NOW, tick=False):
            run = maintenance.purge_history(triggered_by="beat")

        self.assertEqual(set(AgentSession.objects.values_list("pk", flat=True)), {recent.pk, active.pk})
        self.assertFalse(McpClient.objects.exists())
        self.assertEqual(run.counts, {"sessions_purged": 1, "runs_purged": 2, "audit_entries_purged": 0})
        # One entry per deleted chunk, written with it: what was deleted, and which sessions.
        purged = list(AuditEntry.objects.filter(pk__gt=0).order_by("-id")[:2])
        self.assertEqual(AuditEntry.objects.count(), entries + 2)
        self.assertEqual([e.event_type for e in purged], ["history_purged", "history_purged"])
        self.assertEqual(
            purged[1].details, {"what": "sessions", "count": 1, "history_days": 30, "audit_days": 0, "session_ids": [str(old.id)]}
        )
        self.assertEqual(purged[0].details, {"what": "runs", "count": 2, "history_days": 30, "audit_days": 0})

    @override_settings(SESSIONADMIN_HISTORY_RETENTION_DAYS=0, SESSIONADMIN_AUDIT_RETENTION_DAYS=10)
    def test_it_purges_audit_entries_only_past_their_own_retention(self) -> None:
        AuditEntry.objects.create(actor="alice", event_type="old", at=NOW - timedelta(days=11))
        anchor = ledger.checkpoint(now=NOW - timedelta(days=11))
        AuditEntry.objects.create(actor="alice", event_type="new", at=NOW - timedelta(days=9))

        with time_machine.travel(NOW, tick=False):
            run = maintenance.purge_history()

        self.assertEqual(sorted(AuditEntry.objects.values_list("event_type", flat=True)), ["history_purged", "new"])
        self.assertEqual(run.counts["audit_entries_purged"], 1)
        self.assertEqual(run.report["audit_anchor"], anchor.pk)
        self.assertTrue(ledger.verify().ok)

    def test_it_keeps_audit_entries_no_checkpoint_covers(self) -> None:
        AuditEntry.objects.create(actor="alice", event_type="old", at=NOW - timedelta(days=11))

        with time_machine.travel(NOW, tick=False):
            run = maintenance.purge_history()

        self.assertEqual(list(AuditEntry.objects.values_list("event_type", flat=True)), ["old"])
        self.assertEqual(run.counts["audit_entries_purged"], 0)


class HealthAndLivenessTestCase(MaintenanceTestCase):
    def test_it_records_a_clear_error_when_the_gateway_is_unavailable(self) -> None:
        with override_settings(SESSIONADMIN_GATEWAY_INTERNAL_URL="http://127.0.0.1:9"):
            run = maintenance.run_mcp_health(triggered_by="beat")

        self.assertEqual(run.outcome, "failed")
        self.assertIn("gateway unavailable", run.error)

    def test_it_reports_liveness_with_ages(self) -> None:
        ServiceHeartbeat.objects.create(name="worker", beat_at=NOW - timedelta(seconds=20))
        ServiceHeartbeat.objects.create(name="beat", beat_at=NOW - timedelta(seconds=200))

        health = maintenance.liveness(now=NOW)

        self.assertEqual(
            health,
            {
                "worker": {"last_seen": "2026-11-20T11:59:40+00:00", "age_seconds": 20.0, "ok": True},
                "beat": {"last_seen": "2026-11-20T11:56:40+00:00", "age_seconds": 200.0, "ok": False},
                "ok": False,
            },
        )

    def test_it_closes_runs_abandoned_by_a_lost_worker(self) -> None:
        MaintenanceRun.objects.create(task="reconciliation", started_at=NOW - timedelta(hours=2))
        MaintenanceRun.objects.create(task="inactivity_cleanup", started_at=NOW - timedelta(hours=2), report={"planning": True})
        MaintenanceRun.objects.create(task="inactivity_cleanup", started_at=NOW - timedelta(minutes=2))
        # A removal run stays open while its sessions are terminating: it is settled from them.
        MaintenanceRun.objects.create(task="workspace_removal", started_at=NOW - timedelta(hours=2))

        self.assertEqual(maintenance.close_abandoned_runs(now=NOW), 2)
        self.assertEqual(
            sorted(MaintenanceRun.objects.values_list("outcome", flat=True)), ["failed", "failed", "running", "running"]
        )

    def test_a_worker_that_starts_again_closes_its_own_runs_and_settles_removals(self) -> None:
        mine = MaintenanceRun.objects.create(task="reconciliation", started_at=NOW - timedelta(minutes=5), worker="worker@a")
        other = MaintenanceRun.objects.create(task="reconciliation", started_at=NOW - timedelta(minutes=5), worker="worker@b")
        session = self.manager().create_session("user-1", "acme")
        ended = lifecycle.end(session_ids=[session.id], actor="alice", reason="x", enqueue=False)
        # The removal happened, but the worker died before the run was settled.
        AgentSession.objects.filter(pk=session.pk).update(status="ended", ended_at=NOW)

        self.assertEqual(maintenance.settle_open_runs(worker="worker@a", now=NOW), 1)

        outcomes = dict(MaintenanceRun.objects.values_list("pk", "outcome"))
        self.assertEqual((outcomes[mine.pk], outcomes[other.pk], outcomes[ended.run_id]), ("failed", "running", "ok"))
        self.assertIn("worker lost", MaintenanceRun.objects.get(pk=mine.pk).error)


class RequestRunTestCase(MaintenanceTestCase):
    def test_it_enqueues_then_audits(self) -> None:
        probe = QueueProbe()
        self.addCleanup(probe.close)
        maintenance.request_run("reconciliation", actor="alice")

        self.assertEqual(probe.messages(), [("sessionadmin.tasks.reconcile_workspaces", [], {"triggered_by": "alice"})])
        entry = AuditEntry.objects.get(event_type="maintenance_run_requested")
        self.assertEqual((entry.actor, entry.details), ("alice", {"task": "reconciliation"}))
