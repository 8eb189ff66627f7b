"""The audit ledger's verification at scale: seeds chained entries (hashes computed in Python,
bulk inserts of 5,000) into a fresh database, signs a checkpoint, then times ``audit_verify`` in
a fresh process at each size and reports its peak resident memory (``ru_maxrss``), which should
stay flat as the ledger grows (keyset pages of 5,000; one page in memory at a time).

Each database is made for the run (a temporary SQLite file; a PostgreSQL database
``sessionadmin_bench_ledger`` created and dropped), so the developer's data is never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings

from bench import REPO, command, scratch_database

PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
# Per run: benchmarks of several checkouts may share one PostgreSQL server.
PG_BENCH_DB = f"sessionadmin_bench_ledger_{os.getpid()}"
SEED_BATCH = 5000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="100000,1000000", help="ledger lengths at which verification is timed")
    parser.add_argument("--databases", default="postgres,sqlite")
    parser.add_argument("--pg-admin-url", default=os.environ.get("SESSIONADMIN_BENCH_PG_URL", PG_ADMIN_URL))
    parser.add_argument("--inner", choices=["seed", "verify"], help=argparse.SUPPRESS)
    parser.add_argument("--to", type=int, default=0, help=argparse.SUPPRESS)


def run(out: Any, **opts: Any) -> None:
    if opts["inner"] == "seed":
        print(json.dumps(seed_to(opts["to"])))
        return
    if opts["inner"] == "verify":
        print(json.dumps(verify_once()))
        return
    sizes = [int(s) for s in opts["sizes"].split(",") if s.strip()]
    out.write(f"{'database':10} {'entries':>10} {'seed s':>8} {'verify s':>9} {'entries/s':>10} {'max RSS MiB':>12}  summary")
    for db in [d.strip() for d in opts["databases"].split(",") if d.strip()]:
        for row in run_child(db, sizes, opts):
            out.write(
                f"{db:10} {row['entries']:10,} {row['seed_seconds']:8.1f} {row['seconds']:9.1f} "
                f"{row['entries'] / row['seconds']:10,.0f} {row['maxrss_kib'] / 1024:12.1f}  {row['summary'][:90]}"
            )
    out.write("target: 1,000,000 entries verified in < 60 s; max RSS flat between sizes")


def run_child(db: str, sizes: list[int], opts: dict[str, Any]) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-bench-ledger-"))
    env = {
        **os.environ,
        "SESSIONADMIN_VAR_DIR": str(tmp / "var"),  # signing key, checkpoint file
        "SESSIONADMIN_SECRET_KEY": secrets.token_urlsafe(50),
        "SESSIONADMIN_LOG_LEVEL": "WARNING",
    }
    try:
        with scratch_database(db, tmp, opts["pg_admin_url"], PG_BENCH_DB) as env["DATABASE_URL"]:
            manage = Path(settings.BASE_DIR) / "manage.py"
            subprocess.run([sys.executable, str(manage), "migrate", "-v0"], env=env, check=True)
            subprocess.run([sys.executable, str(manage), "setup"], env=env, check=True, capture_output=True)
            rows = []
            for size in sizes:
                seeded = _inner(env, "seed", "--to", str(size))
                verified = _inner(env, "verify")
                rows.append({**verified, "seed_seconds": seeded["seconds"]})
            return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _inner(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run([*command(), "ledger", "--inner", *args], env=env, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seed_to(length: int) -> dict[str, Any]:
    """Append chained entries (the ledger's own hashing, bulk inserts of SEED_BATCH) until the
    ledger holds ``length``, then sign a checkpoint."""
    from django.db import connection, transaction
    from django.utils import timezone

    from sessionadmin import ledger
    from sessionadmin.models import AuditChainHead, AuditEntry

    started = time.perf_counter()
    start, prev = ledger.head()
    t0 = timezone.now() - timedelta(days=30)
    seq = start
    while seq < length:
        batch = []
        with transaction.atomic():
            for _ in range(min(SEED_BATCH, length - seq)):
                seq += 1
                entry = AuditEntry(
                    at=t0 + timedelta(milliseconds=seq),
                    actor="bench",
                    user_id=f"user-{seq % 200}",
                    org_id="bench",
                    event_type="mcp_tool_called",
                    details={"client_id": "c1", "tool": "search", "duration_ms": 12.5, "outcome": "ok", "n": seq},
                    seq=seq,
                    prev_hash=prev,
                )
                entry.entry_hash = prev = ledger_hash(entry, prev)
                batch.append(entry)
            AuditEntry.objects.bulk_create(batch)
            AuditChainHead.objects.filter(pk=1).update(length=seq, head_hash=prev)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {AuditEntry._meta.db_table}")
    ledger.checkpoint()
    return {"seconds": time.perf_counter() - started, "length": seq}


def ledger_hash(entry: Any, prev: str) -> str:
    from sessionadmin import ledger
    from sessionadmin import ledger_verify as lv

    return lv.entry_hash(ledger.document_of(entry, seq=entry.seq, prev=prev))


def verify_once() -> dict[str, Any]:
    from sessionadmin import ledger

    started = time.perf_counter()
    verdict = ledger.verify()
    seconds = time.perf_counter() - started
    if not verdict.ok:
        raise SystemExit(verdict.summary())
    return {
        "entries": verdict.entries,
        "seconds": seconds,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "summary": verdict.summary(),
    }
