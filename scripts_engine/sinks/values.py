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

    def value_count(self) -> int:
        return sum(len(items) for _, items in self.values)


def parse_ts(ts: str | datetime | None) -> datetime | None:
    """RFC 3339 (hub protocol v1: UTC with milliseconds) to an aware UTC datetime; None when absent or unreadable."""
    if ts is None:
        return None
    if isinstance(ts, datetime):
        parsed = ts
    else:
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except (AttributeError, TypeError, ValueError):
            return None
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


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
