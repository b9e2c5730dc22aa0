"""What a sink stores: the values of group executions, and how a value becomes its columns."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, NamedTuple


class ExecutionValues(NamedTuple):
    """The values one group execution stores, as one sink submission.

    ``values`` is ``[(entity, [value object])]``: the value objects as hub protocol v1 answers
    ``getEntityParams`` (``{"key": str, "value": any JSON, "ts": RFC 3339 str or absent,
    "quality": "good" | "uncertain" | "bad" or absent, meaning good}``), handed on without copying.
    Values a script computed have entity ``""``. ``tick`` is the execution's scheduled time (aware).
    """

    tick: datetime
    project: str
    hub: str
    group_id: int
    group: str
    values: list[tuple[str, list[dict]]]
    size: int = 0  # bytes: the JSON of the hub's answers as received (0: unknown, see byte_size)
    served_by: str = ""  # the redundancy set member that served it when not ``hub`` (docs/redundancy.md)

    def value_count(self) -> int:
        return sum(len(items) for _, items in self.values)

    def byte_size(self) -> int:
        """What an execution weighs: ``size`` (the answers' frame
        bytes, which is what large values weigh), or ``ESTIMATED_VALUE_BYTES`` per value when unknown."""
        return self.size or ESTIMATED_VALUE_BYTES * self.value_count()


ESTIMATED_VALUE_BYTES = 100  # a number value's JSON object in a getEntityParams answer is 70-90 bytes


def parse_ts(ts: str | datetime | None) -> datetime | None:
    """RFC 3339 (hub protocol v1: UTC with milliseconds) to an aware UTC datetime; None when absent or unreadable
    (a time that leaves the years 1-9999 once in UTC included)."""
    if ts is None:
        return None
    if isinstance(ts, datetime):
        parsed = ts
    else:
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except (AttributeError, TypeError, ValueError):
            return None
    try:
        return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except OverflowError:  # 9999-12-31T23:00:00-05:00
        return None


MIN_STORABLE_YEAR = 1000  # MySQL/MariaDB DATETIME starts at 1000-01-01; PostgreSQL and SQLite go further
# ts texts known to be storable, and None (absent); the values of one tick share a few timestamps, so
# the usual value's check is one set membership (groups.execution.values_check reads it inline)
STORABLE_TS: set[str | None] = {None}
_STORABLE_TS_MAX = 65_536


def ts_storable(ts: str) -> bool:
    """Whether a value's ``ts`` text can be stored by every sink: ``parse_ts`` reads it (RFC 3339, or the
    ISO 8601 forms ``datetime.fromisoformat`` reads) and its UTC year is 1000 or later. Storable texts
    are remembered in STORABLE_TS (at most 65,536, then it starts over)."""
    if type(ts) is not str:
        return False
    if ts in STORABLE_TS:
        return True
    parsed = parse_ts(ts)
    if parsed is None or parsed.year < MIN_STORABLE_YEAR:
        return False
    if len(STORABLE_TS) >= _STORABLE_TS_MAX:
        STORABLE_TS.clear()
        STORABLE_TS.add(None)
    STORABLE_TS.add(ts)
    return True


def value_num(value: Any) -> float | None:
    """The value as a double when it is a finite number or a boolean, else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond a double's range
            return None
        return number if math.isfinite(number) else None
    return None


def value_json(value: Any) -> str:
    """Any hub value as JSON text; NaN and infinities (not JSON) become their names as strings."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(str(value))
