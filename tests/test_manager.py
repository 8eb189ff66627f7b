"""The session manager: every behaviour of the seed's SessionManagerV2, plus the rules it got
wrong (validation, atomic limits, symlinks, umask, audit in the same transaction)."""

from __future__ import annotations

import os
import stat
import uuid
from datetime import timedelta
from typing import Any
from unittest import mock

import time_machine
from django.test import TestCase
from django.utils import timezone

from sessionadmin.manager import (
    InvalidInput,
    InvalidOrgID,
    InvalidUserID,
    MaxSessionsReached,
    SessionError,
    SessionManager,
    SessionNotFound,
    WorkspaceCreationError,
    WorkspaceRemovalError,
    iter_idle,
)
from sessionadmin.models import AgentSession, AuditEntry, LimitLock, Org, PromptLayer
from tests.base import BaseTestCase


def events(**filters: Any) -> list[str]:
    return list(AuditEntry.objects.filter(**filters).order_by("id").values_list("event_type", flat=True))


class CreateSessionTestCase(BaseTestCase):
    def test_it_creates_session_with_workspace_0700(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        self.assertEqual(session.workspace_path, str(self.workspace_root / "user-1" / str(session.id)))
        self.assertEqual(stat.S_IMODE(os.stat(session.workspace_path).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.workspace_root / "user-1").st_mode), 0o700)
        row = AgentSession.objects.get()
        self.assertEqual(row.status, "active")
        self.assertEqual(row.org_id, "acme")
        self.assertEqual(row.created_by, "system")
        self.assertEqual(events(), ["session_created"])

    def test_it_returns_uuid_ids_and_seed_accessors(self) -> None:
        session = self.manager().create_session("user-1", "acme", actor="alice")
        self.assertIsInstance(session.id, uuid.UUID)
        self.assertEqual(session.user_id, "user-1")
        self.assertEqual(session.org_id, "acme")
        self.assertEqual(session.get_workspace_path(), session.workspace_path)
        self.assertEqual(session.created_at, session.last_active_at)
        info = session.get_session_info()
        self.assertEqual(
            set(info), {"id", "user_id", "org_id", "workspace_path", "mcp_client_ids", "created_at", "last_active_at", "status"}
        )
        self.assertEqual(info["id"], str(session.id))
        self.assertEqual(info["mcp_client_ids"], [])
        self.assertEqual(AuditEntry.objects.get().actor, "alice")

    def test_it_creates_distinct_workspaces_for_each_session(self) -> None:
        manager = self.manager()
        first = manager.create_session("user-1", "acme")
        second = manager.create_session("user-1", "acme")
        self.assertNotEqual(first.id, second.id)
        self.assertTrue(os.path.isdir(first.workspace_path))
        self.assertTrue(os.path.isdir(second.workspace_path))

    def test_it_rejects_invalid_user_id_before_org_id(self) -> None:
        with self.assertRaises(InvalidUserID):
            self.manager().create_session("", "")
        with self.assertRaises(InvalidOrgID):
            self.manager().create_session("user-1", "")
        self.assertFalse(AgentSession.objects.exists())

    def test_it_rejects_unknown_org(self) -> None:
        with self.assertRaisesMessage(InvalidOrgID, "unknown org 'nope'"):
            self.manager().create_session("user-1", "nope")
        entry = AuditEntry.objects.get()
        self.assertEqual((entry.event_type, entry.details["reason"]), ("session_create_failed", "unknown_org"))
        self.assertFalse(self.workspace_root.exists() and any(self.workspace_root.iterdir()))

    def test_it_audits_invalid_ids_without_storing_them_raw(self) -> None:
        with self.assertRaises(InvalidUserID):
            self.manager().create_session("../../etc", "acme")
        entry = AuditEntry.objects.get()
        self.assertEqual(entry.event_type, "session_create_failed")
        self.assertEqual(entry.user_id, "")
        self.assertEqual(entry.details["reason"], "invalid_user_id")
        self.assertEqual(entry.details["user_id"], "'../../etc'")

    def test_it_rejects_non_string_ids(self) -> None:
        for bad in (None, 123, ["user"]):
            with self.subTest(bad=bad), self.assertRaises(InvalidUserID):
                self.manager().create_session(bad, "acme")  # type: ignore[arg-type]

    def test_it_rejects_bad_variables(self) -> None:
        cases = [
            {"bad name": "x"},
            {"session_id": "mine"},
            {"x": {"nested": 1}},
            {"x": "y" * 5000},
            {f"v{i}": i for i in range(40)},
        ]
        for variables in cases:
            with self.subTest(variables=str(variables)[:40]), self.assertRaises(InvalidInput):
                self.manager().create_session("user-1", "acme", variables=variables)
        self.assertFalse(AgentSession.objects.exists())
        self.assertEqual(events(), ["session_create_failed"] * len(cases))

    def test_it_raises_subclasses_of_session_error(self) -> None:
        for error in (SessionNotFound, MaxSessionsReached, WorkspaceCreationError, InvalidUserID, InvalidOrgID):
            self.assertTrue(issubclass(error, SessionError))


