"""Session creates per second through the manager against the raw floor, on SQLite and PostgreSQL.

Each database is a fresh one made for the run (a temporary SQLite file; a PostgreSQL database
``sessionadmin_bench_create`` created and dropped), measured in a child process, so the
developer's own data is never touched. The raw floor does the same work with no validation,
no limits and no prompt: mkdir + chmod of the workspace and the session and audit row inserts
in one transaction. Memory: the tracemalloc peak of a batch of creates on an empty database
and again with ``--preseed`` sessions already in it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings

from bench import REPO, command, scratch_database

PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
# The floors insert the same audit row as before the ledger (one INSERT, no chain head): their
# sequence numbers come from a range of their own, far above the manager's chain, so the floor
# stays the yardstick of the machine, not of the ledger. (The bench database is thrown away.)
_FLOOR_SEQ = itertools.count(10**15)
# Per run: benchmarks of several checkouts may share one PostgreSQL server.
PG_BENCH_DB = f"sessionadmin_bench_create_{os.getpid()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=1000, help="sessions created per round (5 interleaved rounds each)")
    parser.add_argument("--preseed", type=int, default=100_000, help="sessions already in the DB for the second run")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--pg-admin-url", default=os.environ.get("SESSIONADMIN_BENCH_PG_URL", PG_ADMIN_URL))
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)


def run(out: Any, **opts: Any) -> None:
    if opts["inner"]:
        print(json.dumps(measure(opts["count"], opts["preseed"])))
        return
    rows = []
    for db in [d.strip() for d in opts["databases"].split(",") if d.strip()]:
        out.write(f"measuring on {db} ({opts['count']} creates, then again with {opts['preseed']:,} sessions in the DB)...")
        rows.append((db, run_child(db, opts)))
    out.write("")
    out.write(
        f"{'database':10} {'manager/s':>10} {'floor/s':>8} {'ratio':>6} {'sql-floor/s':>12} {'ratio':>6} "
        f"{'1000 creates':>13} {'manager/s @preseed':>19} {'peak KiB empty':>15} {'peak KiB @preseed':>18}"
    )
    for db, r in rows:
        out.write(
            f"{db:10} {r['manager_per_s']:10.0f} {r['raw_per_s']:8.0f} {r['ratio']:6.2f} {r['sql_per_s']:12.0f} "
            f"{r['sql_ratio']:6.2f} {r['seconds_per_1000']:12.2f}s {r['manager_per_s_preseeded']:19.0f} "
            f"{r['peak_kib_empty']:15.0f} {r['peak_kib_preseeded']:18.0f}"
        )
    out.write("floor = mkdir+chmod and the same ORM row inserts in one transaction; sql-floor = the same with hand-written SQL")
    out.write("targets: manager >= 50% of the floor; 1000 creates < 5 s; peak memory flat with the sessions already in the DB")


def run_child(db: str, opts: dict[str, Any]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-bench-"))
    env = {
        **os.environ,
        "SESSIONADMIN_WORKSPACE_ROOT": str(tmp / "workspaces"),
        "SESSIONADMIN_SECRET_KEY": settings.SECRET_KEY,
        "SESSIONADMIN_LOG_LEVEL": "WARNING",
    }
    try:
        with scratch_database(db, tmp, opts["pg_admin_url"], PG_BENCH_DB) as env["DATABASE_URL"]:
            manage = Path(settings.BASE_DIR) / "manage.py"
            subprocess.run([sys.executable, str(manage), "migrate", "-v0"], env=env, check=True)
            proc = subprocess.run(
                [
                    *command(),
                    "create",
                    "--inner",
                    "--count",
                    str(opts["count"]),
                    "--preseed",
                    str(opts["preseed"]),
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(count: int, preseed: int) -> dict[str, Any]:
    from sessionadmin.manager import SessionManager
    from sessionadmin.models import Org

    Org.objects.create(id="bench", name="Benchmark")
    # A global limit far above the run, so the limit path (lock + count) is exercised.
    manager = SessionManager(max_concurrent=10_000_000)
    manager_rate(manager, 50)  # warm up imports, connections and caches
    raw_rate(50)
    orm_floor_rate(50)
    # Interleaved rounds, so that the manager and the floors meet the same disk (fsync) and
    # machine conditions; the median round of each is reported.
    rounds: dict[str, list[float]] = {"manager": [], "floor": [], "sql": []}
    for _ in range(5):
        rounds["manager"].append(manager_rate(manager, count))
        rounds["floor"].append(orm_floor_rate(count))
        rounds["sql"].append(raw_rate(count))
    manager_s, raw_s, sql_s = (statistics.median(rounds[k]) for k in ("manager", "floor", "sql"))
    peak_empty = memory_peak(manager, 300)
    seed_sessions(preseed)
    manager_pre = manager_rate(manager, count)
    peak_pre = memory_peak(manager, 300)
    return {
        "manager_per_s": count / manager_s,
        "raw_per_s": count / raw_s,
        "ratio": raw_s / manager_s,
        "sql_per_s": count / sql_s,
        "sql_ratio": sql_s / manager_s,
        "seconds_per_1000": manager_s * 1000 / count,
        "manager_per_s_preseeded": count / manager_pre,
        "peak_kib_empty": peak_empty / 1024,
        "peak_kib_preseeded": peak_pre / 1024,
    }


def manager_rate(manager: Any, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        manager.create_session(f"user-{i % 50}", "bench", actor="bench")
    return time.perf_counter() - start


def orm_floor_rate(count: int) -> float:
    """The floor: the same directory work and the same row inserts (the ORM's, as the manager
    does them) in one transaction; no validation, limits, locks or prompt."""
    from django.db import transaction
    from django.utils import timezone

    from sessionadmin.models import AgentSession, AuditEntry

    root = Path(settings.SESSIONADMIN_WORKSPACE_ROOT) / "floor"
    start = time.perf_counter()
    for i in range(count):
        sid = uuid.uuid4()
        user = f"user-{i % 50}"
        (root / user).mkdir(mode=0o700, parents=True, exist_ok=True)
        path = root / user / str(sid)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)
        now = timezone.now()
        with transaction.atomic():
            AgentSession(id=sid, user_id=user, org_id="bench", workspace_path=str(path), created_at=now, last_active_at=now).save(
                force_insert=True
            )
            AuditEntry.objects.bulk_create(
                [
                    AuditEntry(
                        actor="bench",
                        user_id=user,
                        org_id="bench",
                        event_type="session_created",
                        session_id=sid,
                        seq=next(_FLOOR_SEQ),
                    )
                ]
            )
    return time.perf_counter() - start


def raw_rate(count: int) -> float:
    """A lower floor still: the same work with hand-written SQL inserts instead of the ORM."""
    from django.db import connection, transaction
    from django.utils import timezone

    from sessionadmin.models import AgentSession, AuditEntry

    root = Path(settings.SESSIONADMIN_WORKSPACE_ROOT) / "raw"
    s_table, a_table = AgentSession._meta.db_table, AuditEntry._meta.db_table
    session_sql = (
        f"INSERT INTO {s_table} (id, user_id, org_id, workspace_path, system_prompt, prompt_provenance, variables, status, "
        "created_at, created_by, last_active_at, ended_by, end_reason, last_error, cleanup_attempts, pin_reason, pinned_by, "
        "gateway) "
        "VALUES (%s, %s, 'bench', %s, '', '[]', '{}', 'active', %s, 'bench', %s, '', '', '', 0, '', '', '')"
    )
    audit_sql = (
        f"INSERT INTO {a_table} (at, actor, user_id, org_id, event_type, session_id, details, seq, prev_hash, entry_hash) "
        "VALUES (%s, 'bench', %s, 'bench', 'session_created', %s, '{}', %s, '', '')"
    )
    start = time.perf_counter()
    for i in range(count):
        sid = uuid.uuid4()
        user = f"user-{i % 50}"
        user_dir = root / user
        user_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = user_dir / str(sid)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)
        now = timezone.now()
        sid_db = sid if connection.vendor == "postgresql" else sid.hex
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(session_sql, [sid_db, user, str(path), now, now])
            cursor.execute(audit_sql, [now, user, sid_db, next(_FLOOR_SEQ)])
    return time.perf_counter() - start


def memory_peak(manager: Any, count: int) -> int:
    tracemalloc.start()
    try:
        manager_rate(manager, count)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def seed_sessions(count: int) -> None:
    """Bulk-insert history: 90% ended sessions, 10% active, spread over 200 users."""
    from datetime import timedelta

    from django.utils import timezone

    from sessionadmin.models import AgentSession

    now = timezone.now()
    batch: list[AgentSession] = []
    for i in range(count):
        active = i % 10 == 0
        created = now - timedelta(minutes=i)
        batch.append(
            AgentSession(
                user_id=f"seed-{i % 200}",
                org_id="bench",
                workspace_path=f"/nonexistent/seed/{i}",
                status="active" if active else "ended",
                created_at=created,
                last_active_at=created,
                ended_at=None if active else created + timedelta(minutes=5),
            )
        )
        if len(batch) == 5000:
            AgentSession.objects.bulk_create(batch)
            batch = []
    if batch:
        AgentSession.objects.bulk_create(batch)
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # As autovacuum would soon after a bulk load: statistics for the planner and a
            # visibility map, so the limit counts are index-only scans.
            cursor.execute(f"VACUUM ANALYZE {AgentSession._meta.db_table}")
