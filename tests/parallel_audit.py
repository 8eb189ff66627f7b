"""Child process of the ledger's concurrency test: sets Django up, waits at the start barrier
(tests/parallel_create.py), then writes audit entries through ``audit.write`` (alternating a
single entry and a batch of ``batch`` entries, each in its own transaction) and prints one JSON
line with the sequence numbers each write was given and its start and finish times.

    python -m tests.parallel_audit <barrier-dir> <writes> <batch>
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tests.parallel_create import wait_at_barrier


def main() -> None:
    barrier_dir, writes, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    index = os.environ["PARALLEL_CREATE_INDEX"]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")
    import django

    django.setup()
    from django.db import connection, transaction

    from sessionadmin import audit

    connection.ensure_connection()
    wait_at_barrier(Path(barrier_dir), index)
    started = time.monotonic()
    done: list[list[int]] = []
    for n in range(writes):
        size = batch if n % 2 else 1
        with transaction.atomic():
            rows = audit.write(
                [audit.entry("parallel_write", actor=f"child-{index}", details={"n": n, "i": i}) for i in range(size)]
            )
        done.append([r.seq for r in rows])
    finished = time.monotonic()
    print(json.dumps({"writes": done, "started": started, "finished": finished}))


if __name__ == "__main__":
    main()
