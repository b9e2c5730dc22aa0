"""The worker side of a batch: expiry, the overlap lock, the per-hub gate and round-robin."""

from __future__ import annotations

import multiprocessing

import pytest

from groups.models import Group, GroupRun, GroupStats
from groups.scheduler.clock import FakeClock
from groups.scheduler.dispatch import hub_batch_run, round_robin
from groups.scheduler.locks import DatabaseLocks, FileLocks, RedisLocks
from hubs.models import Hub
from hubsched.testing import mariadb_url, postgres_url, redis_url

T0 = 1_800_000_000.0


@pytest.fixture(params=["files", "redis", "postgresql", "mariadb"])
def locks(request, tmp_path):
    if request.param == "files":
        yield FileLocks(tmp_path / "locks")
        return
    if request.param in ("postgresql", "mariadb"):
        backend = DatabaseLocks((postgres_url if request.param == "postgresql" else mariadb_url)(),
                                prefix=f"hubsched-test-{tmp_path.name}")
        yield backend
        backend.close()
        return
    backend = RedisLocks(redis_url(), ttl=30, prefix=f"hubsched-test-{tmp_path.name}")
    yield backend
    for key in backend.redis.scan_iter(f"{backend.prefix}:*"):
        backend.redis.delete(key)


class Runner:
    """Stands in for group execution: records runs and lets time pass on the fake clock."""

    def __init__(self, clock, cost=None, during=None):
        self.clock, self.cost, self.during = clock, cost or {}, during
        self.ran: list[int] = []

    def __call__(self, runs):
        for gid, _ in runs:
            self.ran.append(gid)
            if self.during:
                self.during(gid)
            self.clock.advance(self.cost.get(gid, 0.001))


def run(ticks, *, clock, locks, hub_id=1, limit=8, execute=None):
    execute = execute or Runner(clock)
    return hub_batch_run(hub_id=hub_id, ticks=ticks, limit=limit, clock=clock, locks=locks, execute=execute,
                         record=False)


def test_a_tick_older_than_its_expiry_is_missed_not_run(locks):
    clock = FakeClock(T0 + 1.5)
    out = run([[T0, 1.0, 0, [1, 2]], [T0 + 1, 1.0, 0, [3]]], clock=clock, locks=locks)
    assert out.missed == [1, 2] and [g for g, _ in out.ran] == [3]


def test_a_ticks_groups_run_together_so_their_hub_reads_share_one_pipeline(locks):
    clock = FakeClock(T0)
    calls = []
    out = run([[T0, 1.0, 2, [1, 2, 3, 4]]], clock=clock, locks=locks, execute=calls.append)
    assert calls == [[(3, T0), (4, T0), (1, T0), (2, T0)]]  # one call, in round-robin order
    assert [g for g, _ in out.ran] == [3, 4, 1, 2]


def test_ticks_do_not_pile_up_behind_a_slow_group(locks, monkeypatch):
    monkeypatch.setattr("groups.scheduler.dispatch.CHUNK_MAX", 1)  # every group its own chunk
    clock = FakeClock(T0)
    runner = Runner(clock, cost={1: 0.7})
    out = run([[T0, 1.0, 0, [1, 2, 3]]], clock=clock, locks=locks, execute=runner)
    assert runner.ran == [1, 2, 3]  # 2 and 3 started at +0.7 s, within the expiry
    clock.set(T0 + 1)
    runner = Runner(clock, cost={1: 1.2})
    out = run([[T0 + 1, 1.0, 0, [1, 2, 3]]], clock=clock, locks=locks, execute=runner)
    assert runner.ran == [1] and out.missed == [2, 3]  # their turn came 1.2 s late: dropped


def test_a_group_still_running_skips_its_next_tick(locks):
    clock = FakeClock(T0)
    nested = []

    def next_tick_arrives(gid):  # while group 1 runs, its next tick reaches another worker
        if gid == 1:
            nested.append(run([[T0 + 0.1, 1.0, 0, [1, 2]]], clock=clock, locks=locks))

    out = run([[T0, 1.0, 0, [1, 2]]], clock=clock, locks=locks, execute=Runner(clock, during=next_tick_arrives))
    assert [g for g, _ in out.ran] == [1, 2]
    assert nested[0].skipped == [1, 2]  # 1 is running, 2 waits in the running batch
    again = run([[T0 + 1, 1.0, 0, [1, 2]]], clock=clock, locks=locks)
    assert [g for g, _ in again.ran] == [1, 2] and not again.skipped  # released afterwards


def test_the_overlap_lock_heals_when_a_worker_dies(tmp_path):
    directory = tmp_path / "locks"
    ctx = multiprocessing.get_context("fork")
    holding, die = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_lock_and_die, args=(directory, holding, die))
    worker.start()
    assert holding.wait(10)
    assert FileLocks(directory).acquire([1])[1] == []  # held by the other worker process
    die.set()
    worker.join(10)
    assert worker.exitcode == 7
    assert FileLocks(directory).acquire([1])[1] == [1]  # the kernel dropped the dead worker's lock


