"""A real Celery worker for tests (never eager mode).

``CeleryWorker`` starts ``python -m tests.celery_worker -A sessionadmin worker`` (with ``-B`` when
scheduling is under test) as a subprocess pointed at the SAME test database, workspace root and
secret key as the test process, on a broker of its own:

- SQLite (or no ``CELERY_TEST_REDIS_URL``): kombu's ``filesystem://`` transport in a temporary
  folder, created per worker;
- PostgreSQL with ``CELERY_TEST_REDIS_URL`` set (``make test-postgres``): that Redis database.

Each worker gets a unique queue name, so parallel test runs sharing a Redis never mix messages;
``use_broker()`` points the test process's Celery app at the same broker and queue so that
``.delay()``/``.delay_on_commit()`` in a test reach the worker. Tests using it must be
TransactionTestCase (the worker only sees committed rows).

Faults are injected in the worker process only through ``SESSIONADMIN_TEST_FAULTS`` (JSON), read
when this module runs as ``__main__``: ``{"hang_user": "u", "hang_marker": "/path"}`` makes the
removal of user ``u``'s workspaces write the marker after the first removal and then hang (to
SIGKILL a worker mid-removal); ``{"fail_user": "u"}`` makes their removal fail with EPERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0


def redis_url() -> str | None:
    """Redis is used only with PostgreSQL and CELERY_TEST_REDIS_URL (the PostgreSQL CI run)."""
    url = os.environ.get("CELERY_TEST_REDIS_URL", "")
    return url if url and connection.vendor == "postgresql" else None


def use_broker(*, url: str, options: dict[str, Any], queue: str) -> Callable[[], None]:
    """Point this process's Celery app at a broker and queue; returns the undo."""
    from sessionadmin.celery import app

    saved = (app.conf.broker_url, app.conf.broker_transport_options, app.conf.task_default_queue)

    def apply(values: tuple[Any, Any, Any]) -> None:
        app.conf.broker_url, app.conf.broker_transport_options, app.conf.task_default_queue = values
        # Connections, producers, queues and routes are cached: build them again.
        app._pool = None
        app.__dict__.pop("amqp", None)

    apply((url, options, queue))
    return lambda: apply(saved)


