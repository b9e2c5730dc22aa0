"""The hub protocol client against the real reference hub and a real misbehaving hub."""

import logging
import os
import pickle
import threading
import time

import pytest

from hubs.client import HubClient, HubError, hub_client, hub_clients_close_all
from hubs.hubsim import faults, serve_in_thread

PUMP = "plant/line1/pump1"
KEY = "demo-key"

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def hub():
    with serve_in_thread(key=KEY, name="ref") as running:
        yield running


@pytest.fixture
def client(hub):
    with HubClient(hub.url, KEY, timeout=3.0) as c:
        yield c


# -- every method against the reference hub

def test_it_reads_the_hub_info(client):
    info = client.get_info()
    assert info["hub"] == "ref"
    assert info["protocol"] == 1
    assert "getEntityParams" in info["methods"]
    assert info["time"].endswith("Z")


def test_it_pings(client):
    assert client.ping()["time"].endswith("Z")


def test_it_lists_the_whole_entity_tree(client):
    roots = client.get_entities()
    assert [e["id"] for e in roots] == ["plant"]
    line1 = next(c for c in roots[0]["children"] if c["id"] == "plant/line1")
    assert PUMP in [c["id"] for c in line1["children"]]


def test_it_lists_entities_under_a_parent_to_a_depth(client):
    children = client.get_entities(parent="plant/utilities", depth=1)
    assert {e["id"] for e in children} == {"plant/utilities/boiler", "plant/utilities/compressor"}
    assert all(e["children"] == [] for e in children)


def test_it_lists_the_params_of_an_entity(client):
    params = client.get_params(PUMP)
    by_key = {p["key"]: p for p in params}
    assert by_key["flow"] == {"key": "flow", "name": "Flow", "type": "number", "unit": "m3/h", "writable": False}
    assert by_key["speed_sp"]["writable"] is True


def test_it_reads_selected_values(client):
    values = client.get_entity_params(PUMP, ["flow", "alarms"])
    assert [v["key"] for v in values] == ["flow", "alarms"]
    assert isinstance(values[0]["value"], float)
    assert isinstance(values[1]["value"], list)
    assert values[0]["quality"] in ("good", "uncertain", "bad")


def test_it_reads_all_values_when_no_keys_are_given(client):
    keys = {v["key"] for v in client.get_entity_params(PUMP)}
    assert keys == {p["key"] for p in client.get_params(PUMP)}


def test_it_writes_values_and_the_hub_keeps_them(client, hub):
    assert client.set_entity_params("plant/line2/pump1", {"speed_sp": 1234.5, "mode": "manual"}) == ["speed_sp", "mode"]
    assert hub.state.read("plant/line2/pump1", "speed_sp") == 1234.5
    assert {v["key"]: v["value"] for v in client.get_entity_params("plant/line2/pump1", ["mode"])} == {"mode": "manual"}


def test_it_raises_a_permanent_422_for_a_value_of_the_wrong_type(client):
    with pytest.raises(HubError) as err:
        client.set_entity_params(PUMP, {"speed_sp": "fast"})
    assert err.value.code == 422 and err.value.permanent
    assert err.value.data["key"] == "speed_sp"


def test_it_raises_a_permanent_403_for_a_read_only_param(client):
    with pytest.raises(HubError) as err:
        client.set_entity_params(PUMP, {"flow": 1.0})
    assert (err.value.code, err.value.permanent) == (403, True)


def test_it_raises_a_permanent_404_for_an_unknown_entity(client):
    with pytest.raises(HubError) as err:
        client.get_entity_params("plant/line1/pump9")
    assert (err.value.code, err.value.permanent) == (404, True)
    assert err.value.data == {"entity": "plant/line1/pump9"}


def test_it_raises_a_permanent_401_for_a_wrong_key_without_leaking_the_key(hub):
    secret = "very-secret-key-123"
    with HubClient(hub.url, secret, timeout=2) as c, pytest.raises(HubError) as err:
        c.ping()
    assert (err.value.code, err.value.permanent) == (401, True)
    assert secret not in str(err.value) and secret not in repr(err.value)


def test_it_raises_a_permanent_error_for_an_unknown_method(client):
    with pytest.raises(HubError) as err:
        client.call("fly")
    assert (err.value.code, err.value.permanent) == (-32601, True)


def test_it_matches_many_pipelined_calls_by_id(client):
    futures = [client.call_async("getEntityParams", {"entity": PUMP, "keys": ["starts"]}) for _ in range(300)]
    futures += [client.call_async("getParams", {"entity": "plant/line2/mixer"}) for _ in range(50)]
    results = [f.result(10) for f in futures]
    assert all(r["entity"] == PUMP for r in results[:300])
    assert all(r["entity"] == "plant/line2/mixer" for r in results[300:])


