"""The default Celery beat schedule (django-celery-beat's database scheduler), created once so
operators change intervals, thresholds (the inactivity cleanup's kwargs) or disable a task in
the Django admin without a redeploy. Re-running never overwrites an operator's edits."""

import json

from django.conf import settings
from django.db import migrations

INTERVALS = {
    "sessionadmin: inactivity cleanup": ("sessionadmin.tasks.inactivity_cleanup", 5 * 60, "seconds"),
    "sessionadmin: workspace reconciliation": ("sessionadmin.tasks.reconcile_workspaces", 1, "hours"),
    "sessionadmin: MCP health": ("sessionadmin.tasks.mcp_health", 60, "seconds"),
    "sessionadmin: heartbeat": ("sessionadmin.tasks.heartbeat", 30, "seconds"),
}
DESCRIPTIONS = {
    "sessionadmin: inactivity cleanup": "Ends active sessions idle longer than idle_timeout_seconds (an org's idle timeout "
    "overrides it; pinned sessions are skipped) in batches of batch_size.",
    "sessionadmin: workspace reconciliation": "Removes orphan workspace directories past the grace period, fixes modes, "
    "re-enqueues stuck removals, reports missing directories.",
    "sessionadmin: MCP health": "Checks the open MCP clients of active sessions.",
    "sessionadmin: heartbeat": "Liveness of beat (publishes it) and the worker (runs it), read by /healthz.",
    "sessionadmin: history purge": "Deletes ended sessions past SESSIONADMIN_HISTORY_RETENTION_DAYS (audit entries only "
    "if SESSIONADMIN_AUDIT_RETENTION_DAYS is set).",
}


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    kwargs = {
        "sessionadmin: inactivity cleanup": {
            "idle_timeout_seconds": settings.SESSIONADMIN_IDLE_TIMEOUT_SECONDS,
            "batch_size": settings.SESSIONADMIN_CLEANUP_BATCH_SIZE,
        },
    }
    for name, (task, every, period) in INTERVALS.items():
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
        PeriodicTask.objects.get_or_create(
            name=name,
            defaults={
                "task": task,
                "interval": interval,
                "kwargs": json.dumps(kwargs.get(name, {})),
                # A heartbeat or health check that waited longer than its period is worthless.
                "expire_seconds": every if period == "seconds" and every <= 60 else None,
                "description": DESCRIPTIONS[name],
            },
        )
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="17", hour="3", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    PeriodicTask.objects.get_or_create(
        name="sessionadmin: history purge",
        defaults={"task": "sessionadmin.tasks.purge_history", "crontab": crontab, "kwargs": "{}",
                  "description": DESCRIPTIONS["sessionadmin: history purge"]},
    )
    # Tell a running DatabaseScheduler that the schedule changed.
    from django.utils import timezone

    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_schedule(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[*INTERVALS, "sessionadmin: history purge"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("sessionadmin", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]
