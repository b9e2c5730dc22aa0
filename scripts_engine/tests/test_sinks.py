"""The SQL sink, for real on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from scripts_engine.sinks import ExecutionValues, SinkError, SinkTarget, sink_engine, sink_write, sinks_dispose, tall_table

TICK = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)


def rows(values: dict, tick=TICK, group_id=1) -> list[ExecutionValues]:
    """One execution of group ``group_id`` at ``tick`` reading ``values`` from one entity."""
    items = [{"key": key, "value": value, "ts": "2026-11-20T10:00:00.120Z", "quality": "good"} for key, value in values.items()]
    return [ExecutionValues(tick=tick, project="demo", hub="hub-a", group_id=group_id, group="fast",
                            values=[("plant/line1/pump1", items)])]


def stored(url: str, table: str) -> list[dict]:
    t = tall_table(sa.MetaData(), table)
    with sink_engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.group_id, t.c.tick, t.c.key))]


def test_it_creates_the_table_on_first_use_and_stores_every_value(sink_url, table_prefix):
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    assert sink_write(target=target, executions=rows({"p1": 2.5, "p2": 7})) == 2
    got = stored(sink_url, table_prefix)
    assert [(r["key"], r["value_num"], json.loads(r["value_json"])) for r in got] == [("p1", 2.5, 2.5), ("p2", 7.0, 7)]
    assert got[0]["ts"].replace(tzinfo=None) == datetime(2026, 11, 20, 10, 0, 0, 120000)
    assert got[0]["quality"] == "good" and got[0]["hub"] == "hub-a" and got[0]["group_name"] == "fast"


def test_it_stores_values_that_are_not_numbers_faithfully(sink_url, table_prefix):
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    batch = [{"id": 1, "ok": True}, {"id": 2, "ok": False, "note": "überdruck"}]
    sink_write(target=target, executions=rows({"s": "running", "a": batch, "b": True, "n": None}))
    got = {r["key"]: r for r in stored(sink_url, table_prefix)}
    assert json.loads(got["a"]["value_json"]) == batch and got["a"]["value_num"] is None
    assert json.loads(got["s"]["value_json"]) == "running"
    assert got["b"]["value_num"] == 1.0 and json.loads(got["b"]["value_json"]) is True
    assert json.loads(got["n"]["value_json"]) is None


def test_an_execution_delivered_twice_is_stored_once(sink_url, table_prefix):
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    sink_write(target=target, executions=rows({"p1": 1.0, "p2": 2.0}))
    sink_write(target=target, executions=rows({"p1": 1.5, "p2": 2.5}))  # redelivered: re-polled, same tick
    sink_write(target=target, executions=rows({"p1": 3.0}, tick=TICK + timedelta(seconds=1)))
    got = [(r["tick"].replace(tzinfo=None), r["key"], r["value_num"]) for r in stored(sink_url, table_prefix)]
    assert got == [(TICK.replace(tzinfo=None), "p1", 1.0), (TICK.replace(tzinfo=None), "p2", 2.0),
                   (TICK.replace(tzinfo=None) + timedelta(seconds=1), "p1", 3.0)]


def test_one_batch_holding_an_execution_twice_stores_it_once(sink_url, table_prefix):
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    assert sink_write(target=target, executions=rows({"p1": 1.0}) + rows({"p1": 9.0}) + rows({"p1": 2.0}, group_id=2)) == 3
    assert [(r["group_id"], r["value_num"]) for r in stored(sink_url, table_prefix)] == [(1, 1.0), (2, 2.0)]


def test_values_that_need_escaping_or_no_fast_path_are_stored_as_sent(sink_url, table_prefix):
    """Tabs, newlines and backslashes in every text field, big and non-finite numbers, odd timestamps."""
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    items = [
        {"key": "tab\tkey", "value": "a\tb\nc\\d", "ts": "2026-11-20T10:00:00.5+01:00", "quality": "uncertain"},
        {"key": "big", "value": 10**30, "ts": None},
        {"key": "huge", "value": 10**400},
        {"key": "nan", "value": float("nan"), "ts": "not a time"},
        {"key": "neg", "value": -3},
    ]
    execution = ExecutionValues(tick=TICK, project="p\tq", hub="hub\nb", group_id=1, group="g\\h", values=[("e\t1", items)])
    assert sink_write(target=target, executions=[execution]) == 5
    got = {r["key"]: r for r in stored(sink_url, table_prefix)}
    assert set(got) == {"tab\tkey", "big", "huge", "nan", "neg"}
    first = got["tab\tkey"]
    assert json.loads(first["value_json"]) == "a\tb\nc\\d" and first["quality"] == "uncertain"
    assert (first["project"], first["hub"], first["group_name"], first["entity"]) == ("p\tq", "hub\nb", "g\\h", "e\t1")
    assert first["ts"].replace(tzinfo=None) == datetime(2026, 11, 20, 9, 0, 0, 500000)  # stored in UTC
    assert got["big"]["value_num"] == 1e30 and json.loads(got["big"]["value_json"]) == 10**30 and got["big"]["ts"] is None
    assert got["huge"]["value_num"] is None and json.loads(got["huge"]["value_json"]) == 10**400
    assert got["nan"]["value_num"] is None and json.loads(got["nan"]["value_json"]) == "nan" and got["nan"]["ts"] is None
    assert got["neg"]["value_num"] == -3.0 and got["neg"]["quality"] == "good"


def test_it_raises_a_sink_error_naming_the_sink_without_its_password():
    target = SinkTarget(name="archive", url="postgresql+psycopg2://user:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(SinkError) as caught:
        sink_write(target=target, executions=rows({"p1": 1.0}))
    assert "archive" in str(caught.value) and "s3cret" not in str(caught.value)
    sinks_dispose()


def test_threads_writing_to_a_new_table_at_once_all_succeed(sink_url, table_prefix):
    from concurrent.futures import ThreadPoolExecutor

    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda i: sink_write(target=target, executions=rows({"p1": float(i)}, group_id=i)), range(8)))
    assert counts == [1] * 8
    assert len(stored(sink_url, table_prefix)) == 8


def test_the_generic_writer_for_other_databases_stores_once_per_execution_too(sink_url, table_prefix):
    """``write_generic`` serves databases without a fast path; it is plain SQLAlchemy, so any server checks it."""
    from scripts_engine.sinks.tall import write_generic
    from scripts_engine.sinks.writers import tables

    engine = sink_engine(sink_url)
    table, ledger = tables.tall(engine, sink_url, table_prefix)
    assert write_generic(engine, table, ledger, rows({"p1": 1.0, "s": "on"}) + rows({"p1": 2.0}, group_id=2)) == 3
    assert write_generic(engine, table, ledger, rows({"p1": 9.0})) == 0  # stored already
    got = [(r["group_id"], r["key"], r["value_num"], json.loads(r["value_json"])) for r in stored(sink_url, table_prefix)]
    assert got == [(1, "p1", 1.0, 1.0), (1, "s", None, "on"), (2, "p1", 2.0, 2.0)]


def test_writers_racing_with_the_same_executions_store_each_once(sink_url, table_prefix):
    """At-least-once delivery: two workers may write the same execution at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    sink_write(target=target, executions=rows({"p1": 0.0}, group_id=99))  # the tables exist before the race
    batches = [sum((rows({"p1": float(i), "p2": 1.0}, group_id=g) for g in range(1, 21)), []) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda batch: sink_write(target=target, executions=batch), batches))
    got = [r for r in stored(sink_url, table_prefix) if r["group_id"] != 99]
    assert len(got) == 40
    for g in range(1, 21):  # each execution whole, from one of the deliveries
        mine = [r["value_num"] for r in got if r["group_id"] == g]
        assert len(mine) == 2 and 1.0 in mine


