"""The workers' path when the durable log cannot confirm an append (HUBSCHED_LOG_APPEND_DEADLINE_S): the batch's
ticks are recorded as failed at once, naming the log, none lost and none counted as ok; once the log is back,
nothing is counted twice. The log is made unavailable for real: another process holds the write lock of the
embedded log's SQLite file (``BEGIN EXCLUSIVE``) and is SIGKILLed to free it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import pytest
import sqlalchemy as sa
from django.utils import timezone

from groups.models import Group, GroupKey, GroupRun, GroupStats
from groups.services import group_runs_execute
from scripts_engine.models import Sink
from scripts_engine.sinks import sink_engine, tall_table
from streams.log import EXECUTIONS, log

DEADLINE_S = 0.3

# takes the log file's write lock and holds it until killed, or for argv[2] seconds
LOCK_HOLDER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
""")


class LockHolder:
    """A process of the test's own holding the write lock of the SQLite file at ``path``."""

    def __init__(self, path, hold_s: float = 3600.0) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path), str(hold_s)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def groups(project, make_hub, reference_hub, settings):
    """Three groups of two keys each on the reference hub, the log opened (its file made, in WAL mode) and a short
    append deadline."""
    settings.HUBSCHED_LOG_APPEND_DEADLINE_S = DEADLINE_S
    hub = make_hub(reference_hub.url)
    made = []
    for i in range(3):
        group = Group.objects.create(hub=hub, name=f"g{i}", period=1.0)
        for position, key in enumerate(("flow", "pressure")):
            GroupKey.objects.create(group=group, entity="plant/line1/pump1", key=key, position=position)
        made.append(group)
    log()
    return made


def stored_ticks(project) -> list[tuple[int, str]]:
    sink = Sink.objects.get(project=project)
    table = tall_table(sa.MetaData(), sink.table)
    with sink_engine(sink.url).connect() as conn:
        if not sa.inspect(conn).has_table(sink.table):
            return []
        return sorted(conn.execute(sa.select(table.c.group_id, table.c.key)).all())


def log_records() -> int:
    return len(log().read(EXECUTIONS, offset=0, max_records=10_000))


@pytest.mark.timeout(120)
def test_ticks_the_locked_log_cannot_take_are_recorded_failed_naming_the_log_and_counted_once_after(
        groups, project, forward):
    holder = LockHolder(log().path)
    try:
        # the SQLite backend waits up to its busy timeout (30 s) for the lock before it refuses: see the test below
        refused_tick = timezone.now()
        refused = group_runs_execute(runs=[(g.pk, refused_tick) for g in groups])
        assert [(r.status, r.values_count) for r in refused] == [("failed", 0)] * len(groups)
    finally:
        holder.kill()
    runs = list(GroupRun.objects.filter(scheduled_for=refused_tick).order_by("group_id"))
    assert [(r.group_id, r.status, r.values_count) for r in runs] == [(g.pk, "failed", 0) for g in groups]
    for run in runs:
        assert run.error.startswith("not stored: the log refused the append: SQLite log: ")
        assert "database is locked" in run.error
    assert all(stats == (0, 1) for stats in GroupStats.objects.values_list("done", "failed"))

    # the log is back: the next tick goes through it; the refused one was not stored, so it is not counted again
    assert log_records() == 0
    next_tick = timezone.now()  # the refused tick is 30 s old by now: past its expiry
    group_runs_execute(runs=[(g.pk, next_tick) for g in groups])
    assert log_records() == 3
    forward()
    forward()  # a second pass finds nothing new
    assert sorted(GroupRun.objects.values_list("group_id", "scheduled_for", "status")) == sorted(
        [(g.pk, refused_tick, "failed") for g in groups] + [(g.pk, next_tick, "ok") for g in groups])
    assert sorted(GroupStats.objects.values_list("group_id", "done", "failed", "values")) == [
        (g.pk, 1, 1, 2) for g in groups]
    assert stored_ticks(project) == sorted((g.pk, k) for g in groups for k in ("flow", "pressure"))


@pytest.mark.timeout(60)
def test_a_log_locked_past_the_deadline_fails_the_ticks_within_the_deadline(groups):
    holder = LockHolder(log().path, hold_s=3.0)  # frees the lock 3 s on: ten times the deadline
    try:
        tick = timezone.now()
        began = time.monotonic()
        group_runs_execute(runs=[(g.pk, tick) for g in groups])
        took = time.monotonic() - began
    finally:
        holder.kill()
    assert list(GroupRun.objects.values_list("status", flat=True)) == ["failed"] * 3
    assert took < DEADLINE_S + 2.0  # the hub's poll and the recording, well under the lock's 3 s
