from __future__ import annotations

import os
import stat

from sessionadmin.manager import SessionNotFound
from sessionadmin.models import AgentSession, AuditEntry
from tests.base import BaseTestCase


class CreateSessionTestCase(BaseTestCase):
    def test_it_creates_session_with_workspace_0700(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        self.assertEqual(session.workspace_path, str(self.workspace_root / "user-1" / str(session.id)))
        self.assertEqual(stat.S_IMODE(os.stat(session.workspace_path).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.workspace_root / "user-1").st_mode), 0o700)
        self.assertEqual(AgentSession.objects.get().status, "active")
        self.assertEqual(AuditEntry.objects.get().event_type, "session_created")

    def test_it_ends_session_and_removes_workspace(self) -> None:
        manager = self.manager()
        session = manager.create_session("user-1", "acme")
        manager.cleanup_session(session.id, actor="alice", reason="done")
        self.assertFalse(os.path.exists(session.workspace_path))
        with self.assertRaises(SessionNotFound):
            manager.cleanup_session(session.id)
