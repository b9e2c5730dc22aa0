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

Lookahead: with ``lead > 0`` a tick is sent ``lead`` seconds before it is due (per cohort at most half
its period; for cron half a second), with ``eta = scheduled_for``, so that the time spent sending is
not lag: the worker starts the tick at its time, not when the message happened to arrive. The
messages of one hub are grouped by that eta: one message per hub per tick instant.

High availability (``groups.scheduler.leader``): each round of sends ends with ``commit(marks)``, the last tick
time sent per cohort (``Cohort.mark`` names it), and a beat that takes the lead over calls ``resume(marks)`` to
carry on from where the previous leader stopped: ticks that fell due in the gap go out late while within their
expiry; older ones are returned as missed.
"""

from __future__ import annotations

import heapq
import json
import logging
import queue
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from .clock import Clock, SystemClock
from .triggers import ChangeFilter, CronTrigger, IntervalTrigger, OnceTrigger, TriggerError

logger = logging.getLogger(__name__)

INTERVAL, CRON, ONCE, ON_CHANGE = "interval", "cron", "once", "on_change"

Publish = Callable[[int, list, int, "float | None"], None]  # (hub_id, ticks, hub_limit, eta epoch s or None)

ROUND_MARK = "round"  # the watermark of the last committed round's time (``now``), for cohorts without their own
RESUME_LOG_MAX = 5  # gap ticks per cohort returned one by one as missed by ``resume``; older ones are only counted
RESUME_WALK_MAX = 100_000  # cron ticks walked through a gap at most (a longer gap's count is a lower bound)


class NotLeading(Exception):
    """Raised by ``batch()`` when this beat no longer leads: the round is dropped, nothing counted."""


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
    hub_tls: object = None  # hubs.client.TlsOptions of an on-change group's hub (wss://), else None
    name: str = ""  # the group's and its hub's names: the batch message's argsrepr (Flower, docs/flower.md)
    hub_name: str = ""


class StatsBuffer:
    """Counters per field and group, added to in memory and taken out in one piece by the flusher.

    ``add`` costs O(1) whatever the number of groups: it counts how often each id *list* was added
    (beat adds the same cached per-hub lists every tick), and ``take`` expands that into counts per
    group. So a list passed to ``add`` must not be changed afterwards; beat's lists never are.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, dict[int, list]] = defaultdict(dict)  # field -> id(list) -> [list, times]

    def add(self, field: str, group_ids, times: int = 1) -> None:
        if not isinstance(group_ids, (list, tuple)):
            group_ids = tuple(group_ids)
        with self._lock:
            parts = self._parts[field]
            entry = parts.get(id(group_ids))
            if entry is None:
                parts[id(group_ids)] = [group_ids, times]  # the entry keeps the list alive, so its id stays its own
            else:
                entry[1] += times

    def take(self) -> dict[str, Counter]:
        with self._lock:
            taken, self._parts = self._parts, defaultdict(dict)
        out = {}
        for field, parts in taken.items():
            counts: dict[int, int] = {}
            size = 0
            for gids, times in parts.values():
                counts.update(dict.fromkeys(gids, times))  # C speed: beat's lists rarely share a group
                size += len(gids)
            if len(counts) != size:  # a group in several lists (it changed cohort, two events): add them up
                counts = Counter()
                for gids, times in parts.values():
                    for gid in gids:
                        counts[gid] += times
            if counts:
                out[field] = Counter(counts)
        return out


