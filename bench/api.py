"""Runtime API under load: activity heartbeats and session creates through gunicorn, with wrk.

Runs against a PostgreSQL database of its own (``--database``, default ``sessionadmin_bench_api``,
created on the server of the configured ``DATABASE_URL`` and dropped at the end unless ``--keep``),
never the developer's data. Steps: migrate it; seed orgs, a token and ``--sessions`` active
sessions; start gunicorn (``--workers``, default 4) on a free loopback port with workspaces in a
temporary folder and the activity resolution of ``--resolution``; then ``wrk`` runs, each bounded
by ``--duration``:

1. one-query: POST to a view that runs ``SELECT 1`` (the floor of any endpoint that reads the
   database),
2. ``--rounds`` times, interleaved: the floor (POST to a view that does nothing, routed only in
   this benchmark's URLconf), the heartbeat (POST /api/v1/sessions/<random session>/activity) and
   creates (POST /api/v1/sessions spread over a few orgs with high limits: throughput),
3. limit: POST /api/v1/sessions in an org capped at ``--cap`` sessions (enforcement).

Database writes are counted from ``pg_stat_user_tables.n_tup_upd`` of the sessions table,
read after gunicorn has exited (a backend flushes its statistics when it disconnects), and
compared with the bound: one write per session per resolution window. Seeded sessions are
idle, so each one's first heartbeat writes; with ``--resolution 2`` a 10 s run spans six windows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.management.base import CommandError
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from bench import REPO, command

BENCH_DB = "sessionadmin_bench_api"
TARGET_HEARTBEAT_RPS = 1000
TARGET_HEARTBEAT_P99_MS = 50
TARGET_CREATE_RPS = 100
# Creates in one org queue on that org's row lock (that is how its limit holds); a platform
# creates in many orgs at once, so the throughput run spreads its creates over a few.
CREATE_ORGS = 4

# --- what gunicorn serves: the project's URLs plus a no-op view, only in this benchmark -------


@login_not_required
@csrf_exempt
def noop(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=204)


@login_not_required
@csrf_exempt
def one_query(request: HttpRequest) -> HttpResponse:
    """The floor of an endpoint that reads the database: one trivial round trip."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse(status=204)


def _urlpatterns() -> list[URLPattern | URLResolver]:
    from sessionadmin.urls import urlpatterns as project

    patterns: list[URLPattern | URLResolver] = [path("bench/noop", noop), path("bench/one-query", one_query)]
    return patterns + cast(list[URLPattern | URLResolver], project)