class LimitsTestCase(BaseTestCase):
    def test_it_enforces_global_limit_of_two(self) -> None:
        manager = self.manager(max_concurrent=2)
        manager.create_session("user-1", "acme")
        manager.create_session("user-2", "globex")
        with self.assertRaises(MaxSessionsReached) as ctx:
            manager.create_session("user-3", "acme")
        self.assertEqual((ctx.exception.limit, ctx.exception.current, ctx.exception.maximum), ("global", 2, 2))
        self.assertIn("maximum concurrent sessions reached", str(ctx.exception))
        self.assertEqual(manager.count_all_sessions(), 2)
        failed = AuditEntry.objects.get(event_type="session_create_failed")
        self.assertEqual(failed.details["reason"], "max_sessions_reached")
        self.assertEqual(failed.details["limit"], "global")
        self.assertEqual(
            len(list((self.workspace_root / "user-3").glob("*"))) if (self.workspace_root / "user-3").exists() else 0, 0
        )

    def test_it_frees_a_slot_when_a_session_ends(self) -> None:
        manager = self.manager(max_concurrent=1)
        first = manager.create_session("user-1", "acme")
        manager.cleanup_session(first.id)
        manager.create_session("user-1", "acme")
        self.assertEqual(manager.count_all_sessions(), 1)

    def test_it_enforces_org_limit(self) -> None:
        Org.objects.filter(pk="acme").update(max_sessions=1)
        manager = self.manager()
        manager.create_session("user-1", "acme")
        manager.create_session("user-1", "globex")
        with self.assertRaisesMessage(MaxSessionsReached, "org 'acme' has reached its limit"):
            manager.create_session("user-2", "acme")

    def test_it_enforces_per_user_limit_within_org(self) -> None:
        Org.objects.filter(pk="acme").update(max_sessions_per_user=1)
        manager = self.manager()
        manager.create_session("user-1", "acme")
        manager.create_session("user-2", "acme")
        with self.assertRaises(MaxSessionsReached) as ctx:
            manager.create_session("user-1", "acme")
        self.assertEqual(ctx.exception.limit, "user")

    def test_it_uses_the_settings_limit_by_default(self) -> None:
        with self.settings(SESSIONADMIN_MAX_CONCURRENT=1):
            manager = SessionManager(self.workspace_root)
        self.assertEqual(manager.max_concurrent, 1)
        manager.create_session("user-1", "acme")
        with self.assertRaises(MaxSessionsReached):
            manager.create_session("user-2", "acme")


