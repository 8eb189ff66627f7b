"""Run the whole system in the foreground: web server (gunicorn), the MCP gateway, one Celery
worker and Celery beat, each one entry of ``processes()``. Ctrl-C (or SIGTERM) stops them all;
if one of them dies, the others are stopped too and the command exits non-zero, so a
supervisor notices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

STOP_GRACE_SECONDS = 15


def processes(*, bind: str, web_workers: int, concurrency: int) -> dict[str, list[str]]:
    """Name -> command line of every process ``run`` starts (and stops, in this order)."""
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "sessionadmin"]
    return {
        "web": [
            os.path.join(os.path.dirname(python), "gunicorn"), "sessionadmin.wsgi", "--bind", bind,
            "--workers", str(web_workers), "--access-logfile", "-", "--graceful-timeout", "10",
        ],
        "gateway": [python, str(settings.BASE_DIR / "manage.py"), "mcp_gateway"],
        "worker": [*celery, "worker", "--loglevel", "INFO", "--concurrency", str(concurrency), "--hostname", "worker@%h"],
        "beat": [*celery, "beat", "--loglevel", "INFO", "-s", str(settings.VAR_DIR / "celerybeat-schedule")],
    }  # fmt: skip


def process_env(name: str) -> dict[str, str]:
    """The environment of one process: web, worker and gateway each get their own Prometheus
    multiprocess directory, emptied before they start (sessionadmin/metrics.py); beat records
    no metrics."""
    from sessionadmin.bootstrap import METRICS_KINDS, MULTIPROC_ENV, metrics_env

    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    if name in METRICS_KINDS:
        env.update(metrics_env(name))
    return env


class Command(BaseCommand):
    help = "Start web, the MCP gateway, Celery worker and Celery beat together; Ctrl-C stops them all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=settings.SESSIONADMIN_BIND, help="host:port of the web server")
        parser.add_argument("--web-workers", type=int, default=settings.SESSIONADMIN_WEB_WORKERS)
        parser.add_argument("--concurrency", type=int, default=settings.SESSIONADMIN_WORKER_CONCURRENCY)

    def handle(self, *args: Any, bind: str, web_workers: int, concurrency: int, **options: Any) -> None:
        # var/, the secret key and the broker folders, in case `setup` was not run (idempotent).
        call_command("setup", verbosity=0, stdout=self.stdout)
        commands = processes(bind=bind, web_workers=web_workers, concurrency=concurrency)
        names = ", ".join(commands)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        stopping = False

        def request_stop(signum: int, _frame: Any) -> None:
            nonlocal stopping
            if stopping:
                # A second Ctrl-C: no more grace.
                for proc in procs.values():
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        for name, cmd in commands.items():
            # Own process groups: the terminal's Ctrl-C reaches only us, and we stop the
            # children in order (a worker finishing its task gets its grace period).
            procs[name] = subprocess.Popen(cmd, start_new_session=True, env=process_env(name))
            self.stdout.write(f"started {name} (pid {procs[name].pid}): {' '.join(cmd)}")
        self.stdout.write(
            self.style.SUCCESS(
                f"sessionadmin is up at http://{bind}/, its MCP gateway at {settings.SESSIONADMIN_GATEWAY_URL} "
                f"(Ctrl-C stops {names})"
            )
        )
        exit_code = 0
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    self.stderr.write(f"{name} exited with code {proc.returncode}; stopping the others")
                    exit_code = 1
                    stopping = True
                    break
            time.sleep(0.5)
        self._stop_all(procs, names)
        if exit_code:
            raise SystemExit(exit_code)

    def _stop_all(self, procs: dict[str, subprocess.Popen[bytes]], names: str) -> None:
        self.stdout.write(f"stopping {names} (Ctrl-C again to force)...")
        for proc in procs.values():
            if proc.poll() is None:
                # The leader only: gunicorn and the Celery worker stop their own children (a
                # warm shutdown lets a running task finish; unacknowledged messages stay queued).
                # A SIGTERM to the whole group would kill the pool under the worker instead.
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything its children left behind
            except ProcessLookupError:
                pass
            self.stdout.write(f"stopped {name} ({time.monotonic() - (deadline - STOP_GRACE_SECONDS):.1f} s)")
