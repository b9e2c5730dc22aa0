"""A batch the database refuses stores everything but the refused execution; a dead database fails it at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from hubs.hubsim.faults import unused_port
from hubsched.testing import postgres_binary
from scripts_engine.sinks import (
    ExecutionValues, SinkError, SinkTarget, sink_engine, sink_write, sink_write_isolating, sinks_dispose,
    tall_table,
)
from scripts_engine.sinks import writers

TICK = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)
BAD_KEY = "k" * 300  # over the tall table's varchar(200): PostgreSQL and MariaDB (strict) refuse it


def execution(n: int, *, project: str = "plant", key: str = "flow", size: int = 0) -> ExecutionValues:
    values = [("plant/line1/pump1", [{"key": key, "value": float(n), "ts": "2026-11-20T10:00:00.120Z", "quality": "good"},
                                     {"key": "pressure", "value": 6.0, "quality": "good"}])]
    return ExecutionValues(TICK + timedelta(seconds=n), project, "hub-a", 100 + n, f"g{n}", values, size)


def twenty_with_one_refused() -> list[ExecutionValues]:
    return [execution(n, project="plant" if n % 2 else "mill", key=BAD_KEY if n == 13 else "flow") for n in range(20)]


def refuse_the_bad_key_on_sqlite(url: str, table: str) -> None:
    """SQLite stores any length: a trigger makes it refuse the bad key as the others do."""
    if not url.startswith("sqlite"):
        return
    engine = sink_engine(url)
    writers.tables.tall(engine, url, table)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TRIGGER {table}_refuse BEFORE INSERT ON {table} WHEN length(NEW.key) > 200 "
                             f"BEGIN SELECT RAISE(ABORT, 'value too long for key'); END"))


def stored(url: str, table: str) -> list[tuple[int, str]]:
    t = tall_table(sa.MetaData(), table)
    with sink_engine(url).connect() as conn:
        return sorted(conn.execute(sa.select(t.c.group_id, t.c.key)).all())


def test_a_refused_execution_fails_alone_and_the_other_nineteen_are_stored(sink_url, table_prefix):
    refuse_the_bad_key_on_sqlite(sink_url, table_prefix)
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    with pytest.raises(SinkError) as whole:
        sink_write(target=target, executions=twenty_with_one_refused())
    assert whole.value.refused
    written, failed = sink_write_isolating(target=target, executions=twenty_with_one_refused())
    assert list(failed) == [13] and failed[13].refused and written == 38
    assert stored(sink_url, table_prefix) == sorted((100 + n, k) for n in range(20) if n != 13 for k in ("flow", "pressure"))


def test_a_retry_after_isolating_stores_nothing_twice(sink_url, table_prefix):
    refuse_the_bad_key_on_sqlite(sink_url, table_prefix)
    target = SinkTarget(name="main", url=sink_url, table=table_prefix)
    sink_write_isolating(target=target, executions=twenty_with_one_refused())
    written, failed = sink_write_isolating(target=target, executions=twenty_with_one_refused())
    assert list(failed) == [13]
    assert len(stored(sink_url, table_prefix)) == 38


# --- a database that is really down ----------------------------------------------------------------


def test_a_database_that_is_down_fails_the_whole_batch_at_once(own_postgres, monkeypatch):
    target = SinkTarget(name="main", url=own_postgres.url, table="values_down")
    assert sink_write(target=target, executions=[execution(1)]) == 2  # up: the pool holds a connection
    own_postgres.kill()
    attempts = []
    real = writers.sink_write
    monkeypatch.setattr(writers, "sink_write", lambda **kw: attempts.append(1) or real(**kw))
    with pytest.raises(SinkError) as down:
        sink_write_isolating(target=target, executions=twenty_with_one_refused())
    assert not down.value.refused and attempts == [1]


def writers_lock(url: str) -> threading.Lock:
    from scripts_engine.sinks.tall import _SQLITE_LOCAL

    return _SQLITE_LOCAL.setdefault(sa.engine.make_url(url).database, threading.Lock())


def wait_until(condition, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.01)
