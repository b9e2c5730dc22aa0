"""The SQL sink, for real on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from scripts_engine.sinks import SinkError, SinkTarget, ValueRow, sink_engine, sink_write, sinks_dispose, tall_table

TICK = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)


def rows(values: dict, tick=TICK, group_id=1) -> list[ValueRow]:
    return [
        ValueRow(
            tick=tick, ts="2026-11-20T10:00:00.120Z", project="demo", hub="hub-a", group_id=group_id, group="fast",
            entity="plant/line1/pump1", key=key, value=value, quality="good",
        )
        for key, value in values.items()
    ]


def stored(url: str, table: str) -> list[dict]:
    t = tall_table(sa.MetaData(), table)
    with sink_engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]


def test_it_creates_the_table_on_first_use_and_stores_every_value(sink_url, table_prefix):
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    assert sink_write(target=target, rows=rows({"p1": 2.5, "p2": 7})) == 2
    got = stored(sink_url, table_prefix)
    assert [(r["key"], r["value_num"], json.loads(r["value_json"])) for r in got] == [("p1", 2.5, 2.5), ("p2", 7.0, 7)]
    assert got[0]["ts"].replace(tzinfo=None) == datetime(2026, 11, 20, 10, 0, 0, 120000)
    assert got[0]["quality"] == "good" and got[0]["hub"] == "hub-a" and got[0]["group_name"] == "fast"


def test_it_stores_values_that_are_not_numbers_faithfully(sink_url, table_prefix):
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    batch = [{"id": 1, "ok": True}, {"id": 2, "ok": False, "note": "überdruck"}]
    sink_write(target=target, rows=rows({"s": "running", "a": batch, "b": True, "n": None}))
    got = {r["key"]: r for r in stored(sink_url, table_prefix)}
    assert json.loads(got["a"]["value_json"]) == batch and got["a"]["value_num"] is None
    assert json.loads(got["s"]["value_json"]) == "running"
    assert got["b"]["value_num"] == 1.0 and json.loads(got["b"]["value_json"]) is True
    assert json.loads(got["n"]["value_json"]) is None


def test_it_stores_a_batch_delivered_twice_once(sink_url, table_prefix):
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    sink_write(target=target, rows=rows({"p1": 1.0}))
    sink_write(target=target, rows=rows({"p1": 1.0, "p2": 2.0}))
    assert sorted(r["key"] for r in stored(sink_url, table_prefix)) == ["p1", "p2"]


def test_it_raises_a_sink_error_naming_the_sink_without_its_password():
    target = SinkTarget(name="archive", url="postgresql+psycopg2://user:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(SinkError) as caught:
        sink_write(target=target, rows=rows({"p1": 1.0}))
    assert "archive" in str(caught.value) and "s3cret" not in str(caught.value)
    sinks_dispose()


def test_threads_writing_to_a_new_table_at_once_all_succeed(sink_url, table_prefix):
    from concurrent.futures import ThreadPoolExecutor

    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda i: sink_write(target=target, rows=rows({"p1": float(i)}, group_id=i)), range(8)))
    assert counts == [1] * 8
    assert len(stored(sink_url, table_prefix)) == 8
