"""Deterministic, seeded signals that move the reference hub's read-only values over time."""

from __future__ import annotations

import math
import time
import zlib
from datetime import datetime, timezone

QUALITIES = ("good", "uncertain", "bad")

# Counters count from here so that they stay plausible (2026-01-01T00:00:00Z).
COUNTER_EPOCH = 1767225600


def format_ts(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. "2026-11-20T10:00:00.120Z" (hub protocol v1)."""
    ms = int(round(seconds * 1000))
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def now_ts() -> str:
    return format_ts(time.time())


def _unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) for the given parts (Python's hash() is salted per process)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) / 2**32


class Signal:
    """One read-only parameter's value as a function of the tick number.

    `tick` is the hub's sampling interval in seconds; tick k covers [k*tick, (k+1)*tick).
    """

    __slots__ = ("type", "spec", "phase", "flaky", "seed_key", "tick", "_number", "_qbucket", "_uncertain")

    def __init__(self, type_: str, spec: dict, *, seed: int, entity: str, key: str, tick: float, flaky: bool = False):
        self.type = type_
        self.spec = spec
        self.tick = tick
        self.flaky = flaky
        self.seed_key = f"{seed}|{entity}|{key}"
        self.phase = _unit_hash(self.seed_key)
        # a number's constants, worked out once: the hub samples every parameter every tick
        self._number = (spec.get("mean", 0.0), spec.get("amp", 1.0), spec.get("period", 60), spec.get("step"),
                        spec.get("step_every", 300)) if type_ == "number" else None
        self._qbucket, self._uncertain = None, False

    def value(self, k: int):
        s = self.spec
        t = k * self.tick
        if self._number is not None:
            mean, amp, period, step, step_every = self._number
            v = mean + amp * math.sin(2 * math.pi * (t / period + self.phase))
            if step:
                v += step * (int(t // step_every + self.phase * 7) % 3)
            return round(v, 3)
        if self.type == "integer":
            n = s.get("base", 0) + int(max(0.0, t - COUNTER_EPOCH) // s.get("every", 1)) + int(self.phase * 100)
            wrap = s.get("wrap")
            return n % wrap + s.get("base", 0) if wrap else n
        if self.type == "boolean":
            return (int(t // s.get("every", 30)) + int(self.phase * 2)) % 2 == 0
        if self.type == "string" or (self.type == "object" and "choices" in s):
            choices = s.get("choices", ["idle", "busy"])
            return choices[(int(t // s.get("every", 30)) + int(self.phase * len(choices))) % len(choices)]
        if self.type == "array":
            items = s.get("items", [])
            n = (int(t // s.get("every", 60)) + int(self.phase * 5)) % (len(items) + 1)
            return items[:n]
        if self.type == "object":
            return {"uptime_s": int(t) % 86400}
        return None

    def quality(self, k: int) -> str:
        # Mostly good; now and then uncertain; flaky parameters go bad for a while every few minutes.
        t = k * self.tick
        if self.flaky and int(t // 30 + self.phase * 10) % 10 == 0:
            return "bad"
        bucket = int(t // 10)
        if bucket != self._qbucket:  # the same for ten seconds: hash once per bucket, not per read
            self._qbucket, self._uncertain = bucket, _unit_hash(self.seed_key, bucket) < 0.03
        return "uncertain" if self._uncertain else "good"
