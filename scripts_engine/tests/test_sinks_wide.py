"""The wide layout (one row per execution), on real databases."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from scripts_engine.sinks import ExecutionValues, SinkError, SinkTarget, sink_engine, sink_write, wide_table_name

TICK = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)


def execution(values: dict, tick=TICK, quality="good") -> list[ExecutionValues]:
    items = [{"key": key, "value": value, "ts": "2026-11-20T10:00:00.250Z", "quality": quality if key == "flow" else "good"}
             for key, value in values.items()]
    return [ExecutionValues(tick=tick, project="demo", hub="hub-a", group_id=7, group="Line 1 pumps",
                            values=[("plant/line1/pump1", items)])]


def wide_rows(url: str, name: str) -> list[dict]:
    engine = sink_engine(url)
    table = sa.Table(name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def test_wide_layout_stores_one_row_per_execution_with_a_column_per_key(sink_url, table_prefix):
    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    alarms = [{"code": "P101", "severity": 2}]
    sink_write(target=target, executions=execution({"flow": 42.5, "running": True, "alarms": alarms}, quality="uncertain"))
    sink_write(target=target, executions=execution({"flow": 43.0, "running": False, "alarms": []}, tick=TICK + timedelta(seconds=1)))
    name = wide_table_name(table_prefix, "hub-a", "Line 1 pumps")
    assert name == f"{table_prefix}_hub_a_line_1_pumps"
    rows = wide_rows(sink_url, name)
    got = [(float(r["flow"]), float(r["running"]), json.loads(r["alarms"])) for r in rows]
    assert got == [(42.5, 1.0, alarms), (43.0, 0.0, [])]
    assert [r["quality"] for r in rows] == ["uncertain", "good"]


def test_wide_layout_adds_a_column_for_a_key_that_appears_later(sink_url, table_prefix):
    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    sink_write(target=target, executions=execution({"flow": 1.0}))
    sink_write(target=target, executions=execution({"flow": 2.0, "pressure": 6.1}, tick=TICK + timedelta(seconds=1)))
    rows = wide_rows(sink_url, wide_table_name(table_prefix, "hub-a", "Line 1 pumps"))
    as_float = lambda v: None if v is None else float(v)  # noqa: E731  (MariaDB reflects DOUBLE as Decimal)
    assert [(as_float(r["flow"]), as_float(r["pressure"])) for r in rows] == [(1.0, None), (2.0, 6.1)]


def test_wide_layout_refuses_text_in_a_number_column_naming_it(sink_url, table_prefix):
    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    sink_write(target=target, executions=execution({"flow": 1.0}))
    with pytest.raises(SinkError, match=r"column flow holds numbers; plant/line1/pump1\.flow sent \"high\""):
        sink_write(target=target, executions=execution({"flow": "high"}, tick=TICK + timedelta(seconds=1)))


def test_wide_layout_stores_an_execution_delivered_twice_once(sink_url, table_prefix):
    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    sink_write(target=target, executions=execution({"flow": 1.0}))
    sink_write(target=target, executions=execution({"flow": 1.0}))
    assert len(wide_rows(sink_url, wide_table_name(table_prefix, "hub-a", "Line 1 pumps"))) == 1