def test_it_shares_one_connection_between_threads(client, hub):
    errors = []

    def work():
        try:
            for _ in range(50):
                assert client.get_entity_params(PUMP, ["flow"])[0]["key"] == "flow"
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    client.ping()
    before = hub.connection_count
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert hub.connection_count == before


def test_it_delivers_data_changes_to_the_subscription_callback(client):
    got = []
    seen = threading.Event()

    def on_data(params):
        got.append(params)
        if len(got) >= 3:
            seen.set()

    sub = client.subscribe(PUMP, ["flow", "pressure"], callback=on_data)
    assert seen.wait(5)
    client.unsubscribe(sub)
    assert {p["subscription"] for p in got} == {sub}
    assert {v["key"] for v in got[0]["values"]} == {"flow", "pressure"}  # the first is a snapshot


def test_it_sends_periodic_data_changes_without_on_change(client):
    got = []
    sub = client.subscribe("plant/line2/mixer", ["recipe"], callback=got.append, period=0.2, on_change=False)
    time.sleep(0.75)
    client.unsubscribe(sub)
    assert 3 <= len(got) <= 5


def test_it_stops_delivering_after_unsubscribe(client):
    got = []
    sub = client.subscribe(PUMP, ["flow"], callback=got.append, period=0.1)
    time.sleep(0.3)
    client.unsubscribe(sub)
    time.sleep(0.1)
    count = len(got)
    time.sleep(0.4)
    assert count > 0 and len(got) == count


def test_it_treats_unsubscribing_an_expired_subscription_as_done(client):
    sub = client.subscribe(PUMP, ["flow"], callback=lambda p: None, timeout=0.2)
    time.sleep(0.5)
    client.unsubscribe(sub)  # the hub answers 404; nothing raised
    with pytest.raises(HubError) as err:  # and the hub had indeed ended it: that was the 404 path
        client.call("unsubscribe", {"subscription": sub})
    assert err.value.code == 404


def test_it_falls_back_to_subscribe_when_the_hub_lacks_get_entity_params():
    limited = {"getInfo", "getEntities", "getParams", "setEntityParams", "subscribe", "unsubscribe"}
    with serve_in_thread(key=KEY, methods=limited) as hub, HubClient(hub.url, KEY, timeout=3) as c:
        c.set_entity_params(PUMP, {"mode": "off"})
        values = c.get_entity_params(PUMP, ["mode", "flow"])
        assert {v["key"]: v["value"] for v in values}["mode"] == "off"
        assert {v["key"] for v in c.get_entity_params(PUMP)} == {p["key"] for p in c.get_params(PUMP)}
        time.sleep(0.2)
        assert hub.run(_subscription_count(hub)) == 0  # it unsubscribed


async def _subscription_count(hub):
    # counts live subscription tasks on the hub's loop
    import asyncio
    return sum(1 for t in asyncio.all_tasks() if "_run" in repr(t.get_coro()))


def test_it_assumes_every_method_when_the_hub_lacks_get_info():
    methods = {"ping", "getEntities", "getParams", "getEntityParams", "setEntityParams", "subscribe", "unsubscribe"}
    with serve_in_thread(key=KEY, methods=methods) as hub, HubClient(hub.url, KEY, timeout=3) as c:
        assert c.supported_methods() >= {"getEntityParams", "subscribe"}
        assert [v["key"] for v in c.get_entity_params(PUMP, ["flow"])] == ["flow"]


# -- what a client must survive (hub protocol v1), against a real misbehaving hub

def test_it_times_out_a_slow_answer_and_drops_it_when_it_arrives_late(caplog):
    with faults.serve_in_thread("slow", key=KEY, delay=0.6, times=1) as bad, HubClient(bad.url, KEY, timeout=0.3) as c:
        started = time.monotonic()
        with pytest.raises(HubError) as err:
            c.ping()
        assert err.value.code == "timeout" and not err.value.permanent  # a wait for the answer would have succeeded
        with caplog.at_level(logging.INFO, logger="hubs.client"):
            time.sleep(0.5)  # the late answer arrives now
            assert c.ping()["time"]
        assert "forgotten id" in caplog.text


def test_it_times_out_async_calls_too():
    with faults.serve_in_thread("never_answer", key=KEY) as bad, HubClient(bad.url, KEY, timeout=0.3) as c:
        future = c.call_async("ping")
        with pytest.raises(HubError) as err:
            future.result(3)
        assert err.value.code == "timeout"


