"""The hub client's fast path: batched requests, pooled masking keys, buffered reads, orjson decoding."""

import math
import os

import pytest

from hubs import client as client_module
from hubs.client import HubClient, HubError, _loads, _MaskKeys
from hubs.hubsim import faults

from .test_client import KEY, PUMP, hub  # noqa: F401  (the reference hub fixture, one per module)

pytestmark = pytest.mark.timeout(30)


class _CountingSocket:
    """The connection's socket, counting the writes that go through it."""

    def __init__(self, sock):
        self._sock = sock
        self.writes = 0

    def sendall(self, data):
        self.writes += 1
        return self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_batch_of_calls_is_answered_in_order_with_more_calls_than_slots(hub):
    with HubClient(hub.url, KEY, timeout=5.0, max_in_flight=4) as c:
        calls = [("getEntityParams", {"entity": PUMP, "keys": ["flow"]}) if i % 3 else ("getParams", {"entity": "plant/line2/mixer"})
                 for i in range(50)]
        results = [f.result(10) for f in c.call_many_async(calls)]
    for (method, params), result in zip(calls, results):
        assert result["entity"] == params["entity"]
        assert ("values" in result) == (method == "getEntityParams")


def test_a_batch_goes_out_in_one_socket_write_when_the_slots_allow(hub):
    with HubClient(hub.url, KEY, timeout=5.0, max_in_flight=100) as c:
        c.ping()  # connected
        counting = c._ws.sock = _CountingSocket(c._ws.sock)
        futures = c.call_many_async([("getEntityParams", {"entity": PUMP, "keys": ["flow", "pressure"]})] * 40)
        assert all(f.result(10)["entity"] == PUMP for f in futures)
        assert counting.writes == 1
        futures = [c.call_async("ping") for _ in range(3)]  # one by one: a write each
        assert all(f.result(10)["time"] for f in futures)
        assert counting.writes == 4


def test_a_call_that_cannot_be_encoded_fails_alone(hub):
    with HubClient(hub.url, KEY, timeout=5.0) as c:
        first, bad, last = c.call_many_async([
            ("ping", None),
            ("setEntityParams", {"entity": PUMP, "values": {"speed_setpoint": float("nan")}}),  # NaN is not JSON
            ("getEntityParams", {"entity": PUMP, "keys": ["flow"]}),
        ])
        assert first.result(5)["time"] and last.result(5)["entity"] == PUMP
        with pytest.raises(HubError) as err:
            bad.result(5)
        assert err.value.code == "protocol" and err.value.permanent and "not JSON" in err.value.message


def test_every_call_of_a_batch_fails_with_the_connection_error_when_the_hub_is_down():
    with HubClient(faults.unreachable_url(), KEY, timeout=1.0) as c:
        futures = c.call_many_async([("ping", None)] * 5)
        for future in futures:
            with pytest.raises(HubError) as err:
                future.result(5)
            assert err.value.code == "connection"


def test_masking_keys_are_fresh_for_every_frame_and_drawn_in_bulk(monkeypatch):
    draws = []
    real = os.urandom
    monkeypatch.setattr(client_module.os, "urandom", lambda n: draws.append(n) or real(n))
    keys = _MaskKeys()
    got = [keys(4) for _ in range(3000)]
    assert all(len(k) == 4 for k in got)
    assert len(set(got)) > 2990  # 3,000 random 32-bit keys: a handful of repeats at most
    assert len(draws) == 3  # 4 KiB a draw: 1,024 keys


def test_a_forked_child_draws_masking_keys_of_its_own():
    keys = _MaskKeys()
    keys(4)  # the parent's pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what the parent would draw next must not be what the child draws
        keys.forget()
        os.write(write, keys(4))
        os._exit(0)
    os.close(write)
    child_key = os.read(read, 4)
    os.waitpid(pid, 0)
    assert child_key != keys(4)


def test_frames_are_decoded_with_orjson_and_with_the_standard_library_for_what_only_it_reads():
    assert _loads('{"id":1,"result":{"values":[{"key":"p1","value":2.5}]}}') == {"id": 1, "result": {"values": [{"key": "p1", "value": 2.5}]}}
    odd = _loads('{"id":2,"result":{"a":NaN,"b":Infinity,"c":123456789012345678901234567890}}')["result"]
    assert math.isnan(odd["a"]) and odd["b"] == math.inf and odd["c"] == 123456789012345678901234567890
    with pytest.raises(ValueError):
        _loads("not json")
