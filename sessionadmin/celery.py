"""The Celery application, configured from Django settings (every ``CELERY_*`` setting)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")

app = Celery("sessionadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
