"""The beat scheduler: each trigger firing on time under a fake clock, batching, change detection, counters."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timezone

import pytest

from groups.models import Group, GroupKey, GroupStats, Trigger
from groups.scheduler.beat import Scheduler
from groups.scheduler.clock import FakeClock
from groups.scheduler.engine import Engine, GroupSpec, StatsBuffer
from hubs.models import Hub
from hubsched.celery import app

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


class Recorder:
    def __init__(self):
        self.messages: list[tuple[int, list, int]] = []
        self.etas: list[float | None] = []  # each message's eta, in the same order

    def __call__(self, hub_id, ticks, limit, eta=None):
        self.messages.append((hub_id, ticks, limit))
        self.etas.append(eta)

    def ticks(self) -> list[tuple[int, float]]:
        """(group, scheduled_for) of every tick sent, in order."""
        return [(gid, t[0]) for _, ticks, _ in self.messages for t in ticks for gid in t[3]]

    def clear(self):
        self.messages.clear()
        self.etas.clear()


def engine_with(*specs, start=T0 + 0.5):
    clock, sent = FakeClock(start), Recorder()
    engine = Engine(publish=sent, clock=clock)
    for spec in specs:
        engine.upsert(spec)
    return engine, clock, sent


def test_an_interval_group_fires_on_its_grid_and_not_before():
    engine, clock, sent = engine_with(GroupSpec(id=1, hub_id=1, trigger="interval", period=2))
    assert engine.run_due() == 0
    clock.set(T0 + 1.999)
    assert engine.run_due() == 0
    clock.set(T0 + 2.0)
    assert engine.run_due() == 1
    assert sent.ticks() == [(1, T0 + 2.0)]
    assert engine.next_due() == T0 + 4.0


def test_a_cron_group_fires_on_its_seconds():
    engine, clock, sent = engine_with(GroupSpec(id=1, hub_id=1, trigger="cron", cron="*/15 * * * * *"))
    for step in range(60):
        clock.set(T0 + 1 + step)
        engine.run_due()
    assert [t - T0 for _, t in sent.ticks()] == [15, 30, 45, 60]
    assert sent.messages[0][1][0][1] == 15  # default expiry: one period (the gap to the next tick)


def test_a_once_group_fires_once_and_leaves_the_wheel():
    engine, clock, sent = engine_with(GroupSpec(id=7, hub_id=1, trigger="once", run_at=T0 + 3))
    for step in range(10):
        clock.set(T0 + step)
        engine.run_due()
    assert sent.ticks() == [(7, T0 + 3)]
    assert engine.next_due() is None and not engine.cohorts


def test_an_on_change_group_fires_on_each_change_beyond_its_deadband():
    engine, clock, sent = engine_with(GroupSpec(id=3, hub_id=2, trigger="on_change", deadband=1.0))
    engine.post_event(3, "pump1", [{"key": "p1", "value": 5.0}])
    engine.post_event(3, "pump1", [{"key": "p1", "value": 5.5}])
    clock.advance(0.01)
    engine.post_event(3, "pump1", [{"key": "p1", "value": 7.0}])
    engine.run_due()
    assert sent.ticks() == [(3, T0 + 0.5), (3, T0 + 0.51)]


def test_one_message_per_hub_per_tick_carries_all_its_due_groups():
    specs = [GroupSpec(id=i, hub_id=i % 3, trigger="interval", period=1) for i in range(30)]
    specs += [GroupSpec(id=100 + i, hub_id=i % 3, trigger="interval", period=1, offset=0.5) for i in range(3)]
    engine, clock, sent = engine_with(*specs)
    clock.set(T0 + 1)
    assert engine.run_due() == 30
    assert sorted(hub for hub, _, _ in sent.messages) == [0, 1, 2]
    assert sorted(gid for _, ticks, _ in sent.messages for gid in ticks[0][3] if ticks[0][3]) == list(range(30))
    assert len(engine.cohorts) == 2  # groups of equal timing share one heap entry


def test_groups_in_zones_with_whole_hour_offsets_share_a_cohort():
    engine, _, _ = engine_with(
        GroupSpec(id=1, hub_id=1, trigger="interval", period=10, tz="Europe/Berlin"),
        GroupSpec(id=2, hub_id=1, trigger="interval", period=10, tz="America/New_York"),
    )
    assert len(engine.cohorts) == 1


def test_a_big_hub_is_split_into_messages_of_at_most_batch_max_groups():
    engine, clock, sent = engine_with(*[GroupSpec(id=i, hub_id=1, trigger="interval", period=1) for i in range(2500)])
    engine.batch_max = 1000
    clock.set(T0 + 1)
    assert engine.run_due() == 2500
    assert [sum(len(t[3]) for t in ticks) for _, ticks, _ in sent.messages] == [1000, 1000, 500]


def test_a_big_hub_sends_the_same_cut_lists_every_tick_until_its_groups_change():
    engine, clock, sent = engine_with(*[GroupSpec(id=i, hub_id=1, trigger="interval", period=1) for i in range(2500)])
    for second in (1, 2):
        clock.set(T0 + second)
        engine.run_due()
    first, second = ([t[3] for t in ticks] for _, ticks, _ in (sent.messages[0], sent.messages[3]))
    assert [len(g) for g in first] == [1000] and all(a is b for a, b in zip(first, second))  # counted in O(1)
    assert engine.stats.take()["dispatched"] == dict.fromkeys(range(2500), 2)


def test_a_beat_that_fell_behind_sends_the_latest_tick_and_counts_the_others_missed():
    engine, clock, sent = engine_with(GroupSpec(id=1, hub_id=1, trigger="interval", period=1))
    clock.set(T0 + 5.3)
    engine.run_due()
    assert sent.ticks() == [(1, T0 + 5)]
    assert engine.stats.take() == {"dispatched": {1: 1}, "missed": {1: 4}}
    assert engine.next_due() == T0 + 6


def test_a_changed_period_moves_the_group_to_its_new_grid():
    engine, clock, sent = engine_with(GroupSpec(id=1, hub_id=1, trigger="interval", period=10))
    engine.upsert(GroupSpec(id=1, hub_id=1, trigger="interval", period=1))
    clock.set(T0 + 1)
    engine.run_due()
    assert sent.ticks() == [(1, T0 + 1)]
    engine.remove(1)
    clock.set(T0 + 10)
    sent.clear()
    engine.run_due()
    assert sent.ticks() == []


# --- lookahead: sending ahead with an eta -----------------------------------------------------------


def lookahead_engine(*specs, start=T0 + 0.5, lead=0.25):
    clock, sent = FakeClock(start), Recorder()
    engine = Engine(publish=sent, clock=clock, lead=lead)
    for spec in specs:
        engine.upsert(spec)
    return engine, clock, sent


def test_a_tick_is_sent_lead_seconds_ahead_with_its_time_as_eta():
    engine, clock, sent = lookahead_engine(GroupSpec(id=1, hub_id=1, trigger="interval", period=1), start=T0 + 0.1)
    assert engine.next_due() == T0 + 0.75
    clock.set(T0 + 0.749)
    assert engine.run_due() == 0
    clock.set(T0 + 0.75)
    assert engine.run_due() == 1
    assert sent.ticks() == [(1, T0 + 1)] and sent.etas == [T0 + 1]
    assert engine.next_due() == T0 + 1.75


def test_without_a_lead_a_tick_is_sent_at_its_time_with_no_eta():
    engine, clock, sent = lookahead_engine(GroupSpec(id=1, hub_id=1, trigger="interval", period=1), lead=0)
    clock.set(T0 + 1)
    engine.run_due()
    assert sent.ticks() == [(1, T0 + 1)] and sent.etas == [None]


def test_the_lead_is_at_most_half_a_period():
    clock, sent = FakeClock(T0 + 0.01), Recorder()
    engine = Engine(publish=sent, clock=clock, lead=0.25)
    engine.upsert(GroupSpec(id=1, hub_id=1, trigger="interval", period=0.2))
    assert engine.next_due() == pytest.approx(T0 + 0.1, abs=1e-6)  # the tick at +0.2 goes out 0.1 s ahead, not 0.25
    clock.set(engine.next_due())
    engine.run_due()
    assert sent.etas == [pytest.approx(T0 + 0.2, abs=1e-6)]


def test_a_beat_that_fell_behind_sends_the_overdue_tick_at_once_and_the_next_one_ahead():
    engine, clock, sent = lookahead_engine(GroupSpec(id=1, hub_id=1, trigger="interval", period=1))
    clock.set(T0 + 5.8)  # ticks 1..5 are past, tick 6 is within the lead
    engine.run_due()
    assert sent.ticks() == [(1, T0 + 5), (1, T0 + 6)]
    assert sent.etas == [None, T0 + 6]  # the overdue one is startable at once
    assert engine.stats.take() == {"dispatched": {1: 2}, "missed": {1: 4}}  # only ticks before now were passed over


def test_one_hub_gets_one_message_per_tick_instant_each_with_its_eta():
    engine, clock, sent = lookahead_engine(
        GroupSpec(id=1, hub_id=1, trigger="interval", period=1),
        GroupSpec(id=2, hub_id=1, trigger="interval", period=1, offset=0.1),
        GroupSpec(id=3, hub_id=1, trigger="interval", period=2),
    )
    clock.set(T0 + 0.85)
    engine.run_due()
    assert sorted(zip(sent.etas, [sorted(g for t in ticks for g in t[3]) for _, ticks, _ in sent.messages])) == [
        (T0 + 1, [1]), (T0 + 1.1, [2])]
    sent.clear()
    clock.set(T0 + 1.75)
    engine.run_due()  # groups 1 and 3 tick at +2: two cohorts, one instant, one message
    assert sent.etas == [T0 + 2] and sorted(g for t in sent.messages[0][1] for g in t[3]) == [1, 3]


def test_a_round_whose_batch_fails_counts_its_ticks_missed_not_dispatched():
    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise ConnectionError("the pipeline could not be written")

    engine, clock, sent = lookahead_engine(GroupSpec(id=1, hub_id=1, trigger="interval", period=1))
    engine.batch = Broken
    clock.set(T0 + 0.75)
    assert engine.run_due() == 0
    assert engine.stats.take() == {"missed": {1: 1}}


def test_the_stats_buffer_adds_up_lists_added_many_times_and_groups_in_several_lists():
    stats = StatsBuffer()
    a, b = [1, 2, 3], [3, 4]
    for _ in range(3):
        stats.add("dispatched", a)
    stats.add("dispatched", b)
    stats.add("missed", (g for g in [5]), 2)
    assert stats.take() == {"dispatched": {1: 3, 2: 3, 3: 4, 4: 1}, "missed": {5: 2}}
    assert stats.take() == {}


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_the_batch_publisher_sends_celerys_own_task_message_with_the_eta(broker, tmp_path):
    import time

    from celery import Celery
    from kombu import Queue

    from groups.scheduler.publish import BatchPublisher
    from hubsched.testing import redis_url

    queue = f"hubsched-test-publish-{tmp_path.name}"
    if broker == "redis":
        celery = Celery("t", broker=redis_url(), set_as_current=False)
    else:
        folder = tmp_path / "broker"
        folder.mkdir()
        celery = Celery("t", broker="filesystem://", set_as_current=False, broker_transport_options={
            "data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False,
            "control_folder": str(tmp_path / "control")})
    celery.conf.task_default_queue = queue
    with celery.connection_for_write() as conn:
        producer = celery.amqp.Producer(conn, auto_declare=False)
        publisher = BatchPublisher(celery, lambda: producer)
        with publisher.batch():
            task_id = publisher.send(7, [[T0 + 1, 1.0, 3, [10, 11]]], 4, eta=T0 + 1)
            publisher.send(8, [[T0 + 1, 1.0, 3, [12]]], 4)
        received = []
        with conn.Consumer(Queue(queue), callbacks=[lambda body, msg: received.append((body, msg.headers))],
                           accept=["json"], no_ack=True):
            deadline = time.monotonic() + 5
            while len(received) < 2 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
        conn.default_channel.queue_delete(queue)
    (body, headers), (body2, headers2) = sorted(received, key=lambda r: r[0][0][0])
    assert headers["task"] == "groups.tasks.group_batch_run" and headers["id"] == task_id
    assert body[0] == [7, [[T0 + 1, 1.0, 3, [10, 11]]], 4] and body[1] == {}
    assert datetime.fromisoformat(headers["eta"]).timestamp() == T0 + 1
    assert headers["argsrepr"] == "hub #7: 2 groups #10, #11; tick 2026-06-01T12:00:01Z"  # no GroupSpecs: ids
    assert headers2["eta"] is None


# --- the Celery Scheduler class on the database -----------------------------------------------------


def run_until(scheduler: Scheduler, t: float) -> None:
    """Let beat loop (each tick waits on the fake clock) until it has handled time ``t``."""
    while scheduler.clock.now() < t:
        scheduler.tick()
    scheduler.tick()


class RecordingScheduler(Scheduler):
    """The real Scheduler; only the broker (the edge) is replaced by a recorder."""

    def __init__(self, *args, sent, **kwargs):
        self.sent = sent
        super().__init__(*args, **kwargs)

    def _publish(self, hub_id, ticks, limit, eta):
        self.sent(hub_id, ticks, limit, eta)

    def _batch(self):
        return nullcontext()


@pytest.fixture
def hub(project):
    return Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect", max_in_flight=4)


@pytest.fixture
def beat(db):
    made = []

    def make(clock):
        sent = Recorder()
        scheduler = RecordingScheduler(app, clock=clock, sent=sent, max_interval=5)
        made.append(scheduler)
        return scheduler, sent

    yield make
    for scheduler in made:
        scheduler.subscriptions.stop()


def test_the_scheduler_reads_groups_and_sends_their_ticks_in_batches(hub, beat):
    a = Group.objects.create(hub=hub, name="a", period=1)
    b = Group.objects.create(hub=hub, name="b", period=1)
    Group.objects.create(hub=hub, name="off", period=1, enabled=False)
    assert a.periodic_task is not None  # still visible as a django-celery-beat PeriodicTask
    clock = FakeClock(T0 + 0.2)
    scheduler, sent = beat(clock)
    run_until(scheduler, T0 + 1)
    assert sent.messages == [(hub.pk, [[T0 + 1, 1.0, 1, sorted([a.pk, b.pk])]], 4)]
    assert sent.etas == [T0 + 1]  # sent HUBSCHED_DISPATCH_LEAD_S ahead, started by the worker at its time
    scheduler.flush()
    assert GroupStats.objects.get(group=a).dispatched == 1


def test_the_scheduler_notices_a_change_within_a_second_without_reloading(hub, beat, django_assert_max_num_queries):
    group = Group.objects.create(hub=hub, name="a", period=10)
    clock = FakeClock(T0 + 0.2)
    scheduler, sent = beat(clock)
    group.period = 1
    group.save()
    # changed groups, PeriodicTasks mark, count, changed PeriodicTasks; changed jobs and their count (jobs.scheduling)
    with django_assert_max_num_queries(6):
        clock.advance(0.5)
        scheduler.tick()
    run_until(scheduler, T0 + 1)
    assert (group.pk, T0 + 1) in sent.ticks()


def test_the_scheduler_drops_a_deleted_or_disabled_group(hub, beat):
    a = Group.objects.create(hub=hub, name="a", period=1)
    b = Group.objects.create(hub=hub, name="b", period=1)
    clock = FakeClock(T0 + 0.2)
    scheduler, sent = beat(clock)
    a.delete()
    b.periodic_task.enabled = False  # switched off in the django-celery-beat admin
    b.periodic_task.save()
    run_until(scheduler, T0 + 3)
    assert sent.ticks() == []
    assert scheduler.engine.specs.keys() == {b.pk} and not scheduler.engine.cohorts


def test_the_scheduler_runs_a_once_group_once_across_restarts(hub, beat):
    group = Group.objects.create(hub=hub, name="once", trigger=Trigger.ONCE,
                                 run_at=datetime.fromtimestamp(T0 + 2, timezone.utc))
    clock = FakeClock(T0)
    scheduler, sent = beat(clock)
    run_until(scheduler, T0 + 3)
    assert sent.ticks() == [(group.pk, T0 + 2)]
    GroupStats.objects.update_or_create(group=group, defaults={"last_run_at": datetime.fromtimestamp(T0 + 2, timezone.utc)})
    again, sent_again = beat(FakeClock(T0 + 1))
    run_until(again, T0 + 3)
    assert sent_again.ticks() == []


def test_an_on_change_group_subscribes_on_the_hub_and_runs_on_each_data_change(project, reference_hub, beat):
    from hubs.client import hub_client

    hub = Hub.objects.create(project=project, name="hub-a", url=reference_hub.url, api_key="test-key")
    entity, key = _a_writable_parameter(reference_hub.url)
    group = Group.objects.create(hub=hub, name="watch", trigger=Trigger.ON_CHANGE)
    GroupKey.objects.create(group=group, entity=entity, key=key)
    scheduler, sent = beat(FakeClock(T0))
    client = hub_client(reference_hub.url, "test-key")
    import time

    deadline = time.monotonic() + 10
    while not scheduler.subscriptions.active().get(group.pk) and time.monotonic() < deadline:
        time.sleep(0.02)  # the subscription is made by a real socket on another thread
    assert scheduler.subscriptions.active().get(group.pk)
    for value in (11, 22):
        before = len(sent.ticks())
        client.set_entity_params(entity, {key: value})
        while len(sent.ticks()) == before and time.monotonic() < deadline:
            scheduler._wake.wait(0.05)
            scheduler.engine.run_due()
    assert [gid for gid, _ in sent.ticks()].count(group.pk) >= 2


def _a_writable_parameter(url: str) -> tuple[str, str]:
    from hubs.client import hub_client

    client = hub_client(url, "test-key")
    stack = [e for e in client.get_entities()]
    while stack:
        node = stack.pop()
        for param in client.get_params(node["id"]):
            if param.get("writable") and param.get("type") in ("number", "integer"):
                return node["id"], param["key"]
        stack.extend(node.get("children") or [])
    raise AssertionError("the reference hub has no writable number")
