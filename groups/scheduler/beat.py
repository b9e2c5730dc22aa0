"""The Celery beat Scheduler class: ``celery -A hubsched beat -S groups.scheduler:Scheduler``.

It replaces django-celery-beat's DatabaseScheduler for hubsched groups (only those: other
PeriodicTasks are not run by it). Each loop it re-reads what changed (every ``poll_s``), sends what
is due through the Engine (one ``groups.tasks.group_batch_run`` message per hub per tick, sent
``HUBSCHED_DISPATCH_LEAD_S`` ahead with the tick's time as its eta, through ``publish.BatchPublisher``),
and waits until the next send or the next on-change event. A thread adds the counters to GroupStats
once a second (``flush_s``).

Several beats may run on Redis: one leads (``groups.scheduler.leader``), the others keep their groups loaded
and take over within about ``HUBSCHED_BEAT_LEASE_S`` + 0.1 s of the leader's death, carrying on from its
watermarks (``Engine.resume``). On the embedded broker a second beat refuses to start.
"""

from __future__ import annotations

import logging
import math
import threading

from celery import beat

from hubsched.metrics.histogram import Histogram
from hubsched.metrics.reports import report_source, reporting_start, reporting_stop

from .clock import Clock, SystemClock
from .engine import Engine, NotLeading, StatsBuffer
from .leader import FileLeadership, leadership_for_beat
from .publish import BatchPublisher
from .source import GroupSource
from .subscriptions import Subscriptions

logger = logging.getLogger(__name__)


