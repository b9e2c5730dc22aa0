"""The wide layout (one row per execution) and the batcher (many executions, one write), on real databases."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from scripts_engine.sinks import ExecutionValues, SinkError, SinkTarget, sink_engine, sink_write, sinks_dispose, wide_table_name
from scripts_engine.sinks.batcher import SinkBatcher

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


def test_the_batcher_writes_many_submissions_in_fewer_writes_and_resolves_every_one(sink_url, table_prefix):
    batcher = SinkBatcher(max_rows=10_000, max_age=0.3)
    target = SinkTarget(name="main", url=sink_url, table=f"{table_prefix}_tall")
    start = threading.Barrier(20)
    futures = []

    def submit(i: int) -> None:
        start.wait()
        futures.append(batcher.submit(target=target, executions=execution({"flow": float(i)}, tick=TICK + timedelta(seconds=i))))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(f.result(timeout=30) >= 1 for f in futures)
    assert 1 <= batcher.batches < 20
    engine = sink_engine(sink_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {table_prefix}_tall")).scalar() == 20


def test_the_batcher_writes_at_once_when_a_batch_is_full(sink_url, table_prefix):
    batcher = SinkBatcher(max_rows=3, max_age=3600)  # the age limit would never fire within the test
    target = SinkTarget(name="main", url=sink_url, table=f"{table_prefix}_tall")
    future = batcher.submit(target=target, executions=execution({"flow": 1.0, "pressure": 2.0, "speed": 3.0}))
    assert future.result(timeout=30) == 3


def test_the_batcher_fails_every_submission_of_a_failed_write():
    batcher = SinkBatcher(max_rows=100, max_age=0.05)
    target = SinkTarget(name="archive", url="postgresql+psycopg2://u:pw@127.0.0.1:1/none")
    futures = [batcher.submit(target=target, executions=execution({"flow": 1.0})) for _ in range(3)]
    for future in futures:
        with pytest.raises(SinkError, match="archive"):
            future.result(timeout=30)
    sinks_dispose()


def test_the_batcher_cuts_batches_at_max_rows_without_splitting_a_submission(sink_url, table_prefix):
    batcher = SinkBatcher(max_rows=4, max_age=3600, writers=1)  # only the size limit can start a write
    target = SinkTarget(name="main", url=sink_url, table=f"{table_prefix}_tall")
    futures = [batcher.submit(target=target, executions=execution({"flow": 1.0, "pressure": 2.0}, tick=TICK + timedelta(seconds=i)))
               for i in range(4)]
    assert [f.result(timeout=30) for f in futures] == [4, 4, 4, 4]  # two writes of two executions each
    assert batcher.batches == 2


@pytest.fixture
def held_execution():
    """A PostgreSQL sink where execution (group 7, TICK) is held: another transaction has claimed it in
    the ledger and not committed, so a write of it waits. Yields ``(target, release)``."""
    import uuid

    from hubsched.testing import postgres_url
    from scripts_engine.sinks.tables import ledger_name

    url = postgres_url()
    name = f"t{uuid.uuid4().hex[:12]}"
    target = SinkTarget(name="main", url=url, table=name)
    sink_write(target=target, executions=execution({"flow": 0.0}, tick=TICK - timedelta(seconds=1)))  # tables exist
    blocker = sa.create_engine(url)
    conn = blocker.connect()
    try:
        conn.execute(sa.text(f"INSERT INTO {ledger_name(name)} (group_id, tick, values_count) VALUES (7, :tick, 1)"),
                     {"tick": TICK})
        yield target, conn.rollback
    finally:
        conn.close()
        sinks_dispose()
        with blocker.begin() as cleanup:
            cleanup.execute(sa.text(f"DROP TABLE IF EXISTS {name}, {ledger_name(name)}"))
        blocker.dispose()


def test_a_second_writer_commits_while_the_first_waits_on_the_database(held_execution):
    """HUBSCHED_SINK_WRITERS: one slow write does not hold back the batches behind it."""
    target, release = held_execution
    batcher = SinkBatcher(max_rows=1, max_age=0, writers=2)
    stuck = batcher.submit(target=target, executions=execution({"flow": 1.0}))
    time.sleep(0.3)  # the first writer is waiting on the row
    passing = batcher.submit(target=target, executions=execution({"flow": 2.0}, tick=TICK + timedelta(seconds=1)))
    assert passing.result(timeout=10) == 1
    assert not stuck.done()
    release()
    assert stuck.result(timeout=10) == 1


def test_submitters_wait_while_a_sink_holds_max_pending_values(held_execution):
    """HUBSCHED_SINK_MAX_PENDING: a sink slower than the polls slows the polls, and loses nothing."""
    target, release = held_execution
    batcher = SinkBatcher(max_rows=1, max_age=0, writers=1, max_pending=1)
    first = batcher.submit(target=target, executions=execution({"flow": 1.0}))  # the writer waits on it
    time.sleep(0.3)
    second = batcher.submit(target=target, executions=execution({"flow": 2.0}, tick=TICK + timedelta(seconds=1)))
    third: list = []
    submitter = threading.Thread(target=lambda: third.append(
        batcher.submit(target=target, executions=execution({"flow": 3.0}, tick=TICK + timedelta(seconds=2)))))
    submitter.start()
    submitter.join(0.5)
    assert submitter.is_alive()  # one value pending is the bound: the third submission waits for room
    release()
    submitter.join(10)
    assert [f.result(timeout=10) for f in (first, second, third[0])] == [1, 1, 1]
