"""Beat high availability: the lease, the fence workers apply, carrying on from the watermarks, and real beats killed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

from groups.models import Group, GroupRun, GroupStats
from groups.scheduler.beat import Scheduler
from groups.scheduler.clock import FakeClock
from groups.scheduler.dispatch import hub_batch_run
from groups.scheduler.engine import ROUND_MARK, RESUME_LOG_MAX, Engine, GroupSpec
from groups.scheduler.leader import (BeatAlreadyRunning, Fence, FileLeadership, RedisLeadership, beat_leader)
from groups.scheduler.locks import FileLocks
from hubs.models import Hub
from hubsched.celery import app
from hubsched.testing import redis_url

T0 = 1_800_000_000.0


def wait_for(condition, timeout: float = 10.0, what: str = "the condition"):
    """Poll ``condition()`` until it is true (the lease lapses in real time); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def prefix():
    name = f"hubsched-test-ha-{uuid.uuid4().hex[:8]}"
    yield name
    import redis

    client = redis.Redis.from_url(redis_url())
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def leadership(prefix, owner, lease_s=0.3):
    return RedisLeadership(redis_url(), prefix=prefix, lease_s=lease_s, owner=owner)


# --- the lease and the fence ---------------------------------------------------------------------------


def test_a_second_beat_takes_the_lead_only_once_the_first_ones_lease_has_lapsed_and_with_a_newer_epoch(prefix):
    a, b = leadership(prefix, "a"), leadership(prefix, "b")
    assert a.try_acquire() and a.leading
    assert not b.try_acquire()
    assert a.renew()  # a live leader keeps it
    assert not b.try_acquire()
    wait_for(lambda: b.try_acquire(), what="the takeover")  # a stopped renewing (killed)
    assert b.epoch == a.epoch + 1
    assert not a.renew() and not a.leading
    info = beat_leader(url=redis_url(), prefix=prefix)
    assert info["owner"] == "b" and info["epoch"] == b.epoch and info["lease_until"] >= info["since"]


def test_a_leader_that_stops_releases_the_lease_so_a_standby_leads_at_once(prefix):
    a, b = leadership(prefix, "a", lease_s=30), leadership(prefix, "b", lease_s=30)
    assert a.try_acquire()
    a.stop()
    assert beat_leader(url=redis_url(), prefix=prefix) is None
    assert b.try_acquire()


def test_a_worker_refuses_a_round_of_a_stale_epoch_that_was_never_committed_and_runs_a_committed_one(prefix):
    a, b = leadership(prefix, "a"), leadership(prefix, "b")
    fence = Fence(redis_url(), prefix=prefix)
    a.try_acquire()
    committed = a.next_round()
    assert a.commit(committed, {"c": T0})
    pending = a.next_round()  # published, then a paused past its lease before committing
    wait_for(lambda: b.try_acquire(), what="the takeover")
    assert fence.admit(pending) is False  # stale epoch, never committed: the new leader sends these ticks
    assert fence.admit(committed) is True  # committed before the takeover: b starts after it, so it runs
    assert a.commit(pending, {"c": T0 + 1}) is False and not a.leading  # a wakes, is fenced off, stops
    assert b.watermarks() == {"c": T0}
    assert fence.admit(None) is True  # an older beat's batch has no fence


def test_a_worker_waits_for_the_commit_of_a_round_of_the_current_epoch(prefix):
    a = leadership(prefix, "a", lease_s=30)
    a.try_acquire()
    pending = a.next_round()
    fence = Fence(redis_url(), prefix=prefix, wait_s=30)
    threading.Timer(0.05, lambda: a.commit(pending, {})).start()
    assert fence.admit(pending) is True


def test_a_worker_that_waits_in_vain_for_a_commit_ends_the_epoch_so_that_round_is_never_committed(prefix):
    a, b = leadership(prefix, "a", lease_s=30), leadership(prefix, "b", lease_s=30)
    a.try_acquire()
    pending = a.next_round()
    assert Fence(redis_url(), prefix=prefix, wait_s=0.01).admit(pending) is False
    assert a.commit(pending, {}) is False
    assert b.try_acquire()  # the lease was ended with the epoch


