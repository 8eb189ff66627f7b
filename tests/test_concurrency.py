"""Limits under real concurrency: several processes (and threads) creating at once against the
test database, SQLite (IMMEDIATE transactions) or PostgreSQL (row locks).

The processes start together through a real barrier (see tests/parallel_create.py): every child
must report ready within ``READY_TIMEOUT`` or the test fails, and a run where one child started
its work after another had finished (so they did not run together) fails too."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.db import connection
from django.test import SimpleTestCase

from sessionadmin.manager import MaxSessionsReached
from sessionadmin.models import AgentSession, AuditEntry, Org
from tests.base import BaseTransactionTestCase, database_url

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0


def check_ran_together(results: list[dict[str, Any]]) -> None:
    """Every child started its work before any child finished its own."""
    last_start = max(r["started"] for r in results)
    first_finish = min(r["finished"] for r in results)
    if last_start >= first_finish:
        late = [i for i, r in enumerate(results) if r["started"] >= first_finish]
        raise AssertionError(f"children {late} started after another child had finished: the creates ran one after another")


class StartBarrier:
    """The parent's side of the start barrier: an exclusive flock that the children wait on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.fd = os.open(folder / "release", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def wait_until_ready(self, children: list[subprocess.Popen[str]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = [i for i in range(len(children)) if not (self.folder / f"ready-{i}").exists()]
            if not missing:
                return
            for i in missing:
                if children[i].poll() is not None:
                    raise AssertionError(f"child {i} exited before the start: {children[i].communicate()[1][-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"children {missing} were not ready within {timeout:.0f} s: no start barrier, no test")
            time.sleep(0.02)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class ParallelProcessesTestCase(BaseTransactionTestCase):
    def run_creators(
        self,
        processes: int,
        attempts: int,
        *,
        user_id: str = "user-1",
        max_concurrent: int = 0,
        ready_timeout: float = READY_TIMEOUT,
        slow_start: dict[int, float] | None = None,
    ) -> list[dict[str, Any]]:
        barrier = StartBarrier(self.workspace_root.parent / "barrier")
        args = [str(barrier.folder), str(self.workspace_root), user_id, "acme", str(attempts), str(max_concurrent)]
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.parallel_create", *args],
                cwd=REPO,
                env={
                    **os.environ,
                    "DATABASE_URL": database_url(),
                    "PARALLEL_CREATE_INDEX": str(i),
                    "PARALLEL_CREATE_CHILDREN": str(processes),
                    "PARALLEL_CREATE_SLOW_START": str((slow_start or {}).get(i, 0)),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(processes)
        ]
        try:
            barrier.wait_until_ready(children, ready_timeout)
        except AssertionError:
            for child in children:
                child.kill()
                child.communicate()
            raise
        finally:
            barrier.release()
        results = []
        for child in children:
            out, err = child.communicate(timeout=120)
            self.assertEqual(child.returncode, 0, err[-2000:])
            results.append(json.loads(out.strip().splitlines()[-1]))
        check_ran_together(results)
        return results

    def test_it_fails_when_a_child_is_not_ready_in_time(self) -> None:
        with self.assertRaisesRegex(AssertionError, r"children \[1\] were not ready within 15 s"):
            self.run_creators(processes=2, attempts=1, ready_timeout=15, slow_start={1: 3600})
        # Nobody was released: the fast child did not go ahead on its own.
        self.assertEqual(AgentSession.objects.count(), 0)

    def test_it_never_exceeds_the_org_limit_across_processes(self) -> None:
        Org.objects.filter(pk="acme").update(max_sessions=5)
        # Six attempts each: every child is still at work when the last one starts.
        results = self.run_creators(processes=6, attempts=6, user_id="user-1")
        created = [sid for r in results for sid in r["created"]]
        rejected = [limit for r in results for limit in r["rejected"]]
        self.assertEqual(len(created), 5)
        self.assertEqual(len(rejected), 31)
        self.assertEqual(set(rejected), {"org"})
        self.assertEqual(AgentSession.objects.filter(status="active").count(), 5)
        self.assertEqual(len(list((self.workspace_root / "user-1").iterdir())), 5)
        self.assertEqual(AuditEntry.objects.filter(event_type="session_created").count(), 5)
        self.assertEqual(AuditEntry.objects.filter(event_type="session_create_failed").count(), 31)

    def test_it_never_exceeds_the_global_limit_across_processes(self) -> None:
        results = self.run_creators(processes=4, attempts=6, max_concurrent=7)
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
        barrier = threading.Barrier(8, timeout=60)

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


class RanTogetherTestCase(SimpleTestCase):
    def test_it_accepts_children_whose_work_overlapped(self) -> None:
        check_ran_together([{"started": 1.0, "finished": 3.0}, {"started": 2.0, "finished": 4.0}])

    def test_it_fails_a_child_that_started_after_another_finished(self) -> None:
        with self.assertRaisesRegex(AssertionError, r"children \[1\] started after another child had finished"):
            check_ran_together([{"started": 1.0, "finished": 2.0}, {"started": 2.5, "finished": 3.0}])
