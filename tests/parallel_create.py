"""Child process for the concurrency tests: sets Django up, reports ready, waits at the start
barrier, then tries to create sessions through the manager and prints one JSON line of outcomes
(with the monotonic times it started and finished its work, which the test compares).

    python -m tests.parallel_create <barrier-dir> <workspace-root> <user_id> <org_id> <attempts> <max_concurrent>

The barrier (``Barrier`` in tests/test_concurrency.py): the parent holds an exclusive ``flock``
on ``<barrier-dir>/release``; a child that is ready writes ``ready-<n>`` and asks for a shared
lock, which the kernel grants to every waiting child at once when the parent lets go; then each
waits until every child is through (``started-<n>``), so none starts its work before all can.
A child still blocked after ``BARRIER_TIMEOUT`` exits non-zero. ``PARALLEL_CREATE_SLOW_START`` (seconds)
delays one child before it reports ready: the test of the barrier itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

BARRIER_TIMEOUT = 120


def wait_at_barrier(barrier: Path, index: str) -> None:
    fd = os.open(barrier / "release", os.O_RDONLY)
    (barrier / f"ready-{index}.tmp").write_text(str(os.getpid()))
    (barrier / f"ready-{index}.tmp").rename(barrier / f"ready-{index}")

    def expired(signum: int, frame: Any) -> None:
        raise SystemExit(f"child {index}: not released from the start barrier within {BARRIER_TIMEOUT} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(BARRIER_TIMEOUT)
    fcntl.flock(fd, fcntl.LOCK_SH)
    # Second phase: everyone through the lock before anyone starts, so that a child the
    # scheduler leaves behind for a while holds the others back instead of letting them finish
    # first (their work then always overlaps; a child that never arrives still fails the run).
    (barrier / f"started-{index}").write_text(str(os.getpid()))
    children = int(os.environ["PARALLEL_CREATE_CHILDREN"])
    while len(list(barrier.glob("started-*"))) < children:
        time.sleep(0.002)
    signal.alarm(0)
    os.close(fd)


def main() -> None:
    barrier_dir, root, user_id, org_id, attempts, max_concurrent = sys.argv[1:7]
    index = os.environ["PARALLEL_CREATE_INDEX"]
    time.sleep(float(os.environ.get("PARALLEL_CREATE_SLOW_START", "0")))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")
    import django

    django.setup()
    from django.db import connection

    from sessionadmin.manager import MaxSessionsReached, SessionManager

    manager = SessionManager(root, int(max_concurrent))
    connection.ensure_connection()  # connected before the start, like everything else
    wait_at_barrier(Path(barrier_dir), index)
    started = time.monotonic()
    created, rejected = [], []
    for _ in range(int(attempts)):
        try:
            created.append(str(manager.create_session(user_id, org_id, actor="test:parallel").id))
        except MaxSessionsReached as exc:
            rejected.append(exc.limit)
    finished = time.monotonic()
    print(json.dumps({"created": created, "rejected": rejected, "started": started, "finished": finished}))


if __name__ == "__main__":
    main()
