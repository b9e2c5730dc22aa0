"""The scheduling core: a heap of cohorts (groups that tick at the same instants) and batched dispatch.

Pure Python (no Django, no Celery), driven by an injectable clock so tests can move time by hand.

Groups whose triggers produce the same instants form one *cohort*: every interval group with the same
period and grid phase, every cron group with the same expression and zone. The heap holds one entry
per cohort, so a tick costs O(log cohorts) plus the size of what is due: with 100,000 one-second
groups there is one heap entry, and the work per tick is building the per-hub id lists (kept ready
between membership changes) and publishing one message per hub.

A message carries ``ticks = [[scheduled_for, expires_s, rr, [group_id, ...]], ...]`` for one hub:
``scheduled_for`` is epoch seconds, ``expires_s`` the expiry of those groups, ``rr`` the cohort's
tick number (the worker rotates the list by it: round-robin between the groups of a hub).
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from .clock import Clock, SystemClock
from .triggers import ChangeFilter, CronTrigger, IntervalTrigger, OnceTrigger, TriggerError

logger = logging.getLogger(__name__)

INTERVAL, CRON, ONCE, ON_CHANGE = "interval", "cron", "once", "on_change"

Publish = Callable[[int, list, int], None]  # (hub_id, ticks, hub_limit)


@dataclass(frozen=True)
class GroupSpec:
    """What the scheduler needs to know about one group (read from its Group row)."""

    id: int
    hub_id: int
    trigger: str
    period: float = 10.0
    offset: float = 0.0
    cron: str = ""
    run_at: float | None = None  # epoch seconds
    expires: float | None = None
    deadband: float | None = None
    tz: str = "UTC"
    active: bool = True  # group, hub and PeriodicTask enabled
    hub_limit: int = 32
    keys: tuple[tuple[str, str], ...] = ()  # (entity, key), for on-change subscriptions
    hub_url: str = ""
    hub_key: str = ""
    hub_timeout: float = 5.0


class StatsBuffer:
    """Counters per field and group, added to in memory and taken out in one piece by the flusher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter] = defaultdict(Counter)

    def add(self, field: str, group_ids, times: int = 1) -> None:
        with self._lock:
            counter = self._counts[field]
            if times == 1:
                counter.update(group_ids)
            else:
                for gid in group_ids:
                    counter[gid] += times

    def take(self) -> dict[str, Counter]:
        with self._lock:
            counts, self._counts = self._counts, defaultdict(Counter)
        return {field: c for field, c in counts.items() if c}


class Cohort:
    """Groups that tick at the same instants; their ids by hub and expiry, ready to send."""

    __slots__ = ("key", "trigger", "due", "version", "fired", "members", "_ready")

    def __init__(self, key, trigger, due: float):
        self.key, self.trigger, self.due = key, trigger, due
        self.version = 0
        self.fired = 0
        self.members: dict[int, dict[int, float | None]] = defaultdict(dict)  # hub -> group -> expiry
        self._ready: dict[int, list[tuple[float | None, list[int]]]] | None = None

    def add(self, hub_id: int, group_id: int, expiry: float | None) -> None:
        self.members[hub_id][group_id] = expiry
        self._ready = None

    def discard(self, hub_id: int, group_id: int) -> None:
        hub = self.members.get(hub_id)
        if hub is None:
            return
        hub.pop(group_id, None)
        if not hub:
            del self.members[hub_id]
        self._ready = None

    def __len__(self) -> int:
        return sum(len(m) for m in self.members.values())

    def ready(self) -> dict[int, list[tuple[float | None, list[int]]]]:
        if self._ready is None:
            ready = {}
            for hub_id, groups in self.members.items():
                by_expiry: dict[float | None, list[int]] = defaultdict(list)
                for gid, expiry in groups.items():
                    by_expiry[expiry].append(gid)
                ready[hub_id] = [(expiry, sorted(gids)) for expiry, gids in by_expiry.items()]
            self._ready = ready
        return self._ready