class Cohort:
    """Groups that tick at the same instants; their ids by hub and expiry, ready to send."""

    __slots__ = ("key", "mark", "trigger", "due", "lead", "version", "fired", "members", "_ready", "_ready_max")

    def __init__(self, key, trigger, due: float, lead: float = 0.0):
        self.key, self.trigger, self.due, self.lead = key, trigger, due, lead
        self.mark = json.dumps(list(key), separators=(",", ":"))  # its watermark's name in Redis
        self.version = 0
        self.fired = 0
        self.members: dict[int, dict[int, float | None]] = defaultdict(dict)  # hub -> group -> expiry
        self._ready: dict[int, list[tuple[float | None, list[int]]]] | None = None
        self._ready_max = 0

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

    def ready(self, batch_max: int = 0) -> dict[int, list[tuple[float | None, list[int]]]]:
        """Per hub, ``[(expiry, sorted ids)]``, lists cut to at most ``batch_max`` ids (0: uncut).

        Kept until membership changes: every tick sends the same list objects, which is what lets
        StatsBuffer count them in O(1).
        """
        if self._ready is None or self._ready_max != batch_max:
            ready = {}
            for hub_id, groups in self.members.items():
                by_expiry: dict[float | None, list[int]] = defaultdict(list)
                for gid, expiry in groups.items():
                    by_expiry[expiry].append(gid)
                ready[hub_id] = parts = []
                for expiry, gids in by_expiry.items():
                    gids.sort()
                    step = batch_max if batch_max and len(gids) > batch_max else len(gids)
                    parts.extend((expiry, gids[i : i + step]) for i in range(0, len(gids), step))
            self._ready, self._ready_max = ready, batch_max
        return self._ready