class GetSessionTestCase(BaseTestCase):
    def test_it_gets_by_str_or_uuid(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        self.assertEqual(manager.get_session(str(session.id)).id, session.id)
        self.assertEqual(manager.get_session(session.id).id, session.id)

    def test_it_raises_not_found_for_missing_and_malformed_ids(self) -> None:
        manager = self.manager()
        for bad in (uuid.UUID(int=7), "not-a-uuid", "", "../etc/passwd", None, 42):
            with self.subTest(bad=bad), self.assertRaises(SessionNotFound):
                manager.get_session(bad)  # type: ignore[arg-type]

    def test_it_raises_not_found_for_ended_session(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        manager.cleanup_session(session.id)
        with self.assertRaises(SessionNotFound):
            manager.get_session(session.id)

    def test_it_touches_last_active_at_coalesced(self) -> None:
        manager = self.manager()
        with time_machine.travel("2026-11-01 12:00:00Z", tick=False):
            session = manager.create_session("user-1", "acme")
        with time_machine.travel("2026-11-01 12:00:10Z", tick=False):
            # Within the 30 s resolution: no write.
            self.assertEqual(manager.get_session(session.id).last_active_at, session.created_at)
        with time_machine.travel("2026-11-01 12:01:00Z", tick=False):
            got = manager.get_session(session.id)
        self.assertEqual(got.last_active_at.isoformat(), "2026-11-01T12:01:00+00:00")
        self.assertEqual(AgentSession.objects.get().last_active_at.isoformat(), "2026-11-01T12:01:00+00:00")


class QueryTestCase(BaseTestCase):
    def test_it_counts_per_user_and_total(self) -> None:
        manager = self.manager()
        for user in ("user-1", "user-1", "user-2"):
            manager.create_session(user, "acme")
        ended = manager.create_session("user-1", "globex")
        manager.cleanup_session(ended.id)
        self.assertEqual(manager.count_user_sessions("user-1"), 2)
        self.assertEqual(manager.count_user_sessions("user-2"), 1)
        self.assertEqual(manager.count_user_sessions("nobody"), 0)
        self.assertEqual(manager.count_all_sessions(), 3)

    def test_it_lists_a_users_active_sessions(self) -> None:
        manager = self.manager()
        first = manager.create_session("user-1", "acme")
        second = manager.create_session("user-1", "globex")
        manager.create_session("user-2", "acme")
        self.assertEqual([s.id for s in manager.list_sessions("user-1")], [first.id, second.id])
        self.assertEqual(manager.list_sessions("nobody"), [])


class CleanupTestCase(BaseTestCase):
    def test_it_removes_workspace_and_audits_with_duration(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        (self.workspace_root / "user-1" / str(session.id) / "notes.txt").write_text("hello")
        manager.cleanup_session(session.id, actor="alice", reason="done")
        self.assertFalse(os.path.exists(session.workspace_path))
        row = AgentSession.objects.get()
        self.assertEqual((row.status, row.ended_by, row.end_reason), ("ended", "alice", "done"))
        self.assertIsNotNone(row.ended_at)
        self.assertEqual(events(), ["session_created", "session_terminating", "session_cleaned_up"])
        self.assertIn("duration_seconds", AuditEntry.objects.get(event_type="session_cleaned_up").details)

    def test_it_raises_not_found_on_double_cleanup_without_second_audit(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        manager.cleanup_session(session.id)
        with self.assertRaises(SessionNotFound):
            manager.cleanup_session(session.id)
        self.assertEqual(events(event_type="session_cleaned_up"), ["session_cleaned_up"])

    def test_it_raises_not_found_for_unknown_session(self) -> None:
        with self.assertRaises(SessionNotFound):
            self.manager().cleanup_session(uuid.uuid4())
        with self.assertRaises(SessionNotFound):
            self.manager().cleanup_session("garbage")

    def test_it_keeps_terminating_session_with_error_when_removal_fails(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        with mock.patch("sessionadmin.workspaces.shutil.rmtree", side_effect=PermissionError(13, "Permission denied")):
            with self.assertRaisesMessage(WorkspaceRemovalError, "Permission denied"):
                manager.cleanup_session(session.id, reason="done")
        row = AgentSession.objects.get()
        self.assertEqual((row.status, row.cleanup_attempts), ("terminating", 1))
        self.assertIn("Permission denied", row.last_error)
        self.assertTrue(os.path.isdir(session.workspace_path))
        self.assertEqual(events()[-1], "workspace_removal_failed")
        # A retry (by an operator or the maintenance) finishes the job.
        manager.cleanup_session(session.id)
        row.refresh_from_db()
        self.assertEqual((row.status, row.last_error), ("ended", ""))
        self.assertFalse(os.path.exists(session.workspace_path))

    def test_it_keeps_audit_entries_after_the_session_row_is_gone(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        manager.cleanup_session(session.id)
        AgentSession.objects.filter(pk=session.id).delete()
        self.assertEqual(len(events(session_id=session.id)), 3)

    def test_it_refuses_overlong_reason(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        with self.assertRaises(InvalidInput):
            manager.cleanup_session(session.id, reason="x" * 501)
        self.assertEqual(AgentSession.objects.get().status, "active")


class InactiveCleanupTestCase(BaseTestCase):
    def test_it_returns_exactly_the_idle_ids(self) -> None:
        manager = self.manager()
        with time_machine.travel("2026-11-01 10:00:00Z", tick=False):
            idle_a = manager.create_session("user-1", "acme")
            idle_b = manager.create_session("user-2", "globex")
        with time_machine.travel("2026-11-01 11:50:00Z", tick=False):
            fresh = manager.create_session("user-3", "acme")
        now = timezone.datetime.fromisoformat("2026-11-01T12:00:00+00:00")
        ended = manager.cleanup_inactive_sessions(timedelta(hours=1), now=now)
        self.assertEqual(sorted(ended), sorted([str(idle_a.id), str(idle_b.id)]))
        self.assertFalse(os.path.exists(idle_a.workspace_path))
        self.assertTrue(os.path.exists(fresh.workspace_path))
        self.assertEqual(AgentSession.objects.get(pk=fresh.id).status, "active")
        entry = AuditEntry.objects.filter(event_type="session_cleaned_up").first()
        self.assertEqual(entry.actor, "system:inactivity-cleanup")
        self.assertEqual(AgentSession.objects.get(pk=idle_a.id).end_reason, "idle")
        self.assertEqual(manager.cleanup_inactive_sessions(timedelta(hours=1), now=now), [])

    def test_it_honours_org_timeout_and_pins(self) -> None:
        Org.objects.filter(pk="globex").update(idle_timeout_seconds=600)
        manager = self.manager()
        with time_machine.travel("2026-11-01 11:40:00Z", tick=False):
            acme = manager.create_session("user-1", "acme")
            globex = manager.create_session("user-2", "globex")
            pinned = manager.create_session("user-3", "globex")
            manager.pin_session(
                pinned.id, until=timezone.datetime.fromisoformat("2026-11-02T00:00:00+00:00"), reason="demo", actor="alice"
            )
        now = timezone.datetime.fromisoformat("2026-11-01T12:00:00+00:00")
        self.assertEqual(manager.cleanup_inactive_sessions(timedelta(hours=1), now=now), [str(globex.id)])
        self.assertEqual(AgentSession.objects.get(pk=acme.id).status, "active")
        self.assertEqual(AgentSession.objects.get(pk=pinned.id).status, "active")
        later = timezone.datetime.fromisoformat("2026-11-02T00:00:01+00:00")
        self.assertEqual(
            sorted(manager.cleanup_inactive_sessions(timedelta(hours=1), now=later)), sorted([str(acme.id), str(pinned.id)])
        )


class PromptTestCase(BaseTestCase):
    def test_it_composes_global_org_user_layers_with_variables(self) -> None:
        Org.objects.filter(pk="acme").update(prompt="Org {{ org_id }} for {{user_id}}.")
        PromptLayer.objects.create(scope="global", name="second", body="Global two.", priority=20)
        PromptLayer.objects.create(scope="global", name="first", body="Global one, session {{ session_id }}.", priority=10)
        PromptLayer.objects.create(scope="org", org_id="acme", name="org extra", body="Team {{ team }}.")
        PromptLayer.objects.create(scope="org", org_id="globex", name="other org", body="Not for acme.")
        PromptLayer.objects.create(scope="user", user_id="user-1", name="me", body="Call me {{ nickname }}.")
        PromptLayer.objects.create(scope="user", user_id="user-1", name="off", body="Disabled.", enabled=False)
        session = self.manager().create_session("user-1", "acme", variables={"team": "core", "nickname": "Ada"})
        self.assertEqual(
            session.get_system_prompt(),
            f"Global one, session {session.id}.\n\nGlobal two.\n\nOrg acme for user-1.\n\nTeam core.\n\nCall me Ada.",
        )
        self.assertEqual([p["kind"] for p in session.prompt_provenance], ["global", "global", "org_prompt", "org", "user"])
        self.assertEqual(session.prompt_provenance[0]["version"], 1)
        self.assertEqual(len(session.prompt_provenance[0]["sha256"]), 64)

    def test_it_substitutes_safely(self) -> None:
        PromptLayer.objects.create(
            scope="global", name="tricky", body="{{ user_id.__class__ }} {{ missing }} {{ x }} {% load x %} ${HOME}"
        )
        session = self.manager().create_session("user-1", "acme", variables={"x": "{{ user_id }}"})
        self.assertEqual(session.system_prompt, "{{ user_id.__class__ }} {{ missing }} {{ user_id }} {% load x %} ${HOME}")

    def test_it_uses_custom_composer(self) -> None:
        calls: list[tuple[str, str, dict[str, Any]]] = []

        class Composer:
            def compose_system_prompt(self, user_id: str, org_id: str, variables: dict[str, Any]) -> str:
                calls.append((user_id, org_id, variables))
                return f"custom for {user_id}@{org_id}"

        manager = self.manager()
        manager.set_prompt_composer(Composer())
        session = manager.create_session("user-1", "acme", variables={"a": 1})
        self.assertEqual(session.system_prompt, "custom for user-1@acme")
        self.assertEqual(calls[0][2], {"a": "1", "user_id": "user-1", "org_id": "acme", "session_id": str(session.id)})
        self.assertEqual(session.prompt_provenance, [{"kind": "custom", "composer": "Composer"}])

    def test_it_creates_the_session_when_the_composer_fails(self) -> None:
        class Broken:
            def compose_system_prompt(self, user_id: str, org_id: str, variables: dict[str, Any]) -> str:
                raise RuntimeError("prompt store down")

        manager = self.manager(prompt_composer=Broken())
        session = manager.create_session("user-1", "acme")
        self.assertEqual(session.system_prompt, "")
        self.assertTrue(os.path.isdir(session.workspace_path))
        failure = AuditEntry.objects.get(event_type="prompt_composition_failed")
        self.assertEqual(failure.details["error"], "RuntimeError: prompt store down")
        self.assertEqual(failure.session_id, session.id)

    def test_it_updates_the_prompt_with_audit(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        session.update_system_prompt("New prompt", actor="alice")
        self.assertEqual(session.get_system_prompt(), "New prompt")
        self.assertEqual(AgentSession.objects.get().system_prompt, "New prompt")
        entry = AuditEntry.objects.get(event_type="system_prompt_updated")
        self.assertEqual((entry.actor, entry.details["new_length"]), ("alice", 10))
        with self.assertRaises(InvalidInput):
            session.update_system_prompt("x" * (256 * 1024 + 1))

    def test_it_refuses_prompt_update_of_ended_session(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        manager.cleanup_session(session.id)
        with self.assertRaises(SessionNotFound):
            manager.update_system_prompt(session.id, "late")


class AuditLoggerTestCase(BaseTestCase):
    def test_it_forwards_events_to_a_custom_logger_after_commit(self) -> None:
        received: list[tuple[str, str, str, str, dict[str, Any]]] = []

        class Logger:
            def log_session_event(
                self, user_id: str, org_id: str, event_type: str, session_id: str, details: dict[str, Any]
            ) -> None:
                received.append((user_id, org_id, event_type, session_id, details))

        manager = self.manager()
        manager.set_audit_logger(Logger())
        with self.captureOnCommitCallbacks(execute=True):
            session = manager.create_session("user-1", "acme")
        with self.captureOnCommitCallbacks(execute=True):
            manager.cleanup_session(session.id)
        self.assertEqual(
            [(r[0], r[1], r[2], r[3]) for r in received],
            [
                ("user-1", "acme", "session_created", str(session.id)),
                ("user-1", "acme", "session_terminating", str(session.id)),
                ("user-1", "acme", "session_cleaned_up", str(session.id)),
            ],
        )
        # The database trail is kept as well.
        self.assertEqual(len(events(session_id=session.id)), 3)

    def test_it_survives_a_raising_audit_logger(self) -> None:
        class Broken:
            def log_session_event(self, *args: Any) -> None:
                raise RuntimeError("siem down")

        manager = self.manager(audit_logger=Broken())
        with self.assertLogs("sessionadmin.audit", "ERROR"), self.captureOnCommitCallbacks(execute=True):
            session = manager.create_session("user-1", "acme")
        self.assertEqual(AgentSession.objects.get().status, "active")
        self.assertTrue(os.path.isdir(session.workspace_path))
        with self.assertLogs("sessionadmin.audit", "ERROR"), self.captureOnCommitCallbacks(execute=True):
            manager.cleanup_session(session.id)
        self.assertEqual(AgentSession.objects.get().status, "ended")


class AuditEntryTestCase(TestCase):
    def test_it_refuses_updates_and_deletes(self) -> None:
        entry = AuditEntry.objects.create(actor="x", event_type="e")
        entry.actor = "y"
        with self.assertRaises(PermissionError):
            entry.save()
        with self.assertRaises(PermissionError):
            entry.delete()
        self.assertEqual(AuditEntry.objects.get().actor, "x")


class ActiveCounterTestCase(BaseTestCase):
    """The global row's active_sessions is kept exact by database triggers, whatever writes the
    session rows."""

    def counter(self) -> int:
        return LimitLock.objects.get(pk=1).active_sessions

    def test_it_counts_creates_cleanups_and_direct_writes(self) -> None:
        manager = self.manager()
        first = manager.create_session("user-1", "acme")
        manager.create_session("user-2", "acme")
        self.assertEqual(self.counter(), 2)
        manager.cleanup_session(first.id)
        self.assertEqual(self.counter(), 1)
        # Writes that bypass the manager (bulk loads, the admin, a DBA) are counted too.
        now = timezone.now()
        AgentSession.objects.bulk_create(
            [AgentSession(user_id=f"bulk-{i}", org_id="acme", workspace_path="/x") for i in range(3)]
            + [
                AgentSession(user_id=f"old-{i}", org_id="acme", workspace_path="/x", status="ended", ended_at=now)
                for i in range(2)
            ]
        )
        self.assertEqual(self.counter(), 4)
        AgentSession.objects.filter(user_id__startswith="bulk-", status="active").update(status="terminating")
        self.assertEqual(self.counter(), 1)
        AgentSession.objects.filter(user_id="user-2").delete()
        self.assertEqual(self.counter(), 0)
        self.assertEqual(self.counter(), AgentSession.objects.active().count())

    def test_it_enforces_the_global_limit_from_the_counter(self) -> None:
        AgentSession.objects.bulk_create(
            [AgentSession(user_id=f"bulk-{i}", org_id="globex", workspace_path="/x") for i in range(3)]
        )
        with self.assertRaises(MaxSessionsReached) as ctx:
            self.manager(max_concurrent=3).create_session("user-1", "acme")
        self.assertEqual((ctx.exception.limit, ctx.exception.current), ("global", 3))


class BeginCleanupsTestCase(BaseTestCase):
    def test_it_skips_sessions_touched_or_pinned_after_selection(self) -> None:
        manager = self.manager()
        with time_machine.travel("2026-11-01 10:00:00Z", tick=False):
            idle = manager.create_session("user-1", "acme")
            touched = manager.create_session("user-2", "acme")
            pinned = manager.create_session("user-3", "acme")
        cutoff = timezone.datetime.fromisoformat("2026-11-01T11:00:00+00:00")
        cutoffs = {s.id: cutoff for s in (idle, touched, pinned)}
        # Between the idle walk and the lock: one session reports activity, one gets pinned.
        with time_machine.travel("2026-11-01 12:00:00Z", tick=False):
            manager.touch(touched.id)
            manager.pin_session(
                pinned.id, until=timezone.datetime.fromisoformat("2026-11-02T00:00:00+00:00"), reason="demo", actor="alice"
            )
            marked = manager.begin_cleanups(list(cutoffs), actor="system:test", reason="idle", idle_cutoffs=cutoffs)
        self.assertEqual([s.id for s in marked], [idle.id])
        self.assertEqual(AgentSession.objects.get(pk=pinned.id).status, "active")

    def test_it_skips_a_session_whose_tool_call_lease_runs_in_the_walk_and_under_the_lock(self) -> None:
        manager = self.manager()
        with time_machine.travel("2026-11-01 10:00:00Z", tick=False):
            idle = manager.create_session("user-1", "acme")
            busy = manager.create_session("user-2", "acme")
            leased_late = manager.create_session("user-3", "acme")
        now = timezone.datetime.fromisoformat("2026-11-01T12:00:00+00:00")
        # The gateway holds the lease of a session while a tool call is in flight.
        AgentSession.objects.filter(pk=busy.id).update(busy_until=now + timedelta(seconds=60))
        candidates = [c.id for c in iter_idle(timedelta(hours=1), now=now)]
        self.assertEqual(sorted(candidates), sorted([idle.id, leased_late.id]))
        # A call starts between the walk and the lock.
        AgentSession.objects.filter(pk=leased_late.id).update(busy_until=now + timedelta(seconds=60))
        cutoffs = {sid: now - timedelta(hours=1) for sid in candidates}
        with time_machine.travel(now, tick=False):
            marked = manager.begin_cleanups(candidates, actor="system:test", reason="idle", idle_cutoffs=cutoffs)
        self.assertEqual([s.id for s in marked], [idle.id])
        later = now + timedelta(minutes=5)  # the leases ran out: idle again
        self.assertEqual(
            sorted(manager.cleanup_inactive_sessions(timedelta(hours=1), now=later)), sorted([str(busy.id), str(leased_late.id)])
        )
