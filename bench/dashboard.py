"""Server time and query counts of the dashboard pages on a large PostgreSQL fleet.

Runs on a PostgreSQL database of its own (``sessionadmin_bench``, created on the server of the
configured ``DATABASE_URL`` and dropped at the end unless ``--keep``), never on the developer's
data, and refuses to run when the configured database is not PostgreSQL. A child process
migrates it, bulk-loads 100,000 sessions (10,000 active) in 500 orgs and 1,000,000 audit
entries with COPY (secondary indexes dropped during the load and rebuilt after), then times
each page in-process with Django's test client: median and p95 over ``--requests`` requests,
the number of queries, the response size, and the indexes PostgreSQL uses for each query.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from bench import REPO, command

# Overridable so that several runs on one PostgreSQL server do not drop each other's database.
BENCH_DB = os.environ.get("SESSIONADMIN_BENCH_DB", "sessionadmin_bench")
N_ORGS = 500
N_USERS = 20_000
TARGET_MEDIAN_MS = 30
TARGET_P95_MS = 60
MAX_QUERIES = {"list": 6, "detail": 8}
MAX_PARTIAL_BYTES = 30 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--active", type=int, default=10_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--keep", action="store_true", help=f"keep the {BENCH_DB} database afterwards")
    parser.add_argument("--reuse", action="store_true", help=f"measure an existing {BENCH_DB} (kept with --keep) without seeding")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)


def run(out: Any, **opts: Any) -> None:
    if opts["inner"]:
        inner(out, opts)
        return
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise CommandError("the dashboard benchmark needs PostgreSQL: set DATABASE_URL=postgres://... (its server is used)")
    import psycopg

    conninfo = {
        "host": db["HOST"] or None,
        "port": db["PORT"] or None,
        "user": db["USER"] or None,
        "password": db["PASSWORD"] or None,
    }
    conninfo_text = " ".join(f"{k}={v}" for k, v in conninfo.items() if v)
    admin = psycopg.connect(f"dbname=postgres {conninfo_text}", autocommit=True)
    try:
        if not opts["reuse"]:
            admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{BENCH_DB}"')
        user = f"{db['USER']}{':' + str(db['PASSWORD']) if db['PASSWORD'] else ''}@" if db["USER"] else ""
        url = f"postgres://{user}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{BENCH_DB}"
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "SESSIONADMIN_LOG_LEVEL": "WARNING",
            "SESSIONADMIN_SECRET_KEY": settings.SECRET_KEY,
        }
        args = ["--sessions", str(opts["sessions"]), "--active", str(opts["active"]), "--audit", str(opts["audit"])]
        args += ["--requests", str(opts["requests"]), "--inner"] + (["--reuse"] if opts["reuse"] else [])
        manage = Path(settings.BASE_DIR) / "manage.py"
        if not opts["reuse"]:
            subprocess.run([sys.executable, str(manage), "migrate", "-v0"], env=env, check=True)
        proc = subprocess.run(command("dashboard", *args), env=env, check=False, cwd=REPO)
        if proc.returncode:
            raise CommandError(f"the benchmark child failed with code {proc.returncode}")
    finally:
        if not opts["keep"]:
            admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        else:
            out.write(f"kept database {BENCH_DB}")
        admin.close()


# --- the child: seed, then measure ----------------------------------------------------------------


def inner(out: Any, opts: dict[str, Any]) -> None:
    from django.db import connection

    if connection.settings_dict["NAME"] != BENCH_DB:
        raise CommandError(f"refusing to seed {connection.settings_dict['NAME']!r}: only {BENCH_DB!r}")
    if not opts["reuse"]:
        started = time.perf_counter()
        seed(out, sessions=opts["sessions"], active=opts["active"], audit_entries=opts["audit"])
        out.write(f"seeded in {time.perf_counter() - started:.1f} s")
    measure(out, opts["requests"])


NOW = datetime.now(UTC)
EVENTS_ENDED = ["session_created", "system_prompt_updated", "mcp_client_attached", "session_terminating", "session_cleaned_up"]


def _tsv(value: Any) -> str:
    if value is None:
        return "\\N"
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _copy(table: str, columns: list[str], rows: Iterator[list[Any]], chunk: int = 20_000) -> int:
    from django.db import connection

    count = 0
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            buffer: list[str] = []
            for row in rows:
                buffer.append("\t".join(_tsv(v) for v in row))
                count += 1
                if len(buffer) >= chunk:
                    copy.write("\n".join(buffer) + "\n")
                    buffer.clear()
            if buffer:
                copy.write("\n".join(buffer) + "\n")
    return count


def _secondary_indexes(table: str) -> list[tuple[str, str]]:
    """Indexes that back no constraint: safe to drop for a bulk load and rebuild after."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = %s AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
            [table],
        )
        return list(cursor.fetchall())


