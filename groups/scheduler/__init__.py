"""hubsched's beat scheduler: triggers, a tick clock, batched dispatch, overlap locks, expiry and fairness.

Start it with ``celery -A hubsched beat -S groups.scheduler:Scheduler``. Pure parts (``clock``,
``triggers``, ``engine``) import nothing from Django; ``beat`` (the Celery Scheduler class), ``source``
(reading Group rows), ``dispatch`` (the worker side), ``locks`` and ``stats`` do.
"""

from __future__ import annotations


def __getattr__(name: str):
    # Lazy: `celery beat -S groups.scheduler:Scheduler` imports this package after Django is set up,
    # while the pure modules stay importable without it.
    if name == "Scheduler":
        from .beat import Scheduler

        return Scheduler
    raise AttributeError(name)
