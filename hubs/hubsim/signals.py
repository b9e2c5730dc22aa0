"""Deterministic, seeded signals that move the reference hub's read-only values over time."""

from __future__ import annotations

import functools
import json
import math
import time
import zlib
from datetime import datetime, timezone

QUALITIES = ("good", "uncertain", "bad")

# Counters count from here so that they stay plausible (2026-01-01T00:00:00Z).
COUNTER_EPOCH = 1767225600

# A parameter's quality holds for a bucket of this many seconds (then it is drawn again).
QUALITY_BUCKET_S = 10

_TWO_PI = 2 * math.pi  # the same double as the `2 * math.pi * (...)` the values were first defined with
# Below this magnitude, "%.3f" with trailing zeros trimmed spells exactly repr(round(v, 3)): the
# doubles are then finer than 0.001, so each 3-decimal string maps to its own double and back.
_FAST_NUMBER_BOUND = 1e12

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def format_ts(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. "2026-11-20T10:00:00.120Z" (hub protocol v1)."""
    ms = int(round(seconds * 1000))
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def now_ts() -> str:
    return format_ts(time.time())


def encode(value) -> str:
    """JSON text of a value; numbers and booleans without the encoder's overhead (the hub's hot path)."""
    kind = type(value)
    if kind is float and math.isfinite(value):
        return repr(value)  # what json.dumps writes for a finite float
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    return _dumps(value)


def _unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) for the given parts (Python's hash() is salted per process)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) / 2**32


def quality_bucket(t: float) -> int:
    """The quality bucket of time `t` (seconds since the epoch)."""
    return int(t // QUALITY_BUCKET_S)


class Signal:
    """One read-only parameter's value as a function of the tick number.

    `tick` is the hub's sampling interval in seconds; tick k covers [k*tick, (k+1)*tick).
    `value(k)` is the value, `text(k)` its JSON text (byte for byte `encode(value(k))`, cheaper:
    the hub samples every parameter it serves every tick), `quality(k)` its quality.

    Numbers move every tick. Other values hold for a whole step (`every` seconds, or a second
    for an object's uptime): `_step(t)` says which step time t falls in and `_at(step)` gives
    the value, so `text` encodes a value once per step. Booleans, strings, arrays and objects
    with choices cycle through a list (`_table`) whose texts are encoded once; `cycle` has what
    the hub needs to pick their texts in bulk (see cycle_texts).
    """

    __slots__ = ("type", "spec", "phase", "flaky", "seed_key", "tick", "plain", "_number", "_fast_number",
                 "cycle", "_step", "_at", "_every", "_offset", "_table", "_table_texts", "_text_step", "_text",
                 "_qcrc", "_qbucket", "_uncertain")

    def __init__(self, type_: str, spec: dict, *, seed: int, entity: str, key: str, tick: float, flaky: bool = False):
        self.type = type_
        self.spec = spec
        self.tick = tick
        self.flaky = flaky
        self.seed_key = f"{seed}|{entity}|{key}"
        self.phase = _unit_hash(self.seed_key)
        # a number's constants, worked out once
        self._number = (spec.get("mean", 0.0), spec.get("amp", 1.0), spec.get("period", 60), spec.get("step"),
                        spec.get("step_every", 300)) if type_ == "number" else None
        self._fast_number = self._number is not None and _bounded(self._number)
        # (mean, amp, period, phase) of a number without steps whose text number_text spells exactly:
        # the hub samples these in bulk (number_texts)
        self.plain = (self._number[0], self._number[1], self._number[2], self.phase) \
            if self._fast_number and not self._number[3] else None
        self._table: list | None = None  # the values cycled through, if any, and their texts
        self._table_texts: list[str] | None = None
        self._step, self._at, self._every, self._offset = self._steps(type_, spec)
        self.cycle: tuple | None = None  # (every, offset, texts) of a value cycling through a list
        if self._table is not None:
            self._table_texts = [encode(v) for v in self._table]
            self.cycle = (self._every, self._offset, self._table_texts)
        self._text_step, self._text = None, ""
        self._qcrc = zlib.crc32(f"{self.seed_key}|".encode())  # _unit_hash(seed_key, bucket), half done
        self._qbucket, self._uncertain = None, False

    def _steps(self, type_: str, spec: dict) -> tuple:
        """(step function, value function, step length in seconds, offset) of a value that is not a number."""
        if type_ == "integer":
            return self._counter_step, self._counter, spec.get("every", 1), int(self.phase * 100)
        if type_ == "boolean":
            self._table = [True, False]  # true on even steps (counting from the offset)
            return self._every_step, self._pick, spec.get("every", 30), int(self.phase * 2)
        if type_ == "string" or (type_ == "object" and "choices" in spec):
            self._table = spec.get("choices", ["idle", "busy"])
            return self._every_step, self._pick, spec.get("every", 30), int(self.phase * len(self._table))
        if type_ == "array":
            items = spec.get("items", [])
            self._table = [items[:n] for n in range(len(items) + 1)]  # the first 0, 1, ... items
            return self._every_step, self._pick_copy, spec.get("every", 60), int(self.phase * 5)
        if type_ == "object":
            return self._second_step, self._uptime, 1, 0
        return self._no_step, self._nothing, 1, 0

    # steps: which stretch of time t is in
    def _every_step(self, t: float) -> int:
        return int(t // self._every)

    def _counter_step(self, t: float) -> int:
        return int(max(0.0, t - COUNTER_EPOCH) // self._every)

    def _second_step(self, t: float) -> int:
        return int(t)

    def _no_step(self, t: float) -> int:
        return 0

    # values, by step
    def _counter(self, step: int) -> int:
        base = self.spec.get("base", 0)
        n = base + step + self._offset
        wrap = self.spec.get("wrap")
        return n % wrap + base if wrap else n

    def _pick(self, step: int):
        return self._table[(step + self._offset) % len(self._table)]

    def _pick_copy(self, step: int) -> list:
        return list(self._pick(step))  # a list of its own, as a slice of the items always was

    def _uptime(self, step: int) -> dict:
        return {"uptime_s": step % 86400}

    def _nothing(self, step: int) -> None:
        return None

    def _unrounded(self, t: float) -> float:
        mean, amp, period, step, step_every = self._number
        v = mean + amp * math.sin(_TWO_PI * (t / period + self.phase))
        if step:
            v += step * (int(t // step_every + self.phase * 7) % 3)
        return v

    def value(self, k: int):
        t = k * self.tick
        if self._number is not None:
            return round(self._unrounded(t), 3)
        return self._at(self._step(t))

    def text(self, k: int) -> str:
        """The JSON text of `value(k)`, byte for byte what `encode(value(k))` gives."""
        t = k * self.tick
        if self._number is not None:
            return number_text(self._unrounded(t)) if self._fast_number else encode(self.value(k))
        step = self._step(t)
        if step != self._text_step:
            texts = self._table_texts
            self._text = texts[(step + self._offset) % len(texts)] if texts is not None else encode(self._at(step))
            self._text_step = step
        return self._text

    def quality(self, k: int) -> str:
        # Mostly good; now and then uncertain; flaky parameters go bad for a while every few minutes.
        t = k * self.tick
        if self.flaky and self.outage(t):
            return "bad"
        return self.bucket_quality(quality_bucket(t))

    def outage(self, t: float) -> bool:
        """Whether a flaky parameter is bad at time t (for a 30 s stretch every five minutes)."""
        return int(t // 30 + self.phase * 10) % 10 == 0

    def bucket_quality(self, bucket: int) -> str:
        """The quality outside outages: "uncertain" for 3 % of the quality buckets, else "good"."""
        if bucket != self._qbucket:  # the same for the whole bucket: hash once per bucket, not per read
            self._qbucket = bucket
            self._uncertain = zlib.crc32(str(bucket).encode(), self._qcrc) < _UNCERTAIN  # _unit_hash(seed_key, bucket) < 0.03
        return "uncertain" if self._uncertain else "good"


_UNCERTAIN = 0.03 * 2**32  # crc32 / 2**32 < 0.03: the same test without the division


def uncertain(signals: list[Signal], bucket: int) -> list[bool]:
    """`[s.bucket_quality(bucket) == "uncertain" for s in signals]`, in bulk (a new bucket for a whole entity)."""
    crc32, text = zlib.crc32, str(bucket).encode()
    return [crc32(text, s._qcrc) < _UNCERTAIN for s in signals]


def cycle_texts(cycles: list[tuple], t: float) -> list[str]:
    """The texts at time t of signals that cycle through a list, from their `Signal.cycle`, in bulk.

    The same as `[s.text(k) for s in signals]` (t = k * tick): `_every_step` and `_pick`, inlined.
    """
    return [texts[(int(t // every) + offset) % len(texts)] for every, offset, texts in cycles]


def number_text(v: float) -> str:
    """repr(round(v, 3)) for |v| < _FAST_NUMBER_BOUND, at a third of the cost (no round trip through a double)."""
    text = f"{v:.3f}".rstrip("0")
    return text + "0" if text[-1] == "." else text


def number_texts(plains: list[tuple], t: float) -> list[str]:
    """The texts at time t of number signals without steps, from their `Signal.plain`, in bulk.

    The same as `[s.text(k) for s in signals]` (t = k * tick); the hub's hot path, so the
    formatting is one `%` for all of them and the trimming four `str.replace` calls.
    """
    sin = math.sin
    values = tuple([mean + amp * sin(_TWO_PI * (t / period + phase)) for mean, amp, period, phase in plains])
    text = _formats(len(values)) % values  # every number ends in three decimals and \x01
    # number_text's trimming: .000 -> .0, .300 -> .3, .340 -> .34; \x00 ends the trimmed ones
    text = text.replace("000\x01", "0\x00").replace("00\x01", "\x00").replace("0\x01", "\x00").replace("\x01", "\x00")
    return text.split("\x00")[:-1]


@functools.lru_cache(maxsize=64)
def _formats(n: int) -> str:
    return "%.3f\x01" * n


def _bounded(number: tuple) -> bool:
    """Whether a number signal `(mean, amp, period, step, step_every)` stays below _FAST_NUMBER_BOUND."""
    mean, amp, _, step, _ = number
    try:
        return abs(mean) + abs(amp) + 2 * abs(step or 0) < _FAST_NUMBER_BOUND  # step counts 0, 1 or 2 times
    except TypeError:
        return False  # not numbers: value() fails as it always did
