"""Workspaces on disk: modes whatever the umask, symlinks refused, never escaping the root."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

from sessionadmin import workspaces
from sessionadmin.manager import InvalidOrgID, InvalidUserID, WorkspaceCreationError
from sessionadmin.models import AgentSession, AuditEntry
from sessionadmin.validation import id_problem
from tests.base import BaseTestCase, WorkspaceRootMixin, make_personas


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class UmaskTestCase(BaseTestCase):
    def test_it_creates_0700_under_any_umask(self) -> None:
        for umask in (0o000, 0o077, 0o022, 0o777):
            with self.subTest(umask=oct(umask)):
                old = os.umask(umask)
                try:
                    session = self.manager().create_session(f"user-{umask}", "acme")
                finally:
                    os.umask(old)
                self.assertEqual(mode(session.workspace_path), 0o700)
                self.assertEqual(mode(Path(session.workspace_path).parent), 0o700)

    def test_it_repairs_the_mode_of_an_existing_user_directory(self) -> None:
        (self.workspace_root / "user-1").mkdir(parents=True, mode=0o755)
        os.chmod(self.workspace_root / "user-1", 0o755)
        self.manager().create_session("user-1", "acme")
        self.assertEqual(mode(self.workspace_root / "user-1"), 0o700)


class SymlinkTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.outside = self.workspace_root.parent / "outside"
        self.outside.mkdir()
        (self.outside / "precious.txt").write_text("keep me")
        self.workspace_root.mkdir()

    def test_it_refuses_a_symlinked_user_directory(self) -> None:
        (self.workspace_root / "user-1").symlink_to(self.outside)
        with self.assertRaisesMessage(WorkspaceCreationError, "symlink"):
            self.manager().create_session("user-1", "acme")
        self.assertFalse(AgentSession.objects.exists())
        self.assertEqual(sorted(p.name for p in self.outside.iterdir()), ["precious.txt"])
        self.assertEqual(AuditEntry.objects.get().event_type, "workspace_creation_failed")

    def test_it_refuses_a_symlink_planted_at_the_session_path(self) -> None:
        sid = str(uuid.uuid4())
        (self.workspace_root / "user-1").mkdir(mode=0o700)
        (self.workspace_root / "user-1" / sid).symlink_to(self.outside)
        with self.assertRaisesMessage(workspaces.WorkspaceError, "already exists"):
            workspaces.create_workspace(self.workspace_root, "user-1", sid)
        self.assertTrue((self.workspace_root / "user-1" / sid).is_symlink())

    def test_it_removes_a_planted_link_without_following_it(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        path = Path(session.workspace_path)
        (path / "escape").symlink_to(self.outside)
        (path / "file-link").symlink_to(self.outside / "precious.txt")
        self.manager().cleanup_session(session.id)
        self.assertFalse(path.exists())
        self.assertEqual((self.outside / "precious.txt").read_text(), "keep me")

    def test_it_unlinks_a_session_path_replaced_by_a_symlink(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        path = Path(session.workspace_path)
        path.rmdir()
        path.symlink_to(self.outside)
        self.manager().cleanup_session(session.id)
        self.assertFalse(os.path.lexists(path))
        self.assertEqual((self.outside / "precious.txt").read_text(), "keep me")

    def test_it_refuses_removal_through_a_symlinked_user_directory(self) -> None:
        sid = str(uuid.uuid4())
        (self.outside / sid).mkdir()
        (self.workspace_root / "user-1").symlink_to(self.outside)
        with self.assertRaises(workspaces.WorkspaceError):
            workspaces.remove_workspace(self.workspace_root, "user-1", sid)
        self.assertTrue((self.outside / sid).is_dir())


class CreationFailureTestCase(BaseTestCase):
    def test_it_leaves_no_row_and_no_directory_when_mkdir_fails(self) -> None:
        self.workspace_root.mkdir()
        (self.workspace_root / "user-1").write_text("a file where the user directory belongs")
        with self.assertRaisesMessage(WorkspaceCreationError, "not a directory"):
            self.manager().create_session("user-1", "acme")
        self.assertFalse(AgentSession.objects.exists())
        entry = AuditEntry.objects.get()
        self.assertEqual((entry.event_type, entry.user_id, entry.org_id), ("workspace_creation_failed", "user-1", "acme"))

    def test_it_removes_the_directory_when_the_transaction_fails_after_mkdir(self) -> None:
        from unittest import mock

        manager = self.manager()
        original = workspaces.create_workspace

        def create_then_fail(*args: object) -> Path:
            original(*args)  # type: ignore[arg-type]
            raise RuntimeError("database went away")

        with mock.patch("sessionadmin.lifecycle.workspaces.create_workspace", side_effect=create_then_fail):
            with self.assertRaisesMessage(RuntimeError, "database went away"):
                manager.create_session("user-1", "acme")
        self.assertFalse(AgentSession.objects.exists())
        self.assertEqual(list((self.workspace_root / "user-1").iterdir()), [])

    def test_it_removes_twice_without_error(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        self.assertTrue(workspaces.remove_workspace(self.workspace_root, "user-1", str(session.id)))
        self.assertFalse(workspaces.remove_workspace(self.workspace_root, "user-1", str(session.id)))


ODD_IDS = st.one_of(
    st.text(min_size=0, max_size=200),
    st.sampled_from(
        ["..", "../x", "a/../b", "/etc", "a/b", "a\\b", "a\x00b", " a", "a ", "a\tb", ".hidden", "-rf", "é", "\uff41", "a" * 129]
    ),
    st.builds(lambda a, b: f"{a}/{b}", st.text(max_size=10), st.text(max_size=10)),
)


class PropertyTestCase(WorkspaceRootMixin, HypothesisTestCase):
    """Each example runs in its own transaction (hypothesis' Django TestCase)."""

    @classmethod
    def setUpTestData(cls) -> None:
        make_personas(cls)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ODD_IDS)
    def test_it_never_creates_anything_outside_the_root(self, user_id: str) -> None:
        root = self.workspace_root.resolve()
        try:
            session = self.manager().create_session(user_id, "acme")
        except InvalidUserID:
            self.assertIsNotNone(id_problem(user_id))
            return
        # Accepted ids are plain names: the workspace is exactly root/user/session.
        self.assertIsNone(id_problem(user_id))
        path = Path(session.workspace_path)
        self.assertEqual(path.parent.parent, root)
        self.assertEqual(path.resolve().parent.parent, root)
        self.assertEqual(mode(path), 0o700)

    @settings(max_examples=150, deadline=None)
    @given(ODD_IDS)
    def test_it_validates_org_ids_the_same_way(self, org_id: str) -> None:
        try:
            self.manager().create_session("user-1", org_id)
        except InvalidOrgID as exc:
            self.assertTrue(id_problem(org_id) is not None or "unknown org" in str(exc))

    @given(st.from_regex(r"[A-Za-z0-9_@][A-Za-z0-9._@-]{0,127}", fullmatch=True))
    @settings(max_examples=100, deadline=None)
    def test_it_accepts_every_well_formed_id(self, value: str) -> None:
        self.assertEqual(id_problem(value) is None, ".." not in value)
