"""The reference hub, spoken to in raw frames: every method and error of hub protocol v1."""

import argparse
import json
import re
import time

import pytest
import websocket

from hubs.hubsim import ALL_METHODS, DEMO_TREE, HubState, demo_tree, serve_in_thread
from hubs.hubsim.cli import method_set
from hubs.hubsim.signals import cycle_texts, encode, number_text, number_texts
from hubs.hubsim.tree import PARAM_TYPES, bench_tree, walk

pytestmark = pytest.mark.timeout(30)
KEY = "demo-key"
PUMP = "plant/line1/pump1"
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class Raw:
    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=3)
        self.n = 0

    def send(self, method, params=None, *, key=KEY, rid=None):
        self.n += 1
        msg = {"id": self.n if rid is None else rid, "key": key, "method": method}
        if params is not None:
            msg["params"] = params
        self.ws.send(json.dumps(msg))
        return msg["id"]

    def recv(self):
        return json.loads(self.ws.recv())

    def call(self, method, params=None, **kw):
        rid = self.send(method, params, **kw)
        while True:
            msg = self.recv()
            if msg.get("id") == rid:
                return msg

    def result(self, method, params=None):
        msg = self.call(method, params)
        assert "result" in msg, msg
        return msg["result"]

    def error(self, method, params=None, **kw):
        msg = self.call(method, params, **kw)
        assert "error" in msg, msg
        return msg["error"]["code"]


@pytest.fixture(scope="module")
def hub():
    with serve_in_thread(key=KEY, name="sim", seed=7) as running:
        yield running


@pytest.fixture
def raw(hub):
    conn = Raw(hub.url)
    yield conn
    conn.ws.close()


# -- the tree as data

def test_the_demo_tree_nests_at_least_three_levels_and_has_every_type():
    entities = list(walk(demo_tree("hub-a")))
    assert max(e["id"].count("/") for e, _ in entities) >= 3
    types = {p["type"] for e, _ in entities for p in e["params"]}
    assert types == set(PARAM_TYPES)
    assert any(p["writable"] for e, _ in entities for p in e["params"])
    assert len({e["id"] for e, _ in entities}) == len(entities)


def test_the_demo_tree_has_the_get_entities_and_get_params_shapes():
    root = demo_tree("hub-a")[0]
    assert set(root) == {"id", "name", "type", "children", "params"}
    assert "hub-a" in root["name"]
    assert set(root["params"][0]) == {"key", "name", "type", "unit", "writable"}
    assert "signal" in DEMO_TREE[0]["params"][1]  # the private definition keeps its signals


def test_values_are_deterministic_from_the_seed():
    a, b, c = HubState(seed=3), HubState(seed=3), HubState(seed=4)
    k = 17_000_000_000
    def read(state):  # the read-only parameters; writable ones hold what was written, when
        return state.value_fragments(state.entities[PUMP], ["flow", "pressure", "starts", "state", "alarms"], k)
    assert read(a) == read(b)
    assert read(a) != read(c)
    later = a.value_fragments(a.entities[PUMP], ["flow"], k + 5)
    assert later != a.value_fragments(a.entities[PUMP], ["flow"], k)  # values move over time


def _signals(state):
    return [p.signal for e in state.entities.values() for p in e.params.values() if p.signal]


@pytest.mark.parametrize("tree", [None, bench_tree(entities=2, keys=100)], ids=["demo", "bench"])
def test_every_value_text_is_the_json_of_the_value(tree):
    state = HubState(seed=5, tree=tree)
    signals = _signals(state)
    assert {s.type for s in signals} >= ({"number", "integer", "boolean", "string", "array"} if tree else set(PARAM_TYPES))
    k0 = int(time.time() / state.tick)
    for k in [*range(k0, k0 + 400), 0, 17_000_000_000, 2 * k0]:
        texts = [s.text(k) for s in signals]
        assert texts == [encode(s.value(k)) for s in signals]
        plain = [s for s in signals if s.plain]
        assert number_texts([s.plain for s in plain], k * state.tick) == [s.text(k) for s in plain]
        cycling = [s for s in signals if s.cycle]
        assert cycling and cycle_texts([s.cycle for s in cycling], k * state.tick) == [s.text(k) for s in cycling]


@pytest.mark.parametrize("v", [0.0, -0.0, 1e-9, -1e-9, 0.0004999, 0.0005, -0.0005, 2.675, 12.3, 12.30049, 100.0,
                               -7.9999, 123456.0005, 999_999_999_999.9994, 1 / 3])
def test_numbers_are_spelled_as_their_value_rounded_to_three_decimals(v):
    assert number_text(v) == repr(round(v, 3))


