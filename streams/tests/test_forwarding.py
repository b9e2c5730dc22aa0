"""The log's consumers against real databases: exactly once across restarts, a database that goes away and comes
back, poison executions to the quarantine, a second leader, standbys, and the run recorder."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from hubs.models import Hub, Project
from hubsched.testing import postgres_url
from scripts_engine.models import Sink
from scripts_engine.sinks import ExecutionValues, sink_engine, sinks_dispose
from scripts_engine.sinks.offsets import offset_read
from streams.codec import TickOutcome, execution_encode, outcome_encode
from streams.forwarding.consumer import ConsumerLoop
from streams.forwarding.runs import RunRecorder
from streams.log import EXECUTIONS, log
from streams.models import Forwarder, QuarantinedExecution
from streams.tests.helpers import TICK, forwarder_of, stored, wait_until

BAD_KEY = "k" * 300  # over the tall table's varchar(200) key: PostgreSQL refuses it


def execution(n: int, *, key: str = "flow", group_id: int | None = None) -> ExecutionValues:
    values = [("plant/line1/pump1", [{"key": key, "value": float(n), "ts": "2026-12-02T01:00:00.120Z", "quality": "good"},
                                     {"key": "pressure", "value": 6.0}])]
    return ExecutionValues(TICK + timedelta(seconds=n), "plant", "hub-a", group_id or 100 + n, f"g{n}", values)


def append(project_id: int, numbers, **kwargs) -> None:
    log().append(EXECUTIONS, [execution_encode(execution(n, **kwargs), project_id=project_id) for n in numbers])


@pytest.fixture
def sink(db, tmp_path):
    project = Project.objects.create(name="plant")
    sink = Sink.objects.create(project=project, name="main", url=f"sqlite:///{tmp_path / 'values.sqlite3'}",
                               created_at=TICK - timedelta(days=1))
    yield sink
    sinks_dispose()


def test_a_forwarder_stores_its_projects_values_and_its_offset_with_them(sink):
    append(sink.project_id, range(5))
    append(sink.project_id + 1000, range(5, 8))  # another project's: passed by
    assert ConsumerLoop(forwarder_of(sink)).catch_up() == 8
    assert stored(sink.url, sink.table) == sorted((100 + n, k) for n in range(5) for k in ("flow", "pressure"))
    assert offset_read(sink_engine(sink.url), sink.url, f"sink:{sink.pk}") == log().stats(EXECUTIONS).last_offset


def test_a_forwarder_made_anew_resumes_at_its_committed_offset_neither_losing_nor_repeating(sink, settings):
    settings.HUBSCHED_SINK_BATCH_SIZE = 4  # two executions a batch: several commits
    append(sink.project_id, range(6))
    ConsumerLoop(forwarder_of(sink)).catch_up()
    append(sink.project_id, range(6, 10))
    assert ConsumerLoop(forwarder_of(sink)).catch_up() == 4  # only what came after
    rows = stored(sink.url, sink.table)
    assert len(rows) == 20 and len(set(rows)) == 20


def test_a_tick_in_the_log_twice_is_stored_once(sink):
    append(sink.project_id, [1, 2])
    append(sink.project_id, [1])  # a redelivered task appended it again
    ConsumerLoop(forwarder_of(sink)).catch_up()
    assert stored(sink.url, sink.table) == [(101, "flow"), (101, "pressure"), (102, "flow"), (102, "pressure")]


def test_failed_skipped_and_missed_outcomes_store_nothing(sink):
    body = outcome_encode(TickOutcome(execution(1)._replace(values=[]), sink.project_id, "failed", "hub down"))
    log().append(EXECUTIONS, [body])
    append(sink.project_id, [2])
    ConsumerLoop(forwarder_of(sink)).catch_up()
    assert {gid for gid, _ in stored(sink.url, sink.table)} == {102}


def test_two_leaders_of_one_sink_never_store_a_record_twice(sink):
    """A leader that lost its lease without knowing (a pause) commits nothing: the offset is compared and set."""
    append(sink.project_id, range(4))
    first, second = ConsumerLoop(forwarder_of(sink)), ConsumerLoop(forwarder_of(sink))
    first.catch_up()
    from streams.forwarding.consumer import CommitConflict
    from streams.forwarding.consumer import Batch

    stale = Batch(items=[execution(9)], offsets=[99], bodies=[b""], last_offset=99, records=1, values=2)
    with pytest.raises(CommitConflict):
        second.consumer.commit(stale, None)  # it believes no offset was committed yet
    with pytest.raises(CommitConflict):
        second.consumer.commit(stale, 0)  # or an older one
    assert 109 not in {gid for gid, _ in stored(sink.url, sink.table)}


@pytest.mark.django_db(transaction=True)
def test_a_standby_takes_over_once_the_leader_stops(sink, settings):
    # the test thread reads no Django table while the loops run (SQLite's shared in-memory test database
    # refuses a second writer at once, and the loops retry; a reader here would fail instead)
    settings.HUBSCHED_FORWARDER_LEASE_S = 1.0
    settings.HUBSCHED_FORWARDER_REPORT_S = 0.2
    leader, standby = ConsumerLoop(forwarder_of(sink)), ConsumerLoop(forwarder_of(sink))
    standby.owner = "other-host:1"
    try:
        leader.start()
        wait_until(lambda: leader.leading)
        standby.start()
        append(sink.project_id, range(3))
        wait_until(lambda: len(stored(sink.url, sink.table)) == 6)
        assert standby.state == "standby" and not standby.leading
        leader.stop()
        append(sink.project_id, range(3, 6))
        wait_until(lambda: len(stored(sink.url, sink.table)) == 12)
        assert standby.leading
    finally:
        leader.stop()
        standby.stop()
    assert sorted(stored(sink.url, sink.table)) == sorted({(100 + n, k) for n in range(6) for k in ("flow", "pressure")})


@pytest.mark.django_db(transaction=True)
def test_a_forwarder_reports_how_long_each_commit_to_its_sink_took(sink, settings):
    settings.HUBSCHED_FORWARDER_REPORT_S = 0.2
    loop = ConsumerLoop(forwarder_of(sink))
    try:
        loop.start()
        wait_until(lambda: loop.leading)
        append(sink.project_id, range(3))
        wait_until(lambda: len(stored(sink.url, sink.table)) == 6)
        append(sink.project_id, range(3, 5))
        wait_until(lambda: len(stored(sink.url, sink.table)) == 10)
    finally:
        loop.stop()  # reports once more as it stops
    reported = Forwarder.objects.get(name=loop.consumer.name).write_seconds
    assert 2 <= sum(reported["counts"]) <= 5  # one observation per commit: two appends, at most one commit per execution
    assert reported == loop.write_seconds.snapshot() and reported["sum"] > 0


# --- a database that goes away ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_forwarder_survives_its_database_being_killed_and_catches_up_in_order(own_postgres, settings):
    settings.HUBSCHED_FORWARDER_REPORT_S = 0.2
    settings.HUBSCHED_FORWARDER_BACKOFF_MAX_S = 0.5
    project = Project.objects.create(name="plant")
    sink = Sink.objects.create(project=project, name="archive", url=own_postgres.url, table="values_outage",
                               created_at=TICK - timedelta(days=1))
    loop = ConsumerLoop(forwarder_of(sink))
    loop.start()
    try:
        append(project.pk, range(10))
        wait_until(lambda: len(stored(sink.url, sink.table)) == 20)
        own_postgres.kill()
        append(project.pk, range(10, 30))  # acquired while the sink is down: the log holds them
        wait_until(lambda: loop.state == "retrying")
        assert "archive" in loop.error and "connect" in loop.error.lower()
        own_postgres.start()
        wait_until(lambda: loop.position == log().stats(EXECUTIONS).last_offset, timeout=60)
    finally:
        loop.stop()
    rows = stored(sink.url, sink.table)
    assert len(rows) == 60 and len(set(rows)) == 60  # every value, once
    assert Forwarder.objects.get(name=f"sink:{sink.pk}").state in {"running", "stopped"}


# --- poison executions --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_an_execution_the_database_refuses_goes_to_the_quarantine_and_the_rest_is_stored(db, settings):
    import uuid

    settings.HUBSCHED_FORWARDER_QUARANTINE_TRIES = 2
    url = postgres_url()
    table = f"q{uuid.uuid4().hex[:10]}"
    project = Project.objects.create(name="plant")
    sink = Sink.objects.create(project=project, name="main", url=url, table=table, created_at=TICK - timedelta(days=1))
    try:
        append(project.pk, range(4))
        append(project.pk, [4], key=BAD_KEY)
        append(project.pk, range(5, 8))
        ConsumerLoop(forwarder_of(sink)).catch_up()
        assert {gid for gid, _ in stored(url, table)} == {100, 101, 102, 103, 105, 106, 107}
        (poison,) = QuarantinedExecution.objects.all()
        assert (poison.group_id, poison.tries, poison.forwarder.name) == (104, 2, f"sink:{sink.pk}")
        assert "value too long" in poison.error and poison.values_count == 2
        assert offset_read(sink_engine(url), url, f"sink:{sink.pk}") == log().stats(EXECUTIONS).last_offset
        ConsumerLoop(forwarder_of(sink)).catch_up()  # replayed from before (offset lost): quarantined once
        assert QuarantinedExecution.objects.count() == 1
    finally:
        with sink_engine(url).begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}, {table}_executions"))
            conn.execute(sa.text(f"DELETE FROM hubsched_offsets WHERE consumer = 'sink:{sink.pk}'"))
        sinks_dispose()


# --- the run recorder -----------------------------------------------------------------------------------


def test_the_run_recorder_records_each_tick_once_and_resumes_after_a_restart(db):
    from groups.models import Group, GroupRun, GroupStats

    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    group = Group.objects.create(hub=hub, name="g", period=1)
    started = TICK + timedelta(milliseconds=30)

    def outcome(n: int, status: str = "ok") -> bytes:
        ev = execution(n, group_id=group.pk)._replace(values=execution(n).values if status == "ok" else [])
        return outcome_encode(TickOutcome(ev, project.pk, status, "boom" if status == "failed" else "",
                                          started if status in {"ok", "failed"} else None,
                                          started if status in {"ok", "failed"} else None))

    log().append(EXECUTIONS, [outcome(0), outcome(1, "failed"), outcome(2, "skipped"), outcome(3, "missed")])
    assert ConsumerLoop(RunRecorder()).catch_up() == 4
    log().append(EXECUTIONS, [outcome(0, "missed"), outcome(4)])  # tick 0 again (redelivered): its first stays
    assert ConsumerLoop(RunRecorder()).catch_up() == 2
    assert sorted(GroupRun.objects.values_list("scheduled_for", "status")) == [
        (TICK, "ok"), (TICK + timedelta(seconds=1), "failed"), (TICK + timedelta(seconds=2), "skipped"),
        (TICK + timedelta(seconds=3), "missed"), (TICK + timedelta(seconds=4), "ok")]
    stats = GroupStats.objects.get(group=group)
    assert (stats.done, stats.failed, stats.skipped, stats.missed, stats.values) == (2, 1, 1, 1, 4)


def test_two_writer_lanes_share_a_sink_each_with_its_groups_and_its_offset(sink, settings):
    from streams.forwarding.process import consumers_wanted, forwarders_catch_up

    settings.HUBSCHED_SINK_WRITERS = 2
    names = sorted(name for name in consumers_wanted() if name.startswith(f"sink:{sink.pk}"))
    assert names == [f"sink:{sink.pk}:0-of-2", f"sink:{sink.pk}:1-of-2"]
    append(sink.project_id, range(6))
    forwarders_catch_up()
    rows = stored(sink.url, sink.table)
    assert len(rows) == 12 and len(set(rows)) == 12  # every group by one lane or the other, none twice
    from scripts_engine.sinks.offsets import offsets_with_prefix

    last = log().stats(EXECUTIONS).last_offset
    assert offsets_with_prefix(sink_engine(sink.url), sink.url, f"sink:{sink.pk}") == dict.fromkeys(names, last)
    # three lanes now: a new lane starts after the least offset its siblings committed, not at the sink's birth
    settings.HUBSCHED_SINK_WRITERS = 3
    append(sink.project_id, range(6, 9))
    forwarders_catch_up()
    rows = stored(sink.url, sink.table)
    assert len(rows) == 18 and len(set(rows)) == 18