def __getattr__(name: str) -> Any:
    # ``urlpatterns`` built lazily, so importing this module (``python -m bench`` imports
    # every benchmark for its --help) does not import the whole URLconf.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def bench_wsgi() -> Any:
    """gunicorn's app factory: the project's WSGI app with this module as ROOT_URLCONF."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")
    import django

    django.setup()
    settings.ROOT_URLCONF = __name__
    if os.environ.get("BENCH_CONN_HEALTH_CHECKS") == "0":  # --no-health-checks, for comparison only
        settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


# --- the command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    # Four per worker: enough to keep every sync worker busy without a deep queue in front.
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--sessions", type=int, default=200, help="active sessions the heartbeats go to")
    parser.add_argument(
        "--resolution",
        type=int,
        default=30,
        help="activity resolution, seconds (default: the setting's default)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of floor, heartbeat and create")
    parser.add_argument("--cap", type=int, default=50, help="max_sessions of the capped org")
    # Its own name when several people benchmark on one server at once.
    parser.add_argument("--database", default=BENCH_DB, help=f"the database to create and drop (default {BENCH_DB})")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--no-health-checks", action="store_true", help="serve with CONN_HEALTH_CHECKS off (one SELECT 1 less per request)"
    )
    parser.add_argument("--seed", action="store_true", help=argparse.SUPPRESS)


def run(out: Any, **opts: Any) -> None:
    if opts["seed"]:
        out.write(json.dumps(seed(opts["sessions"], opts["cap"])))
        return
    db: dict[str, Any] = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise CommandError("the api benchmark needs PostgreSQL: set DATABASE_URL=postgres://... (its server is used)")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise CommandError("wrk is not installed: apt-get install -y wrk (make bench does it)")
    import psycopg

    conninfo = {
        k: v for k, v in {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db["PASSWORD"]}.items() if v
    }
    admin = psycopg.connect(dbname="postgres", autocommit=True, **conninfo)
    bench_db = opts["database"]
    tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-bench-api-"))
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{bench_db}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{bench_db}"')
        user = f"{db['USER']}{':' + db['PASSWORD'] if db['PASSWORD'] else ''}@" if db["USER"] else ""
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{user}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{bench_db}",
            "SESSIONADMIN_LOG_LEVEL": "ERROR",
            "SESSIONADMIN_SECRET_KEY": settings.SECRET_KEY,
            "SESSIONADMIN_WORKSPACE_ROOT": str(tmp / "workspaces"),
            "SESSIONADMIN_VAR_DIR": str(tmp / "var"),
            "SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS": str(opts["resolution"]),
            "SESSIONADMIN_MAX_CONCURRENT": "0",
            "BENCH_CONN_HEALTH_CHECKS": "0" if opts["no_health_checks"] else "1",
            # Metrics as production records them: every gunicorn worker in prometheus_client's
            # multiprocess mode (sessionadmin/metrics.py), writing to files of its own.
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
        }
        (tmp / "prometheus").mkdir()
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True)
        seeded = subprocess.run(
            command("api", "--seed", "--sessions", str(opts["sessions"]), "--cap", str(opts["cap"])),
            env=env, check=True, capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        data = json.loads(seeded.stdout.strip().splitlines()[-1])
        bench = psycopg.connect(dbname=bench_db, autocommit=True, **conninfo)
        measure(out, opts, env, data, bench, wrk, tmp)
        bench.close()
    finally:
        if not opts["keep"]:
            admin.execute(f'DROP DATABASE IF EXISTS "{bench_db}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


def seed(n_sessions: int, cap: int) -> dict[str, Any]:
    """Inside the bench database: orgs, one unscoped token, active sessions idle for a while."""
    from sessionadmin import tokens
    from sessionadmin.manager import SessionManager
    from sessionadmin.models import AgentSession, Org

    Org.objects.create(id="bench", name="Bench")
    for i in range(CREATE_ORGS):
        Org.objects.create(id=f"tenant-{i}", name=f"Tenant {i}", max_sessions=100_000)
    Org.objects.create(id="capped", name="Capped", max_sessions=cap)
    _, raw = tokens.create_token(name="bench", actor="benchmark")
    manager = SessionManager(max_concurrent=0)
    ids = [str(manager.create_session(f"user-{i}", "bench", actor="benchmark").id) for i in range(n_sessions)]
    # Idle for a minute, so that the first heartbeat of each session writes.
    AgentSession.objects.update(last_active_at=timezone.now() - timedelta(minutes=1))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # what autovacuum would have done by now on a live database
    return {"token": raw, "sessions": ids}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gunicorn(env: dict[str, str], workers: int, port: int) -> subprocess.Popen[bytes]:
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    proc = subprocess.Popen(
        [gunicorn, f"{__name__}:bench_wsgi()", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
         "--backlog", "2048", "--chdir", str(settings.BASE_DIR)],
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                time.sleep(1.5)  # every worker booted
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise CommandError("gunicorn did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


LUA_COMMON = """
counts = {}
tid = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args) counts = {} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do total[status] = (total[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, '"' .. status .. '":' .. n) end
  io.write("STATUS {" .. table.concat(parts, ",") .. "}\\n")
  io.write(string.format("P99US %d\\n", latency:percentile(99)))
  io.write(string.format("P50US %d\\n", latency:percentile(50)))
end
"""


def lua_script(kind: str, data: dict[str, Any], org: str = "bench") -> str:
    auth = f'wrk.headers["Authorization"] = "Bearer {data["token"]}"\nwrk.headers["Content-Type"] = "application/json"\n'
    if kind == "noop":
        body = 'wrk.method = "POST"\n'
    elif kind == "activity":
        ids = ",".join(f'"{s}"' for s in data["sessions"])
        body = f"""wrk.method = "POST"
local ids = {{{ids}}}
math.randomseed(os.time())
request = function() return wrk.format(nil, "/api/v1/sessions/" .. ids[math.random(#ids)] .. "/activity") end
"""
    else:
        org_expr = f'"{org}"' if org != "tenants" else f'"tenant-" .. (n % {CREATE_ORGS})'
        body = f"""wrk.method = "POST"
local n = 0
request = function()
  n = n + 1
  local org = {org_expr}
  return wrk.format(nil, "/api/v1/sessions", nil, '{{"user_id": "u' .. tid .. '-' .. n .. '", "org_id": "' .. org .. '"}}')
end
"""
    return auth + LUA_COMMON + body


def run_wrk(wrk: str, opts: dict[str, Any], url: str, script: str, tmp: Path, duration: int | None = None) -> dict[str, Any]:
    path = tmp / "script.lua"
    path.write_text(script)
    duration = duration or opts["duration"]
    cmd = [
        wrk,
        "-t",
        str(opts["threads"]),
        "-c",
        str(opts["connections"]),
        "-d",
        f"{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(path),
        url,
    ]
    output = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    statuses = {int(k): v for k, v in json.loads(re.search(r"STATUS (\{.*\})", output).group(1)).items()}  # type: ignore[union-attr]
    total = sum(statuses.values())
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": int(re.search(r"P50US (\d+)", output).group(1)) / 1000,  # type: ignore[union-attr]
        "p99_ms": int(re.search(r"P99US (\d+)", output).group(1)) / 1000,  # type: ignore[union-attr]
        "statuses": statuses,
        "total": total,
        "errors": "Socket errors" in output,
        "duration": duration,
    }


def session_updates(bench: Any) -> int:
    row = bench.execute("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'sessionadmin_agentsession'").fetchone()
    return int(row[0])


def measure(out: Any, opts: dict[str, Any], env: dict[str, str], data: dict[str, Any], bench: Any, wrk: str, tmp: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    n = len(data["sessions"])
    health = "off" if opts["no_health_checks"] else "on"
    server = f"gunicorn -w {opts['workers']} on {base} (CONN_HEALTH_CHECKS {health})"
    load = f"wrk -t{opts['threads']} -c{opts['connections']} -d{opts['duration']}s"
    out.write(
        f"{server}, {load}, PostgreSQL database {opts['database']}, {n} sessions, activity resolution {opts['resolution']} s"
    )
    results: dict[str, dict[str, Any]] = {}
    # Interleaved rounds, so that the floor and the endpoints meet the same machine conditions
    # (other processes come and go); the median round of each is reported, and the ratios are
    # the medians of each round's own ratio.
    rounds: dict[str, list[dict[str, Any]]] = {"floor": [], "heartbeat": [], "create": []}
    updates_before = session_updates(bench)
    proc = start_gunicorn(env, opts["workers"], port)
    started = time.monotonic()
    try:
        results["one-query"] = run_wrk(wrk, opts, f"{base}/bench/one-query", lua_script("noop", data), tmp)
        hb_started = time.monotonic()
        for _ in range(opts["rounds"]):
            rounds["floor"].append(run_wrk(wrk, opts, f"{base}/bench/noop", lua_script("noop", data), tmp))
            rounds["heartbeat"].append(run_wrk(wrk, opts, base, lua_script("activity", data), tmp))
            creates = lua_script("create", data, org="tenants")
            rounds["create"].append(run_wrk(wrk, opts, f"{base}/api/v1/sessions", creates, tmp))
        hb_elapsed = time.monotonic() - hb_started
    finally:
        stop(proc)  # backends flush their statistics when they disconnect
    time.sleep(1.0)
    updates = session_updates(bench) - updates_before
    windows = math.ceil(hb_elapsed / opts["resolution"]) + 1
    for name, runs in rounds.items():
        results[name] = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    ratios = {
        name: statistics.median(r["rps"] / f["rps"] for r, f in zip(rounds[name], rounds["floor"], strict=True))
        for name in ("heartbeat", "create")
    }
    proc = start_gunicorn(env, opts["workers"], port)
    try:
        results["limit"] = run_wrk(
            wrk, opts, f"{base}/api/v1/sessions", lua_script("create", data, org="capped"), tmp, duration=3
        )
    finally:
        stop(proc)
    elapsed = time.monotonic() - started
    created_capped = bench.execute(
        "SELECT count(*) FROM sessionadmin_agentsession WHERE org_id = 'capped' AND status = 'active'"
    ).fetchone()[0]

    def row(name: str, r: dict[str, Any], extra: str = "") -> None:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        out.write(
            f"  {name:<10} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:>6.1f} ms  p99 {r['p99_ms']:>6.1f} ms  [{codes}]{extra}"
        )

    out.write("")
    row("floor", results["floor"], "  (no-op Django view, same middleware)")
    row("one-query", results["one-query"], "  (no-op view + SELECT 1)")
    hb = results["heartbeat"]
    row("heartbeat", hb)
    create = results["create"]
    created_rps = create["statuses"].get(201, 0) / create["duration"]
    row("create", create, f"  -> {created_rps:.0f} sessions created/s in {CREATE_ORGS} orgs")
    limit = results["limit"]
    row("limit", limit, f"  -> capped org holds {created_capped} active sessions (cap {opts['cap']})")
    out.write(
        f"  ratios to the floor (median of {opts['rounds']} rounds): "
        f"heartbeat {ratios['heartbeat']:.3f}, create {ratios['create']:.4f}"
    )
    out.write("")
    out.write(f"  heartbeat DB writes: {updates} UPDATEs of sessions for {hb['total']} heartbeats "
              f"(bound: {n} sessions x {windows} windows of {opts['resolution']} s = {n * windows})")  # fmt: skip
    checks = {
        f"heartbeat >= {TARGET_HEARTBEAT_RPS} req/s": hb["rps"] >= TARGET_HEARTBEAT_RPS,
        f"heartbeat p99 < {TARGET_HEARTBEAT_P99_MS} ms": hb["p99_ms"] < TARGET_HEARTBEAT_P99_MS,
        "heartbeats all 204": set(hb["statuses"]) == {204},
        "at most one write per session per window": updates <= n * windows,
        f"create >= {TARGET_CREATE_RPS} sessions/s": created_rps >= TARGET_CREATE_RPS,
        "creates all 201": set(create["statuses"]) == {201},
        "cap never exceeded": created_capped <= opts["cap"] and limit["statuses"].get(201, 0) == created_capped,
        "429 once full": limit["statuses"].get(429, 0) > 0 and set(limit["statuses"]) <= {201, 429},
    }
    for name, ok in checks.items():
        out.write(f"  {'ok  ' if ok else 'MISS'} {name}")
    out.write(f"  total {elapsed:.0f} s")
