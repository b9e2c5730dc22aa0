"""Helpers shared by the log's tests: a sink's stored values and its forwarder, executions the quarantine's
tests make PostgreSQL refuse, and waiting for another thread or process (the fixtures are in conftest.py)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from scripts_engine.models import Sink
from scripts_engine.sinks import ExecutionValues, SinkTarget, sink_engine, tall_table
from streams.codec import execution_encode
from streams.forwarding.consumer import ConsumerLoop
from streams.forwarding.sinks import SinkForwarder
from streams.log import EXECUTIONS, log
from streams.models import QuarantinedExecution

TICK = datetime(2026, 12, 2, 1, 0, 0, tzinfo=timezone.utc)
LONG_KEY = "k" * 250  # past the tall table's varchar(200) key column: PostgreSQL refuses the execution


def stored(url: str, table: str) -> list[tuple[int, str]]:
    """``(group_id, key)`` of every value in the tall table ``table`` of the sink database at ``url``, sorted
    (duplicates kept: a value stored twice shows twice). Raises SQLAlchemy's errors (no such table yet)."""
    t = tall_table(sa.MetaData(), table)
    with sink_engine(url).connect() as conn:
        return sorted(conn.execute(sa.select(t.c.group_id, t.c.key)).all())


def forwarder_of(sink: Sink, *, since_created: bool = True) -> SinkForwarder:
    """The forwarder of ``sink`` (one lane), as ``manage.py forward`` makes it: starting at the first record
    since the sink was created, or at the first record kept (``since_created=False``)."""
    target = SinkTarget(name=sink.name, url=sink.url, table=sink.table, layout=sink.layout)
    return SinkForwarder(target=target, sink_id=sink.pk, project_id=sink.project_id,
                         created_at=sink.created_at if since_created else None)


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` every 50 ms (an error in it, such as a table not made yet, counts as not yet); raises
    AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def offsets_forget(url: str, consumer: str) -> None:
    """Delete ``consumer``'s committed offset from the sink database at ``url`` (if it has an offsets table)."""
    engine = sink_engine(url)
    if sa.inspect(engine).has_table("hubsched_offsets"):
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM hubsched_offsets WHERE consumer = :c"), {"c": consumer})


# --- the quarantine's executions ------------------------------------------------------------------------


def pump_execution(n: int, *, key: str = "flow", value=1.5) -> ExecutionValues:
    """Tick ``n`` (``TICK`` + n s) of group ``500 + n`` ("pumps<n>"): two values, ``key`` with ``value`` and pressure."""
    values = [("plant/line1/pump1", [{"key": key, "value": value, "ts": "2026-12-02T01:00:00.120Z", "quality": "good"},
                                     {"key": "pressure", "value": 6.0}])]
    return ExecutionValues(TICK + timedelta(seconds=n), "plant", "hub-a", 500 + n, f"pumps{n}", values)


def quarantine_by_refusal(sink: Sink, *, numbers=(1,), good=(2,)) -> list[QuarantinedExecution]:
    """Append executions with a key PostgreSQL refuses (``numbers``) and good ones, run the sink's forwarder
    over the log as ``manage.py forward`` does, and return what it quarantined."""
    bodies = [execution_encode(pump_execution(n, key=LONG_KEY), project_id=sink.project_id) for n in numbers]
    bodies += [execution_encode(pump_execution(n), project_id=sink.project_id) for n in good]
    log().append(EXECUTIONS, bodies)
    ConsumerLoop(forwarder_of(sink, since_created=False)).catch_up()
    return list(QuarantinedExecution.objects.order_by("group_id"))


def widen_key_column(sink: Sink) -> None:
    """Make the sink's key column take any length: what PostgreSQL refused as too long it now takes."""
    with sink_engine(sink.url).begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {sink.table} ALTER COLUMN key TYPE text"))
