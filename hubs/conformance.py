"""Conformance checker: runs hub protocol v1's checks against any hub and reports pass/fail per check.

It speaks raw frames (websocket-client, not HubClient) so that it sees exactly what a hub
puts on the wire. Checks that write only write a parameter's current value back, or
writes the contract says must be refused; `write=False` skips them all.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import websocket

from hubs.client import ALL_METHODS
from hubs.hubsim.signals import QUALITIES
from hubs.hubsim.state import matches_type
from hubs.hubsim.tree import PARAM_TYPES

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")  # RFC 3339, UTC, milliseconds
_NO_KEY = object()


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str = ""


class Wire:
    """One raw connection: send requests, read answers by id, keep notifications aside."""

    def __init__(self, url: str, key: str, timeout: float, strays: list | None = None):
        self.url, self.key, self.timeout = url, key, timeout
        self.ids = itertools.count(1)
        self.sent: set = {(None, type(None))}  # -32700/-32600 answers carry id null
        self.strays = strays if strays is not None else []  # answers to ids never asked
        self.answers: dict = {}
        self.notifications: list[dict] = []
        try:
            self.ws = websocket.create_connection(url, timeout=timeout)
        except Exception as exc:
            raise CheckFailed(f"cannot connect: {type(exc).__name__}") from None

    @property
    def open(self) -> bool:
        return self.ws.connected

    def close(self) -> None:
        try:
            self.ws.close(timeout=0.2)
        except Exception:
            pass

    def send(self, method: str | None, params: dict | None = None, *, key=_NO_KEY, rid=None) -> object:
        rid = next(self.ids) if rid is None else rid
        msg: dict = {"id": rid}
        msg["key"] = self.key if key is _NO_KEY else key
        if msg["key"] is None:
            del msg["key"]
        if method is not None:
            msg["method"] = method
        self.sent.add((rid, type(rid)))
        if params is not None:
            msg["params"] = params
        self.send_raw(json.dumps(msg))
        return rid

    def send_raw(self, text: str) -> None:
        try:
            self.ws.send(text)
        except Exception as exc:
            raise CheckFailed(f"connection lost while sending: {type(exc).__name__}") from None

    def _keep_answer(self, msg: dict) -> None:
        rid = msg["id"]
        if (rid, type(rid)) in self.sent:
            self.answers[(rid, type(rid))] = msg
        else:
            self.strays.append(rid)

    def _read(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CheckFailed(f"no answer within {self.timeout}s")
        self.ws.settimeout(remaining)
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise CheckFailed(f"no answer within {self.timeout}s") from None
        except Exception as exc:
            raise CheckFailed(f"connection lost: {type(exc).__name__}") from None
        if not self.ws.connected:
            raise CheckFailed("the hub closed the connection")
        try:
            msg = json.loads(frame)
        except (ValueError, TypeError):
            raise CheckFailed("the hub sent a frame that is not JSON") from None
        if not isinstance(msg, dict):
            raise CheckFailed("the hub sent JSON that is not an object")
        return msg

    def answer(self, rid, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while (rid, type(rid)) not in self.answers:
            msg = self._read(deadline)
            if "id" in msg and "method" not in msg:
                self._keep_answer(msg)
            elif msg.get("method") == "dataChange":
                self.notifications.append(msg.get("params"))
            else:
                raise CheckFailed(f"unexpected message: {str(msg)[:80]}")
        return self.answers.pop((rid, type(rid)))

    def call(self, method: str | None, params: dict | None = None, **kw) -> dict:
        return self.answer(self.send(method, params, **kw))

    def result(self, method: str, params: dict | None = None) -> dict:
        msg = self.call(method, params)
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            raise CheckFailed(f"{method} failed: {err.get('code')} {err.get('message')}")
        if not isinstance(msg.get("result"), dict):
            raise CheckFailed(f"{method}: 'result' is not an object")
        return msg["result"]

    def expect_error(self, code: int, method: str | None, params: dict | None = None, **kw) -> str:
        msg = self.call(method, params, **kw)
        return _check_error(msg, code)

    def notification(self, subscription: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, params in enumerate(self.notifications):
                if isinstance(params, dict) and params.get("subscription") == subscription:
                    return self.notifications.pop(i)
            msg = self._read(deadline)
            if msg.get("method") == "dataChange":
                self.notifications.append(msg.get("params"))
            elif "id" in msg:
                self._keep_answer(msg)


def _check_error(msg: dict, code: int) -> str:
    err = msg.get("error")
    if not isinstance(err, dict):
        raise CheckFailed(f"expected error {code}, got a result")
    if err.get("code") != code:
        raise CheckFailed(f"expected error {code}, got {err.get('code')} {err.get('message')!r}")
    if not isinstance(err.get("message"), str):
        raise CheckFailed(f"error {code} has no message")
    return f"{code} {err['message']}"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Context:
    url: str
    key: str
    timeout: float
    write: bool
    _wire: Wire | None = None
    methods: frozenset = ALL_METHODS
    entities: list[dict] = field(default_factory=list)   # flat: {"id", "depth", "children": [ids]}
    sample: dict | None = None   # {"entity", "params": {key: param}}
    strays: list = field(default_factory=list)

    @property
    def wire(self) -> Wire:
        if self._wire is None or not self._wire.open:
            if self._wire is not None:
                self._wire.close()
            self._wire = Wire(self.url, self.key, self.timeout, self.strays)
        return self._wire

    def need(self, *methods: str) -> None:
        missing = [m for m in methods if m not in self.methods]
        if missing:
            raise Skip(f"the hub does not support {', '.join(missing)}")

    def need_sample(self) -> dict:
        if self.sample is None:
            raise Skip("no entity with parameters found")
        return self.sample


# -- the checks, in order; each returns a detail line or raises CheckFailed / Skip

def check_connects(ctx: Context) -> str:
    ctx.wire
    return ctx.url


def check_get_info(ctx: Context) -> str:
    msg = ctx.wire.call("getInfo")
    if isinstance(msg.get("error"), dict) and msg["error"].get("code") == -32601:
        # A client would assume every method; the checker probes, so that a limited hub's
        # missing methods are skipped rather than failed. Empty params never write anything.
        supported = {m for m in ALL_METHODS - {"getInfo"}
                     if (ctx.wire.call(m, {}).get("error") or {}).get("code") != -32601}
        ctx.methods = frozenset(supported)
        raise Skip(f"the hub lacks getInfo; probed methods: {', '.join(sorted(supported))}")
    result = msg.get("result")
    _expect(isinstance(result, dict), "getInfo: no result object")
    _expect(isinstance(result.get("hub"), str), "getInfo: 'hub' is not a string")
    _expect(result.get("protocol") == 1, f"getInfo: protocol is {result.get('protocol')!r}, not 1")
    methods = result.get("methods")
    _expect(isinstance(methods, list) and all(isinstance(m, str) for m in methods), "getInfo: 'methods' is not a list of names")
    _expect(isinstance(result.get("time"), str) and TS_RE.match(result["time"]), f"getInfo: time {result.get('time')!r} is not RFC 3339 UTC with ms")
    ctx.methods = frozenset(methods)
    return f"hub {result['hub']!r}, methods {', '.join(sorted(methods))}"


def check_ping(ctx: Context) -> str:
    ctx.need("ping")
    result = ctx.wire.result("ping")
    _expect(isinstance(result.get("time"), str) and bool(TS_RE.match(result["time"])), f"ping: time {result.get('time')!r} is not RFC 3339 UTC with ms")
    return result["time"]


def _cheap_method(ctx: Context) -> tuple[str, dict | None]:
    for method, params in (("ping", None), ("getInfo", None), ("getEntities", {"depth": 1})):
        if method in ctx.methods:
            return method, params
    raise Skip("no cheap read method to probe with")


def check_ids(ctx: Context) -> str:
    method, params = _cheap_method(ctx)
    for rid in (424242, "req-α-7"):
        msg = ctx.wire.call(method, params, rid=rid)
        _expect("result" in msg, f"{method} with id {rid!r} failed: {msg.get('error')}")
    return "integer and string ids echoed"


def check_pipelining(ctx: Context) -> str:
    method, params = _cheap_method(ctx)
    ids = [ctx.wire.send(method, params) for _ in range(20)]
    for rid in ids:
        _expect("result" in ctx.wire.answer(rid), f"request {rid} failed")
    return "20 requests in flight on one connection, every id answered"


def check_wrong_key(ctx: Context) -> str:
    method, params = _cheap_method(ctx)
    return ctx.wire.expect_error(401, method, params, key=ctx.key + "-wrong")


def check_missing_key(ctx: Context) -> str:
    method, params = _cheap_method(ctx)
    return ctx.wire.expect_error(401, method, params, key=None)


def check_not_json(ctx: Context) -> str:
    ctx.wire.send_raw("{this is not json")
    return _check_error(ctx.wire.answer(None), -32700)


def check_no_method(ctx: Context) -> str:
    return ctx.wire.expect_error(-32600, None)


def check_unknown_method(ctx: Context) -> str:
    return ctx.wire.expect_error(-32601, "noSuchMethod")


def check_unsupported_methods(ctx: Context) -> str:
    missing = sorted(ALL_METHODS - ctx.methods)
    if not missing:
        raise Skip("the hub supports every method")
    for method in missing:
        ctx.wire.expect_error(-32601, method, {})
    return f"{', '.join(missing)} answer -32601"


def check_entities(ctx: Context) -> str:
    ctx.need("getEntities")
    result = ctx.wire.result("getEntities")
    roots = result.get("entities")
    _expect(isinstance(roots, list) and roots, "getEntities: 'entities' is not a non-empty list")
    seen: set[str] = set()
    flat: list[dict] = []

    def visit(entity, depth):
        _expect(isinstance(entity, dict), "an entity is not an object")
        for f in ("id", "name", "type"):
            _expect(isinstance(entity.get(f), str), f"entity {entity.get('id')!r}: {f!r} is not a string")
        _expect(isinstance(entity.get("children"), list), f"entity {entity['id']!r}: 'children' is not a list")
        _expect(entity["id"] not in seen, f"entity id {entity['id']!r} is not unique")
        seen.add(entity["id"])
        flat.append({"id": entity["id"], "depth": depth, "children": [c.get("id") for c in entity["children"] if isinstance(c, dict)]})
        for child in entity["children"]:
            visit(child, depth + 1)

    for root in roots:
        visit(root, 1)
    ctx.entities = flat
    return f"{len(flat)} entities, {max(e['depth'] for e in flat)} levels"


def check_entities_parent_depth(ctx: Context) -> str:
    ctx.need("getEntities")
    parent = next((e for e in ctx.entities if e["children"]), None)
    if parent is None:
        raise Skip("no entity has children")
    result = ctx.wire.result("getEntities", {"parent": parent["id"], "depth": 1})
    children = result.get("entities")
    _expect(isinstance(children, list), "getEntities: 'entities' is not a list")
    ids = [c.get("id") for c in children if isinstance(c, dict)]
    _expect(sorted(ids) == sorted(parent["children"]), f"children of {parent['id']!r}: {ids} != {parent['children']}")
    _expect(all(c.get("children") in ([], None) for c in children), "depth 1 returned grandchildren")
    return f"{parent['id']!r}: {len(ids)} children at depth 1"


def check_entities_unknown_parent(ctx: Context) -> str:
    ctx.need("getEntities")
    return ctx.wire.expect_error(404, "getEntities", {"parent": "no/such/entity/x9"})


def check_params(ctx: Context) -> str:
    ctx.need("getParams")
    if not ctx.entities:
        raise Skip("no entity list")
    described = 0
    for entity in ctx.entities[:60]:
        result = ctx.wire.result("getParams", {"entity": entity["id"]})
        _expect(result.get("entity") == entity["id"], f"getParams({entity['id']!r}): wrong 'entity'")
        params = result.get("params")
        _expect(isinstance(params, list), f"getParams({entity['id']!r}): 'params' is not a list")
        for p in params:
            _expect(isinstance(p, dict) and isinstance(p.get("key"), str), f"{entity['id']!r}: a param has no key")
            _expect(isinstance(p.get("name"), str) and isinstance(p.get("unit"), str), f"{entity['id']}.{p['key']}: name/unit not strings")
            _expect(p.get("type") in PARAM_TYPES, f"{entity['id']}.{p['key']}: type {p.get('type')!r} is not one of {list(PARAM_TYPES)}")
            _expect(isinstance(p.get("writable"), bool), f"{entity['id']}.{p['key']}: 'writable' is not a boolean")
        described += 1
        keyed = {p["key"]: p for p in params}
        writable = any(p["writable"] for p in params) and any(not p["writable"] for p in params)
        if keyed and (ctx.sample is None or (writable and not ctx.sample["both"])):
            ctx.sample = {"entity": entity["id"], "params": keyed, "both": writable}
    return f"{described} entities described"


def check_params_unknown_entity(ctx: Context) -> str:
    ctx.need("getParams")
    return ctx.wire.expect_error(404, "getParams", {"entity": "no/such/entity/x9"})


def check_invalid_params(ctx: Context) -> str:
    ctx.need("getParams")
    return ctx.wire.expect_error(-32602, "getParams", {"entity": 17})


def _values(ctx: Context, entity: str, keys: list[str] | None = None) -> list[dict]:
    params = {"entity": entity} if keys is None else {"entity": entity, "keys": keys}
    result = ctx.wire.result("getEntityParams", params)
    _expect(result.get("entity") == entity, "getEntityParams: wrong 'entity'")
    values = result.get("values")
    _expect(isinstance(values, list), "getEntityParams: 'values' is not a list")
    return values


def check_values(ctx: Context) -> str:
    ctx.need("getEntityParams")
    sample = ctx.need_sample()
    values = _values(ctx, sample["entity"])
    _expect({v.get("key") for v in values if isinstance(v, dict)} == set(sample["params"]), "values do not cover every parameter")
    for v in values:
        p = sample["params"][v["key"]]
        _expect(TS_RE.match(str(v.get("ts"))) is not None, f"{v['key']}: ts {v.get('ts')!r} is not RFC 3339 UTC with ms")
        _expect(v.get("quality") in QUALITIES, f"{v['key']}: quality {v.get('quality')!r}")
        _expect("value" in v and (v["value"] is None or matches_type(p["type"], v["value"])),
                f"{v['key']}: value {v.get('value')!r} does not fit type {p['type']}")
    return f"{sample['entity']}: {len(values)} values with types, ts and quality"


def check_values_keys(ctx: Context) -> str:
    ctx.need("getEntityParams")
    sample = ctx.need_sample()
    key = next(iter(sample["params"]))
    values = _values(ctx, sample["entity"], [key])
    _expect([v.get("key") for v in values] == [key], f"keys=[{key!r}] returned {[v.get('key') for v in values]}")
    ctx.wire.expect_error(404, "getEntityParams", {"entity": sample["entity"], "keys": ["no_such_key_x9"]})
    ctx.wire.expect_error(404, "getEntityParams", {"entity": "no/such/entity/x9"})
    return "keys filter; 404 for an unknown key and entity"


def _can_read(ctx: Context) -> None:
    if "getEntityParams" not in ctx.methods:
        ctx.need("subscribe", "unsubscribe")


def _writable(ctx: Context) -> tuple[str, dict]:
    if not ctx.write:
        raise Skip("writes disabled")
    ctx.need("setEntityParams")
    _can_read(ctx)
    sample = ctx.need_sample()
    param = next((p for p in sample["params"].values() if p["writable"]), None)
    if param is None:
        raise Skip("no writable parameter on the sample entity")
    return sample["entity"], param


def _current(ctx: Context, entity: str, key: str):
    if "getEntityParams" in ctx.methods:
        return _values(ctx, entity, [key])[0].get("value")
    # hub protocol v1: without getEntityParams, read through a subscription's first dataChange
    result = ctx.wire.result("subscribe", {"entity": entity, "keys": [key], "onChange": False, "period": 0.5})
    try:
        params = ctx.wire.notification(result.get("subscription"), max(ctx.timeout, 2.0))
    finally:
        ctx.wire.call("unsubscribe", {"subscription": result.get("subscription")})
    values = [v for v in params.get("values") or [] if isinstance(v, dict) and v.get("key") == key]
    _expect(bool(values), f"the first dataChange has no value for {key!r}")
    return values[0].get("value")


def check_write(ctx: Context) -> str:
    entity, param = _writable(ctx)
    value = _current(ctx, entity, param["key"])
    result = ctx.wire.result("setEntityParams", {"entity": entity, "values": {param["key"]: value}})
    _expect(result.get("written") == [param["key"]], f"written is {result.get('written')!r}")
    return f"{entity}.{param['key']} written back with its current value"


def check_write_read_only(ctx: Context) -> str:
    if not ctx.write:
        raise Skip("writes disabled")
    ctx.need("setEntityParams")
    _can_read(ctx)
    sample = ctx.need_sample()
    param = next((p for p in sample["params"].values() if not p["writable"]), None)
    if param is None:
        raise Skip("no read-only parameter on the sample entity")
    value = _current(ctx, sample["entity"], param["key"])
    return ctx.wire.expect_error(403, "setEntityParams", {"entity": sample["entity"], "values": {param["key"]: value}})


_WRONG = {"number": "not a number", "integer": "not an integer", "boolean": "yes", "string": 12,
          "array": {"not": "an array"}, "object": ["not", "an object"]}


def check_write_wrong_type(ctx: Context) -> str:
    entity, param = _writable(ctx)
    return ctx.wire.expect_error(422, "setEntityParams", {"entity": entity, "values": {param["key"]: _WRONG[param["type"]]}})


def _changed(value, type_: str):
    return {"number": lambda v: (v or 0) + 1, "integer": lambda v: (v or 0) + 1, "boolean": lambda v: not v,
            "string": lambda v: f"{v}-x", "array": lambda v: list(v or []) + [{}],
            "object": lambda v: {**(v or {}), "_conformance": 1}}[type_](value)


def check_write_all_or_nothing(ctx: Context) -> str:
    entity, param = _writable(ctx)
    before = _current(ctx, entity, param["key"])
    msg = ctx.wire.call("setEntityParams", {"entity": entity, "values": {
        param["key"]: _changed(before, param["type"]), "no_such_key_x9": 1}})
    after = _current(ctx, entity, param["key"])
    if after != before:  # put it back before reporting
        ctx.wire.call("setEntityParams", {"entity": entity, "values": {param["key"]: before}})
        raise CheckFailed(f"{param['key']} was written although another key was refused")
    _expect("error" in msg, "a write with an unknown key succeeded")
    return "a refused key kept the good one from being written"


def _subscribe(ctx: Context, **extra) -> tuple[str, str]:
    ctx.need("subscribe")
    sample = ctx.need_sample()
    keys = list(sample["params"])
    result = ctx.wire.result("subscribe", {"entity": sample["entity"], "keys": keys, **extra})
    sub = result.get("subscription")
    _expect(isinstance(sub, (str, int)) and not isinstance(sub, bool), f"subscribe: subscription is {sub!r}")
    return sample["entity"], sub


def check_subscribe(ctx: Context) -> str:
    entity, sub = _subscribe(ctx, period=0.5)
    params = ctx.wire.notification(sub, max(ctx.timeout, 2.0))
    _expect(params.get("entity") == entity, "dataChange: wrong entity")
    values = params.get("values")
    _expect(isinstance(values, list) and values and all(isinstance(v, dict) and "key" in v and "value" in v for v in values),
            "dataChange: 'values' is not a list of {key, value, ts, quality}")
    if "unsubscribe" in ctx.methods:
        msg = ctx.wire.call("unsubscribe", {"subscription": sub})
        _expect(msg.get("result") == {}, f"unsubscribe answered {msg.get('result', msg.get('error'))!r}")
    return f"dataChange for {sub!r} with {len(values)} values"


def check_unsubscribe_unknown(ctx: Context) -> str:
    ctx.need("unsubscribe")
    return ctx.wire.expect_error(404, "unsubscribe", {"subscription": "no-such-subscription-x9"})


def check_subscribe_timeout(ctx: Context) -> str:
    ctx.need("unsubscribe")
    _, sub = _subscribe(ctx, onChange=False, timeout=1)
    time.sleep(1.6)
    ctx.wire.expect_error(404, "unsubscribe", {"subscription": sub})
    return "the hub ended the subscription after its timeout"


def check_no_strays(ctx: Context) -> str:
    _expect(not ctx.strays, f"answers to ids never asked: {ctx.strays[:5]}")
    return "every answer matched a request"


CHECKS: list[tuple[str, Callable[[Context], str]]] = [
    ("connects", check_connects),
    ("getInfo describes the hub", check_get_info),
    ("ping answers the hub clock", check_ping),
    ("answers carry the request's id", check_ids),
    ("pipelined requests are all answered", check_pipelining),
    ("a wrong key gets 401", check_wrong_key),
    ("a missing key gets 401", check_missing_key),
    ("a frame that is not JSON gets -32700", check_not_json),
    ("a request without method gets -32600", check_no_method),
    ("an unknown method gets -32601", check_unknown_method),
    ("unsupported methods get -32601", check_unsupported_methods),
    ("getEntities lists a tree with unique ids", check_entities),
    ("getEntities honours parent and depth", check_entities_parent_depth),
    ("getEntities: unknown parent gets 404", check_entities_unknown_parent),
    ("getParams describes typed parameters", check_params),
    ("getParams: unknown entity gets 404", check_params_unknown_entity),
    ("bad params get -32602", check_invalid_params),
    ("getEntityParams returns typed values with ts and quality", check_values),
    ("getEntityParams filters by keys", check_values_keys),
    ("setEntityParams writes a writable parameter", check_write),
    ("setEntityParams: read-only gets 403", check_write_read_only),
    ("setEntityParams: wrong type gets 422", check_write_wrong_type),
    ("setEntityParams is all or nothing", check_write_all_or_nothing),
    ("subscribe sends dataChange; unsubscribe ends it", check_subscribe),
    ("unsubscribe: unknown subscription gets 404", check_unsubscribe_unknown),
    ("subscribe honours its timeout", check_subscribe_timeout),
    ("no answers to ids never asked", check_no_strays),
]


def hub_conformance_check(*, url: str, key: str, timeout: float = 5.0, write: bool = True) -> list[CheckResult]:
    """Run every check against the hub at `url`; returns one CheckResult per check.

    A failing check never stops the run (after a dropped connection the next check
    reconnects), except that nothing runs when the hub cannot be reached at all.
    """
    ctx = Context(url=url, key=key, timeout=timeout, write=write)
    results: list[CheckResult] = []
    try:
        for name, check in CHECKS:
            try:
                results.append(CheckResult(name, "pass", check(ctx)))
            except Skip as exc:
                results.append(CheckResult(name, "skip", str(exc)))
            except CheckFailed as exc:
                results.append(CheckResult(name, "fail", str(exc)))
                if check is check_connects:
                    break
            except Exception as exc:  # a hub that breaks the checker fails the check, not the run
                results.append(CheckResult(name, "fail", f"{type(exc).__name__}: {exc}"))
    finally:
        if ctx._wire is not None:
            ctx._wire.close()
    return [CheckResult(r.name, r.status, r.detail.replace(key, "***") if key else r.detail) for r in results]


def format_report(results: list[CheckResult]) -> str:
    lines = [f"{r.status.upper():4}  {r.name}" + (f"  ({r.detail})" if r.detail else "") for r in results]
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)
