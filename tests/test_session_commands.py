"""Management commands of the lifecycle: create_org, create_session, list_sessions,
cleanup_session, ensure_operator."""

from __future__ import annotations

import os
from io import StringIO

from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import TestCase

from sessionadmin.models import AgentSession, AuditEntry, Org
from tests.base import BaseTestCase, WorkspaceRootMixin
from tests.celery_worker import QueueProbe


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


class CreateOrgCommandTestCase(BaseTestCase):
    def test_it_creates_an_org_with_limits(self) -> None:
        self.assertIn("created org initech", run("create_org", "initech", "--name", "Initech", "--max-sessions", "3"))
        org = Org.objects.get(pk="initech")
        self.assertEqual((org.name, org.max_sessions), ("Initech", 3))
        self.assertEqual(AuditEntry.objects.get().event_type, "org_created")

    def test_it_fails_on_invalid_or_duplicate_id(self) -> None:
        with self.assertRaisesMessage(CommandError, "invalid org ID"):
            run("create_org", "../x")
        with self.assertRaisesMessage(CommandError, "exists already"):
            run("create_org", "acme")
        with self.assertRaisesMessage(CommandError, "max_sessions: Ensure this value is greater than or equal to 1."):
            run("create_org", "newco", "--max-sessions", "0")


class CreateSessionCommandTestCase(BaseTestCase):
    def test_it_creates_and_prints_the_session(self) -> None:
        out = run("create_session", "user-1", "acme", "--var", "team=core")
        session = AgentSession.objects.get()
        self.assertEqual(out.strip(), f"{session.id} {session.workspace_path}")
        self.assertEqual(session.variables, {"team": "core"})
        self.assertEqual(session.created_by, "cli")
        self.assertTrue(os.path.isdir(session.workspace_path))

    def test_it_exits_non_zero_with_the_reason(self) -> None:
        for args, message in [
            (("create_session", "bad/user", "acme"), "invalid user ID"),
            (("create_session", "user-1", "nope"), "unknown org"),
            (("create_session", "user-1", "acme", "--var", "novalue"), "NAME=VALUE"),
        ]:
            with self.subTest(args=args), self.assertRaisesMessage(CommandError, message):
                run(*args)
        self.assertFalse(AgentSession.objects.exists())

    def test_it_reports_a_full_limit(self) -> None:
        Org.objects.filter(pk="acme").update(max_sessions=1)
        run("create_session", "user-1", "acme")
        with self.assertRaisesMessage(CommandError, "has reached its limit"):
            run("create_session", "user-2", "acme")


class ListAndCleanupCommandTestCase(BaseTestCase):
    def test_it_lists_and_ends_sessions(self) -> None:
        first = self.manager().create_session("user-1", "acme")
        second = self.manager().create_session("user-2", "globex")
        out = run("list_sessions", "--org", "acme")
        self.assertIn(str(first.id), out)
        self.assertNotIn(str(second.id), out)
        probe = QueueProbe()
        self.addCleanup(probe.close)
        with self.captureOnCommitCallbacks(execute=True):
            out = run("cleanup_session", str(first.id), "--reason", "cli test")
        self.assertIn(f"session {first.id} is terminating; the workers remove it", out)
        self.assertEqual(probe.messages(), [("sessionadmin.tasks.remove_workspaces", [[str(first.id)]], {"actor": "cli"})])
        self.assertEqual(AgentSession.objects.get(pk=first.id).end_reason, "cli test")
        # --inline: no worker needed, done when the command returns.
        self.assertIn(f"ended session {second.id}", run("cleanup_session", str(second.id), "--inline"))
        self.assertIn(str(second.id), run("list_sessions", "--status", "ended"))
        self.assertFalse(os.path.exists(second.workspace_path))

    def test_it_fails_cleanly_on_unknown_ids(self) -> None:
        with self.assertRaisesMessage(CommandError, "not found"):
            run("cleanup_session", "not-a-uuid")
        with self.assertRaisesMessage(CommandError, "invalid user_id"):
            run("list_sessions", "--user", "../x")


class EnsureOperatorCommandTestCase(WorkspaceRootMixin, TestCase):
    def test_it_creates_the_first_operator_once(self) -> None:
        out = run("ensure_operator")
        password = next(line.split(":", 1)[1].strip() for line in out.splitlines() if "password:" in line)
        user = User.objects.get(username="admin")
        self.assertTrue(user.check_password(password))
        self.assertTrue(user.has_perm("sessionadmin.operate_sessions"))
        self.assertIn("Users exist already", run("ensure_operator"))
        self.assertEqual(User.objects.count(), 1)
