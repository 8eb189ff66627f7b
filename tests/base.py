"""Shared test fixtures: named personas, an org, and a private workspace root per test.

Personas:
- alice: operator (may act)            - bob: viewer (may look)
- charlie: logged in, no role at all   - root: superuser
- dave: MCP admin (defines the MCP catalog; no session rights)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth.models import Group, User
from django.test import TestCase, TransactionTestCase, override_settings

from sessionadmin.manager import SessionManager
from sessionadmin.models import Org
from sessionadmin.roles import MCP_ADMINS, OPERATORS, VIEWERS, ensure_roles

PASSWORD = "correct-horse-battery-staple"


def database_url() -> str:
    """A DATABASE_URL for child processes (workers, parallel creators) that points at the
    database the current test runs against."""
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(conf['NAME']).resolve()}"
    auth = conf["USER"] + (f":{conf['PASSWORD']}" if conf["PASSWORD"] else "")
    return f"postgres://{auth}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


class WorkspaceRootMixin:
    """Points SESSIONADMIN_WORKSPACE_ROOT at a fresh temporary folder for each test."""

    workspace_root: Path

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-test-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)  # type: ignore[attr-defined]
        self.workspace_root = tmp / "workspaces"
        override = override_settings(SESSIONADMIN_WORKSPACE_ROOT=self.workspace_root)
        override.enable()
        self.addCleanup(override.disable)  # type: ignore[attr-defined]

    def manager(self, **kwargs: Any) -> SessionManager:
        kwargs.setdefault("max_concurrent", 0)
        return SessionManager(kwargs.pop("workspace_root", self.workspace_root), **kwargs)


def make_personas(test: Any) -> None:
    ensure_roles()
    test.alice = User.objects.create_user("alice", password=PASSWORD)
    test.alice.groups.add(Group.objects.get(name=OPERATORS))
    test.bob = User.objects.create_user("bob", password=PASSWORD)
    test.bob.groups.add(Group.objects.get(name=VIEWERS))
    test.charlie = User.objects.create_user("charlie", password=PASSWORD)
    test.root = User.objects.create_superuser("root", password=PASSWORD)
    test.dave = User.objects.create_user("dave", password=PASSWORD)
    test.dave.groups.add(Group.objects.get(name=MCP_ADMINS))
    test.org = Org.objects.create(id="acme", name="Acme Corp")
    test.other_org = Org.objects.create(id="globex", name="Globex")


class BaseTestCase(WorkspaceRootMixin, TestCase):
    alice: User
    bob: User
    charlie: User
    root: User
    dave: User
    org: Org
    other_org: Org

    @classmethod
    def setUpTestData(cls) -> None:
        make_personas(cls)


class BaseTransactionTestCase(WorkspaceRootMixin, TransactionTestCase):
    """For tests that need real commits: several connections, processes or a worker."""

    alice: User
    bob: User
    charlie: User
    root: User
    dave: User
    org: Org
    other_org: Org

    def setUp(self) -> None:
        super().setUp()
        make_personas(self)
