"""Maintenance tasks run by a REAL Celery worker (and beat where scheduling is under test).

On SQLite the worker uses kombu's filesystem broker; on PostgreSQL with CELERY_TEST_REDIS_URL
(``make test-postgres``) it uses Redis. See tests/celery_worker.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from sessionadmin import lifecycle, maintenance, tasks
from sessionadmin.models import AgentSession, AuditEntry, MaintenanceRun, Org, ServiceHeartbeat
from tests.base import BaseTransactionTestCase
from tests.celery_worker import CeleryWorker
from tests.celery_worker import wait_for as _wait_for


def chattr_works(probe_parent: Path) -> bool:
    probe = Path(tempfile.mkdtemp(dir=probe_parent))
    try:
        return subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        shutil.rmtree(probe, ignore_errors=True)


class WorkerTestCase(BaseTransactionTestCase):
    """One worker shared by the tests of a class, on a workspace root of the class."""

    beat: ClassVar[bool] = False
    concurrency: ClassVar[int] = 2
    faults: ClassVar[dict[str, str]] = {}
    start_worker: ClassVar[bool] = True
    worker: ClassVar[CeleryWorker]
    class_root: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.class_tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-worker-root-"))
        cls.class_root = cls.class_tmp / "workspaces"
        cls.class_root.mkdir(mode=0o700)
        cls.worker = CeleryWorker(workspace_root=cls.class_root, beat=cls.beat, concurrency=cls.concurrency, faults=cls.faults)
        if cls.start_worker:
            cls.worker.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.worker.close()
        shutil.rmtree(cls.class_tmp, ignore_errors=True)
        super().tearDownClass()

    def setUp(self) -> None:
        super().setUp()
        self.workspace_root = self.class_root
        override = override_settings(SESSIONADMIN_WORKSPACE_ROOT=self.class_root)
        override.enable()
        self.addCleanup(override.disable)
        self.addCleanup(self._empty_root)

    def wait(self, condition: Callable[[], Any], *, what: str) -> Any:
        try:
            return _wait_for(condition, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; worker output:\n" + "".join(self.worker.output[-40:])) from None

    def start_worker_now(self, **faults: str) -> None:
        """For classes whose worker starts inside the test: it is stopped before the database
        is flushed, so nothing it still does (beat keeps sending) leaks into the next test."""
        self.worker.faults = faults
        self.worker.start()
        self.addCleanup(self.worker.stop)

    def _empty_root(self) -> None:
        for child in self.class_root.iterdir():
            shutil.rmtree(child, ignore_errors=True)

    def idle_session(self, user_id: str, org_id: str = "acme", *, idle: timedelta, files: int = 3) -> AgentSession:
        session = self.manager().create_session(user_id, org_id, actor="alice")
        for i in range(files):
            Path(session.workspace_path, f"file-{i}.txt").write_text(f"content {i}")
        AgentSession.objects.filter(pk=session.pk).update(last_active_at=timezone.now() - idle)
        return session

    def status(self, session: AgentSession) -> str:
        return AgentSession.objects.values_list("status", flat=True).get(pk=session.pk)

    def audit_count(self, session: AgentSession, event_type: str) -> int:
        return AuditEntry.objects.filter(session_id=session.pk, event_type=event_type).count()

    def wait_finished(self, task: str, count: int = 1) -> list[MaintenanceRun]:
        def finished() -> list[MaintenanceRun] | None:
            runs = list(MaintenanceRun.objects.filter(task=task, finished_at__isnull=False).order_by("id"))
            return runs if len(runs) >= count else None

        return self.wait(finished, what=f"{count} finished {task} run(s)")


class ScheduledCleanupTestCase(WorkerTestCase):
    beat = True
    start_worker = False  # after the schedule exists: beat reads it at start

    def test_it_ends_idle_sessions_on_beat_schedule(self) -> None:
        Org.objects.filter(pk="globex").update(idle_timeout_seconds=600)
        idle = self.idle_session("user-idle", idle=timedelta(hours=2))
        org_idle = self.idle_session("user-org", "globex", idle=timedelta(minutes=20))
        recent = self.idle_session("user-recent", idle=timedelta(minutes=20))
        pinned = self.idle_session("user-pinned", idle=timedelta(hours=5))
        self.manager().pin_session(pinned.id, until=timezone.now() + timedelta(hours=1), reason="demo", actor="alice")
        PeriodicTask.objects.all().delete()  # the migration's defaults, before the first flush
        every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(
            name=maintenance.INACTIVITY_PERIODIC_TASK, task="sessionadmin.tasks.inactivity_cleanup",
            interval=every_second, kwargs='{"idle_timeout_seconds": 3600, "batch_size": 1}',
        )  # fmt: skip
        PeriodicTask.objects.create(name="heartbeat", task="sessionadmin.tasks.heartbeat", interval=every_second)
        self.start_worker_now()

        self.wait(lambda: self.status(idle) == self.status(org_idle) == "ended", what="the idle sessions to end")
        run = self.wait(
            lambda: MaintenanceRun.objects.filter(
                task="inactivity_cleanup", counts__sessions_ended=2, finished_at__isnull=False
            ).first(),
            what="the run that ended them",
        )
        self.wait(
            lambda: ServiceHeartbeat.objects.filter(name="worker", details__has_key="hostname").exists(),
            what="a worker heartbeat",
        )

        self.assertFalse(os.path.exists(idle.workspace_path))
        self.assertFalse(os.path.exists(org_idle.workspace_path))
        self.assertEqual(self.status(recent), "active")
        self.assertEqual(self.status(pinned), "active")
        self.assertTrue(os.path.exists(recent.workspace_path))
        self.assertTrue(os.path.exists(pinned.workspace_path))
        ended = AgentSession.objects.get(pk=idle.pk)
        self.assertEqual((ended.ended_by, ended.end_reason), ("system:inactivity-cleanup", "idle"))
        self.assertEqual(run.triggered_by, "beat")
        self.assertEqual(run.outcome, "ok")
        self.assertEqual(run.counts, {"sessions_marked": 2, "sessions_ended": 2, "directories_removed": 2, "errors": 0})
        self.assertEqual(sorted(run.session_ids), sorted([str(idle.id), str(org_idle.id)]))
        self.assertEqual(run.report["threshold_seconds"], 3600)
        health = maintenance.liveness()
        self.assertTrue(health["worker"]["ok"])
        self.assertTrue(health["beat"]["ok"])


class WorkerCleanupTestCase(WorkerTestCase):
    concurrency = 2
    use_chattr: ClassVar[bool]

    @classmethod
    def setUpClass(cls) -> None:
        # A real EPERM where the filesystem allows it (root ignores modes, not the immutable
        # flag); otherwise the worker's removal is made to fail for that user.
        cls.use_chattr = chattr_works(Path(tempfile.gettempdir()))
        cls.faults = {} if cls.use_chattr else {"fail_user": "user-locked"}
        super().setUpClass()

    def test_it_never_ends_a_session_twice_when_runs_race(self) -> None:
        sessions = [self.idle_session(f"user-{i}", idle=timedelta(hours=3), files=1) for i in range(30)]

        tasks.inactivity_cleanup.delay(idle_timeout_seconds=3600, batch_size=4, triggered_by="first")
        tasks.inactivity_cleanup.delay(idle_timeout_seconds=3600, batch_size=4, triggered_by="second")
        runs = self.wait_finished("inactivity_cleanup", count=2)
        self.wait(lambda: all(self.status(s) == "ended" for s in sessions), what="every session to end")

        self.assertEqual(sum(r.counts["sessions_marked"] for r in runs), 30)
        self.assertEqual(sum(r.counts["sessions_ended"] for r in runs), 30)
        self.assertEqual({r.outcome for r in runs}, {"ok"})
        for s in sessions:
            self.assertEqual(self.audit_count(s, "session_terminating"), 1)
            self.assertEqual(self.audit_count(s, "session_cleaned_up"), 1)
            self.assertFalse(os.path.exists(s.workspace_path))
        marked = [sid for r in runs for sid in r.session_ids]
        self.assertEqual(len(marked), 30)
        self.assertEqual(len(set(marked)), 30)

    def test_it_keeps_an_unremovable_workspace_terminating_with_its_error(self) -> None:
        locked = self.idle_session("user-locked", idle=timedelta(hours=3))
        other = self.idle_session("user-fine", idle=timedelta(hours=3))
        if self.use_chattr:
            subprocess.run(["chattr", "+i", locked.workspace_path], check=True)
            self.addCleanup(subprocess.run, ["chattr", "-i", locked.workspace_path])

        tasks.inactivity_cleanup.delay(idle_timeout_seconds=3600, batch_size=10)
        (run,) = self.wait_finished("inactivity_cleanup")

        row = AgentSession.objects.get(pk=locked.pk)
        self.assertEqual(row.status, "terminating")
        self.assertIn("Operation not permitted", row.last_error)
        self.assertGreaterEqual(row.cleanup_attempts, 1)  # the worker keeps retrying with backoff
        self.assertTrue(os.path.exists(locked.workspace_path))
        self.assertEqual(self.status(other), "ended")
        self.assertEqual(run.outcome, "partial")
        self.assertEqual(run.counts["sessions_ended"], 1)
        self.assertEqual(run.counts["errors"], 1)
        self.assertIn("Operation not permitted", run.report["failed"][str(locked.id)])
        self.assertGreaterEqual(self.audit_count(locked, "workspace_removal_failed"), 1)

    def test_it_removes_through_a_symlink_without_deleting_outside(self) -> None:
        outside = Path(tempfile.mkdtemp(prefix="sessionadmin-outside-"))
        self.addCleanup(shutil.rmtree, outside, ignore_errors=True)
        (outside / "keep.txt").write_text("precious")
        session = self.idle_session("user-link", idle=timedelta(seconds=0))
        os.symlink(outside, Path(session.workspace_path, "escape"))
        os.symlink(outside / "keep.txt", Path(session.workspace_path, "escape-file"))

        lifecycle.end(session_ids=[session.id], actor="alice", reason="done")
        self.wait(lambda: self.status(session) == "ended", what="the session to end")

        self.assertFalse(os.path.exists(session.workspace_path))
        self.assertEqual((outside / "keep.txt").read_text(), "precious")
        run = self.wait(
            lambda: MaintenanceRun.objects.filter(task="workspace_removal", outcome="ok").first(), what="the run to settle"
        )
        self.assertEqual(run.counts, {"sessions_ended": 1, "directories_removed": 1, "errors": 0})
        self.assertEqual(run.session_ids, [str(session.id)])

    def test_a_bulk_kill_from_the_dashboard_is_removed_by_the_worker(self) -> None:
        sessions = [self.manager().create_session(f"user-{i % 7}", "acme") for i in range(500)]
        self.client.force_login(self.alice)

        r = self.client.post(reverse("session_bulk_kill"), {"ids": [str(s.id) for s in sessions], "reason": "cost"})

        self.assertEqual(r.status_code, 302)
        self.assertEqual(AgentSession.objects.filter(status__in=["terminating", "ended"]).count(), 500)
        self.wait(lambda: not AgentSession.objects.exclude(status="ended").exists(), what="the worker to end all 500")
        self.assertEqual([p for p in self.class_root.iterdir()], [])  # workspaces and emptied user directories
        run = MaintenanceRun.objects.get(task="workspace_removal")
        self.wait(lambda: MaintenanceRun.objects.get(pk=run.pk).outcome == "ok", what="the run to settle")
        self.assertEqual(MaintenanceRun.objects.get(pk=run.pk).counts["sessions_ended"], 500)

    def test_it_removes_a_workspace_from_the_root_it_was_created_in(self) -> None:
        # The session was created before SESSIONADMIN_WORKSPACE_ROOT changed (the worker runs
        # with the new root): its directory is removed where it is, not looked for in the new root.
        old_root = self.class_tmp / "old-root"
        session = self.manager(workspace_root=old_root).create_session("user-moved", "acme")
        Path(session.workspace_path, "data.txt").write_text("x")
        self.assertTrue(session.workspace_path.startswith(str(old_root)))

        lifecycle.end(session_ids=[session.id], actor="alice", reason="moved")
        self.wait(lambda: self.status(session) == "ended", what="the session to end")

        self.assertFalse(os.path.exists(session.workspace_path))
        self.assertEqual(list(old_root.iterdir()), [])


class WorkerKilledTestCase(WorkerTestCase):
    start_worker = False

    def test_it_finishes_a_removal_after_the_worker_is_killed_mid_way(self) -> None:
        marker = self.class_tmp / "hanging"
        first = self.idle_session("user-hang", idle=timedelta(hours=3))
        second = self.idle_session("user-hang", idle=timedelta(hours=3))
        self.start_worker_now(hang_user="user-hang", hang_marker=str(marker))

        tasks.inactivity_cleanup.delay(idle_timeout_seconds=3600, batch_size=10)
        self.wait(marker.exists, what="the removal to start")
        self.worker.kill()
        # One directory is gone, the other still there; neither session is ended.
        self.assertEqual({self.status(first), self.status(second)}, {"terminating"})
        self.assertEqual(sum(os.path.exists(s.workspace_path) for s in (first, second)), 1)

        self.start_worker_now()
        self.wait(lambda: self.status(first) == self.status(second) == "ended", what="the sessions to end after restart")

        for s in (first, second):
            self.assertFalse(os.path.exists(s.workspace_path))
            self.assertEqual(self.audit_count(s, "session_terminating"), 1)
            self.assertEqual(self.audit_count(s, "session_cleaned_up"), 1)
        self.assertEqual(AuditEntry.objects.filter(event_type="session_cleaned_up").count(), 2)
        # The directory removed before the kill is not reported as a failure by the redelivery
        # (Redis) or the re-enqueue at start (both may run, at once).
        self.assertFalse(AuditEntry.objects.filter(event_type="workspace_removal_failed").exists())
        self.wait(
            lambda: not MaintenanceRun.objects.filter(outcome="running").exists(), what="no run left running after the restart"
        )
        run = MaintenanceRun.objects.get(task="inactivity_cleanup")
        self.assertIn(run.outcome, ("ok", "failed"))
        if run.outcome == "failed":  # the worker died while still planning: it closed its own run
            self.assertIn("worker lost", run.error)
