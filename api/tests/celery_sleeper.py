"""The project's Celery app with one task more, ``hubsched.tests.sleep``, for tests that need a worker busy
(``celery -A api.tests.celery_sleeper worker``): the worker inspection must show what a worker runs."""

import time

from hubsched.celery import app


@app.task(name="hubsched.tests.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


__all__ = ["app"]
