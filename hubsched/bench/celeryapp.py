"""The project's Celery app on the benchmark's own queue (``HUBSCHED_BENCH_QUEUE``): ``celery -A hubsched.bench.celeryapp``."""

import os

from hubsched.celery import app

if os.environ.get("HUBSCHED_BENCH_QUEUE"):
    app.conf.task_default_queue = os.environ["HUBSCHED_BENCH_QUEUE"]

__all__ = ["app"]