def cohort_lead(trigger, lead: float) -> float:
    """How early a cohort's ticks are sent: ``lead``, but at most half the gap between two ticks."""
    if isinstance(trigger, IntervalTrigger):
        return min(lead, trigger.period / 2)
    if isinstance(trigger, CronTrigger):
        return min(lead, 0.5)  # cron's finest step is one second
    return lead


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

    ``publish(hub_id, ticks, hub_limit, eta)`` sends one message (see the module docstring for
    ``ticks``); ``eta`` is the epoch second the worker must start it at, or None for at once. ``lead``
    is how many seconds before its time a tick is sent (lookahead, see the module docstring).
    ``batch`` (optional) returns a context manager that each round of sending runs inside (beat
    uses kombu's pipelined publish batch); if leaving it raises, that round's ticks count as missed.
    ``stats`` collects ``dispatched`` (ticks sent) and ``missed`` (ticks beat itself passed over
    after falling behind: only the latest overdue tick is sent). ``subscriptions`` (optional) is told
    which on-change groups exist; it calls ``post_event`` from its own threads. ``commit(marks)``
    (optional) is called after each round with ``{cohort mark: last tick time sent}``; when it returns False
    (this beat was fenced off) the round's ticks are not counted ``dispatched``: workers refuse them and the
    new leader sends them.
    """

    def __init__(self, *, publish: Publish, clock: Clock | None = None, batch_max: int = 1000,
                 stats: StatsBuffer | None = None, subscriptions=None, lead: float = 0.0,
                 batch: Callable[[], AbstractContextManager] | None = None,
                 commit: Callable[[dict[str, float]], bool] | None = None):
        self.publish = publish
        self.commit = commit
        self._marks: dict[str, float] = {}  # this round's watermarks
        self.lead = max(0.0, lead)
        self.batch = batch
        self.clock = clock or SystemClock()
        self.batch_max = batch_max
        self.stats = stats or StatsBuffer()
        self.subscriptions = subscriptions
        self.specs: dict[int, GroupSpec] = {}
        self.jobs = 0  # specs with a negative id: jobs (jobs.scheduling), held beside the groups
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
        if spec.id < 0:
            self.jobs += 1
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
            cohort = self.cohorts[key] = Cohort(key, trig, due, cohort_lead(trig, self.lead))
            self._push(cohort)
        cohort.add(spec.hub_id, spec.id, spec.expires if spec.expires is not None else self._default_expiry(spec))
        self._where[spec.id] = (key, spec.hub_id)

    @staticmethod
    def _default_expiry(spec: GroupSpec) -> float | None:
        # "one period"; for cron the period is the gap to the next tick, known only when it fires
        return None if spec.trigger == CRON else spec.period

    def remove(self, group_id: int) -> None:
        spec = self.specs.pop(group_id, None)
        if spec is not None and group_id < 0:
            self.jobs -= 1
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
        heapq.heappush(self._heap, (cohort.due - cohort.lead, self._push_seq, cohort.key, cohort.version))

    # --- time ----------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """Epoch seconds at which the next tick is to be sent: its time minus its lead (None: nothing timed)."""
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
        """Send every tick to be sent at ``now`` (default: the clock; ticks due up to their cohort's lead
        ahead) and pending change events; returns group executions sent."""
        now = self.clock.now() if now is None else now
        outgoing: dict[tuple[int, float | None], list] = defaultdict(list)  # (hub, eta) -> ticks
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, key, version = heapq.heappop(heap)
            cohort = self.cohorts.get(key)
            if cohort is None or cohort.version != version:
                continue
            self._fire(cohort, now, outgoing)
        self._drain_events(outgoing)
        return self._send(outgoing)

    def _fire(self, cohort: Cohort, now: float, outgoing: dict[tuple[int, float | None], list]) -> None:
        # Catching up counts from ``now``, not from now + lead: a tick sent ahead is never "passed over".
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
        self._marks[cohort.mark] = due
        eta = due if due > now else None
        for hub_id, parts in cohort.ready(self.batch_max).items():
            for expiry, gids in parts:
                outgoing[hub_id, eta].append([due, expiry if expiry is not None else gap, cohort.fired, gids])
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

    def _drain_events(self, outgoing: dict[tuple[int, float | None], list]) -> None:
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
                outgoing[spec.hub_id, None].append([at, expiry, 0, [group_id]])

    def _send(self, outgoing: dict[tuple[int, float | None], list], *, force_commit: bool = False) -> int:
        if not outgoing and not (force_commit and self.commit is not None):
            self._marks = {}
            return 0
        sent: list[list] = []  # ticks handed to publish; counted dispatched once the round is out
        marks, self._marks = self._marks, {}
        try:
            with self.batch() if self.batch is not None else nullcontext():
                for (hub_id, eta), ticks in outgoing.items():
                    limit = self._hub_limits.get(hub_id, 32)
                    batch, size = [], 0
                    for tick in ticks:
                        gids = tick[3]
                        for start in range(0, len(gids), self.batch_max):
                            part = gids if len(gids) <= self.batch_max else gids[start : start + self.batch_max]
                            if size and size + len(part) > self.batch_max:
                                self._publish(hub_id, batch, limit, eta, sent)
                                batch, size = [], 0
                            batch.append([tick[0], tick[1], tick[2], part])
                            size += len(part)
                    if batch:
                        self._publish(hub_id, batch, limit, eta, sent)
        except NotLeading:  # another beat leads now: it sends these ticks (from the watermarks)
            return 0
        except Exception:  # the round's pipeline failed as a whole: count its ticks missed
            logger.exception("could not send %d ticks", sum(len(t[3]) for t in sent))
            for tick in sent:
                self.stats.add("missed", tick[3])
            self._commit(marks)  # they are accounted for: a new leader must not count them again
            return 0
        if not self._commit(marks):
            return 0  # fenced off: workers refuse this round, the new leader sends its ticks
        count = 0
        for tick in sent:
            self.stats.add("dispatched", tick[3])
            count += len(tick[3])
        return count

    def _publish(self, hub_id: int, ticks: list, limit: int, eta: float | None, sent: list) -> None:
        try:
            self.publish(hub_id, ticks, limit, eta)
        except Exception:  # a broker hiccup must not stop the clock: those ticks are counted missed
            logger.exception("could not send %d ticks for hub %s", sum(len(t[3]) for t in ticks), hub_id)
            for tick in ticks:
                self.stats.add("missed", tick[3])
            return
        sent.extend(ticks)

    def _commit(self, marks: dict[str, float]) -> bool:
        if self.commit is None:
            return True
        marks[ROUND_MARK] = self.clock.now()
        try:
            return bool(self.commit(marks))
        except Exception:  # not known whether it landed: stop leading; whoever leads next reads what did
            logger.exception("could not commit a round of sends")
            return False

    # --- high availability ------------------------------------------------------------------------

    def discard_events(self) -> int:
        """Drop pending change events (a standby beat does not send them); returns how many."""
        n = 0
        while True:
            try:
                self._events.get_nowait()
            except queue.Empty:
                return n
            n += 1

    def resume(self, marks: dict[str, float], now: float | None = None) -> tuple[int, list[tuple[int, float, str]], int]:
        """Carry on from the watermarks ``marks`` (``{cohort mark: last tick sent}``, ``ROUND_MARK``: the last
        round's time) after this beat took the lead; returns ``(group executions sent late, missed, older)``.

        For each cohort, the ticks after its watermark up to ``now`` fell due while no beat sent them. Each is
        sent at once (no eta) to the groups it is still within the expiry of; for the others it is missed:
        the latest ``RESUME_LOG_MAX`` ticks of a cohort are returned as ``[(group_id, scheduled_for, "missed")]``
        (for the log, ``groups.services.ticks_untaken_log``), older ones added to the ``missed`` counter (``older``
        counts those group ticks). A
        cohort without a watermark (new since) starts after the last round's time plus its lead; with no
        watermarks at all, nothing is known to be owed and every cohort starts at its next tick. The round is
        committed even when nothing is sent, so that a later leader does not count the same ticks again.
        """
        now = self.clock.now() if now is None else now
        round_at = marks.get(ROUND_MARK)
        outgoing: dict[tuple[int, float | None], list] = defaultdict(list)
        missed: list[tuple[int, float, str]] = []
        older_total = 0
        for cohort in list(self.cohorts.values()):
            trig = cohort.trigger
            mark = marks.get(cohort.mark)
            if mark is None:
                mark = round_at + cohort.lead if round_at is not None else now
            gap_ticks, older, nxt = self._gap(trig, mark, now)
            parts = cohort.ready(self.batch_max)
            for i, t in enumerate(gap_ticks):
                after = nxt if i + 1 == len(gap_ticks) else gap_ticks[i + 1]
                gap = (after - t) if after is not None else 60.0
                cohort.fired += 1
                for hub_id, hub_parts in parts.items():
                    for expiry, gids in hub_parts:
                        if now - t <= (expiry if expiry is not None else gap):
                            outgoing[hub_id, None].append([t, expiry if expiry is not None else gap, cohort.fired, gids])
                        else:
                            missed.extend((gid, t, "missed") for gid in gids)
            if older:
                for hub_parts in parts.values():
                    for _, gids in hub_parts:
                        self.stats.add("missed", gids, older)
                        older_total += older * len(gids)
            if gap_ticks:
                self._marks[cohort.mark] = gap_ticks[-1]
            if nxt is None:
                for groups in cohort.members.values():
                    for gid in groups:
                        self._where.pop(gid, None)
                del self.cohorts[cohort.key]
            else:
                cohort.due = nxt
                self._push(cohort)
        return self._send(outgoing, force_commit=True), missed, older_total

    @staticmethod
    def _gap(trig, mark: float, now: float) -> tuple[list[float], int, float | None]:
        """Ticks in ``(mark, now]``: ``(the latest RESUME_LOG_MAX of them, how many older, the first after now)``."""
        if isinstance(trig, IntervalTrigger):
            total = trig.count_between(mark, now)
            nxt = trig.next_after(now)
            keep = min(total, RESUME_LOG_MAX)
            period_us = trig.period_us
            nxt_us = round(nxt * 1_000_000)
            ticks = [(nxt_us - k * period_us) / 1_000_000 for k in range(keep, 0, -1)]
            return ticks, total - keep, nxt
        ticks: list[float] = []
        older = 0
        t = trig.next_after(mark)
        walked = 0
        while t is not None and t <= now:
            ticks.append(t)
            if len(ticks) > RESUME_LOG_MAX:
                ticks.pop(0)
                older += 1
            walked += 1
            if walked >= RESUME_WALK_MAX:
                logger.warning("a gap of more than %d cron ticks: the missed count is a lower bound", walked)
                return ticks, older, trig.next_after(now)
            t = trig.next_after(t)
        return ticks, older, t
