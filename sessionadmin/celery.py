"""The Celery application, configured from Django settings (every ``CELERY_*`` setting).

Liveness: a worker writes its ``ServiceHeartbeat`` row when it is ready and on every run of the
``heartbeat`` task; beat writes its row when it starts and whenever it publishes that task. A
worker also closes the runs it left open when it died (same hostname) and re-enqueues
unfinished workspace removals when it starts: kombu's
``filesystem://`` transport deletes a message file as soon as it is fetched and keeps the
unacknowledged message only in memory, so a SIGKILLed worker loses it (Redis/RabbitMQ redeliver
it themselves; the removal is idempotent, so both paths together duplicate nothing).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import beat_init, before_task_publish, worker_init, worker_ready
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")

# The embedded default's transport with atomic message files (see sessionadmin/broker.py); the
# URL stays ``filesystem://`` for every process that publishes or consumes.
TRANSPORT_ALIASES["filesystem"] = "sessionadmin.broker:Transport"


def _standalone_worker_metrics() -> None:
    """A worker started on its own (``celery -A sessionadmin worker``: ``manage.py run`` and the
    tests give it the variable themselves) writes its metrics to SESSIONADMIN_METRICS_DIR/worker,
    which the web tier's /metrics reads. Here, at import: Celery's command line imports this
    module before any task module, and prometheus_client picks its mode at its own first import
    (by worker_init it is too late: the tasks and their metrics are loaded)."""
    from sessionadmin.bootstrap import MULTIPROC_ENV, metrics_env

    if "worker" in sys.argv[1:] and not os.environ.get(MULTIPROC_ENV):
        os.environ.update(metrics_env("worker"))


_standalone_worker_metrics()

logger = logging.getLogger(__name__)

app = Celery("sessionadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

HEARTBEAT_TASK = "sessionadmin.tasks.heartbeat"


def _beat(name: str, **details: Any) -> None:
    # Liveness must never take a component down: a database hiccup is only logged.
    try:
        from sessionadmin.maintenance import record_heartbeat

        record_heartbeat(name, details=details)
    except Exception:
        logger.exception("could not record the %s heartbeat", name)


@worker_init.connect
@beat_init.connect
def _require_secret_key(**kwargs: Any) -> None:
    # Celery logs and swallows exceptions raised by signal handlers: SystemExit is not one of
    # them, so a worker or beat with no key stops at once with the reason, instead of failing
    # later on every task that signs or decrypts something.
    from django.core.exceptions import ImproperlyConfigured

    from sessionadmin.bootstrap import require_secret_key

    try:
        require_secret_key()
    except ImproperlyConfigured as exc:
        raise SystemExit(f"sessionadmin: {exc}") from None


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    hostname = getattr(sender, "hostname", "") if sender is not None else ""
    _beat("worker", hostname=hostname, event="ready")
    try:
        from sessionadmin.maintenance import requeue_stuck_removals, settle_open_runs

        settle_open_runs(worker=hostname)
        requeue_stuck_removals(reason="worker start")
    except Exception:
        logger.exception("could not settle open runs or re-enqueue unfinished workspace removals")


@beat_init.connect
def _on_beat_init(sender: Any = None, **kwargs: Any) -> None:
    _beat("beat", event="start")


@before_task_publish.connect
def _on_publish(sender: str | None = None, **kwargs: Any) -> None:
    # Only beat sends the heartbeat task, so its publication is beat's own sign of life.
    if sender == HEARTBEAT_TASK:
        _beat("beat", event="publish")
