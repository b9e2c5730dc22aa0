"""Recording finished runs (``group_runs_record``): the GroupRun rows, the GroupStats counters, concurrent writers.

The tests run on the Django database of the session (SQLite unless ``DATABASE_URL`` says otherwise);
``test_the_same_tests_pass_on_postgresql`` runs this module again on the PostgreSQL server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.db import connection

from groups.models import Group, GroupRun, GroupStats, RunStatus
from groups.scheduler import stats
from groups.services import group_runs_record
from hubs.models import Hub
from hubsched.testing import postgres_url

TICK = datetime(2026, 11, 20, 10, 0, 10, 250000, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_groups(project):
    """``make_groups(n)`` makes n groups (no counters rows yet) and returns their ids in order."""
    hub = Hub.objects.create(project=project, name="hub-r", url="ws://127.0.0.1:9/connect")

    def make(n: int) -> list[int]:
        start = Group.objects.filter(hub=hub).count()
        Group.objects.bulk_create([Group(hub=hub, name=f"g{start + i}", period=1) for i in range(n)])
        return sorted(Group.objects.filter(hub=hub).values_list("pk", flat=True))[start:]

    return make


def a_run(group_id: int, *, tick: datetime = TICK, ok: bool = True, error: str = "", values: int = 3,
          lag_ms: int = 5) -> tuple[GroupRun, int]:
    started = tick + timedelta(milliseconds=lag_ms)
    return GroupRun(group_id=group_id, scheduled_for=tick, started_at=started,
                    finished_at=started + timedelta(milliseconds=40), status=RunStatus.OK if ok else RunStatus.FAILED,
                    error=error, values_count=values), lag_ms


def counters(group_id: int) -> dict:
    return GroupStats.objects.filter(group_id=group_id).values(
        "started", "done", "failed", "values", "lag_ms_total", "last_run_at", "last_status", "last_error").get()


def test_runs_are_stored_as_the_orm_stores_them_and_get_their_primary_keys(make_groups):
    a, b = make_groups(2)
    orm_run, _ = a_run(a, ok=False, error="hub-a: connection refused", values=0)
    GroupRun.objects.bulk_create([orm_run])
    run, _ = a_run(b, ok=False, error="hub-a: connection refused", values=0)
    group_runs_record(runs=[(run, 0)])
    stored = GroupRun.objects.get(group_id=b)
    assert (stored.scheduled_for, stored.started_at, stored.finished_at, stored.status, stored.error,
            stored.values_count) == (run.scheduled_for, run.started_at, run.finished_at, "failed",
                                     "hub-a: connection refused", 0)
    if connection.features.can_return_rows_from_bulk_insert:  # as bulk_create leaves them
        assert (run.pk, run._state.adding, run._state.db) == (stored.pk, False, "default")
    with connection.cursor() as cursor:  # the same bytes as the ORM's row, not only equal once read back
        cursor.execute("SELECT scheduled_for, started_at, finished_at, status, error, values_count "
                       "FROM groups_grouprun WHERE group_id IN (%s, %s) ORDER BY group_id", [a, b])
        by_orm, by_record = cursor.fetchall()
    assert by_record == by_orm


def test_runs_of_groups_deleted_meanwhile_are_left_out(make_groups):
    a, b = make_groups(2)
    Group.objects.filter(pk=b).delete()
    gone = b + 1000
    group_runs_record(runs=[a_run(a), a_run(b), a_run(gone)])
    assert list(GroupRun.objects.values_list("group_id", flat=True)) == [a]
    assert list(GroupStats.objects.values_list("group_id", flat=True)) == [a]


def test_a_flush_whose_groups_are_all_gone_writes_nothing(make_groups):
    (a,) = make_groups(1)
    Group.objects.filter(pk=a).delete()
    group_runs_record(runs=[a_run(a)])
    assert not GroupRun.objects.exists() and not GroupStats.objects.exists()
    assert group_runs_record(runs=[]) == []


def test_counters_add_each_groups_runs_and_keep_the_latest_tick_of_the_flush(make_groups):
    a, b, c = make_groups(3)
    GroupStats.objects.create(group_id=c, started=10, done=9, failed=1, values=30, lag_ms_total=100,
                              last_run_at=TICK - timedelta(days=1), last_status="failed", last_error="an old error")
    later, earlier = TICK + timedelta(seconds=1), TICK - timedelta(seconds=1)
    group_runs_record(runs=[
        a_run(a, tick=TICK, lag_ms=5),
        a_run(a, tick=later, ok=False, error="first", values=0, lag_ms=7),
        a_run(a, tick=earlier, ok=False, error="second", values=0, lag_ms=11),  # an older tick finishing last
        a_run(b, tick=TICK, values=4, lag_ms=0),
        a_run(c, tick=earlier, values=2, lag_ms=1),
    ])
    assert counters(a) == {"started": 3, "done": 1, "failed": 2, "values": 3, "lag_ms_total": 23,
                           "last_run_at": later, "last_status": "failed", "last_error": "second"}
    assert counters(b) == {"started": 1, "done": 1, "failed": 0, "values": 4, "lag_ms_total": 0,
                           "last_run_at": TICK, "last_status": "ok", "last_error": ""}
    assert counters(c) == {"started": 11, "done": 10, "failed": 1, "values": 32, "lag_ms_total": 101,
                           "last_run_at": earlier, "last_status": "ok", "last_error": "an old error"}
    group_runs_record(runs=[a_run(a, tick=later + timedelta(seconds=1), lag_ms=2)])
    assert counters(a) == {"started": 4, "done": 2, "failed": 2, "values": 6, "lag_ms_total": 25,
                           "last_run_at": later + timedelta(seconds=1), "last_status": "ok", "last_error": "second"}


def test_a_tick_keeps_its_first_outcome_and_a_second_is_left_out(make_groups):
    (a,) = make_groups(1)
    kept = group_runs_record(runs=[a_run(a), a_run(a, ok=False, error="late")])
    assert [run.status for run, _ in kept] == ["ok"]
    assert group_runs_record(runs=[a_run(a, ok=False, error="redelivered")]) == []  # recorded before: left out
    assert (counters(a)["started"], counters(a)["last_status"], GroupRun.objects.count()) == (1, "ok", 1)


def test_missing_counters_rows_are_made_and_existing_ones_added_to(make_groups):
    ids = make_groups(6)
    group_runs_record(runs=[a_run(g) for g in ids[:3]])
    group_runs_record(runs=[a_run(g, tick=TICK + timedelta(seconds=1), lag_ms=i) for i, g in enumerate(ids)])
    assert [counters(g)["started"] for g in ids] == [2, 2, 2, 1, 1, 1]
    assert [counters(g)["lag_ms_total"] for g in ids] == [5, 6, 7, 3, 4, 5]


def test_many_groups_that_differ_in_every_counter_stay_within_the_parameter_limit(make_groups, monkeypatch):
    monkeypatch.setattr(stats, "RUNS_CHUNK", 150)
    ids = make_groups(400)
    runs = [a_run(g, tick=TICK + timedelta(seconds=i % 7), ok=i % 3 != 0, error=f"error {i % 5}" if i % 3 == 0 else "",
                  values=i, lag_ms=i * 2) for i, g in enumerate(ids)]
    runs += [a_run(g, tick=TICK - timedelta(seconds=1)) for g in ids[::2]]  # some groups run twice
    statements = []

    def counting(execute, sql, params, many, context):
        statements.append((sql.split()[0], len(params or ())))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(counting):
        group_runs_record(runs=runs)
    limit = connection.features.max_query_params or float("inf")
    assert max(n for _, n in statements) <= limit
    for i, g in enumerate(ids):
        twice = i % 2 == 0
        expected = {"started": 1 + twice, "done": (i % 3 != 0) + twice, "failed": int(i % 3 == 0),
                    "values": i + 3 * twice, "lag_ms_total": i * 2 + 5 * twice,
                    "last_run_at": TICK + timedelta(seconds=i % 7),
                    "last_status": "ok" if i % 3 != 0 else "failed", "last_error": f"error {i % 5}" if i % 3 == 0 else ""}
        assert counters(g) == expected, g
    assert GroupRun.objects.count() == len(runs)


def test_a_thousand_runs_take_a_few_statements_not_one_per_run(make_groups):
    ids = make_groups(1000)
    group_runs_record(runs=[a_run(g) for g in ids])  # makes the counters rows
    kinds = []

    def counting(execute, sql, params, many, context):
        kinds.append(sql.split()[0])
        return execute(sql, params, many, context)

    runs = [a_run(g, tick=TICK + timedelta(seconds=1), lag_ms=i % 50, ok=i % 50 != 0,
                  error="hub-a: connection refused" if i % 50 == 0 else "") for i, g in enumerate(ids)]
    with connection.execute_wrapper(counting):
        group_runs_record(runs=runs)
    # the groups that exist and the ticks recorded already: two SELECTs each (SQLite takes 999 ids a statement);
    # where rows can be locked, one SELECT ... FOR UPDATE per chunk of 200 counters rows (in group id order)
    locking = 5 if connection.features.has_select_for_update else 0
    assert kinds.count("SELECT") <= 4 + locking and kinds.count("INSERT") <= 8 and kinds.count("UPDATE") <= 10
    assert sum(counters(g)["lag_ms_total"] for g in ids) == 1000 * 5 + sum(i % 50 for i in range(1000))


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_add_up_and_make_missing_rows_once(make_groups):
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("SQLite's shared in-memory test database fails a second writer at once ('table is locked'); "
                    "test_the_same_tests_pass_on_postgresql covers this")
    ids = make_groups(300)
    GroupStats.objects.filter(group_id__in=ids[::2]).delete()
    writers, rounds = 4, 5
    start = threading.Barrier(writers)
    errors = []

    def write(w: int) -> None:
        try:
            start.wait()
            for r in range(rounds):
                tick = TICK + timedelta(seconds=r, milliseconds=w)  # ticks of their own: each is a new outcome
                group_runs_record(runs=[a_run(g, tick=tick, lag_ms=w + r, values=1) for g in ids])
        except Exception as exc:  # reported below: an exception in a thread would pass silently
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    lag = sum(w + r for w in range(writers) for r in range(rounds))
    totals = {(s["started"], s["done"], s["values"], s["lag_ms_total"])
              for s in GroupStats.objects.filter(group_id__in=ids).values("started", "done", "values", "lag_ms_total")}
    assert totals == {(writers * rounds, writers * rounds, writers * rounds, lag)}
    assert GroupStats.objects.filter(group_id__in=ids).count() == len(ids)
    assert GroupRun.objects.count() == writers * rounds * len(ids)


@pytest.mark.postgres
def test_the_same_tests_pass_on_postgresql():
    if connection.vendor == "postgresql":
        pytest.skip("this session runs on PostgreSQL already")
    url = postgres_url().replace("postgresql+psycopg2://", "postgresql://")
    # a database of this run's own: pytest-django makes and drops test_<name>
    url = f"{url.rsplit('/', 1)[0]}/hubsched_runs_{os.getpid()}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "not on_postgresql"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_groups_that_did_not_fail_keep_their_last_error_when_most_others_failed_alike(make_groups):
    ids = make_groups(10)
    group_runs_record(runs=[a_run(g, ok=False, error="an old error") for g in ids[:2]])
    group_runs_record(runs=[a_run(g, tick=TICK + timedelta(seconds=1), ok=g not in ids[1:8],
                                  error="" if g not in ids[1:8] else "hub-a: down")
                            for g in ids])  # a hub that is down fails its groups alike
    assert [counters(g)["last_error"] for g in ids] == ["an old error"] + ["hub-a: down"] * 7 + [""] * 2
