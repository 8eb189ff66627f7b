"""Limits under real concurrency: several processes (and threads) creating at once against the
test database, SQLite (IMMEDIATE transactions) or PostgreSQL (row locks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from django.conf import settings
from django.db import connection

from sessionadmin.manager import MaxSessionsReached
from sessionadmin.models import AgentSession, AuditEntry, Org
from tests.base import BaseTransactionTestCase, database_url

REPO = Path(__file__).resolve().parent.parent


class ParallelProcessesTestCase(BaseTransactionTestCase):
    def run_creators(
        self, processes: int, attempts: int, *, user_id: str = "user-1", max_concurrent: int = 0
    ) -> list[dict[str, list[str]]]:
        start = self.workspace_root.parent / "start"
        env = {**os.environ, "DATABASE_URL": database_url(), "SESSIONADMIN_SECRET_KEY": settings.SECRET_KEY}
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.parallel_create",
                    str(start),
                    str(self.workspace_root),
                    user_id,
                    "acme",
                    str(attempts),
                    str(max_concurrent),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        # Let every child import Django and connect before they all start together.
        import time

        time.sleep(3)
        start.write_text("go")
        results = []
        for child in children:
            out, err = child.communicate(timeout=120)
            self.assertEqual(child.returncode, 0, err[-2000:])
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results

    def test_it_never_exceeds_the_org_limit_across_processes(self) -> None:
        Org.objects.filter(pk="acme").update(max_sessions=5)
        results = self.run_creators(processes=6, attempts=3, user_id="user-1")
        created = [sid for r in results for sid in r["created"]]
        rejected = [limit for r in results for limit in r["rejected"]]
        self.assertEqual(len(created), 5)
        self.assertEqual(len(rejected), 13)
        self.assertEqual(set(rejected), {"org"})
        self.assertEqual(AgentSession.objects.filter(status="active").count(), 5)
        self.assertEqual(len(list((self.workspace_root / "user-1").iterdir())), 5)
        self.assertEqual(AuditEntry.objects.filter(event_type="session_created").count(), 5)
        self.assertEqual(AuditEntry.objects.filter(event_type="session_create_failed").count(), 13)

    def test_it_never_exceeds_the_global_limit_across_processes(self) -> None:
        results = self.run_creators(processes=4, attempts=3, max_concurrent=7)
        created = [sid for r in results for sid in r["created"]]
        self.assertEqual(len(created), 7)
        self.assertEqual(len(set(created)), 7)
        self.assertEqual(AgentSession.objects.count(), 7)


class ParallelThreadsTestCase(BaseTransactionTestCase):
    def test_it_creates_concurrently_from_threads_within_the_per_user_limit(self) -> None:
        Org.objects.filter(pk="acme").update(max_sessions_per_user=4)
        manager = self.manager()
        created: list[str] = []
        rejected: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def create() -> None:
            barrier.wait()
            try:
                sid = str(manager.create_session("user-1", "acme").id)
                with lock:
                    created.append(sid)
            except MaxSessionsReached as exc:
                with lock:
                    rejected.append(exc.limit)
            finally:
                connection.close()

        threads = [threading.Thread(target=create) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        self.assertEqual((len(created), rejected), (4, ["user"] * 4))
        self.assertEqual(manager.count_user_sessions("user-1"), 4)
