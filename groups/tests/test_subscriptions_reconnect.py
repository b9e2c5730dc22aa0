"""On-change subscriptions follow their hub's connection: back within a second of a restart, renewed in time."""

from __future__ import annotations

import threading
import time

import pytest

from groups.scheduler.engine import GroupSpec
from groups.scheduler.subscriptions import Subscriptions
from hubs.client import HubClient
from hubs.hubsim.server import serve_in_thread

KEY = "test-key"
ENTITY, MOVING, WRITABLE = "plant/line1/pump1", "pressure", "speed_sp"  # the reference hub's pressure moves every 0.1 s


class Events:
    """``post_event`` of a test: keeps (monotonic time, group, entity, values) and wakes waiters."""

    def __init__(self):
        self.seen: list[tuple[float, int, str, list]] = []
        self._cond = threading.Condition()

    def __call__(self, group_id, entity, values):
        with self._cond:
            self.seen.append((time.monotonic(), group_id, entity, values))
            self._cond.notify_all()

    def first_after(self, since: float, *, within: float, where=lambda event: True):
        """The first event at or after ``since`` matching ``where``, waiting up to ``within`` seconds; or None."""
        end = time.monotonic() + within
        with self._cond:
            while True:
                for event in self.seen:
                    if event[0] >= since and where(event):
                        return event
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


def _until(condition, *, within: float):
    """Whether ``condition()`` came true within ``within`` seconds (polled: the subscriptions run on other threads)."""
    end = time.monotonic() + within
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def _spec(url: str, *, group_id: int = 1, keys=((ENTITY, MOVING),)) -> GroupSpec:
    return GroupSpec(id=group_id, hub_id=1, trigger="on_change", keys=tuple(keys), hub_url=url, hub_key=KEY,
                     hub_timeout=2.0)


@pytest.fixture
def subscriptions():
    made = []

    def make(events, **kwargs):
        made.append(Subscriptions(events, **kwargs))
        return made[-1]

    yield make
    for subs in made:
        subs.stop()


def test_values_flow_again_within_a_second_of_the_hub_restarting_on_the_same_port(subscriptions):
    events = Events()
    subs = subscriptions(events)
    with serve_in_thread(key=KEY, name="hub-a") as hub:
        port = hub.port
        subs.want(_spec(hub.url))
        assert events.first_after(0, within=10) is not None, "never subscribed"
    down = time.monotonic()
    while time.monotonic() - down < 3.0:  # down long enough for the old 5 s retry and a grown backoff to bite
        time.sleep(0.1)
    assert subs.active() == {}  # its subscription ended with the connection
    with serve_in_thread(key=KEY, name="hub-a", port=port) as hub:
        up = time.monotonic()
        event = events.first_after(up, within=10)
        assert event is not None, "the group was never subscribed again"
        assert event[0] - up <= 1.0, f"values came back {event[0] - up:.2f} s after the restart"
        assert _until(lambda: subs.active().get(1), within=10)
        # and it is a live on-change subscription, not only its first snapshot: a write comes through
        with HubClient(hub.url, KEY) as writer:
            written = time.monotonic()
            writer.set_entity_params(ENTITY, {WRITABLE: 1234.5})
        subs.want(_spec(hub.url, keys=((ENTITY, MOVING), (ENTITY, WRITABLE))))
        assert events.first_after(written, within=10, where=lambda e: any(
            v.get("key") == WRITABLE and v.get("value") == 1234.5 for v in e[3])) is not None


def test_a_subscription_is_renewed_before_the_hub_ends_it(subscriptions):
    lease = 1.0  # the hub ends each subscription after this (hub protocol v1: subscribe's timeout)
    events = Events()
    subs = subscriptions(events, lease_s=lease)
    with serve_in_thread(key=KEY, name="hub-a") as hub:
        start = time.monotonic()
        subs.want(_spec(hub.url))
        assert events.first_after(start, within=10) is not None
        assert _until(lambda: subs.active().get(1), within=10)
        ids = {tuple(subs.active()[1])}
        end = start + 4 * lease
        while time.monotonic() < end:
            ids.add(tuple(subs.active().get(1, ())))
            time.sleep(0.05)
        assert len(ids - {()}) >= 3, ids  # renewed at least every two thirds of the lease
        # values still flow four leases on: without renewal the hub would have ended it after one
        assert events.first_after(time.monotonic(), within=2 * lease) is not None


def test_a_hub_that_stays_down_does_not_hold_up_another_hubs_subscriptions(subscriptions):
    events = Events()
    subs = subscriptions(events)
    with serve_in_thread(key=KEY, name="hub-a") as hub:
        dead = serve_in_thread(key=KEY, name="hub-b")
        gone = dead.__enter__()
        dead_url = gone.url
        dead.__exit__(None, None, None)  # nothing listens on its port any more
        subs.want(_spec(dead_url, group_id=2))
        start = time.monotonic()
        subs.want(_spec(hub.url, group_id=1))
        assert events.first_after(start, within=10, where=lambda e: e[1] == 1) is not None
        assert 2 not in subs.active()


class CountingClient(HubClient):
    """A real client that counts its subscribe calls per entity."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subscribes: dict[str, int] = {}

    def subscribe(self, entity, keys, **kwargs):
        self.subscribes[entity] = self.subscribes.get(entity, 0) + 1
        return super().subscribe(entity, keys, **kwargs)


def test_a_group_the_hub_refuses_is_not_retried_at_once_and_holds_up_no_other_group(subscriptions):
    made = []

    def factory(url, key, timeout):
        made.append(CountingClient(url, key, timeout=timeout))
        return made[-1]

    events = Events()
    subs = subscriptions(events, client_factory=factory)
    with serve_in_thread(key=KEY, name="hub-a") as hub:
        subs.want(_spec(hub.url, group_id=9, keys=(("plant/no-such-entity", MOVING),)))  # 404, permanent
        start = time.monotonic()
        subs.want(_spec(hub.url, group_id=1))
        assert events.first_after(start, within=10, where=lambda e: e[1] == 1) is not None
        time.sleep(1.0)  # four retry rounds of a hub that is down
        assert made[0].subscribes["plant/no-such-entity"] == 1
        assert 9 not in subs.active()
    for client in made:
        client.close()


# --- issue 13 item 5, last part: execute_batch(expire=True) cuts each tick's hub calls to what is left of the tick
@pytest.mark.django_db
def test_a_poll_that_cannot_reach_its_hub_before_the_tick_expires_fails_instead_of_storing_late_values(make_hub):
    from django.utils import timezone

    from groups.definitions import definitions
    from groups.execution import client_for, execute_batch
    from groups.models import Group, GroupKey
    from hubs.client import HubError
    from hubs.hubsim.faults import unused_port

    port = unused_port("127.0.0.1")
    hub = make_hub(f"ws://127.0.0.1:{port}/connect", timeout=5.0)
    group = Group.objects.create(hub=hub, name="pumps", period=1.0)  # a tick expires one second after its time
    GroupKey.objects.create(group=group, entity=ENTITY, key=MOVING, position=0)
    client = client_for(hub)
    for _ in range(5):  # the hub was down: five refused connections grow the client's backoff to 1.6-3.2 s
        with pytest.raises(HubError):
            client.ping()
    with serve_in_thread(key=KEY, name="hub-a", port=port):  # back, but the client waits out its backoff first
        tick = timezone.now()
        [outcome] = execute_batch(ticks=[(definitions().groups({group.pk})[group.pk], tick)], expire=True)
    assert outcome.error and outcome.read == [], f"read {(outcome.finished_at - tick).total_seconds():.1f} s late"
