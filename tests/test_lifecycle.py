"""lifecycle: the one owner of session state changes (the manager facade is in test_manager)."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import time_machine
from django.utils import timezone

from sessionadmin import lifecycle
from sessionadmin.lifecycle import InvalidInput
from sessionadmin.models import AgentSession, AuditEntry, MaintenanceRun
from tests.base import BaseTestCase


class EndTestCase(BaseTestCase):
    def test_it_marks_terminating_audits_and_records_a_run(self) -> None:
        a = self.manager().create_session("user-1", "acme")
        b = self.manager().create_session("user-2", "acme")
        ended = lifecycle.end(session_ids=[a.id, b.id, uuid.uuid4()], actor="alice", reason="cost", enqueue=False)

        self.assertEqual(sorted(ended.ids), sorted([str(a.id), str(b.id)]))
        rows = AgentSession.objects.filter(pk__in=[a.id, b.id])
        self.assertEqual({(r.status, r.ended_by, r.end_reason, r.cleanup_run_id) for r in rows},
                         {("terminating", "alice", "cost", ended.run_id)})  # fmt: skip
        run = MaintenanceRun.objects.get(pk=ended.run_id)
        self.assertEqual((run.task, run.triggered_by, run.outcome), ("workspace_removal", "alice", "running"))
        self.assertEqual(AuditEntry.objects.filter(event_type="session_terminating").count(), 2)
        # Ending again does nothing: the sessions are no longer active.
        self.assertEqual(lifecycle.end(session_ids=[a.id], actor="bob", reason="x").sessions, [])

    def test_it_skips_sessions_touched_pinned_or_busy_after_selection(self) -> None:
        manager = self.manager()
        with time_machine.travel("2026-11-01 10:00:00Z", tick=False):
            idle, touched, pinned, busy = (manager.create_session(f"user-{i}", "acme") for i in range(4))
        cutoff = timezone.datetime.fromisoformat("2026-11-01T11:00:00+00:00")
        cutoffs = {s.id: cutoff for s in (idle, touched, pinned, busy)}
        # Between the idle walk and the lock: activity, a pin, and a tool call in flight.
        with time_machine.travel("2026-11-01 12:00:00Z", tick=False):
            manager.touch(touched.id)
            manager.pin_session(
                pinned.id, until=timezone.datetime.fromisoformat("2026-11-02T00:00:00+00:00"), reason="demo", actor="alice"
            )
            AgentSession.objects.filter(pk=busy.id).update(busy_until=timezone.now() + timedelta(seconds=60))
            ended = lifecycle.end(
                session_ids=list(cutoffs), actor="system:test", reason="idle", idle_cutoffs=cutoffs, enqueue=False
            )
        self.assertEqual(ended.ids, [str(idle.id)])
        statuses = dict(AgentSession.objects.values_list("id", "status"))
        self.assertEqual([statuses[s.id] for s in (touched, pinned, busy)], ["active"] * 3)

    def test_it_refuses_hostile_reasons_and_changes_nothing(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        for reason, message in [
            ("a\x00b", "must not contain NUL"),
            ("\ud800", "lone surrogates"),
            ("x" * 501, "longer than 500"),
            (42, "must be a string"),
        ]:
            with self.subTest(reason=repr(reason)[:20]), self.assertRaisesMessage(InvalidInput, message):
                lifecycle.end(session_ids=[session.id], actor="alice", reason=reason)  # type: ignore[arg-type]
        self.assertEqual(AgentSession.objects.get(pk=session.id).status, "active")
        self.assertFalse(MaintenanceRun.objects.exists())

    def test_it_respects_a_scope(self) -> None:
        mine = self.manager().create_session("user-1", "acme")
        theirs = self.manager().create_session("user-1", "globex")
        scope = AgentSession.objects.filter(org_id="acme")
        ended = lifecycle.end(session_ids=[mine.id, theirs.id], actor="token:x", reason="", within=scope, enqueue=False)
        self.assertEqual(ended.ids, [str(mine.id)])


class FinishTestCase(BaseTestCase):
    def end(self, *sessions: AgentSession) -> lifecycle.Ended:
        return lifecycle.end(session_ids=[s.id for s in sessions], actor="alice", reason="done", enqueue=False)

    def test_it_removes_at_the_stored_path_after_the_root_changed(self) -> None:
        old_root = self.workspace_root.parent / "old-root"
        session = self.manager(workspace_root=old_root).create_session("user-1", "acme")
        Path(session.workspace_path, "f.txt").write_text("x")
        self.end(session)

        # Today's root is self.workspace_root (settings); the session lives under old_root.
        result = lifecycle.finish(session_ids=[session.id], actor="system:test")

        self.assertEqual(result.ended, [str(session.id)])
        self.assertFalse(os.path.exists(session.workspace_path))
        self.assertFalse((old_root / "user-1").exists())  # its emptied user directory too

    def test_it_removes_the_user_directory_with_the_users_last_session_only(self) -> None:
        first = self.manager().create_session("user-9", "acme")
        second = self.manager().create_session("user-9", "acme")
        user_dir = self.workspace_root / "user-9"
        self.end(first, second)

        lifecycle.finish(session_ids=[first.id], actor="system:test")
        self.assertEqual(sorted(os.listdir(user_dir)), [str(second.id)])  # still in use

        lifecycle.finish(session_ids=[second.id], actor="system:test")
        self.assertFalse(user_dir.exists())  # no empty {root}/{user}/ left behind
        self.assertEqual(os.listdir(self.workspace_root), [])

    def test_an_already_removed_workspace_is_success(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        self.end(session)
        os.rmdir(session.workspace_path)

        result = lifecycle.finish(session_ids=[session.id], actor="system:test")

        self.assertEqual((result.ended, result.failed), ([str(session.id)], {}))
        self.assertFalse(AuditEntry.objects.filter(event_type="workspace_removal_failed").exists())

    def test_it_refuses_a_stored_path_that_is_not_the_sessions_own(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        decoy = self.workspace_root / "decoy"
        decoy.mkdir()
        AgentSession.objects.filter(pk=session.id).update(workspace_path=str(decoy))
        self.end(session)

        result = lifecycle.finish(session_ids=[session.id], actor="system:test")

        self.assertIn("refusing to remove", result.failed[str(session.id)])
        self.assertTrue(decoy.exists())
        self.assertEqual(AgentSession.objects.get(pk=session.id).status, "terminating")
        self.assertEqual(AuditEntry.objects.filter(event_type="workspace_removal_failed").count(), 1)

    def test_it_keeps_the_user_directory_while_the_user_has_sessions(self) -> None:
        first = self.manager().create_session("user-1", "acme")
        second = self.manager().create_session("user-1", "acme")
        self.end(first)
        lifecycle.finish(session_ids=[first.id], actor="system:test")
        self.assertTrue(os.path.isdir(second.workspace_path))
        # A new session for the user after the directory was pruned gets it back.
        self.end(second)
        lifecycle.finish(session_ids=[second.id], actor="system:test")
        self.assertFalse((self.workspace_root / "user-1").exists())
        third = self.manager().create_session("user-1", "acme")
        self.assertTrue(os.path.isdir(third.workspace_path))

    def test_a_second_delivery_writes_nothing(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        ended = self.end(session)
        lifecycle.finish(session_ids=[session.id], actor="system:test")
        entries = AuditEntry.objects.count()

        self.assertEqual(lifecycle.finish(session_ids=[session.id], actor="system:test").ended, [])
        self.assertEqual(AuditEntry.objects.count(), entries)
        run = MaintenanceRun.objects.get(pk=ended.run_id)
        self.assertEqual((run.outcome, run.counts["sessions_ended"]), ("ok", 1))


class BusyLeaseTestCase(BaseTestCase):
    def test_it_skips_a_session_whose_tool_call_lease_runs_in_the_walk_and_under_the_lock(self) -> None:
        manager = self.manager()
        with time_machine.travel("2026-11-01 10:00:00Z", tick=False):
            idle = manager.create_session("user-1", "acme")
            busy = manager.create_session("user-2", "acme")
            leased_late = manager.create_session("user-3", "acme")
        now = timezone.datetime.fromisoformat("2026-11-01T12:00:00+00:00")
        # The gateway holds the lease of a session while a tool call is in flight.
        AgentSession.objects.filter(pk=busy.id).update(busy_until=now + timedelta(seconds=60))
        candidates = [c.id for c in lifecycle.iter_idle(timedelta(hours=1), now=now)]
        self.assertEqual(sorted(candidates), sorted([idle.id, leased_late.id]))
        # A call starts between the walk and the lock.
        AgentSession.objects.filter(pk=leased_late.id).update(busy_until=now + timedelta(seconds=60))
        cutoffs = {sid: now - timedelta(hours=1) for sid in candidates}
        ended = lifecycle.end(
            session_ids=candidates, actor="system:test", reason="idle", idle_cutoffs=cutoffs, enqueue=False, now=now
        )
        self.assertEqual(ended.ids, [str(idle.id)])
        later = now + timedelta(minutes=5)  # the leases ran out: idle again
        self.assertEqual(
            sorted(manager.cleanup_inactive_sessions(timedelta(hours=1), now=later)), sorted([str(busy.id), str(leased_late.id)])
        )