def test_a_poll_of_every_key_is_the_items_joined_and_matches_the_values():
    state = HubState(seed=2)
    k0 = int(time.time() / state.tick)
    for entity in state.entities.values():
        for k in (k0, k0 + 1, k0 + 1000):
            items = state.value_fragments(entity, None, k)
            joined = state.values_json(entity, None, k)
            assert joined == ",".join(items) == state.values_json(entity, list(entity.params), k)
            assert state.values_json(entity, entity.keys[::-1], k) == ",".join(items[::-1])
            now = state.values_now(entity, k)
            assert [(v["value"], v["quality"]) for v in json.loads(f"[{joined}]")] == [now[key] for key in entity.params]


# -- methods

def test_get_info_names_the_hub_and_its_methods(raw):
    info = raw.result("getInfo")
    assert info["hub"] == "sim" and info["protocol"] == 1
    assert set(info["methods"]) == ALL_METHODS
    assert TS.match(info["time"])


def test_ping_answers_the_hub_clock(raw):
    assert TS.match(raw.result("ping")["time"])


def test_answers_carry_integer_and_string_ids(raw):
    assert raw.call("ping", rid="abc-1")["id"] == "abc-1"
    assert raw.call("ping", rid=99)["id"] == 99


def test_get_entities_returns_the_whole_tree_by_default(raw):
    roots = raw.result("getEntities")["entities"]
    boiler = [e for e in roots[0]["children"] if e["id"] == "plant/utilities"][0]["children"][0]
    assert boiler["id"] == "plant/utilities/boiler"
    assert {c["id"] for c in boiler["children"]} == {"plant/utilities/boiler/burner", "plant/utilities/boiler/feedwater"}


def test_get_entities_honours_parent_and_depth(raw):
    two = raw.result("getEntities", {"parent": "plant", "depth": 2})["entities"]
    line1 = [e for e in two if e["id"] == "plant/line1"][0]
    assert [c["children"] for c in line1["children"]] == [[], [], []]
    assert raw.error("getEntities", {"parent": "plant/nowhere"}) == 404
    assert raw.error("getEntities", {"depth": 0}) == -32602


def test_get_params_describes_parameters(raw):
    result = raw.result("getParams", {"entity": PUMP})
    assert result["entity"] == PUMP
    assert {p["type"] for p in result["params"]} == set(PARAM_TYPES)
    assert raw.error("getParams", {"entity": "plant/x"}) == 404
    assert raw.error("getParams", {}) == -32602


def test_get_entity_params_returns_values_with_ts_and_quality(raw):
    values = raw.result("getEntityParams", {"entity": PUMP, "keys": ["flow", "running", "config"]})["values"]
    assert [v["key"] for v in values] == ["flow", "running", "config"]
    assert all(TS.match(v["ts"]) and v["quality"] in ("good", "uncertain", "bad") for v in values)
    assert isinstance(values[1]["value"], bool) and isinstance(values[2]["value"], dict)
    assert raw.error("getEntityParams", {"entity": PUMP, "keys": ["nope"]}) == 404
    assert raw.error("getEntityParams", {"entity": PUMP, "keys": "flow"}) == -32602


def test_set_entity_params_writes_and_the_value_reads_back(raw, hub):
    written = raw.result("setEntityParams", {"entity": "plant/utilities/boiler/burner", "values": {"stage": 2.0}})
    assert written == {"entity": "plant/utilities/boiler/burner", "written": ["stage"]}
    assert hub.state.read("plant/utilities/boiler/burner", "stage") == 2


@pytest.mark.parametrize("values, code", [
    ({"speed_sp": 1600.0, "running": "yes"}, 422),
    ({"speed_sp": 1600.0, "flow": 3.0}, 403),
    ({"speed_sp": 1600.0, "nope": 1}, 404),
    ({"speed_sp": True}, 422),
])
def test_set_entity_params_is_all_or_nothing(raw, hub, values, code):
    before = hub.state.read(PUMP, "speed_sp")
    assert raw.error("setEntityParams", {"entity": PUMP, "values": values}) == code
    assert hub.state.read(PUMP, "speed_sp") == before


def test_subscribe_sends_a_snapshot_then_changes_and_unsubscribe_stops_them(raw):
    sub = raw.result("subscribe", {"entity": PUMP, "keys": ["flow", "config"]})["subscription"]
    first = raw.recv()
    assert first["method"] == "dataChange" and "id" not in first
    assert first["params"]["subscription"] == sub
    assert {v["key"] for v in first["params"]["values"]} == {"flow", "config"}
    second = raw.recv()  # flow moves every tick; config does not change
    assert [v["key"] for v in second["params"]["values"]] == ["flow"]
    assert raw.call("unsubscribe", {"subscription": sub})["result"] == {}
    raw.ws.settimeout(0.4)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            raw.recv()  # stragglers sent before the unsubscribe drain here


def test_subscribe_with_a_period_and_without_on_change_sends_every_period(raw):
    sub = raw.result("subscribe", {"entity": PUMP, "keys": ["config"], "period": 0.2, "onChange": False})["subscription"]
    started = time.monotonic()
    got = [raw.recv() for _ in range(3)]
    assert 0.3 < time.monotonic() - started < 3  # every 0.2 s, not all at once (upper bound loose for a loaded machine)
    assert all(len(m["params"]["values"]) == 1 for m in got)
    raw.call("unsubscribe", {"subscription": sub})