def cohort_key_and_trigger(spec: GroupSpec, now: float):
    """``(key, trigger)`` for a timed group; raises TriggerError for bad settings."""
    if spec.trigger == INTERVAL:
        trig = IntervalTrigger.build(period=spec.period, offset=spec.offset, tz=spec.tz, at=now)
        return ("interval", trig.period_us, trig.phase_us), trig
    if spec.trigger == CRON:
        trig = CronTrigger.build(expr=spec.cron, tz=spec.tz)
        return ("cron", trig.expr, trig.tz), trig
    if spec.trigger == ONCE:
        if spec.run_at is None:
            raise TriggerError("a once trigger needs run_at")
        return ("once", spec.id), OnceTrigger(spec.run_at)
    raise TriggerError(f"unknown trigger {spec.trigger!r}")


class Engine:
    """Keeps every active group's next tick and sends what is due, one message per hub per tick.

    ``publish(hub_id, ticks, hub_limit)`` sends one message (see the module docstring for ``ticks``).
    ``stats`` collects ``dispatched`` (ticks sent) and ``missed`` (ticks beat itself passed over
    after falling behind: only the latest overdue tick is sent). ``subscriptions`` (optional) is told
    which on-change groups exist; it calls ``post_event`` from its own threads.
    """

    def __init__(self, *, publish: Publish, clock: Clock | None = None, batch_max: int = 1000,
                 stats: StatsBuffer | None = None, subscriptions=None):
        self.publish = publish
        self.clock = clock or SystemClock()
        self.batch_max = batch_max
        self.stats = stats or StatsBuffer()
        self.subscriptions = subscriptions
        self.specs: dict[int, GroupSpec] = {}
        self.cohorts: dict[tuple, Cohort] = {}
        self._where: dict[int, tuple[tuple, int]] = {}  # group -> (cohort key, hub)
        self._heap: list[tuple[float, int, tuple, int]] = []
        self._push_seq = 0
        self._hub_limits: dict[int, int] = {}
        self._filters: dict[int, ChangeFilter] = {}
        self._events: queue.SimpleQueue = queue.SimpleQueue()

    # --- membership -------------------------------------------------------------------------

    def upsert(self, spec: GroupSpec) -> None:
        """Add or change one group; a group whose timing did not change keeps its place."""
        old = self.specs.get(spec.id)
        if old == spec:
            return
        self.remove(spec.id)
        self.specs[spec.id] = spec
        self._hub_limits[spec.hub_id] = spec.hub_limit
        if not spec.active:
            return
        if spec.trigger == ON_CHANGE:
            keep = old is not None and old.trigger == ON_CHANGE and old.deadband == spec.deadband
            self._filters[spec.id] = self._filters.get(spec.id) if keep else ChangeFilter(spec.deadband)
            if self.subscriptions is not None:
                self.subscriptions.want(spec)
            return
        now = self.clock.now()
        try:
            key, trig = cohort_key_and_trigger(spec, now)
        except TriggerError as exc:
            logger.warning("group %s is not scheduled: %s", spec.id, exc)
            return
        cohort = self.cohorts.get(key)
        if cohort is None:
            due = trig.next_after(now)
            if due is None:
                return  # a once trigger in the past
            cohort = self.cohorts[key] = Cohort(key, trig, due)
            self._push(cohort)
        cohort.add(spec.hub_id, spec.id, spec.expires if spec.expires is not None else self._default_expiry(spec))
        self._where[spec.id] = (key, spec.hub_id)

    @staticmethod
    def _default_expiry(spec: GroupSpec) -> float | None:
        # "one period"; for cron the period is the gap to the next tick, known only when it fires
        return None if spec.trigger == CRON else spec.period

    def remove(self, group_id: int) -> None:
        spec = self.specs.pop(group_id, None)
        place = self._where.pop(group_id, None)
        if place is not None:
            key, hub_id = place
            cohort = self.cohorts.get(key)
            if cohort is not None:
                cohort.discard(hub_id, group_id)
                if not len(cohort):
                    del self.cohorts[key]  # its heap entry goes stale
        if spec is not None and spec.trigger == ON_CHANGE:
            self._filters.pop(group_id, None)
            if self.subscriptions is not None:
                self.subscriptions.drop(group_id)

    def _push(self, cohort: Cohort) -> None:
        cohort.version += 1
        self._push_seq += 1
        heapq.heappush(self._heap, (cohort.due, self._push_seq, cohort.key, cohort.version))

    # --- time ----------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """Epoch seconds of the earliest tick still to send (None: nothing timed)."""
        heap = self._heap
        while heap:
            due, _, key, version = heap[0]
            cohort = self.cohorts.get(key)
            if cohort is not None and cohort.version == version:
                return due
            heapq.heappop(heap)
        return None

    def post_event(self, group_id: int, entity: str, values: list) -> None:
        """A hub reported a dataChange for an on-change group (any thread)."""
        self._events.put((group_id, entity, values, self.clock.now()))

    def run_due(self, now: float | None = None) -> int:
        """Send every tick due at ``now`` (default: the clock) and pending change events; returns ticks sent."""
        now = self.clock.now() if now is None else now
        outgoing: dict[int, list] = defaultdict(list)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, key, version = heapq.heappop(heap)
            cohort = self.cohorts.get(key)
            if cohort is None or cohort.version != version:
                continue
            self._fire(cohort, now, outgoing)
        self._drain_events(outgoing)
        return self._send(outgoing)

    def _fire(self, cohort: Cohort, now: float, outgoing: dict[int, list]) -> None:
        trig, due = cohort.trigger, cohort.due
        nxt = trig.next_after(due)
        passed_over = 0
        if nxt is not None and nxt <= now:
            # Beat fell behind (a stall, a suspended machine): send the latest overdue tick, count the rest missed.
            if isinstance(trig, IntervalTrigger):
                passed_over = trig.count_between(due, now)
                due = trig.next_after(now) - trig.period
                nxt = trig.next_after(now)
            else:
                while nxt is not None and nxt <= now:
                    passed_over += 1
                    due, nxt = nxt, trig.next_after(nxt)
        gap = (nxt - due) if nxt is not None else 60.0
        cohort.fired += 1
        for hub_id, parts in cohort.ready().items():
            for expiry, gids in parts:
                outgoing[hub_id].append([due, expiry if expiry is not None else gap, cohort.fired, gids])
                if passed_over:
                    self.stats.add("missed", gids, passed_over)
        if nxt is None:
            for hub_id, groups in cohort.members.items():
                for gid in groups:
                    self._where.pop(gid, None)
            del self.cohorts[cohort.key]
        else:
            cohort.due = nxt
            self._push(cohort)

    def _drain_events(self, outgoing: dict[int, list]) -> None:
        while True:
            try:
                group_id, entity, values, at = self._events.get_nowait()
            except queue.Empty:
                return
            spec = self.specs.get(group_id)
            change_filter = self._filters.get(group_id)
            if spec is None or change_filter is None or not spec.active:
                continue
            if change_filter.accept(entity, values):
                expiry = spec.expires if spec.expires is not None else spec.period
                outgoing[spec.hub_id].append([at, expiry, 0, [group_id]])

    def _send(self, outgoing: dict[int, list]) -> int:
        sent = 0
        for hub_id, ticks in outgoing.items():
            limit = self._hub_limits.get(hub_id, 32)
            batch, size = [], 0
            for tick in ticks:
                gids = tick[3]
                for start in range(0, len(gids), self.batch_max):
                    part = gids if len(gids) <= self.batch_max else gids[start : start + self.batch_max]
                    if size and size + len(part) > self.batch_max:
                        sent += self._publish(hub_id, batch, limit)
                        batch, size = [], 0
                    batch.append([tick[0], tick[1], tick[2], part])
                    size += len(part)
            if batch:
                sent += self._publish(hub_id, batch, limit)
        return sent

    def _publish(self, hub_id: int, ticks: list, limit: int) -> int:
        try:
            self.publish(hub_id, ticks, limit)
        except Exception:  # a broker hiccup must not stop the clock: those ticks are counted missed
            logger.exception("could not send %d ticks for hub %s", sum(len(t[3]) for t in ticks), hub_id)
            for tick in ticks:
                self.stats.add("missed", tick[3])
            return 0
        count = 0
        for tick in ticks:
            self.stats.add("dispatched", tick[3])
            count += len(tick[3])
        return count