def test_sqlite_writers_queue_on_the_writer_lock_and_go_in_when_it_is_freed(tmp_path):
    import fcntl
    import os
    import time

    url = f"sqlite:///{tmp_path / 'values.sqlite3'}"
    target = SinkTarget(name="main", url=url, table="values")
    sink_write(target=target, executions=rows({"p1": 1.0}))
    fd = os.open(f"{tmp_path / 'values.sqlite3'}.hubsched-writer.lock", os.O_RDWR)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # another process holds the lock for half a second
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(write, b"x")
        time.sleep(0.5)
        os._exit(0)
    os.read(read, 1)
    started = time.monotonic()
    sink_write(target=target, executions=rows({"p1": 2.0}, group_id=2))
    waited = time.monotonic() - started
    os.waitpid(pid, 0)
    assert waited >= 0.3  # it waited for the other writer
    assert [r["group_id"] for r in stored(url, "values")] == [1, 2]
    sinks_dispose()


@pytest.fixture
def mariadb_tables():
    """A fresh tall table and ledger on the real MariaDB, created as a sink creates them; dropped afterwards."""
    import uuid

    from hubsched.testing import mariadb_url
    from scripts_engine.sinks.writers import tables

    url = mariadb_url()
    name = f"t{uuid.uuid4().hex[:12]}"
    table, ledger = tables.tall(sink_engine(url), url, name)
    yield url, name, table, ledger
    sinks_dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}, {ledger.name}"))
    engine.dispose()