def seed(out: Any, *, sessions: int, active: int, audit_entries: int) -> None:
    from django.db import connection, transaction

    from sessionadmin import ledger
    from sessionadmin.models import AgentSession, AuditEntry, McpClient, Org

    rnd = random.Random(42)
    tables = [AgentSession._meta.db_table, AuditEntry._meta.db_table, McpClient._meta.db_table]
    dropped = {t: _secondary_indexes(t) for t in tables}
    with connection.cursor() as cursor:
        for indexes in dropped.values():
            for name, _ in indexes:
                cursor.execute(f'DROP INDEX "{name}"')
    t0 = time.perf_counter()
    with transaction.atomic():
        orgs = [
            Org(
                id=f"org-{n:03d}",
                name=f"Org {n}",
                max_sessions=60 if n % 5 == 0 else None,
                max_sessions_per_user=5 if n % 7 == 0 else None,
                idle_timeout_seconds=3600 * (1 + n % 4) if n % 3 == 0 else None,
                prompt=f"You work for org {n}." if n % 2 else "",
            )
            for n in range(N_ORGS)
        ]
        Org.objects.bulk_create(orgs)
        ids = [uuid.UUID(int=rnd.getrandbits(128), version=4) for _ in range(sessions)]
        terminating, failed = max(1, sessions // 200), max(1, sessions // 200)
        prompt = "You are a careful coding agent. Follow the house rules. " * 8
        provenance = json.dumps([{"kind": "global", "id": 1, "name": "house rules", "version": 1, "sha256": "0" * 64}])

        def session_rows() -> Iterator[list[Any]]:
            for i, sid in enumerate(ids):
                # The newest ``active`` sessions are active, then a few terminating/failed, the rest ended.
                age = timedelta(seconds=int(i * 90 * 86400 / sessions) + rnd.randint(0, 60))
                created = NOW - age
                status = (
                    "active"
                    if i < active
                    else "terminating"
                    if i < active + terminating
                    else "failed"
                    if i < active + terminating + failed
                    else "ended"
                )
                user = f"user-{rnd.randrange(N_USERS):05d}"
                org = f"org-{rnd.randrange(N_ORGS):03d}"
                last = min(NOW, created + timedelta(minutes=rnd.randint(0, 600)))
                ended = None if status in ("active", "terminating") else last + timedelta(hours=1)
                pinned = NOW + timedelta(days=3) if status == "active" and i % 97 == 0 else None
                yield [
                    sid,
                    user,
                    org,
                    f"/var/sessionadmin/workspaces/{user}/{sid}",
                    prompt,
                    provenance,
                    "{}",
                    status,
                    created,
                    "bench",
                    last,
                    ended,
                    "bench" if status != "active" else "",
                    "idle" if status == "ended" else "",
                    "",
                    0,
                    pinned,
                    "demo" if pinned else "",
                    "bench" if pinned else "",
                    "",
                ]

        columns = [
            "id",
            "user_id",
            "org_id",
            "workspace_path",
            "system_prompt",
            "prompt_provenance",
            "variables",
            "status",
            "created_at",
            "created_by",
            "last_active_at",
            "ended_at",
            "ended_by",
            "end_reason",
            "last_error",
            "cleanup_attempts",
            "pinned_until",
            "pin_reason",
            "pinned_by",
            "gateway",
        ]
        n_sessions = _copy(AgentSession._meta.db_table, columns, session_rows())

        def client_rows() -> Iterator[list[Any]]:
            for i, sid in enumerate(ids[:active]):
                for c in range(i % 3):
                    yield [
                        sid,
                        f"client-{c}",
                        "streamable_http",
                        f"http://mcp-{c}.internal/mcp",
                        "connected",
                        f"server {c}",
                        "1.0",
                        "2025-06-18",
                        "{}",
                        "[]",
                        "[]",
                        "[]",
                        NOW,
                        "",
                        NOW,
                        "bench",
                        "{}",
                        0,
                        "{}",
                        "{}",
                    ]

        client_columns = [
            "session_id",
            "client_id",
            "transport",
            "url",
            "status",
            "server_name",
            "server_version",
            "protocol_version",
            "capabilities",
            "tools",
            "resources",
            "prompts",
            "last_verified_at",
            "last_error",
            "created_at",
            "created_by",
            "listing_omitted",
            "reconnects",
            "pinned_tools",
            "quarantined_tools",
        ]
        n_clients = _copy(McpClient._meta.db_table, client_columns, client_rows())

        per_session = max(1, audit_entries // sessions)

        def audit_rows() -> Iterator[list[Any]]:
            written = 0
            for i, sid in enumerate(ids):
                created = NOW - timedelta(seconds=int(i * 90 * 86400 / sessions))
                user, org = f"user-{i % N_USERS:05d}", f"org-{i % N_ORGS:03d}"
                for k in range(per_session):
                    if written >= audit_entries:
                        return
                    event = EVENTS_ENDED[k] if k < len(EVENTS_ENDED) else "mcp_client_verified"
                    actor = "alice" if k % 2 else "system"
                    yield [created + timedelta(seconds=k * 30), actor, user, org, event, sid, {"reason": "bench"}]
                    written += 1

        # Through the ledger (chained, as production writes them), in bulk batches.
        rows, n_audit = audit_rows(), 0
        while batch := list(itertools.islice(rows, 5000)):
            fields = ["at", "actor", "user_id", "org_id", "event_type", "session_id", "details"]
            ledger.append([AuditEntry(**dict(zip(fields, row, strict=True))) for row in batch])
            n_audit += len(batch)
    out.write(
        f"loaded {n_sessions:,} sessions, {n_clients:,} MCP clients, {n_audit:,} audit entries "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    t1 = time.perf_counter()
    with connection.cursor() as cursor:
        for indexes in dropped.values():
            for _, definition in indexes:
                cursor.execute(definition)
        for table in [*tables, Org._meta.db_table]:
            cursor.execute(f"VACUUM ANALYZE {table}")
    out.write(f"rebuilt {sum(len(v) for v in dropped.values())} indexes and analyzed in {time.perf_counter() - t1:.1f} s")


def _index_names(plan: Any) -> list[str]:
    found: list[str] = []
    if isinstance(plan, dict):
        if "Index Name" in plan:
            found.append(plan["Index Name"])
        for value in plan.values():
            found += _index_names(value)
    elif isinstance(plan, list):
        for value in plan:
            found += _index_names(value)
    return found


def _outer_table(sql: str) -> str:
    """The table of the outermost FROM (subqueries in the select list are skipped)."""
    depth = 0
    for i, char in enumerate(sql):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and sql.startswith(' FROM "', i):
            return sql[i + 7 : sql.index('"', i + 7)]
    return "?"


def _explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    names = list(dict.fromkeys(_index_names(plan)))
    top = plan[0]["Plan"]["Node Type"]
    return f"{top}; indexes: {', '.join(names) if names else 'none'}"


def measure(out: Any, requests: int) -> None:
    from django.contrib.auth.models import Group, User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from sessionadmin.models import AgentSession, AuditEntry
    from sessionadmin.roles import OPERATORS, ensure_roles

    ensure_roles()
    operator, created = User.objects.get_or_create(username="bench-operator")
    if created:
        operator.groups.add(Group.objects.get(name=OPERATORS))
    client = Client()
    client.force_login(operator)
    sample = AgentSession.objects.active().order_by("-created_at").values_list("id", "user_id", "org_id")[250]
    heavy = AuditEntry.objects.filter(session_id=sample[0]).count()
    htmx = {"HX-Request": "true", "HX-Target": "session-live"}
    cases: list[tuple[str, str, str, dict[str, str], dict[str, str]]] = [
        ("list", "list: default (live, newest first)", reverse("session_list"), {}, {}),
        ("list", "list: filtered by org", reverse("session_list"), {"org": sample[2]}, {}),
        ("list", "list: filtered by status=ended", reverse("session_list"), {"status": "ended"}, {}),
        ("list", "list: searched by user prefix", reverse("session_list"), {"q": sample[1][:9], "status": "all"}, {}),
        ("list", "list: searched by id prefix", reverse("session_list"), {"q": str(sample[0])[:8], "status": "all"}, {}),
        ("list", "list: page 100 (all statuses)", reverse("session_list"), {"status": "all", "page": "100"}, {}),
        ("list", "list: sorted by last active", reverse("session_list"), {"sort": "-last_active"}, {}),
        ("list", "polling partial", reverse("session_list"), {}, htmx),
        ("detail", f"detail ({heavy} audit entries)", reverse("session_detail", args=[sample[0]]), {}, {}),
    ]
    out.write(f"{requests} timed requests per page after 5 warm-up requests; server time in-process (Django test client)")
    out.write(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    out.write(f"{'page':38} {'median ms':>9} {'p95 ms':>7} {'cpu ms':>6} {'queries':>7} {'bytes':>7}")
    failures: list[str] = []
    plans: list[tuple[str, str, str]] = []
    for kind, label, url, params, headers in cases:
        for _ in range(5):
            client.get(url, params, headers=headers)
        times, cpu = [], []
        for _ in range(requests):
            start, start_cpu = time.perf_counter(), time.process_time()
            response = client.get(url, params, headers=headers)
            times.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
            if response.status_code != 200:
                raise CommandError(f"{label}: HTTP {response.status_code}")
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url, params, headers=headers)
        median = statistics.median(times)
        p95 = statistics.quantiles(times, n=20)[-1]
        size = len(response.content)
        cpu_ms = statistics.median(cpu)
        out.write(f"{label:38} {median:9.1f} {p95:7.1f} {cpu_ms:6.1f} {len(ctx.captured_queries):7d} {size:7d}")
        if median >= TARGET_MEDIAN_MS or p95 >= TARGET_P95_MS:
            failures.append(f"{label}: median {median:.1f} ms / p95 {p95:.1f} ms")
        if len(ctx.captured_queries) > MAX_QUERIES[kind]:
            failures.append(f"{label}: {len(ctx.captured_queries)} queries > {MAX_QUERIES[kind]}")
        if label == "polling partial" and size >= MAX_PARTIAL_BYTES:
            failures.append(f"polling partial: {size} bytes >= {MAX_PARTIAL_BYTES}")
        for query in ctx.captured_queries:
            sql = query["sql"]
            if "django_session" in sql or "auth_" in sql:
                continue
            plans.append((label, sql, _explain(sql)))
    out.write("")
    out.write("query plans (auth/session queries left out):")
    seen: set[tuple[str, str]] = set()
    for label, sql, plan in plans:
        table = _outer_table(sql)
        if (table, plan) in seen:
            continue
        seen.add((table, plan))
        out.write(f"  {label:38} {table:28} {plan}")
    out.write("")
    out.write(
        f"targets: median < {TARGET_MEDIAN_MS} ms, p95 < {TARGET_P95_MS} ms, list <= 6 and detail <= 8 queries, partial < 30 KB"
    )
    out.write(
        f"load average after: {os.getloadavg()[0]:.2f} (cpu ms = this process's CPU time per request, without the database's)"
    )
    out.write("all targets met" if not failures else "MISSED: " + "; ".join(failures))
