"""The Celery beat Scheduler class: ``celery -A hubsched beat -S groups.scheduler:Scheduler``.

It replaces django-celery-beat's DatabaseScheduler for hubsched groups (only those: other
PeriodicTasks are not run by it). Each loop it re-reads what changed (every ``poll_s``), sends what
is due through the Engine (one ``groups.tasks.group_batch_run`` message per hub per tick, sent
``HUBSCHED_DISPATCH_LEAD_S`` ahead with the tick's time as its eta, through ``publish.BatchPublisher``),
and waits until the next send or the next on-change event. A thread adds the counters to GroupStats
once a second (``flush_s``).
"""

from __future__ import annotations

import logging
import math
import threading

from celery import beat

from .clock import Clock, SystemClock
from .engine import Engine, StatsBuffer
from .publish import BatchPublisher
from .source import GroupSource
from .subscriptions import Subscriptions

logger = logging.getLogger(__name__)


class Scheduler(beat.Scheduler):
    poll_s = 0.5
    flush_s = 1.0
    batch_max = 1000

    def __init__(self, app, *args, clock: Clock | None = None, subscriptions=None, lead: float | None = None,
                 **kwargs):
        from django.conf import settings

        self.clock = clock or SystemClock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.stats = StatsBuffer()
        self.subscriptions = subscriptions if subscriptions is not None else Subscriptions(self.post_event)
        self.publisher = BatchPublisher(app, lambda: self.producer)
        self.engine = Engine(publish=self._publish, clock=self.clock, batch_max=self.batch_max, stats=self.stats,
                             subscriptions=self.subscriptions, batch=self._batch,
                             lead=settings.HUBSCHED_DISPATCH_LEAD_S if lead is None else lead)
        self.source = GroupSource(self.engine)
        self._next_poll = 0.0
        self._last_flush = 0.0
        self._flush_now = threading.Event()
        self._flusher: threading.Thread | None = None
        super().__init__(app, *args, **kwargs)

    # --- celery.beat.Scheduler ---------------------------------------------------------------

    def setup_schedule(self) -> None:
        count = self.source.load()
        self._next_poll = self.clock.now() + self.poll_s
        logger.info("hubsched scheduler: %d groups in %d cohorts", count, len(self.engine.cohorts))
        if isinstance(self.clock, SystemClock) and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="hubsched-stats", daemon=True)
            self._flusher.start()

    def tick(self, *args, **kwargs) -> float:
        """Send what is due, then wait for the next tick, poll or event; returns 0 (beat: call again)."""
        now = self.clock.now()
        self.engine.run_due(now)  # first: reading changes must not delay a due tick
        due = self.engine.next_due()
        if now >= self._next_poll and (due is None or due - now > 0.02 or now >= self._next_poll + 2 * self.poll_s):
            try:
                self.source.poll()
            except Exception:  # a database hiccup: keep ticking on what we know, try again next poll
                logger.exception("hubsched scheduler: reading changes failed")
            self._next_poll = now + self.poll_s
            due = self.engine.next_due()
        if now - self._last_flush >= self.flush_s:
            self._last_flush = now
            self._flush_now.set()  # the flusher writes counters right after a tick, not in the middle of one
        until = min(due if due is not None else math.inf, max(self._next_poll, now + 0.02), now + self.max_interval)
        self.clock.wait(self._wake, until - self.clock.now())
        self._wake.clear()
        return 0.0

    def should_sync(self) -> bool:
        return False  # the flusher thread writes counters

    def sync(self) -> None:
        self.flush()

    def close(self) -> None:
        self._stop.set()
        self._flush_now.set()
        if self.subscriptions is not None:
            self.subscriptions.stop()
        self.flush()
        if self._flusher is not None:
            self._flusher.join(timeout=5)

    def get_schedule(self) -> dict:
        return {}

    def set_schedule(self, schedule) -> None:
        pass

    schedule = property(get_schedule, set_schedule)

    @property
    def info(self) -> str:
        return f"    . hubsched: {len(self.engine.specs)} groups, {len(self.engine.cohorts)} cohorts"

    # --- ours ----------------------------------------------------------------------------------

    def post_event(self, group_id: int, entity: str, values: list) -> None:
        self.engine.post_event(group_id, entity, values)
        self._wake.set()

    def _publish(self, hub_id: int, ticks: list, limit: int, eta: float | None) -> None:
        self.publisher.send(hub_id, ticks, limit, eta)

    def _batch(self):
        return self.publisher.batch()

    def flush(self) -> None:
        from django.db import close_old_connections

        from .stats import group_stats_add

        counts = self.stats.take()
        if not counts:
            return
        try:
            group_stats_add(counts=counts)
        except Exception:
            logger.exception("hubsched scheduler: could not write counters; they are kept for the next flush")
            for field, per_group in counts.items():
                for gid, n in per_group.items():
                    self.stats.add(field, [gid], n)
        finally:
            close_old_connections()

    def _flush_loop(self) -> None:
        from django.db import connection

        while not self._stop.is_set():
            self._flush_now.wait(5 * self.flush_s)
            self._flush_now.clear()
            self.flush()
        connection.close()