@pytest.mark.parametrize("batched", [False, True], ids=["call_async", "call_many_async"])
def test_it_matches_out_of_order_answers_by_id(batched):
    # the hub holds five answers and sends them at once, out of order: one read brings several frames
    with faults.serve_in_thread("out_of_order", key=KEY, batch=5) as bad, HubClient(bad.url, KEY) as c:
        entities = ["plant/line1/pump1", "plant/line1/pump2", "plant/line2/pump1", "plant/line2/mixer", "plant/utilities/boiler"]
        calls = [("getParams", {"entity": e}) for e in entities]
        futures = c.call_many_async(calls) if batched else [c.call_async(method, params) for method, params in calls]
        assert [f.result(5)["entity"] for f in futures] == entities


def test_it_ignores_answers_to_ids_it_never_asked():
    with faults.serve_in_thread("wrong_ids", key=KEY) as bad, HubClient(bad.url, KEY) as c:
        assert c.get_params(PUMP)[0]["key"] == "flow"
        assert c.ping()["time"]


def test_it_ignores_frames_that_are_not_json(caplog):
    with faults.serve_in_thread("not_json", key=KEY) as bad, HubClient(bad.url, KEY) as c:
        with caplog.at_level(logging.WARNING, logger="hubs.client"):
            assert c.ping()["time"]
            assert c.get_params(PUMP)
        assert "not JSON" in caplog.text


def test_it_fails_calls_in_flight_when_the_connection_closes_and_reconnects_on_the_next_call():
    with faults.serve_in_thread("close_mid_request", key=KEY, times=1) as bad, HubClient(bad.url, KEY, timeout=3) as c:
        started = time.monotonic()
        with pytest.raises(HubError) as err:
            c.ping()
        assert err.value.code == "connection" and not err.value.permanent
        assert time.monotonic() - started < 2.5  # at the close, not at the 3 s timeout
        assert c.ping()["time"]  # reconnected after a short backoff
        assert bad.faulty.received == 2


def test_it_reconnects_after_the_hub_drops_every_connection(client, hub):
    client.ping()
    hub.drop_connections()
    time.sleep(0.1)
    assert client.get_entity_params(PUMP, ["flow"])[0]["key"] == "flow"


def test_it_tells_a_subscriber_when_its_subscription_ends_with_the_connection(client, hub):
    ended = threading.Event()
    client.subscribe(PUMP, ["flow"], callback=lambda p: None, on_end=lambda sub: ended.set())
    hub.drop_connections()
    assert ended.wait(3)


def test_it_ignores_notifications_for_dropped_subscriptions():
    with faults.serve_in_thread("ghost_notifications", key=KEY) as bad, HubClient(bad.url, KEY) as c:
        got = []
        sub = c.subscribe(PUMP, ["flow"], callback=got.append)
        time.sleep(0.15)
        c.unsubscribe(sub)
        time.sleep(0.1)
        assert {p["subscription"] for p in got} == {sub}
        assert c.ping()["time"]


def test_it_survives_values_and_items_of_unexpected_types():
    with faults.serve_in_thread("wrong_types", key=KEY) as bad, HubClient(bad.url, KEY) as c:
        values = c.get_entity_params(PUMP, ["flow", "pressure", "mode"])
        assert [v["key"] for v in values] == ["flow", "pressure", "mode"]  # malformed items dropped
        assert values[0]["value"] == {"nested": {"deeper": [1, "two", None]}}
        assert [p.get("key") for p in c.get_params(PUMP)] == ["flow"]
        with pytest.raises(HubError) as err:
            c.get_entities()
        assert err.value.code == "protocol"
        with pytest.raises(HubError):
            c.set_entity_params(PUMP, {"mode": "auto"})
        assert c.supported_methods()  # a bad method list means "assume all"


def test_it_fails_every_call_within_its_timeout_when_the_hub_never_answers():
    with faults.serve_in_thread("never_answer", key=KEY) as bad, HubClient(bad.url, KEY, timeout=0.2) as c:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(HubError) as err:
                c.ping()
            assert err.value.code == "timeout"
            assert time.monotonic() - started < 3  # its own 0.2 s timeout, not a hang (loose for a loaded machine)


@pytest.mark.parametrize("code, permanent", [(503, False), (429, False), (-32603, False), (401, True)])
def test_it_marks_injected_errors_as_transient_or_permanent(code, permanent):
    with faults.serve_in_thread("error", key=KEY, code=code) as bad, HubClient(bad.url, KEY) as c:
        with pytest.raises(HubError) as err:
            c.ping()
        assert (err.value.code, err.value.permanent) == (code, permanent)