def _lock_and_die(directory, holding, die):
    import os

    assert FileLocks(directory).acquire([1])[1] == [1]
    assert FileLocks(directory).acquire([1])[1] == []  # nor can the same process take it twice
    holding.set()
    die.wait(10)
    os._exit(7)  # dies holding the lock, without releasing it


def test_the_redis_overlap_lock_expires_after_its_ttl(tmp_path):
    import time

    locks = RedisLocks(redis_url(), ttl=0.05, prefix=f"hubsched-test-{tmp_path.name}")
    assert locks.acquire([1])[1] == [1]  # a worker takes the lock, then dies without releasing it
    assert locks.acquire([1])[1] == []
    locks.stop_heartbeat()  # the worker dies: nothing extends its lock any more
    time.sleep(0.1)  # the TTL is real time in Redis
    assert locks.acquire([1])[1] == [1]


def test_round_robin_puts_each_group_of_a_hub_first_in_turn():
    assert [round_robin([1, 2, 3], rr)[0] for rr in range(1, 7)] == [2, 3, 1, 2, 3, 1]


def test_a_huge_group_does_not_always_push_the_same_groups_past_their_expiry(locks):
    clock = FakeClock(T0)
    missed = []
    for n in range(1, 5):  # group 1 takes 0.9 s, its neighbours 0.05 s; expiry one second
        clock.set(T0 + n)
        out = run([[T0 + n, 1.0, n, [1, 2, 3, 4]]], clock=clock, locks=locks, execute=Runner(clock, cost={1: 0.95}))
        missed.append(sorted(out.missed))
    assert missed == [[], [], [], []] or len({tuple(m) for m in missed}) > 1
    every_group_ran_at_least_once = set().union(*[set([1, 2, 3, 4]) - set(m) for m in missed])
    assert every_group_ran_at_least_once == {1, 2, 3, 4}


def test_a_slow_hub_cannot_starve_a_fast_one(locks):
    """Hub 1 is slow and limited to one batch in flight; hub 2 is fast. While hub 1's batch runs, the
    next batches of both hubs arrive at other workers: hub 2's runs at once, hub 1's is sent back
    (no worker waits on the slow hub) and, when hub 1 is still busy past the expiry, counted missed."""
    clock = FakeClock(T0)
    seen = {}

    def others_arrive(gid):
        if gid == 10:
            clock.advance(0.2)
            seen["fast"] = run([[T0 + 0.2, 1.0, 0, [20, 21]]], clock=clock, locks=locks, hub_id=2, limit=1)
            seen["slow"] = run([[T0 + 0.2, 1.0, 0, [11]]], clock=clock, locks=locks, hub_id=1, limit=1)

    slow = run([[T0, 1.0, 0, [10]]], clock=clock, locks=locks, hub_id=1, limit=1,
               execute=Runner(clock, cost={10: 2.0}, during=others_arrive))
    assert [g for g, _ in slow.ran] == [10]
    assert [g for g, _ in seen["fast"].ran] == [20, 21] and seen["fast"].ran[0][1] == T0 + 0.2
    assert not seen["slow"].ran and seen["slow"].requeue == [[T0 + 0.2, 1.0, 0, [11]]]
    assert 0 < seen["slow"].countdown <= 0.1
    later = run(seen["slow"].requeue, clock=clock, locks=locks, hub_id=1, limit=1)  # hub 1 is free again
    assert later.missed == [11]  # but that tick is 2 s old by now: dropped, not run late


def test_skipped_and_missed_ticks_are_recorded_once_each_through_the_log(project, tmp_path, forward):
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    a, b = (Group.objects.create(hub=hub, name=name, period=1) for name in "ab")
    locks = FileLocks(tmp_path / "locks")
    locks.acquire([b.pk])  # b is running elsewhere
    clock = FakeClock(T0 + 0.5)
    out = hub_batch_run(hub_id=hub.pk, ticks=[[T0 - 2, 1.0, 0, [a.pk]], [T0, 1.0, 0, [b.pk]]], limit=4,
                        clock=clock, locks=locks, execute=Runner(clock))
    assert out.missed == [a.pk] and out.skipped == [b.pk]
    assert not GroupStats.objects.exists()  # in the log, not yet recorded
    forward()
    assert (GroupStats.objects.get(group=a).missed, GroupStats.objects.get(group=b).skipped) == (1, 1)
    runs = sorted(GroupRun.objects.values_list("group_id", "status"))
    assert runs == [(a.pk, "missed"), (b.pk, "skipped")]
    # the same batch delivered again (a worker died before acknowledging it): each tick keeps its one outcome
    hub_batch_run(hub_id=hub.pk, ticks=[[T0 - 2, 1.0, 0, [a.pk]], [T0, 1.0, 0, [b.pk]]], limit=4,
                  clock=clock, locks=locks, execute=Runner(clock))
    forward()
    assert GroupRun.objects.count() == 2
    assert (GroupStats.objects.get(group=a).missed, GroupStats.objects.get(group=b).skipped) == (1, 1)