def dead_broker_url() -> str:
    """A Redis URL on a loopback port nothing listens on: a real broker that is down."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


class QueueProbe:
    """A real broker with no worker: kombu's filesystem transport in a temporary folder, so a
    test can read what was sent (task name, args, kwargs) instead of mocking ``apply_async``.

        probe = QueueProbe(); self.addCleanup(probe.close)
        ...
        probe.messages()  # [("sessionadmin.tasks.remove_workspaces", [[ids]], {"actor": ...})]
    """

    def __init__(self) -> None:
        import base64
        import json

        self._b64, self._json = base64, json
        self.folder = Path(tempfile.mkdtemp(prefix="sessionadmin-queue-"))
        for name in ("queue", "control", "processed"):
            (self.folder / name).mkdir()
        options = {
            "data_folder_in": str(self.folder / "queue"),
            "data_folder_out": str(self.folder / "queue"),
            "control_folder": str(self.folder / "control"),
            "processed_folder": str(self.folder / "processed"),
        }
        self._undo = use_broker(url="filesystem://", options=options, queue=f"probe-{uuid.uuid4().hex[:8]}")

    def messages(self) -> list[tuple[str, list[Any], dict[str, Any]]]:
        out = []
        for path in sorted((self.folder / "queue").iterdir(), key=lambda p: p.stat().st_mtime_ns):
            message = self._json.loads(path.read_text())
            args, kwargs, _ = self._json.loads(self._b64.b64decode(message["body"]))
            out.append((message["headers"]["task"], args, kwargs))
        return out

    def close(self) -> None:
        self._undo()
        shutil.rmtree(self.folder, ignore_errors=True)


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class CeleryWorker:
    def __init__(
        self, *, workspace_root: Path, beat: bool = False, concurrency: int = 1, faults: dict[str, str] | None = None
    ) -> None:
        self.workspace_root = workspace_root
        self.beat = beat
        self.concurrency = concurrency
        self.faults = faults or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-worker-"))
        self.queue = f"test-{uuid.uuid4().hex[:12]}"
        self.redis = redis_url()
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._undo_broker: Callable[[], None] | None = None
        var = self.tmp / "var"
        broker = var / "celery" / "broker"
        if self.redis:
            self.broker_url, self.broker_options = self.redis, {}
        else:
            self.broker_url = "filesystem://"
            self.broker_options = {
                "data_folder_in": str(broker / "queue"),
                "data_folder_out": str(broker / "queue"),
                "control_folder": str(broker / "control"),
                "processed_folder": str(broker / "processed"),
                "store_processed": False,
                "polling_interval": 0.05,
            }
            for folder in ("queue", "control", "processed"):
                (broker / folder).mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        # Imported here: this module is also the worker's entry point, before Django is set up.
        from tests.base import database_url

        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PYTEST", "SESSIONADMIN_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="sessionadmin.settings",
            DATABASE_URL=database_url(),
            SESSIONADMIN_VAR_DIR=str(self.tmp / "var"),
            SESSIONADMIN_SECRET_KEY=str(settings.SECRET_KEY),
            # The audit ledger's signing key too: checkpoints made by the worker verify here.
            SESSIONADMIN_AUDIT_SIGNING_KEY_FILE=str(settings.SESSIONADMIN_AUDIT_SIGNING_KEY_FILE),
            SESSIONADMIN_WORKSPACE_ROOT=str(self.workspace_root),
            SESSIONADMIN_CELERY_QUEUE=self.queue,
            SESSIONADMIN_LOG_LEVEL="INFO",
            SESSIONADMIN_MCP_ALLOWED_HOSTS=",".join(settings.SESSIONADMIN_MCP_ALLOWED_HOSTS),
            CELERY_POLLING_INTERVAL="0.05",
            CELERY_BROKER_URL=self.broker_url,
            PYTHONUNBUFFERED="1",
            # The test process's metrics directories: its /metrics merges what the worker writes.
            SESSIONADMIN_METRICS_DIR=str(settings.SESSIONADMIN_METRICS_DIR),
            PROMETHEUS_MULTIPROC_DIR=str(Path(settings.SESSIONADMIN_METRICS_DIR) / "worker"),
        )
        Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        if self.faults:
            env["SESSIONADMIN_TEST_FAULTS"] = json.dumps(self.faults)
        return env

    def start(self) -> CeleryWorker:
        if self._undo_broker is None:
            self._undo_broker = use_broker(url=self.broker_url, options=self.broker_options, queue=self.queue)
        cmd = [
            sys.executable, "-m", "tests.celery_worker", "-A", "sessionadmin", "worker", "--loglevel", "INFO",
            "--concurrency", str(self.concurrency), "--queues", self.queue, "--hostname", f"{self.queue}@%h",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        if self.beat:
            cmd += ["--beat", "--schedule", str(self.tmp / "celerybeat-schedule")]
        self.output = []
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(READY_TIMEOUT):
            self.stop()
            raise AssertionError("the Celery worker did not become ready:\n" + "".join(self.output[-40:]))
        return self

    def _pump(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if " ready." in line:
                ready.set()
        ready.set()  # exited: start() reports the output

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crashed host would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # The main process only: it stops its pool itself (a group-wide SIGTERM kills the
            # pool processes under it and leaves it waiting for them).
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        self.stop()
        if self._undo_broker:
            self._undo_broker()
            self._undo_broker = None
        if self.redis:
            import redis

            client = redis.Redis.from_url(self.redis)
            client.delete(self.queue)
            client.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _install_faults() -> None:
    faults = json.loads(os.environ.get("SESSIONADMIN_TEST_FAULTS", "") or "{}")
    if not faults:
        return
    import django

    django.setup()
    from sessionadmin import workspaces

    original = workspaces.remove_workspace

    def remove_workspace(root: Path | str, user_id: str, session_id: str, **options: Any) -> bool:
        if user_id == faults.get("fail_user"):
            raise workspaces.WorkspaceError(f"cannot remove workspace {root}/{user_id}/{session_id}: Operation not permitted")
        removed = original(root, user_id, session_id, **options)
        if user_id == faults.get("hang_user"):
            Path(faults["hang_marker"]).write_text(session_id)
            time.sleep(3600)  # SIGKILLed by the test
        return removed

    workspaces.remove_workspace = remove_workspace  # type: ignore[assignment]


if __name__ == "__main__":
    _install_faults()
    from celery.__main__ import main

    sys.argv[0] = "celery"
    main()