@pytest.mark.parametrize("error, code, permanent", [
    ({"code": "401", "message": "wrong or missing key"}, 401, True),
    ({"code": 404.0, "message": "unknown entity"}, 404, True),
    ({"code": 401, "message": ["not", "a", "string"]}, 401, True),
    ({"code": " -32601 "}, -32601, True),
    ({"code": "503"}, 503, False),
    ("401 wrong or missing key", 401, True),
    (422, 422, True),
    ({"code": "unauthorized"}, "protocol", False),
    ({"code": True}, "protocol", False),
    ([401], "protocol", False),
])
def test_it_reads_the_code_a_malformed_error_states_so_a_malformed_401_stays_permanent(error, code, permanent):
    with faults.serve_in_thread("malformed_error", key=KEY, error=error) as bad, HubClient(bad.url, KEY) as c:
        with pytest.raises(HubError) as err:
            c.ping()
        assert (err.value.code, err.value.permanent) == (code, permanent)


def test_it_masks_the_key_only_where_it_stands_as_a_whole_word():
    key = "pump1"
    error = {"code": 404, "message": "unknown entity 'plant/line1/pump12'; key pump1 is not allowed",
             "data": {"entity": "plant/line1/pump12", "key": "pump1"}}
    with faults.serve_in_thread("malformed_error", key=key, error=error) as bad, HubClient(bad.url, key) as c:
        with pytest.raises(HubError) as err:
            c.ping()
    assert err.value.message == "ping: unknown entity 'plant/line1/pump12'; key *** is not allowed"
    assert err.value.data == {"entity": "plant/line1/pump12", "key": "***"}


def test_it_names_the_close_code_and_reason_when_the_hub_goes_away():
    with faults.serve_in_thread("going_away", key=KEY, times=1) as bad, HubClient(bad.url, KEY, timeout=5) as c:
        with pytest.raises(HubError) as err:
            c.ping()
        assert err.value.code == "connection"
        assert "closed by the hub with 1001 (going away): hub restarting" in err.value.message
        assert c.ping()["time"].endswith("Z")  # and the next call reconnects


def test_it_fails_fast_on_an_unreachable_hub_and_backs_off():
    with HubClient(faults.unreachable_url(), KEY, timeout=0.5) as c:
        first = time.monotonic()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(HubError) as err:
                c.ping()
            assert err.value.code == "connection" and not err.value.permanent
            assert time.monotonic() - started < 5  # failed, did not hang (loose: a loaded machine cannot fail it)
        # the next attempt waits at least half of the first backoff step (equal jitter)
        assert c._failures >= 1 and c._retry_at >= first + c.backoff_base / 2


def test_its_backoff_doubles_with_each_failure_keeps_half_as_jitter_and_stops_at_the_cap():
    c = HubClient("ws://127.0.0.1:1/connect", KEY)
    for failures in range(1, 12):
        c._failures = failures
        step = min(c.backoff_cap, c.backoff_base * 2 ** (failures - 1))
        delays = [c._backoff() for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays), (failures, step, min(delays), max(delays))
    assert step == c.backoff_cap
    c.close()


def test_it_keeps_serving_one_hub_while_another_never_answers(client):
    with faults.serve_in_thread("never_answer", key=KEY) as bad, HubClient(bad.url, KEY, timeout=1) as stuck:
        pending = [stuck.call_async("ping") for _ in range(5)]
        assert client.ping()["time"]
        assert all(isinstance(f.exception(3), HubError) for f in pending)


def test_it_limits_calls_in_flight():
    with faults.serve_in_thread("never_answer", key=KEY) as bad, HubClient(bad.url, KEY, timeout=0.3, max_in_flight=2) as c:
        first = [c.call_async("ping", timeout=5) for _ in range(2)]
        started = time.monotonic()
        with pytest.raises(HubError) as err:
            c.call("ping")
        assert err.value.code == "timeout" and "in flight" in err.value.message
        assert 0.25 < time.monotonic() - started < 3  # waited for a slot until its deadline, then gave up
        assert not any(f.done() for f in first)


def test_a_hub_error_survives_pickling():
    err = pickle.loads(pickle.dumps(HubError("getParams: unknown entity", 404, True, {"entity": "x"})))
    assert (err.message, err.code, err.permanent, err.data) == ("getParams: unknown entity", 404, True, {"entity": "x"})
    assert str(err) == "getParams: unknown entity [404]"


# -- the pool

def test_the_pool_returns_one_client_per_hub_and_key(hub):
    try:
        a = hub_client(hub.url, KEY)
        assert hub_client(hub.url, KEY) is a
        assert hub_client(hub.url, "other") is not a
        a.ping()
    finally:
        hub_clients_close_all()
    assert hub_client(hub.url, KEY) is not a
    hub_clients_close_all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_connection(hub):
    parent = hub_client(hub.url, KEY)
    parent.ping()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a fresh pool and a connection of its own
        ok = b"0"
        try:
            child = hub_client(hub.url, KEY)
            ok = b"1" if child is not parent and child.ping()["time"] and parent.ping()["time"] else b"0"
        finally:
            os.write(write, ok)
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert parent.ping()["time"]  # the parent's connection was left alone
    hub_clients_close_all()