class Scheduler(beat.Scheduler):
    poll_s = 0.5
    flush_s = 1.0
    batch_max = 1000

    standby_s = 0.05  # how often a standby beat looks whether it has taken the lead

    def __init__(self, app, *args, clock: Clock | None = None, subscriptions=None, lead: float | None = None,
                 leadership=None, **kwargs):
        from django.conf import settings

        self.clock = clock or SystemClock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.stats = StatsBuffer()
        self.subscriptions = subscriptions if subscriptions is not None else Subscriptions(self.post_event)
        self.publisher = BatchPublisher(app, lambda: self.producer, spec_of=lambda gid: self.engine.specs.get(gid))
        self.leadership = leadership if leadership is not None else leadership_for_beat()
        self.leadership.on_change = self._leadership_changed
        self._fence: list[int] | None = None  # the round being sent
        self._resumed: object = None  # the epoch this beat carried on from the watermarks for (None: standby)
        self._untaken: list[tuple[int, float, str]] = []  # missed gap ticks for the log, written by the flusher
        self._untaken_lock = threading.Lock()
        self.engine = Engine(publish=self._publish, clock=self.clock, batch_max=self.batch_max, stats=self.stats,
                             subscriptions=self.subscriptions, batch=self._batch, commit=self._commit,
                             lead=settings.HUBSCHED_DISPATCH_LEAD_S if lead is None else lead)
        self.source = GroupSource(self.engine)
        from jobs.scheduling import JobSource

        self.jobs = JobSource(self.engine)  # jobs ride the same engine, with negative ids (jobs/scheduling.py)
        self._had_jobs = False  # once a job was scheduled, the flush splits the jobs' counters off
        self._next_poll = 0.0
        self._last_flush = 0.0
        self._flush_now = threading.Event()
        self._flusher: threading.Thread | None = None
        self._dispatch_lag: dict[int, Histogram] = {}  # hub id -> seconds from a tick's time to its send (0: ahead)
        super().__init__(app, *args, **kwargs)

    # --- celery.beat.Scheduler ---------------------------------------------------------------

    def setup_schedule(self) -> None:
        if isinstance(self.leadership, FileLeadership):
            self.leadership.acquire()  # raises BeatAlreadyRunning: one beat on the embedded broker
        count = self.source.load()
        jobs = self.jobs.load()
        self._next_poll = self.clock.now() + self.poll_s
        logger.info("hubsched scheduler: %d groups in %d cohorts, with %d jobs", count, len(self.engine.cohorts), jobs)
        if isinstance(self.clock, SystemClock) and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="hubsched-stats", daemon=True)
            self._flusher.start()
            report_source("beat", self.metrics_snapshot)  # dispatch lag and leading for /metrics
            reporting_start("beat")
        if not isinstance(self.leadership, FileLeadership):
            try:
                self.leadership.try_acquire()  # at once, so that a lone beat leads from its first tick
            except Exception:
                logger.exception("hubsched scheduler: Redis unreachable; standing by until it answers")
        self.leadership.start()

    def tick(self, *args, **kwargs) -> float:
        """Send what is due (when leading), then wait for the next tick, poll or event; returns 0 (beat: call again)."""
        now = self.clock.now()
        leading = self._lead(now)
        if leading:
            self.engine.run_due(now)  # first: reading changes must not delay a due tick
        else:
            self.engine.discard_events()
        due = self.engine.next_due() if leading else now + self.standby_s
        if now >= self._next_poll and (due is None or due - now > 0.02 or now >= self._next_poll + 2 * self.poll_s):
            try:
                self.source.poll()
                self.jobs.poll()
            except Exception:  # a database hiccup: keep ticking on what we know, try again next poll
                logger.exception("hubsched scheduler: reading changes failed")
            self._next_poll = now + self.poll_s
            due = self.engine.next_due() if leading else now + self.standby_s
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
        self.leadership.stop()  # releases the lease: a standby takes over at once
        self._flush_now.set()
        if self.subscriptions is not None:
            self.subscriptions.stop()
        self.flush()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
            reporting_stop()

    def get_schedule(self) -> dict:
        return {}

    def set_schedule(self, schedule) -> None:
        pass

    schedule = property(get_schedule, set_schedule)

    @property
    def info(self) -> str:
        groups = len(self.engine.specs) - self.engine.jobs
        return f"    . hubsched: {groups} groups, {self.engine.jobs} jobs, {len(self.engine.cohorts)} cohorts"

    # --- ours ----------------------------------------------------------------------------------

    def post_event(self, group_id: int, entity: str, values: list) -> None:
        self.engine.post_event(group_id, entity, values)
        self._wake.set()

    def _lead(self, now: float) -> bool:
        """Whether this beat leads; on taking the lead, carry on from the watermarks first."""
        leadership = self.leadership
        if not leadership.leading:
            self._resumed = None
            return False
        epoch = leadership.epoch
        if self._resumed is None or self._resumed != epoch:
            self._resumed = epoch
            if epoch is not None:  # on Redis; the file lock has no predecessor to carry on from
                self._resume(now)
        return leadership.leading

    def _resume(self, now: float) -> None:
        try:
            marks = self.leadership.watermarks()
        except Exception:
            logger.exception("hubsched scheduler: could not read the watermarks; standing down")
            self.leadership.step_down("could not read the watermarks")
            self._resumed = None
            return
        late, missed, older = self.engine.resume(marks, now)
        if missed:
            with self._untaken_lock:
                self._untaken.extend(missed)
            self._flush_now.set()
        logger.warning("hubsched scheduler: took the lead (epoch %s): %d group ticks of the gap sent late, "
                       "%d missed", self.leadership.epoch, late, len(missed) + older)

    def _leadership_changed(self, leading: bool) -> None:
        self._wake.set()  # from the lease thread: take over (or stand by) now, not at the next tick

    def _publish(self, hub_id: int, ticks: list, limit: int, eta: float | None) -> None:
        if hub_id < 0:  # a job's ticks (jobs/scheduling.py): jobs.tasks.job_tick_run on the jobs queue
            self.publisher.send_job(-hub_id, ticks, eta, self._fence)
            return
        self.publisher.send(hub_id, ticks, limit, eta, self._fence)
        now = self.clock.now()
        lag = self._dispatch_lag.get(hub_id)
        if lag is None:
            lag = self._dispatch_lag[hub_id] = Histogram()
        for tick in ticks:
            lag.observe(max(0.0, now - tick[0]), len(tick[3]))

    def metrics_snapshot(self) -> dict:
        """This beat's part of its process report (hubsched/metrics/reports.py)::

            {"dispatch_lag": {hub id: Histogram.snapshot()}}

        ``dispatch_lag``: per group tick sent, seconds from the tick's time to its message being sent (0 for a tick
        sent ahead, with its ETA: ``HUBSCHED_DISPATCH_LEAD_S``); jobs' ticks are not in it."""
        return {"dispatch_lag": {str(hub_id): h.snapshot() for hub_id, h in list(self._dispatch_lag.items())}}

    def _batch(self):
        self._fence = self.leadership.next_round()
        if not isinstance(self.leadership, FileLeadership) and (self._fence is None or self._fence[0] != self._resumed):
            # lost the lead, or took it again since this tick began: the engine has not carried on from the
            # watermarks of that epoch yet, so this round could repeat another beat's ticks
            self._fence = None
            raise NotLeading()
        return self.publisher.batch()

    def _commit(self, marks: dict[str, float]) -> bool:
        fence, self._fence = self._fence, None
        if fence is None:
            return True
        return self.leadership.commit(fence, marks)

    def flush(self) -> None:
        from django.db import close_old_connections

        from .stats import group_stats_add

        with self._untaken_lock:
            untaken, self._untaken = self._untaken, []
        if any(tick[0] < 0 for tick in untaken):  # the jobs' (negative ids) go to their own runs
            untaken = self._jobs_untaken_log(untaken)
        if untaken:
            from groups.services import ticks_untaken_log

            for start in range(0, len(untaken), 10_000):  # a long outage of many groups: appends of a bounded size
                part = untaken[start : start + 10_000]
                try:
                    ticks_untaken_log(untaken=part)
                except Exception:
                    logger.exception("hubsched scheduler: could not record %d missed ticks; kept for the next flush",
                                     len(untaken) - start)
                    with self._untaken_lock:
                        self._untaken[:0] = untaken[start:]
                    break
        counts = self.stats.take()
        self._had_jobs = self._had_jobs or bool(self.engine.jobs)
        if self._had_jobs:  # no pass over every group's counters on a site that never scheduled a job
            counts = self._jobs_stats_add(counts)
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

    def _jobs_untaken_log(self, untaken: list) -> list:
        """Record the jobs' missed gap ticks (``jobs.services.job_ticks_untaken_log``); returns the groups' ones."""
        from jobs.services import job_ticks_untaken_log

        jobs = [(-sid, t, status) for sid, t, status in untaken if sid < 0]
        try:
            job_ticks_untaken_log(untaken=jobs)
        except Exception:
            logger.exception("hubsched scheduler: could not record %d missed job ticks; kept for the next flush", len(jobs))
            with self._untaken_lock:
                self._untaken.extend((-jid, t, status) for jid, t, status in jobs)
        return [tick for tick in untaken if tick[0] > 0]

    def _jobs_stats_add(self, counts: dict) -> dict:
        """Add the jobs' counters (negative ids) to JobStats; returns the groups' counters."""
        jobs = {field: {-sid: n for sid, n in per.items() if sid < 0} for field, per in counts.items()}
        jobs = {field: per for field, per in jobs.items() if per}
        if not jobs:
            return counts
        from jobs.services import job_stats_add

        try:
            job_stats_add(counts=jobs)
        except Exception:
            logger.exception("hubsched scheduler: could not write job counters; they are kept for the next flush")
            for field, per_job in jobs.items():
                for jid, n in per_job.items():
                    self.stats.add(field, [-jid], n)
        groups = {field: {gid: n for gid, n in per.items() if gid > 0} for field, per in counts.items()}
        return {field: per for field, per in groups.items() if per}

    def _flush_loop(self) -> None:
        from django.db import connection

        while not self._stop.is_set():
            self._flush_now.wait(5 * self.flush_s)
            self._flush_now.clear()
            self.flush()
        connection.close()
