"""An execution's values survive the log's record format unchanged (streams/codec.py)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from scripts_engine.sinks.values import ExecutionValues
from streams.codec import CodecError, execution_decode, execution_encode


def execution(values) -> ExecutionValues:
    return ExecutionValues(datetime(2026, 12, 1, 20, 0, 0, 250000, tzinfo=timezone.utc), "plant", "hub-a", 7,
                           "boilers", values)


def test_an_execution_with_nested_values_round_trips_unchanged():
    values = [
        ("boiler/1", [{"key": "temp", "value": 71.5, "ts": "2026-12-01T20:00:00.123Z", "quality": "good"},
                      {"key": "cfg", "value": {"mode": "auto", "limits": [1, 2.5, None, True], "tags": {"a": "ü"}}}]),
        ("", [{"key": "computed", "value": [[1, 2], {"deep": {"deeper": [False]}}], "quality": "uncertain"}]),
    ]
    body = execution_encode(execution(values))
    back = execution_decode(body)
    assert back._replace(size=0) == execution(values) and back.size == len(body)
    assert back.values == values and back.tick.tzinfo is not None
    assert orjson.loads(body)["v"] == 1  # standard JSON another service can read


def test_nan_and_infinity_are_not_turned_into_null():
    values = [("e", [{"key": "a", "value": float("nan")}, {"key": "b", "value": [float("-inf")]},
                     {"key": "d", "value": None}])]
    items = execution_decode(execution_encode(execution(values))).values[0][1]
    assert math.isnan(items[0]["value"]) and items[1]["value"] == [-math.inf] and items[2]["value"] is None


def test_integers_beyond_64_bits_round_trip():
    values = [("e", [{"key": "c", "value": 2**70}, {"key": "d", "value": -(2**65)}])]
    items = execution_decode(execution_encode(execution(values))).values[0][1]
    assert [i["value"] for i in items] == [2**70, -(2**65)]


def test_a_tick_with_another_utc_offset_keeps_its_instant():
    ev = execution([]) ._replace(tick=datetime(2026, 12, 1, 21, 0, tzinfo=timezone(timedelta(hours=1))))
    assert execution_decode(execution_encode(ev)).tick == ev.tick


@pytest.mark.parametrize("body, says", [
    (b"not json", "not JSON"),
    (b"[1]", "expected an object"),
    (b'{"v": 2}', "version 2"),
    (b'{"v": 1, "tick": "2026-12-01T20:00:00+00:00"}', "missing"),
    (b'{"v": 1, "tick": "2026-12-01T20:00:00", "project": "p", "hub": "h", "group_id": 1, "group": "g", "values": []}',
     "UTC offset"),
])
def test_it_refuses_what_is_not_a_version_1_execution_saying_why(body, says):
    with pytest.raises(CodecError, match=says):
        execution_decode(body)
