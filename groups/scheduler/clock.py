"""The tick clock: wall time in epoch seconds, injectable so that tests drive time instead of sleeping."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (UTC), with sub-millisecond resolution."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``event``; returns whether it was set."""


class SystemClock:
    """The real clock: ``time.time()``; waiting blocks."""

    def now(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told: ``advance(seconds)``, ``set(t)``; waiting advances it instead."""

    def __init__(self, start: float | datetime = 1_800_000_000.0):
        self._t = start.timestamp() if isinstance(start, datetime) else float(start)

    def now(self) -> float:
        return self._t

    def set(self, t: float | datetime) -> None:
        self._t = t.timestamp() if isinstance(t, datetime) else float(t)

    def advance(self, seconds: float) -> float:
        self._t += seconds
        return self._t

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self._t += max(0.0, seconds)
        return False