def test_the_hub_ends_a_subscription_after_its_timeout(raw):
    sub = raw.result("subscribe", {"entity": PUMP, "keys": ["flow"], "timeout": 0.3})["subscription"]
    time.sleep(0.6)
    assert raw.error("unsubscribe", {"subscription": sub}) == 404


def test_subscribe_checks_its_params(raw):
    assert raw.error("subscribe", {"entity": PUMP}) == -32602
    assert raw.error("subscribe", {"entity": PUMP, "keys": ["flow"], "period": -1}) == -32602
    assert raw.error("subscribe", {"entity": PUMP, "keys": ["flow"], "onChange": "yes"}) == -32602
    assert raw.error("subscribe", {"entity": PUMP, "keys": ["nope"]}) == 404


def test_a_connection_cannot_unsubscribe_another_ones_subscription(raw, hub):
    sub = raw.result("subscribe", {"entity": PUMP, "keys": ["flow"]})["subscription"]
    other = Raw(hub.url)
    try:
        assert other.error("unsubscribe", {"subscription": sub}) == 404
    finally:
        other.ws.close()


# -- errors

def test_a_frame_that_is_not_json_gets_a_parse_error_with_a_null_id(raw):
    raw.ws.send("{nope")
    assert raw.recv() == {"id": None, "error": {"code": -32700, "message": "parse error: the frame is not JSON"}}


@pytest.mark.parametrize("frame", ['{"key": "demo-key", "method": "ping"}', '{"id": 1.5, "key": "demo-key", "method": "ping"}',
                                   '{"id": true, "key": "demo-key", "method": "ping"}', "[1, 2]"])
def test_a_request_without_a_good_id_is_invalid(raw, frame):
    raw.ws.send(frame)
    msg = raw.recv()
    assert msg["id"] is None and msg["error"]["code"] == -32600


def test_a_request_without_a_method_is_invalid(raw):
    raw.ws.send(json.dumps({"id": 5, "key": KEY}))
    assert raw.recv()["error"]["code"] == -32600


def test_a_wrong_or_missing_key_gets_401_before_anything_else(raw):
    assert raw.error("ping", key="wrong") == 401
    assert raw.error("noSuchMethod", key=None) == 401


def test_params_that_are_not_an_object_are_invalid(raw):
    assert raw.error("getParams", ["plant"]) == -32602


def test_a_hub_with_restricted_methods_answers_the_others_with_method_not_found():
    with serve_in_thread(key=KEY, methods={"getEntities", "subscribe"}) as hub:
        conn = Raw(hub.url)
        assert conn.error("getEntityParams", {"entity": PUMP}) == -32601
        assert conn.error("getInfo") == -32601
        assert conn.result("getEntities", {"depth": 1})["entities"][0]["id"] == "plant"


def test_the_command_line_rejects_unknown_methods():
    assert method_set("getInfo, subscribe") == {"getInfo", "subscribe"}
    with pytest.raises(argparse.ArgumentTypeError):
        method_set("getInfo,teleport")


def test_a_request_in_a_fragmented_or_binary_message_is_answered(raw):
    frame = json.dumps({"id": 41, "key": KEY, "method": "getParams", "params": {"entity": PUMP}})
    raw.ws.send_frame(websocket.ABNF.create_frame(frame[:20], websocket.ABNF.OPCODE_TEXT, fin=0))
    raw.ws.send_frame(websocket.ABNF.create_frame(frame[20:], websocket.ABNF.OPCODE_CONT, fin=1))
    assert raw.recv()["result"]["entity"] == PUMP
    raw.ws.send_binary(frame.replace("41", "42").encode())
    assert raw.recv()["id"] == 42


def test_integers_beyond_64_bits_are_read_exactly(raw, hub):
    big = 2**64 + 1
    assert raw.call("ping", rid=big)["id"] == big
    raw.result("setEntityParams", {"entity": "plant/utilities/boiler/burner", "values": {"stage": big}})
    assert hub.state.read("plant/utilities/boiler/burner", "stage") == big
    raw.result("setEntityParams", {"entity": "plant/utilities/boiler/burner", "values": {"stage": 1}})


def test_a_text_frame_that_is_not_utf8_closes_only_its_own_connection(raw, hub):
    other = Raw(hub.url)
    try:
        other.ws.send_frame(websocket.ABNF.create_frame(b"\xff\xfe{}", websocket.ABNF.OPCODE_TEXT))
        opcode, data = other.ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1007  # invalid data
    finally:
        other.ws.close()
    assert TS.match(raw.result("ping")["time"])


def test_many_pipelined_requests_are_all_answered(raw):
    ids = [raw.send("getEntityParams", {"entity": PUMP}) for _ in range(500)]
    answered = {raw.recv()["id"] for _ in ids}
    assert answered == set(ids)