def test_mysql_claims_each_execution_by_its_row_count_where_insert_has_no_returning(mariadb_tables, monkeypatch):
    """MySQL has no ``INSERT ... RETURNING``; its claim path runs here on MariaDB, which counts rows alike."""
    from scripts_engine.sinks.tall import write_mysql

    url, name, table, ledger = mariadb_tables
    engine = sa.create_engine(url, connect_args={"local_infile": True})
    engine.raw_connection().close()  # the dialect reads the server's capabilities on first connect
    assert engine.dialect.insert_returning  # MariaDB has RETURNING: take it away, as MySQL has none
    monkeypatch.setattr(engine.dialect, "insert_returning", False)
    first = rows({"p1": 1.0, "s": "on"}) + rows({"p1": 2.0}, group_id=2)
    assert write_mysql(engine, table, ledger, first) == 3
    assert write_mysql(engine, table, ledger, rows({"p1": 9.0}, group_id=2) + rows({"p1": 3.0}, group_id=3)) == 1
    engine.dispose()
    got = [(r["group_id"], r["key"], r["value_num"]) for r in stored(url, name)]
    assert got == [(1, "p1", 1.0), (1, "s", None), (2, "p1", 2.0), (3, "p1", 3.0)]


def test_mysql_without_load_data_local_stores_the_values_with_inserts_instead(mariadb_tables, caplog):
    """A driver or server that refuses LOAD DATA LOCAL (MySQL 8 has it off) loses nothing: the same
    transaction inserts the values, and later batches go straight to INSERT."""
    from scripts_engine.sinks.tall import _NO_LOAD_DATA, write_mysql

    url, name, table, ledger = mariadb_tables
    engine = sa.create_engine(url)  # PyMySQL without local_infile: the server refuses LOAD DATA LOCAL
    odd = {"p1": 1.5, "s": "tab\there", "big": 2**70, "list": [{"a": 1}], "flag": True, "none": None}
    assert write_mysql(engine, table, ledger, rows(odd)) == 6
    assert engine in _NO_LOAD_DATA
    assert "LOAD DATA LOCAL refused" in caplog.text
    assert write_mysql(engine, table, ledger, rows({"p1": 2.0}, group_id=2)) == 1
    assert write_mysql(engine, table, ledger, rows({"p1": 2.0}, group_id=2)) == 0  # stored already
    engine.dispose()
    got = {(r["group_id"], r["key"]): (r["value_num"], json.loads(r["value_json"])) for r in stored(url, name)}
    assert got == {
        (1, "p1"): (1.5, 1.5), (1, "s"): (None, "tab\there"), (1, "big"): (float(2**70), 2**70),
        (1, "list"): (None, [{"a": 1}]), (1, "flag"): (1.0, True), (1, "none"): (None, None), (2, "p1"): (2.0, 2.0),
    }


def test_a_batch_of_more_values_than_one_statement_takes_is_stored_whole(sink_url, table_prefix):
    """SQLite writes 500 rows per INSERT: 1,234 values are two full statements and a remainder."""
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    executions = [rows({f"k{k}": float(g * 1000 + k) for k in range(100)}, group_id=g)[0] for g in range(12)]
    executions.append(rows({f"k{k}": float(12_000 + k) for k in range(34)}, group_id=12)[0])
    assert sink_write(target=target, executions=executions) == 1234
    got = stored(sink_url, table_prefix)
    assert len(got) == 1234
    assert sorted(r["value_num"] for r in got) == sorted(float(g * 1000 + k) for g in range(12) for k in range(100)) + [
        float(12_000 + k) for k in range(34)]


def test_a_table_made_by_an_earlier_version_with_row_ids_and_a_unique_key_goes_on_working(sink_url, table_prefix):
    """Up to 2026-11-22 the tall table had an ``id`` and a unique key per value; such a table gets
    its ledger next to it and takes the same writes."""
    from scripts_engine.sinks.tables import MAX_IDENTIFIER, RowId, tall_table

    current = tall_table(sa.MetaData(), table_prefix)
    earlier = sa.Table(
        table_prefix, sa.MetaData(), sa.Column("id", RowId, primary_key=True, autoincrement=True),
        *[sa.Column(c.name, c.type, nullable=c.nullable) for c in current.columns],
        sa.UniqueConstraint("group_id", "tick", "entity", "key", name=f"uq_{table_prefix}_value"[:MAX_IDENTIFIER]),
    )
    with sink_engine(sink_url).begin() as conn:
        earlier.create(conn)
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    sink_write(target=target, executions=rows({"p1": 1.0, "s": "on"}))
    sink_write(target=target, executions=rows({"p1": 1.5, "s": "off"}))  # delivered twice: not stored, no key conflict
    sink_write(target=target, executions=rows({"p1": 2.0}, tick=TICK + timedelta(seconds=1)))
    with sink_engine(sink_url).connect() as conn:
        got = conn.execute(sa.select(earlier.c.id, earlier.c.key, earlier.c.value_num).order_by(earlier.c.id)).all()
    assert [(key, num) for _, key, num in got] == [("p1", 1.0), ("s", None), ("p1", 2.0)]
    assert len({row_id for row_id, _, _ in got}) == 3
