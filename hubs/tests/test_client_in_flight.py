"""The hub client's in-flight limit against a real hub that counts the calls it holds: it is reached, never passed.

The counting hub is a real WebSocket server (hub protocol v1 frames) that holds each answer ``hold`` seconds,
so calls pile up in flight; it records how many it held when each call arrived and refuses a call past its
own ``limit`` with 429 (too many requests in flight on this connection). Nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from django.test import override_settings

from hubs.client import HubClient, HubError, hub_client, hub_clients_close_all
from hubs.hubsim.server import serve_handler_in_thread

pytestmark = pytest.mark.timeout(60)

KEY = "in-flight-key"


class CountingHub:
    """A hub that holds each answer ``hold`` s and refuses calls past ``limit`` in flight with 429.

    ``arrivals`` is ``[(id, calls held when it came)]`` of the calls it took; ``peak`` the most held at once;
    ``refused`` how many it answered 429. Counted per connection, as the protocol's 429 is."""

    def __init__(self, *, limit: int, hold: float = 0.05) -> None:
        self.limit, self.hold = limit, hold
        self.arrivals: list[tuple[int, int]] = []
        self.peak = 0
        self.refused = 0

    def reset(self) -> None:
        self.arrivals, self.peak, self.refused = [], 0, 0

    async def handler(self, ws) -> None:
        held = 0
        tasks: set[asyncio.Task] = set()

        async def answer(rid, result: dict) -> None:
            nonlocal held
            await asyncio.sleep(self.hold)
            held -= 1  # before the answer leaves: the client frees its slot only once it has it
            await ws.send(json.dumps({"id": rid, "result": result}))

        async for message in ws:
            request = json.loads(message)
            rid, params = request["id"], request.get("params") or {}
            if request.get("key") != KEY:
                await ws.send(json.dumps({"id": rid, "error": {"code": 401, "message": "wrong key"}}))
                continue
            if held >= self.limit:
                self.refused += 1
                await ws.send(json.dumps({"id": rid, "error": {"code": 429, "message": "too many requests in flight"}}))
                continue
            held += 1
            self.peak = max(self.peak, held)
            self.arrivals.append((rid, held))
            if request.get("method") == "getEntityParams":
                result = {"entity": params.get("entity"), "values": [
                    {"key": k, "value": 1.5, "ts": "2026-12-02T10:00:00.000Z", "quality": "good"} for k in params.get("keys", [])]}
            else:
                result = {"time": "2026-12-02T10:00:00.000Z"}
            task = asyncio.create_task(answer(rid, result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def _reads(n: int) -> list[tuple[str, dict]]:
    return [("getEntityParams", {"entity": f"bench/e{i}", "keys": ["k000", "k001"]}) for i in range(n)]


def _outcomes(futures) -> tuple[int, list[HubError]]:
    ok, errors = 0, []
    for future in futures:
        try:
            future.result(30)
            ok += 1
        except HubError as exc:
            errors.append(exc)
    return ok, errors


@pytest.fixture
def counting():
    def serve(limit: int, hold: float = 0.05):
        hub = CountingHub(limit=limit, hold=hold)
        return hub, serve_handler_in_thread(hub.handler)
    return serve


def test_a_batch_larger_than_the_limit_fills_the_hubs_limit_and_never_passes_it(counting):
    hub, serving = counting(8, hold=0.2)
    with serving as server, HubClient(server.url, KEY, timeout=10, max_in_flight=8) as client:
        ok, errors = _outcomes(client.call_many_async(_reads(60)))
        assert (ok, errors) == (60, [])
        assert hub.refused == 0
        assert hub.peak == 8
        assert client.in_flight_peak == 8
        assert client.in_flight == 0


def test_a_batch_that_fits_goes_out_whole(counting):
    hub, serving = counting(200, hold=1.0)  # long enough for the hub to take all 100 before it answers one
    with serving as server, HubClient(server.url, KEY, timeout=10, max_in_flight=200) as client:
        ok, _ = _outcomes(client.call_many_async(_reads(100)))
        assert ok == 100
        assert hub.peak == 100  # all 100 held by the hub at once: the batch costs one round trip, not four


def test_the_pooled_client_follows_a_raised_and_a_lowered_limit(counting):
    hub, serving = counting(16)
    with serving as server:
        try:
            client = hub_client(server.url, KEY, timeout=10, max_in_flight=4)
            assert _outcomes(client.call_many_async(_reads(40)))[0] == 40
            assert hub.peak == 4
            hub.reset()
            assert hub_client(server.url, KEY, timeout=10, max_in_flight=16) is client  # the hub's limit raised
            assert client.max_in_flight == client.in_flight_limit == 16
            assert _outcomes(client.call_many_async(_reads(40)))[0] == 40
            assert (hub.peak, hub.refused) == (16, 0)
            hub.reset()
            assert hub_client(server.url, KEY, timeout=10, max_in_flight=2) is client
            assert _outcomes(client.call_many_async(_reads(10)))[0] == 10
            assert hub.peak == 2
        finally:
            hub_clients_close_all()


def test_a_lowered_limit_holds_new_calls_until_fewer_are_in_flight(counting):
    hub, serving = counting(100, hold=0.3)
    with serving as server, HubClient(server.url, KEY, timeout=10, max_in_flight=20) as client:
        first = client.call_many_async(_reads(20))  # all sent at once: 20 in flight at the hub
        last_first_id = max(rid for rid, _ in hub_arrivals_wait(hub, 20))
        client.max_in_flight = 5
        second = client.call_many_async(_reads(15))  # waits for the first 20 to drop below 5
        assert _outcomes(first)[0] == 20 and _outcomes(second)[0] == 15
        later = [held for rid, held in hub.arrivals if rid > last_first_id]
        assert len(later) == 15
        assert max(later) <= 5
        assert max(later) == 5  # reached, too
    with pytest.raises(ValueError):
        client.max_in_flight = 0


def hub_arrivals_wait(hub: CountingHub, n: int) -> list[tuple[int, int]]:
    """The hub's first ``n`` arrivals, once it has them (the frames are on their way when the call returns)."""
    deadline = time.monotonic() + 10
    while len(hub.arrivals) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(hub.arrivals) >= n
    return hub.arrivals[:n]


def test_a_429_keeps_the_client_to_what_the_hub_held_and_the_refused_calls_are_sent_again(counting):
    hub, serving = counting(6, hold=0.1)
    with serving as server, HubClient(server.url, KEY, timeout=10, max_in_flight=32) as client:
        ok, errors = _outcomes(client.call_many_async(_reads(40)))
        assert (ok, errors) == (40, [])  # refused, then sent again once the hub held fewer: none failed
        assert hub.refused >= 1
        assert len(hub.arrivals) == 40 and hub.peak == 6
        assert client.max_in_flight == 32 and client.in_flight_limit == 6  # exactly the hub's count
        hub.reset()
        ok, errors = _outcomes(client.call_many_async(_reads(40)))
        assert (ok, errors, hub.refused) == (40, [], 0)  # kept to it: nothing refused any more
        assert hub.peak == 6
        server.drop_connections()  # a new connection: the hub's 429 said nothing about it
        for _ in range(50):
            try:
                client.call("ping", timeout=2)
                break
            except HubError:
                time.sleep(0.1)  # the reconnect backoff
        assert client.in_flight_limit == 32


def test_a_429_while_the_hub_holds_none_of_ours_fails_at_once_and_keeps_the_limit(counting):
    hub, serving = counting(0)
    with serving as server, HubClient(server.url, KEY, timeout=10, max_in_flight=32) as client:
        with pytest.raises(HubError) as refused:
            client.call("getEntityParams", {"entity": "bench/e0", "keys": ["k000"]})
        assert (refused.value.code, refused.value.permanent) == (429, False)
        assert hub.refused == 1  # not sent again
        assert client.in_flight_limit == 32


def test_a_refused_call_still_refused_at_its_deadline_fails_with_the_429(counting):
    hub, serving = counting(1, hold=3.0)
    with serving as server, HubClient(server.url, KEY, timeout=10, max_in_flight=4) as client:
        held, refused = client.call_many_async(_reads(2), timeout=0.5)
        with pytest.raises(HubError) as failed:
            refused.result(5)
        assert failed.value.code == 429 and hub.refused == 1
        assert client.in_flight_limit == 1
        with pytest.raises(HubError) as late:
            held.result(5)
        assert late.value.code == "timeout"


def test_a_batchs_client_takes_the_hubs_own_limit_under_the_setting_ceiling(counting):
    from groups.execution import client_for
    from hubs.models import Hub

    hub_server, serving = counting(1000, hold=0.5)
    with serving as server:
        try:
            hub = Hub(name="wan", url=server.url, api_key=KEY, timeout=10, max_in_flight=150)
            client = client_for(hub)
            assert client.max_in_flight == 150  # the hub's field, not cut to the old 32
            assert _outcomes(client.call_many_async(_reads(120)))[0] == 120
            assert hub_server.peak == 120
            with override_settings(HUBSCHED_HUB_MAX_IN_FLIGHT=10):
                assert client_for(hub) is client and client.max_in_flight == 10  # a site-wide ceiling still applies
                hub_server.reset()
                assert _outcomes(client.call_many_async(_reads(30)))[0] == 30
                assert hub_server.peak == 10
        finally:
            hub_clients_close_all()
