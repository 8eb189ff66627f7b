"""Inactivity cleanup end to end through a real Celery worker, against the raw floor.

For each backend (``--databases``: ``sqlite`` = a temporary SQLite file with the embedded
``filesystem://`` broker; ``postgres`` = a database ``sessionadmin_bench_cleanup`` created and
dropped on the local server, with Redis as the broker) a child process migrates the fresh
database, seeds ``--sessions`` idle sessions whose workspaces hold a few small files, starts a
worker (``celery worker``, concurrency ``--concurrency``), sends the inactivity cleanup task and
waits until its run record is finished: every session ended, every workspace gone, every audit
entry written. The raw floor, in the same run, removes the same number of seeded workspaces with
``shutil.rmtree`` and marks their rows ended with one UPDATE, in one process. The worker's peak
RSS (VmHWM of each of its processes) is measured for ``--sessions`` and ``--memory-sessions``.
The developer's database, workspaces and queues are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings

from bench import command, scratch_database

PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
# Per run: benchmarks of several checkouts may share one PostgreSQL server.
PG_BENCH_DB = f"sessionadmin_bench_cleanup_{os.getpid()}"
REDIS_URL = "redis://127.0.0.1:6379/14"
FILES_PER_WORKSPACE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--memory-sessions", type=int, default=50_000, help="second run for the worker's peak RSS (0: skip)")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--pg-admin-url", default=os.environ.get("SESSIONADMIN_BENCH_PG_URL", PG_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("SESSIONADMIN_BENCH_REDIS_URL", REDIS_URL))
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)


def run(out: Any, **opts: Any) -> None:
    if opts["inner"]:
        print(
            json.dumps(
                measure(opts["sessions"], floor=opts["floor"], concurrency=opts["concurrency"], batch_size=opts["batch_size"])
            )
        )
        return
    results: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    for db in [d.strip() for d in opts["databases"].split(",") if d.strip()]:
        out.write(f"{db}: {opts['sessions']:,} idle sessions through the worker, and the raw floor...")
        main = run_child(db, opts, opts["sessions"], floor=True)
        big = None
        if opts["memory_sessions"]:
            out.write(f"{db}: {opts['memory_sessions']:,} idle sessions, for the worker's peak memory...")
            big = run_child(db, opts, opts["memory_sessions"], floor=False)
        results.append((db, main, big))
    out.write("")
    n, m = opts["sessions"], opts["memory_sessions"]
    out.write(
        f"{'backend':22} {'e2e s':>7} {'e2e/s':>7} {'floor s':>8} {'floor/s':>8} {'ratio':>6} "
        f"{'worker peak MiB @' + format(n, ','):>24} {'@' + format(m, ',') if m else '':>10}"
    )
    for db, r, big in results:
        backend = "SQLite + filesystem://" if db == "sqlite" else "PostgreSQL + Redis"
        out.write(
            f"{backend:22} {r['e2e_seconds']:7.2f} {r['e2e_per_s']:7.0f} {r['floor_seconds']:8.2f} {r['floor_per_s']:8.0f} "
            f"{r['ratio']:6.2f} {r['worker_peak_mib']:24.1f} {(big or {}).get('worker_peak_mib', 0):10.1f}"
        )
    out.write(
        "e2e = from sending the cleanup task until its run record is finished (every session ended, its workspace removed, "
        "its audit entries written); floor = rmtree of as many workspaces + one UPDATE, in one process"
    )
    for db, r, _ in results:
        out.write(
            f"{db}: floor = {r['floor_rm_seconds']:.2f} s rmtree + {r['floor_db_seconds']:.2f} s UPDATE; run record {r['counts']}"
        )
    out.write("worker peak = the largest VmHWM (peak RSS) among the worker's processes")
    out.write("targets: >= 1,000 sessions/s end to end; >= 40% of the floor; worker peak memory flat from 10,000 to 50,000")


def run_child(db: str, opts: dict[str, Any], sessions: int, *, floor: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-bench-cleanup-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_URL", "SESSIONADMIN_"))},
        "SESSIONADMIN_VAR_DIR": str(tmp / "var"),
        "SESSIONADMIN_WORKSPACE_ROOT": str(tmp / "workspaces"),
        "SESSIONADMIN_SECRET_KEY": str(settings.SECRET_KEY),
        "SESSIONADMIN_LOG_LEVEL": "WARNING",
        "SESSIONADMIN_CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:10]}",
        "SESSIONADMIN_MAX_CONCURRENT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    if db == "postgres":
        env["CELERY_BROKER_URL"] = opts["redis_url"]
    try:
        with scratch_database(db, tmp, opts["pg_admin_url"], PG_BENCH_DB) as env["DATABASE_URL"]:
            manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
            subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True)
            # The filesystem broker's folders (and the rest a machine needs) come from setup.
            subprocess.run([*manage, "setup"], env=env, check=True, capture_output=True)
            args = [
                *command(),
                "cleanup",
                "--inner",
                "--sessions",
                str(sessions),
                "--concurrency",
                str(opts["concurrency"]),
            ]
            args += ["--batch-size", str(opts["batch_size"])] + (["--floor"] if floor else [])
            done = subprocess.run(args, env=env, check=True, capture_output=True, text=True, cwd=settings.BASE_DIR)
            return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"the {db} child failed:\n{(exc.stderr or '')[-3000:]}") from exc
    finally:
        if "CELERY_BROKER_URL" in env:
            import redis

            client = redis.Redis.from_url(env["CELERY_BROKER_URL"])
            client.delete(env["SESSIONADMIN_CELERY_QUEUE"])
            client.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --- inside the child (bench database, bench workspace root, bench broker) ---------------------


def seed(count: int, *, org_id: str, idle: bool) -> list[tuple[str, str]]:
    """``count`` active sessions with a workspace holding a few small files each; bulk inserts
    (seeding is not what is measured)."""
    from datetime import timedelta

    from django.utils import timezone

    from sessionadmin.models import AgentSession, Org
    from sessionadmin.workspaces import create_workspace

    Org.objects.get_or_create(id=org_id, defaults={"name": org_id})
    root = Path(settings.SESSIONADMIN_WORKSPACE_ROOT)
    last_active = timezone.now() - (timedelta(hours=2) if idle else timedelta(seconds=0))
    pairs = [(f"{org_id}-user-{i % 1000}", str(uuid.uuid4())) for i in range(count)]
    for start in range(0, count, 2000):
        rows = []
        for user_id, sid in pairs[start : start + 2000]:
            path = create_workspace(root, user_id, sid)
            for f in range(FILES_PER_WORKSPACE):
                (path / f"file-{f}.txt").write_text(f"small file {f}\n")
            rows.append(
                AgentSession(id=sid, user_id=user_id, org_id=org_id, workspace_path=str(path), last_active_at=last_active)
            )
        AgentSession.objects.bulk_create(rows)
    return pairs


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_worker(concurrency: int) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "sessionadmin", "worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
        "--queues", os.environ["SESSIONADMIN_CELERY_QUEUE"], "--hostname", f"{os.environ['SESSIONADMIN_CELERY_QUEUE']}@%h",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    env = {**os.environ, "SESSIONADMIN_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=settings.BASE_DIR
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if " ready." in line:
            break
    else:
        raise RuntimeError("the worker exited before it was ready")
    # Keep draining its output so the pipe never fills.
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    return proc


def raw_floor(pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """The least work a cleanup needs: remove the trees and mark the rows, nothing else."""
    from django.db import transaction
    from django.utils import timezone

    from sessionadmin.models import AgentSession

    root = Path(settings.SESSIONADMIN_WORKSPACE_ROOT)
    started = time.perf_counter()
    for user_id, sid in pairs:
        shutil.rmtree(root / user_id / sid)
    removed = time.perf_counter()
    with transaction.atomic():
        ids = [sid for _, sid in pairs]
        for start in range(0, len(ids), 5000):
            AgentSession.objects.filter(pk__in=ids[start : start + 5000]).update(status="ended", ended_at=timezone.now())
    return removed - started, time.perf_counter() - removed


def measure(count: int, *, floor: bool, concurrency: int, batch_size: int) -> dict[str, Any]:
    from sessionadmin import tasks
    from sessionadmin.models import AgentSession, MaintenanceRun

    pairs = seed(count, org_id="bench", idle=True)
    floor_pairs = seed(count, org_id="floor", idle=False) if floor else []
    worker = start_worker(concurrency)
    # Seeding leaves dirty pages and a busy journal behind: flush them, so that neither
    # measurement pays for the other's (or the seed's) writeback.
    os.sync()
    try:
        started = time.perf_counter()
        tasks.inactivity_cleanup.delay(idle_timeout_seconds=3600, batch_size=batch_size, triggered_by="benchmark")
        while True:
            run = MaintenanceRun.objects.filter(task="inactivity_cleanup", finished_at__isnull=False).first()
            if run is not None:
                break
            time.sleep(0.02)
        e2e = time.perf_counter() - started
        peak_kib = max(_hwm_kib(pid) for pid in _group_pids(worker.pid))
    finally:
        worker.terminate()
        worker.wait(30)
    ended = AgentSession.objects.filter(org_id="bench", status="ended").count()
    left = sum(1 for user_id, sid in pairs if (Path(settings.SESSIONADMIN_WORKSPACE_ROOT) / user_id / sid).exists())
    if ended != count or left:
        raise RuntimeError(f"cleanup incomplete: {ended}/{count} ended, {left} workspaces left; run {run.counts}")
    result: dict[str, Any] = {
        "sessions": count,
        "e2e_seconds": e2e,
        "e2e_per_s": count / e2e,
        "run_seconds": (run.finished_at - run.started_at).total_seconds() if run.finished_at else None,
        "worker_peak_mib": peak_kib / 1024,
        "counts": run.counts,
    }
    if floor:
        os.sync()
        rm_seconds, db_seconds = raw_floor(floor_pairs)
        floor_seconds = rm_seconds + db_seconds
        result.update(
            floor_rm_seconds=rm_seconds,
            floor_db_seconds=db_seconds,
            floor_seconds=floor_seconds,
            floor_per_s=count / floor_seconds,
            ratio=floor_seconds / e2e,
        )
    return result
