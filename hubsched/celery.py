"""The Celery application: configuration comes from Django settings (CELERY_*), tasks from the apps."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsched.settings")

app = Celery("hubsched")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Every worker process reports its hub clients' state and latency for /metrics (hubsched/metrics/reports.py).
from hubsched.metrics.reports import worker_signals_connect  # noqa: E402

worker_signals_connect()