class Clocked(Runner):
    """A Runner that also notes the clock when each group starts."""

    def __init__(self, clock, **kwargs):
        super().__init__(clock, **kwargs)
        self.started: list[float] = []

    def __call__(self, runs):
        self.started.extend(self.clock.now() for _ in runs)
        super().__call__(runs)


def test_a_batch_that_arrives_early_waits_for_its_scheduled_time(locks):
    clock = FakeClock(T0 - 0.2)  # an eta that was not honoured, or clocks a little apart
    runner = Clocked(clock)
    out = run([[T0, 1.0, 0, [1, 2]]], clock=clock, locks=locks, execute=runner)
    assert [g for g, _ in out.ran] == [1, 2] and runner.started[0] == T0


def test_a_batch_far_too_early_is_sent_back_until_its_time_and_runs_nothing(locks):
    clock = FakeClock(T0 - 5)
    runner = Clocked(clock)
    out = run([[T0, 1.0, 0, [1]]], clock=clock, locks=locks, execute=runner)
    assert runner.ran == [] and out.requeue == [[T0, 1.0, 0, [1]]] and out.countdown == 5
    assert clock.now() == T0 - 5  # it did not wait


def test_expiry_counts_from_the_scheduled_time_not_from_an_early_arrival(locks, monkeypatch):
    monkeypatch.setattr("groups.scheduler.dispatch.CHUNK_MAX", 1)
    clock = FakeClock(T0 - 0.5)
    runner = Clocked(clock, cost={1: 1.2})
    out = run([[T0, 1.0, 0, [1, 2]]], clock=clock, locks=locks, execute=runner)
    assert runner.ran == [1] and out.missed == [2]  # 2's turn came at T0 + 1.2: past its expiry, however early it came


def test_a_later_tick_in_the_same_batch_waits_for_its_own_time(locks):
    clock = FakeClock(T0)
    runner = Clocked(clock)
    out = run([[T0, 1.0, 0, [1]], [T0 + 0.5, 1.0, 0, [2]]], clock=clock, locks=locks, execute=runner)
    assert [g for g, _ in out.ran] == [1, 2] and runner.started == [T0, T0 + 0.5]


def test_counters_for_consecutive_groups_take_one_statement_and_rows_are_made_when_missing(project):
    from groups.scheduler.stats import group_stats_add, id_runs

    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    Group.objects.bulk_create([Group(hub=hub, name=f"g{i}", period=1) for i in range(200)])
    ids = sorted(Group.objects.values_list("pk", flat=True))
    GroupStats.objects.filter(group_id__in=ids[10:20]).delete()  # some rows not made yet
    gone = ids[-1] + 1000  # a group deleted since beat counted it
    counts = {"dispatched": {**dict.fromkeys(ids, 2), ids[0]: 5, gone: 2}}
    assert id_runs(ids[1:] + [gone]) == ([(ids[1], ids[-1])], [gone])
    group_stats_add(counts=counts)
    stats = dict(GroupStats.objects.values_list("group_id", "dispatched"))
    assert stats[ids[0]] == 5 and stats[ids[15]] == 2 and stats[ids[-1]] == 2 and gone not in stats
    assert group_stats_add(counts={"dispatched": dict.fromkeys(ids[1:], 1)}) == 1  # all rows there: one BETWEEN
    assert GroupStats.objects.get(group_id=ids[100]).dispatched == 3


def test_recorded_runs_add_to_counters_and_make_the_rows_that_are_missing(project):
    from datetime import timedelta

    from django.utils import timezone

    from groups.models import GroupRun, RunStatus
    from groups.services import group_runs_record

    hub = Hub.objects.create(project=project, name="hub-r", url="ws://127.0.0.1:9/connect")
    a, b = Group.objects.create(hub=hub, name="a", period=1), Group.objects.create(hub=hub, name="b", period=1)
    GroupStats.objects.filter(group=b).delete()  # b's row not made yet
    t = timezone.now()

    def run(group, lag, tick=t):
        return GroupRun(group_id=group.pk, scheduled_for=tick, started_at=tick, finished_at=tick + timedelta(seconds=1),
                        status=RunStatus.OK, values_count=3), lag

    group_runs_record(runs=[run(a, 5), run(b, 7)])
    group_runs_record(runs=[run(b, 7, t + timedelta(seconds=1))])
    stats = {s.group_id: (s.started, s.done, s.values, s.lag_ms_total) for s in GroupStats.objects.filter(group__hub=hub)}
    assert stats == {a.pk: (1, 1, 3, 5), b.pk: (2, 2, 6, 14)}
