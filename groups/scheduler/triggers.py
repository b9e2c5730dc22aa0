"""Triggers: when a group's ticks fall (interval, six-field cron, once) and when a change is an event.

Times are epoch seconds (float, UTC). Rules, with their sources:

- Interval: ticks sit on a grid in elapsed time, ``t = k * period + phase``, where the phase puts the
  grid on the project's *standard-time* wall clock plus the group's offset. Elapsed time has no gaps or
  repeats, so a daylight-saving change neither skips nor doubles a tick (the rule of fixed-interval
  timers: POSIX ``CLOCK_REALTIME`` intervals, systemd ``OnUnitActiveSec``, Celery's ``schedule``). A
  period that divides the DST shift (every period up to 1 h that divides 3600 s, for a 1 h shift)
  stays on the local wall-clock grid in summer too: a 10 s group runs at :00, :10, :20 all year.
  Longer periods keep elapsed spacing and so sit one hour later on the wall clock in summer; use cron
  for wall-clock schedules.
- Cron: six fields, seconds first, evaluated by croniter in the project's time zone. Daylight saving
  follows Vixie cron (cron(8), "Daylight Saving Time and other time changes"): a time that does not
  exist (spring forward) runs once, right after the gap; in the repeated hour (fall back), a job whose
  hour field is fixed runs only in the first pass, while wildcard-hour jobs keep their elapsed-time
  schedule (each real instant once).
- Once: a single tick at ``run_at``.
- On change: ``ChangeFilter`` turns a hub ``dataChange`` into an event when a value changed; numbers
  by more than the deadband (OPC UA Part 4, 7.22.2 DataChangeFilter, absolute deadband: compared with
  the last value that was reported as an event).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

US = 1_000_000  # interval arithmetic runs in whole microseconds, so that grid points are exact


class TriggerError(ValueError):
    """A trigger cannot be built from the group's settings; the message says which setting and why."""


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except Exception as exc:
        raise TriggerError(f"unknown time zone {name!r}") from exc


def standard_offset(tz: str, at: float) -> float:
    """The zone's UTC offset without daylight saving at ``at``, in seconds (Europe/Berlin: 3600)."""
    local = datetime.fromtimestamp(at, zone(tz))
    return (local.utcoffset() - (local.dst() or timedelta(0))).total_seconds()


@dataclass(frozen=True)
class IntervalTrigger:
    """Every ``period`` seconds (0.1 and up) on a grid shifted by ``offset``, aligned in zone ``tz``."""

    period_us: int
    phase_us: int  # grid points are epoch microseconds t with t % period_us == phase_us

    @classmethod
    def build(cls, *, period: float, offset: float = 0.0, tz: str = "UTC", at: float = 0.0) -> IntervalTrigger:
        """``at`` picks the standard offset in force (it changes only when a zone's law changes)."""
        if not period or period < 0.1 or not math.isfinite(period):
            raise TriggerError(f"period {period!r}: must be at least 0.1 s")
        period_us = round(period * US)
        shift_us = round((offset - standard_offset(tz, at)) * US)
        return cls(period_us=period_us, phase_us=shift_us % period_us)

    @property
    def period(self) -> float:
        return self.period_us / US

    def next_after(self, t: float) -> float:
        """The first grid point strictly after ``t``."""
        t_us = math.floor(t * US)
        k = (t_us - self.phase_us) // self.period_us + 1
        return (k * self.period_us + self.phase_us) / US

    def count_between(self, start: float, end: float) -> int:
        """How many grid points lie in (start, end]."""
        a = (math.floor(start * US) - self.phase_us) // self.period_us
        b = (math.floor(end * US) - self.phase_us) // self.period_us
        return max(0, b - a)


@dataclass(frozen=True)
class CronTrigger:
    """Six-field cron with seconds first (``*/5 * * * * *``), in zone ``tz``."""

    expr: str
    tz: str = "UTC"

    @classmethod
    def build(cls, *, expr: str, tz: str = "UTC") -> CronTrigger:
        fields = (expr or "").split()
        if len(fields) != 6:
            raise TriggerError(f"cron {expr!r}: expected six fields, seconds first (*/5 * * * * *)")
        zone(tz)
        if not croniter.is_valid(" ".join(fields), second_at_beginning=True):
            raise TriggerError(f"cron {expr!r}: not a valid expression")
        return cls(expr=" ".join(fields), tz=tz)

    @property
    def _fixed_hour(self) -> bool:
        return "*" not in self.expr.split()[2]

    def next_after(self, t: float) -> float:
        start = datetime.fromtimestamp(math.floor(t), zone(self.tz))
        it = croniter(self.expr, start, second_at_beginning=True)
        while True:
            candidate: datetime = it.get_next(datetime)
            ts = candidate.timestamp()
            if ts <= t:
                continue
            if self._fixed_hour and _second_pass(candidate):
                continue  # Vixie cron: a fixed-time job runs once in a repeated hour
            return ts


def _second_pass(local: datetime) -> bool:
    """Whether ``local`` is the second occurrence of an ambiguous wall time (fall back)."""
    wall = local.replace(tzinfo=None)
    first = wall.replace(tzinfo=local.tzinfo, fold=0)
    return first.utcoffset() != local.utcoffset() and first.astimezone(timezone.utc) < local.astimezone(timezone.utc)


@dataclass(frozen=True)
class OnceTrigger:
    at: float

    def next_after(self, t: float) -> float | None:
        return self.at if self.at > t else None


_MISSING = object()


class ChangeFilter:
    """Decides whether a ``dataChange`` is an event for one group.

    A value is an event when it is new or differs from the last value reported as an event; numbers
    (not booleans) must move by more than ``deadband`` (None or 0: any change). Not thread-safe.
    """

    def __init__(self, deadband: float | None = None):
        self.deadband = deadband or 0.0
        self._last: dict[tuple[str, str], object] = {}

    def accept(self, entity: str, values: list[dict]) -> bool:
        event = False
        for item in values or []:
            if not isinstance(item, dict):
                continue
            slot = (entity, str(item.get("key")))
            new = item.get("value")
            old = self._last.get(slot, _MISSING)
            if old is _MISSING:
                changed = True
            elif self.deadband and _number(old) and _number(new):
                changed = abs(new - old) > self.deadband
            else:
                changed = new != old
            if changed:
                self._last[slot] = new
                event = True
        return event


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
