"""Which hub served a value, in both layouts: the tall ``hub`` column, the wide ``_hub`` column (docs/redundancy.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from scripts_engine.sinks import ExecutionValues, SinkTarget, sink_engine, sink_write, tall_table, wide_table_name
from scripts_engine.sinks.tables import WIDE_HUB, Timestamp, wide_column_name

TICK = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)
ITEMS = [{"key": "flow", "value": 42.5, "ts": "2026-11-20T10:00:00.250Z", "quality": "good"}]


def execution(tick=TICK, hub="hub-a") -> ExecutionValues:
    return ExecutionValues(tick=tick, project="demo", hub=hub, group_id=7, group="pumps", values=[("plant/p1", ITEMS)])


def rows(url: str, name: str) -> list[dict]:
    engine = sink_engine(url)
    table = sa.Table(name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def test_a_wide_row_says_which_hub_served_it(sink_url, table_prefix):
    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    sink_write(target=target, executions=[execution()])
    assert [r[WIDE_HUB] for r in rows(sink_url, wide_table_name(table_prefix, "hub-a", "pumps"))] == ["hub-a"]


def test_a_wide_table_made_before_the_hub_column_gets_it(sink_url, table_prefix):
    name = wide_table_name(table_prefix, "hub-a", "pumps")
    engine = sink_engine(sink_url)
    old = sa.Table(name, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                   sa.Column("tick", Timestamp, nullable=False, unique=True), sa.Column("ts", Timestamp),
                   sa.Column("quality", sa.String(16), nullable=False), sa.Column("flow", sa.Float(precision=53)))
    old.create(engine)
    with engine.begin() as conn:
        conn.execute(old.insert(), [{"tick": TICK - timedelta(seconds=1), "quality": "good", "flow": 1.0}])
    sink_write(target=SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide"), executions=[execution()])
    assert [(float(r["flow"]), r[WIDE_HUB]) for r in rows(sink_url, name)] == [(1.0, None), (42.5, "hub-a")]


def test_no_key_can_take_the_wide_hub_column():
    assert {wide_column_name(key) for key in ("_hub", "hub", "_HUB", "__hub__")} == {"hub"}


def test_a_tall_row_names_its_hub(sink_url, table_prefix):
    sink_write(target=SinkTarget(name="tall", url=sink_url, table=table_prefix), executions=[execution(hub="hub-b")])
    table = tall_table(sa.MetaData(), table_prefix)
    with sink_engine(sink_url).connect() as conn:
        assert [r.hub for r in conn.execute(sa.select(table))] == ["hub-b"]