def test_a_refused_batch_runs_nothing_and_a_batch_without_a_fence_runs(prefix, tmp_path):
    a, b = leadership(prefix, "a"), leadership(prefix, "b")
    a.try_acquire()
    stale = a.next_round()
    wait_for(lambda: b.try_acquire(), what="the takeover")
    ran = []
    kwargs = dict(hub_id=1, ticks=[[T0, 5.0, 0, [1, 2]]], clock=FakeClock(T0), locks=FileLocks(tmp_path),
                  execute=ran.extend, record=False, fences=Fence(redis_url(), prefix=prefix))
    out = hub_batch_run(fence=stale, **kwargs)
    assert out.refused and ran == [] and not out.untaken
    out = hub_batch_run(fence=None, **kwargs)
    assert not out.refused and ran == [(1, T0), (2, T0)]


def test_a_second_embedded_beat_refuses_to_start_with_a_clear_message(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from groups.scheduler.leader import FileLeadership; "
        f"FileLeadership({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(BeatAlreadyRunning, match="another beat is already running.*filesystem://"):
            FileLeadership(tmp_path).acquire()
    finally:
        first.kill()
        first.wait()
    FileLeadership(tmp_path).acquire()  # the kernel dropped the dead beat's lock


# --- carrying on from the watermarks -------------------------------------------------------------------------


class Sent:
    def __init__(self):
        self.ticks: list[tuple[int, float]] = []
        self.etas: list = []

    def __call__(self, hub_id, ticks, limit, eta=None):
        self.ticks += [(gid, t[0]) for t in ticks for gid in t[3]]
        self.etas.append(eta)


def engine_at(now, *specs):
    clock, sent = FakeClock(now), Sent()
    engine = Engine(publish=sent, clock=clock, lead=0.25)
    for spec in specs:
        engine.upsert(spec)
    return engine, clock, sent


def test_ticks_of_the_gap_go_out_late_while_within_their_expiry_and_the_older_ones_are_missed():
    engine, clock, sent = engine_at(T0 + 13.5, GroupSpec(id=1, hub_id=1, trigger="interval", period=1),
                                    GroupSpec(id=2, hub_id=1, trigger="interval", period=1, expires=3))
    mark = next(iter(engine.cohorts.values())).mark
    late, missed, older = engine.resume({mark: T0 + 10, ROUND_MARK: T0 + 9.9})
    assert sorted(sent.ticks) == [(1, T0 + 13), (2, T0 + 11), (2, T0 + 12), (2, T0 + 13)] and late == 4
    assert sent.etas == [None]  # late: at once
    assert sorted(missed) == [(1, T0 + 11, "missed"), (1, T0 + 12, "missed")] and older == 0
    clock.set(T0 + 13.75)
    engine.run_due()
    assert sent.ticks[-2:] == [(1, T0 + 14), (2, T0 + 14)]  # then on its grid again, with the lead


def test_a_long_gap_returns_its_latest_ticks_as_missed_and_only_counts_the_older_ones():
    engine, clock, sent = engine_at(T0 + 100.5, GroupSpec(id=1, hub_id=1, trigger="interval", period=1))
    mark = next(iter(engine.cohorts.values())).mark
    late, missed, older = engine.resume({mark: T0})
    assert sent.ticks == [(1, T0 + 100)]
    # the latest RESUME_LOG_MAX ticks one by one (the last of them sent), the 90 before only counted
    assert len(missed) == RESUME_LOG_MAX - 1 and missed[-1] == (1, T0 + 99, "missed")
    assert older == 100 - RESUME_LOG_MAX and len(missed) + older == 99
    assert engine.stats.take()["missed"][1] == older


def test_without_any_watermark_a_new_leader_owes_nothing_and_starts_at_the_next_tick():
    engine, clock, sent = engine_at(T0 + 0.5, GroupSpec(id=1, hub_id=1, trigger="interval", period=1))
    clock.set(T0 + 7.3)  # loaded long before it led
    assert engine.resume({})[:2] == (0, [])
    assert sent.ticks == [] and engine.next_due() == T0 + 8 - 0.25


def test_a_cohort_new_since_the_last_round_carries_on_from_that_rounds_time():
    engine, clock, sent = engine_at(T0 + 3.5, GroupSpec(id=1, hub_id=1, trigger="interval", period=1, expires=5))
    engine.resume({ROUND_MARK: T0 + 0.8})  # the last round sent ticks up to 0.8 + lead
    assert sent.ticks == [(1, T0 + 2), (1, T0 + 3)]


# --- the Scheduler: two beats in one process, one Redis ---------------------------------------------------


class FencedRecorder:
    """What a worker would run: each batch the fence admits, per (group, tick)."""

    def __init__(self, fence: Fence):
        self.fence = fence
        self.messages: list[tuple[list | None, list]] = []

    def run(self) -> list[tuple[int, float]]:
        return [(gid, t[0]) for fence, ticks in self.messages if self.fence.admit(fence) for t in ticks for gid in t[3]]


class FencedScheduler(Scheduler):
    def __init__(self, *args, sent: FencedRecorder, **kwargs):
        self.sent = sent
        super().__init__(*args, **kwargs)

    def _publish(self, hub_id, ticks, limit, eta):
        self.sent.messages.append((self._fence, ticks))


@pytest.fixture
def two_beats(db, project, prefix):
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    Group.objects.create(hub=hub, name="a", period=1)
    Group.objects.create(hub=hub, name="b", period=1, expires=3)
    sent = FencedRecorder(Fence(redis_url(), prefix=prefix))
    made = []

    def make(owner, clock):
        scheduler = FencedScheduler(app, clock=clock, sent=sent, max_interval=5,
                                    leadership=leadership(prefix, owner, lease_s=0.3))
        made.append(scheduler)
        return scheduler

    yield make, sent
    for scheduler in made:
        scheduler.subscriptions.stop()
        scheduler.leadership.stop()


def run_until(scheduler, t):
    while scheduler.clock.now() < t:
        scheduler.tick()


def freeze(scheduler):
    """What kill -9 or a long pause does to a beat's lease: its renewal thread stops, nothing is released."""
    scheduler.leadership._stop.set()
    scheduler.leadership._thread.join()


def test_a_standby_beat_carries_on_where_the_killed_leader_stopped_and_no_tick_runs_twice(two_beats, forward):
    make, sent = two_beats
    a = make("a", FakeClock(T0 + 0.1))
    wait_for(lambda: a.leadership.leading, what="a leading")
    b = make("b", FakeClock(T0 + 0.1))
    run_until(a, T0 + 5.1)  # sends ticks 1 to 5
    run_until(b, T0 + 5.1)  # standby: sends nothing
    assert {fence[0] for fence, _ in sent.messages} == {a.leadership.epoch}
    freeze(a)
    wait_for(lambda: b.leadership.leading, what="the takeover")
    b.clock.set(T0 + 7.3)  # b leads 2.2 s after a's last tick
    run_until(b, T0 + 10.1)
    ran = sent.run()
    assert len(ran) == len(set(ran))  # no (group, tick) twice
    one_s, three_s = sorted(Group.objects.values_list("pk", flat=True))
    # tick 6 was 1.3 s old: late for the group with a 3 s expiry, missed for the one with one period (1 s)
    assert set(ran) == {(gid, T0 + k) for gid in (one_s, three_s) for k in range(1, 11)} - {(one_s, T0 + 6)}
    assert b._untaken == [(one_s, T0 + 6, "missed")]
    b.flush()  # the missed tick goes to the log as that tick's outcome
    forward()
    assert list(GroupRun.objects.filter(status="missed").values_list("group_id", "scheduled_for")) == [
        (one_s, datetime.fromtimestamp(T0 + 6, timezone.utc))]
    assert GroupStats.objects.get(group_id=one_s).missed == 1


def test_an_old_leader_that_wakes_from_a_pause_longer_than_its_lease_is_fenced_off_and_stops(two_beats):
    make, sent = two_beats
    a = make("a", FakeClock(T0 + 0.1))
    wait_for(lambda: a.leadership.leading, what="a leading")
    b = make("b", FakeClock(T0 + 0.1))
    run_until(a, T0 + 3.1)  # ticks 1 to 3
    old_epoch = a.leadership.epoch
    freeze(a)  # paused
    wait_for(lambda: b.leadership.leading, what="the takeover")
    b.clock.set(T0 + 3.9)
    run_until(b, T0 + 6.1)  # ticks 4 to 6
    # a wakes still believing it leads (the pause hid the lapse from it) and sends tick 4
    a.leadership._valid_until = time.monotonic() + 60
    a.clock.set(T0 + 3.8)
    a.tick()
    assert not a.leadership.leading
    last = sent.messages[-1]
    assert last[0][0] == old_epoch and last[1][0][0] == T0 + 4
    assert sent.fence.admit(last[0]) is False  # refused by the workers
    ran = sent.run()
    assert sorted(ran) == sorted({(gid, T0 + k) for gid in Group.objects.values_list("pk", flat=True) for k in range(1, 7)})


# --- real beat processes -------------------------------------------------------------------------------------


def test_a_second_beat_process_on_the_embedded_broker_exits_with_a_clear_message(tmp_path):
    import os

    from hubsched.bench.common import ROOT, check

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "HUBSCHED_VAR_DIR": str(tmp_path / "var"),
           "CELERY_BROKER_URL": "filesystem://", "HUBSCHED_LOCK_URL": ""}
    check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env)
    command = [sys.executable, "-m", "celery", "-A", "hubsched", "beat", "-S", "groups.scheduler:Scheduler",
               "--loglevel", "INFO", "--pidfile", ""]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command + ["-s", str(tmp_path / "s1")], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "groups in" in (tmp_path / "first.log").read_text() or first.poll() is not None, timeout=60,
                 what="the first beat starting")
        assert first.poll() is None
        second = subprocess.run(command + ["-s", str(tmp_path / "s2")], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode != 0
        assert "another beat is already running on this machine" in second.stdout + second.stderr
        assert first.poll() is None  # the first one goes on
    finally:
        first.kill()
        first.wait()
        log.close()


def test_two_real_beats_on_redis_survive_kill_9_of_the_leader_without_running_a_tick_twice_or_losing_one():
    from hubsched.bench import failover

    result = failover.run(groups=40, hubs=4, period=1.0, kills=1, broker=redis_url(), seed=7)
    assert result["takeovers"] >= 2  # the first leader, then the standby after the kill
    assert result["kill_to_first_ms"]["max"] is not None  # another beat dispatched after the kill
    assert result["ticks_dispatched_twice"] == 0
    assert result["ticks_expected"] > 0 and result["ticks_lost"] == 0


def test_the_publisher_puts_the_fence_after_the_limit_and_leaves_it_out_without_one(tmp_path):
    from celery import Celery
    from kombu import Queue

    from groups.scheduler.publish import BatchPublisher

    queue = f"hubsched-test-ha-publish-{uuid.uuid4().hex[:8]}"
    celery = Celery("t", broker=redis_url(), set_as_current=False)
    celery.conf.task_default_queue = queue
    with celery.connection_for_write() as conn:
        producer = celery.amqp.Producer(conn, auto_declare=False)
        publisher = BatchPublisher(celery, lambda: producer)
        with publisher.batch():
            publisher.send(7, [[T0 + 1, 1.0, 3, [10]]], 4, eta=None, fence=[3, 12])
            publisher.send(8, [[T0 + 1, 1.0, 3, [11]]], 4)
        received = []
        with conn.Consumer(Queue(queue), callbacks=[lambda body, msg: received.append(body[0])], accept=["json"],
                           no_ack=True):
            deadline = time.monotonic() + 5
            while len(received) < 2 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
        conn.default_channel.queue_delete(queue)
    assert sorted(received) == [[7, [[T0 + 1, 1.0, 3, [10]]], 4, [3, 12]], [8, [[T0 + 1, 1.0, 3, [11]]], 4]]
