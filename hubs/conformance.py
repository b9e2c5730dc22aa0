"""Conformance checker: runs hub protocol v1's checks against any hub and reports pass/fail per check.

It speaks raw frames (websocket-client, not HubClient) so that it sees exactly what a hub puts on the
wire. Every check is named after the section of the contract (docs/hub-protocol.md) it checks, and that
document says, per check, what a hub must do to pass. Checks that write only write a parameter's current
value back, or writes the contract says must be refused (restored if the hub took them); `write=False`
skips them all.

A check is skipped only when the hub does not support its method (per getInfo, or probed when getInfo is
missing; "Errors: unsupported methods get -32601" checks that such methods really are refused), when the
user turned writes off, or when the test entity lacks what the check needs (a writable parameter). A
supported method is never skipped for want of something to test it on: when the checker finds no entity
(``entity`` not given and no getEntities), that method's checks fail and say to pass one.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import websocket

from hubs.client import ALL_METHODS, TlsOptions
from hubs.hubsim.signals import QUALITIES
from hubs.hubsim.state import matches_type
from hubs.hubsim.tree import PARAM_TYPES
from hubsched.secrets import url_mask

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")  # RFC 3339, UTC, milliseconds
_NO_KEY = object()
MAX_ENTITIES = 60  # entities the checker describes or probes when it looks for its test entity


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


@dataclass
class CheckResult:
    """One check's outcome: ``status`` is "pass", "fail", "skip", or "warn" (a setting of the run a person
    must know about, such as TLS verification off; never a failure); ``section`` the contract's section."""

    name: str
    status: str
    detail: str = ""
    section: str = ""


def _json(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def describe_error(err) -> str:
    """An answer's ``error`` for a person: ``401 'wrong key'``, or what is wrong with its shape."""
    if not isinstance(err, dict):
        return f"the {_json_type(err)} {_json(err)} instead of an error object {{\"code\": number, \"message\": string}}"
    code, message = err.get("code"), err.get("message")
    text = f"{code}" if isinstance(code, int) and not isinstance(code, bool) else f"code {_json(code)} (a {_json_type(code)}, not an integer)"
    return f"{text} {message!r}" if isinstance(message, str) else f"{text} without a string message"


class Wire:
    """One raw connection: send requests, read answers by id, keep notifications aside."""

    def __init__(self, url: str, key: str, timeout: float, strays: list | None = None,
                 tls: TlsOptions | None = None):
        self.url, self.key, self.timeout = url, key, timeout
        self.ids = itertools.count(1)
        self.sent: set = {(None, type(None))}  # -32700/-32600 answers carry id null
        self.strays = strays if strays is not None else []  # answers to ids never asked
        self.answers: dict = {}
        self.notifications: list[dict] = []
        sslopt = None
        if url.strip().lower().startswith("wss://"):
            try:
                sslopt = {"context": (tls or TlsOptions()).context()}
            except ValueError as exc:
                raise CheckFailed(f"cannot connect: {exc}") from None
        try:
            self.ws = websocket.create_connection(url, timeout=timeout, sslopt=sslopt)
        except Exception as exc:
            raise CheckFailed(f"cannot connect: {type(exc).__name__}: {exc}") from None

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
        """The answer to request ``rid``. Raises CheckFailed when none comes in time, naming the ids the hub
        answered instead if it did (hub protocol v1: an answer carries its request's id, same value and type)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        strays_before = len(self.strays)
        while (rid, type(rid)) not in self.answers:
            try:
                msg = self._read(deadline)
            except CheckFailed as exc:
                wrong = self.strays[strays_before:]
                if wrong and str(exc).startswith("no answer"):
                    raise CheckFailed(
                        f"no answer carries the request's id {_json(rid)} within {timeout or self.timeout}s: the hub "
                        f"answered id {', '.join(_json(w) for w in wrong[:3])} instead, which no request had "
                        f"(an answer must carry its request's id, same value and type)") from None
                raise
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
            raise CheckFailed(f"{method} failed: {describe_error(msg['error'])}")
        if "result" not in msg:
            raise CheckFailed(f"{method}: the answer has neither 'result' nor 'error'")
        if not isinstance(msg["result"], dict):
            raise CheckFailed(f"{method}: 'result' is the {_json_type(msg['result'])} {_json(msg['result'])}, not an object")
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
    """The detail of an answer that is error ``code`` as the contract shapes it; else CheckFailed saying
    what came instead (a result, a string error, the code as a string, another code)."""
    if "error" not in msg:
        got = "a result" if "result" in msg else "an answer with neither 'result' nor 'error'"
        raise CheckFailed(f"expected error {code}, got {got}")
    err = msg["error"]
    if not isinstance(err, dict):
        raise CheckFailed(f"expected error {code} as an object {{\"code\": {code}, \"message\": ...}}, "
                          f"got the {_json_type(err)} {_json(err)}")
    got = err.get("code")
    if isinstance(got, bool) or not isinstance(got, int):
        if isinstance(got, (str, float)) and str(got).strip() in (str(code), f"{code}.0"):
            raise CheckFailed(f"expected error {code}, got the code as the {_json_type(got)} {_json(got)}: "
                              f"the code must be the integer {code}")
        raise CheckFailed(f"expected error {code}, got code {_json(got)} (a {_json_type(got)}, not an integer)")
    if got != code:
        message = err.get("message")
        raise CheckFailed(f"expected error {code}, got error {got}" + (f" {message!r}" if isinstance(message, str) else ""))
    if not isinstance(err.get("message"), str):
        raise CheckFailed(f"error {code} has no string 'message'")
    return f"{code} {err['message']}"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Sample:
    """The entity the value checks run on: its id, the keys to read, and what getParams said of each key
    (``None`` when the hub has no getParams: then types and writability are learned from the values)."""

    entity: str
    keys: list[str]
    params: dict[str, dict | None]
    how: str  # how it was chosen, for the report

    @property
    def described(self) -> bool:
        return all(p is not None for p in self.params.values())


@dataclass
class Context:
    url: str
    key: str
    timeout: float
    write: bool
    tls: TlsOptions | None = None
    entity: str | None = None           # given by the user (--entity)
    keys: list[str] | None = None       # given by the user (--keys)
    _wire: Wire | None = None
    methods: frozenset = ALL_METHODS
    methods_known: bool = False         # getInfo listed them, or they were probed
    entities: list[dict] = field(default_factory=list)   # flat: {"id", "depth", "children": [ids]}
    described: dict[str, dict[str, dict]] = field(default_factory=dict)  # getParams per entity: {key: param}
    sample: Sample | None = None
    sample_problem: str = ""
    sample_tried: bool = False
    writability: dict[str, bool] = field(default_factory=dict)  # learned by writing back (no getParams)
    strays: list = field(default_factory=list)

    @property
    def wire(self) -> Wire:
        if self._wire is None or not self._wire.open:
            if self._wire is not None:
                self._wire.close()
            self._wire = Wire(self.url, self.key, self.timeout, self.strays, tls=self.tls)
        return self._wire

    def need(self, *methods: str) -> None:
        missing = [m for m in methods if m not in self.methods]
        if missing:
            raise Skip(f"the hub does not support {', '.join(missing)} (per getInfo)")

    def need_sample(self, method: str) -> Sample:
        """The test entity; a method the hub supports is never skipped for want of one: CheckFailed instead."""
        if not self.sample_tried:
            self.sample_tried = True
            try:
                self.sample = _find_sample(self)
            except CheckFailed as exc:
                self.sample_problem = str(exc)
        if self.sample is None:
            raise CheckFailed(f"{method} cannot be tested: {self.sample_problem or 'no entity with parameters found'}")
        return self.sample


def _values_of(ctx: Context, entity: str, keys: list[str] | None = None) -> list[dict]:
    params = {"entity": entity} if keys is None else {"entity": entity, "keys": keys}
    result = ctx.wire.result("getEntityParams", params)
    _expect(result.get("entity") == entity, f"getEntityParams: 'entity' is {_json(result.get('entity'))}, not {_json(entity)}")
    values = result.get("values")
    _expect(isinstance(values, list), "getEntityParams: 'values' is not a list")
    return values


def _describe(ctx: Context, entity: str) -> dict[str, dict]:
    """getParams of ``entity`` as ``{key: param}``, each param checked against the contract (cached)."""
    if entity in ctx.described:
        return ctx.described[entity]
    result = ctx.wire.result("getParams", {"entity": entity})
    _expect(result.get("entity") == entity, f"getParams({entity!r}): 'entity' is {_json(result.get('entity'))}")
    params = result.get("params")
    _expect(isinstance(params, list), f"getParams({entity!r}): 'params' is not a list")
    for p in params:
        _expect(isinstance(p, dict) and isinstance(p.get("key"), str), f"{entity!r}: a param has no string 'key'")
        _expect(isinstance(p.get("name"), str) and isinstance(p.get("unit"), str), f"{entity}.{p['key']}: name/unit not strings")
        _expect(p.get("type") in PARAM_TYPES, f"{entity}.{p['key']}: type {p.get('type')!r} is not one of {list(PARAM_TYPES)}")
        _expect(isinstance(p.get("writable"), bool), f"{entity}.{p['key']}: 'writable' is not a boolean")
    ctx.described[entity] = {p["key"]: p for p in params}
    return ctx.described[entity]


def _find_sample(ctx: Context) -> Sample | None:
    """The entity to test values on: the user's (``entity``, ``keys``), else one found from getEntities alone
    (with getParams, one that has a writable and a read-only parameter if any does; without, the first whose
    getEntityParams answers values). Raises CheckFailed saying why there is none."""
    if ctx.entity:
        described = {}
        if "getParams" in ctx.methods:
            described = _describe(ctx, ctx.entity)
        keys = list(ctx.keys or described)
        if not keys and "getEntityParams" in ctx.methods:
            keys = [v.get("key") for v in _values_of(ctx, ctx.entity) if isinstance(v, dict) and isinstance(v.get("key"), str)]
        _expect(bool(keys), f"no keys to test on {ctx.entity!r}: pass --keys K1,K2")
        unknown = [k for k in keys if described and k not in described]
        _expect(not unknown, f"getParams({ctx.entity!r}) does not list {', '.join(unknown)}")
        return Sample(ctx.entity, keys, {k: described.get(k) for k in keys}, "given")
    if "getEntities" not in ctx.methods:
        raise CheckFailed("no entity to test on: the hub has no getEntities; pass --entity ID --keys K1,K2")
    if not ctx.entities:
        raise CheckFailed("no entity to test on: getEntities listed none (see its check); pass --entity ID --keys K1,K2")
    best: Sample | None = None
    for entity in ctx.entities[:MAX_ENTITIES]:
        if "getParams" in ctx.methods:
            params = _describe(ctx, entity["id"])
            if not params:
                continue
            writable = {p["writable"] for p in params.values()}
            sample = Sample(entity["id"], list(params), dict(params), "from getEntities and getParams")
            if writable == {True, False}:
                return sample
            best = best or sample
        elif "getEntityParams" in ctx.methods:
            keys = [v.get("key") for v in _values_of(ctx, entity["id"]) if isinstance(v, dict) and isinstance(v.get("key"), str)]
            if keys:
                return Sample(entity["id"], keys, dict.fromkeys(keys), "from getEntities and getEntityParams")
        else:
            raise CheckFailed("no way to learn an entity's keys (no getParams, no getEntityParams): pass --entity ID --keys K1,K2")
    if best is None:
        raise CheckFailed(f"none of the first {min(len(ctx.entities), MAX_ENTITIES)} entities has parameters; pass --entity ID --keys K1,K2")
    return best


# -- the checks, in order; each returns a detail line or raises CheckFailed / Skip

def check_connects(ctx: Context) -> str:
    ctx.wire
    return url_mask(ctx.url)


def check_get_info(ctx: Context) -> str:
    msg = ctx.wire.call("getInfo")
    if isinstance(msg.get("error"), dict) and msg["error"].get("code") == -32601:
        # A client would assume every method; the checker probes, so that a limited hub's
        # missing methods are skipped rather than failed. Empty params never write anything.
        supported = {m for m in ALL_METHODS - {"getInfo"}
                     if (ctx.wire.call(m, {}).get("error") or {}).get("code") != -32601}
        ctx.methods, ctx.methods_known = frozenset(supported), True
        raise Skip(f"the hub lacks getInfo; probed methods: {', '.join(sorted(supported))}")
    if "error" in msg:
        raise CheckFailed(f"getInfo failed: {describe_error(msg['error'])}")
    result = msg.get("result")
    _expect(isinstance(result, dict), "getInfo: no result object")
    _expect(isinstance(result.get("hub"), str), "getInfo: 'hub' is not a string")
    _expect(result.get("protocol") == 1, f"getInfo: protocol is {result.get('protocol')!r}, not 1")
    methods = result.get("methods")
    _expect(isinstance(methods, list) and all(isinstance(m, str) for m in methods), "getInfo: 'methods' is not a list of names")
    _expect(isinstance(result.get("time"), str) and TS_RE.match(result["time"]), f"getInfo: time {result.get('time')!r} is not RFC 3339 UTC with ms")
    ctx.methods, ctx.methods_known = frozenset(methods) | {"getInfo"}, True
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
    if "getEntityParams" in ctx.methods and ctx.entity:
        return "getEntityParams", {"entity": ctx.entity, **({"keys": ctx.keys} if ctx.keys else {})}
    raise CheckFailed("no read method to probe with (ping, getInfo, getEntities; or getEntityParams with --entity)")


def check_ids(ctx: Context) -> str:
    method, params = _cheap_method(ctx)
    for rid in (424242, "req-α-7"):
        msg = ctx.wire.call(method, params, rid=rid)
        _expect("result" in msg, f"{method} with id {rid!r} failed: {describe_error(msg.get('error'))}")
    return f"{method}: integer and string ids echoed"


def check_pipelining(ctx: Context) -> str:
    method, params = _cheap_method(ctx)
    ids = [ctx.wire.send(method, params) for _ in range(20)]
    for rid in ids:
        msg = ctx.wire.answer(rid)
        _expect("result" in msg, f"request {rid} failed: {describe_error(msg.get('error'))}")
    return f"20 {method} requests in flight on one connection, every id answered"


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
    if not ctx.methods_known:
        raise Skip("getInfo failed (see its check), so which methods the hub lacks is not known")
    missing = sorted(ALL_METHODS - ctx.methods)
    if not missing:
        raise Skip("getInfo lists every method of the contract")
    for method in missing:
        ctx.wire.expect_error(-32601, method, {})
    return f"{', '.join(missing)} answer -32601"


def check_invalid_params(ctx: Context) -> str:
    for method in ("getParams", "getEntityParams", "setEntityParams"):
        if method in ctx.methods:
            return f"{method}: " + ctx.wire.expect_error(-32602, method, {"entity": 17})
    if "getEntities" in ctx.methods:
        return "getEntities: " + ctx.wire.expect_error(-32602, "getEntities", {"depth": "deep"})
    raise Skip("the hub supports no method with params to get wrong")


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
    # leaves first: they carry the parameters on most hubs
    ctx.entities = sorted(flat, key=lambda e: (bool(e["children"]), -e["depth"]))
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
    if ctx.entity:
        entities = [ctx.entity]
    elif ctx.entities:
        entities = [e["id"] for e in ctx.entities[:MAX_ENTITIES]]
    else:
        raise CheckFailed("getParams cannot be tested: no entity (the hub has no getEntities); pass --entity ID")
    for entity in entities:
        _describe(ctx, entity)
    return f"{len(entities)} entities described"


def check_params_unknown_entity(ctx: Context) -> str:
    ctx.need("getParams")
    return ctx.wire.expect_error(404, "getParams", {"entity": "no/such/entity/x9"})


def _check_value(sample: Sample, v) -> None:
    _expect(isinstance(v, dict) and isinstance(v.get("key"), str), f"a value is not an object with a string 'key': {_json(v)}")
    _expect(TS_RE.match(str(v.get("ts"))) is not None, f"{v['key']}: ts {v.get('ts')!r} is not RFC 3339 UTC with ms")
    _expect(v.get("quality") in QUALITIES, f"{v['key']}: quality {v.get('quality')!r} is not one of {list(QUALITIES)}")
    _expect("value" in v, f"{v['key']}: no 'value'")
    param = sample.params.get(v["key"])
    if param is not None:
        _expect(v["value"] is None or matches_type(param["type"], v["value"]),
                f"{v['key']}: value {_json(v['value'])} does not fit type {param['type']}")


def check_values(ctx: Context) -> str:
    ctx.need("getEntityParams")
    sample = ctx.need_sample("getEntityParams")
    all_keys = sample.how != "given" or not ctx.keys
    values = _values_of(ctx, sample.entity, None if all_keys else sample.keys)
    for v in values:
        _check_value(sample, v)
    got = {v["key"] for v in values}
    _expect(set(sample.keys) <= got, f"values lack {', '.join(sorted(set(sample.keys) - got))}")
    typed = "typed " if sample.described else ""
    return f"{sample.entity} ({sample.how}): {len(values)} {typed}values with ts and quality"


def check_values_keys(ctx: Context) -> str:
    ctx.need("getEntityParams")
    sample = ctx.need_sample("getEntityParams")
    key = sample.keys[0]
    values = _values_of(ctx, sample.entity, [key])
    _expect([v.get("key") for v in values if isinstance(v, dict)] == [key], f"keys=[{key!r}] returned {[v.get('key') for v in values if isinstance(v, dict)]}")
    if len(sample.keys) > 1:
        pair = sample.keys[:2][::-1]
        values = _values_of(ctx, sample.entity, pair)
        _expect([v.get("key") for v in values if isinstance(v, dict)] == pair, f"keys={pair} returned {[v.get('key') for v in values if isinstance(v, dict)]} (the order asked)")
    ctx.wire.expect_error(404, "getEntityParams", {"entity": sample.entity, "keys": ["no_such_key_x9"]})
    ctx.wire.expect_error(404, "getEntityParams", {"entity": "no/such/entity/x9"})
    return f"{sample.entity}: keys filter in the order asked; 404 for an unknown key and entity"


def _can_read(ctx: Context) -> None:
    if "getEntityParams" not in ctx.methods:
        ctx.need("subscribe", "unsubscribe")


def _current(ctx: Context, entity: str, key: str):
    if "getEntityParams" in ctx.methods:
        values = [v for v in _values_of(ctx, entity, [key]) if isinstance(v, dict) and v.get("key") == key]
        _expect(bool(values), f"getEntityParams returned no value for {key!r}")
        return values[0].get("value")
    # hub protocol v1: without getEntityParams, read through a subscription's first dataChange
    result = ctx.wire.result("subscribe", {"entity": entity, "keys": [key], "onChange": False, "period": 0.5})
    try:
        params = ctx.wire.notification(result.get("subscription"), max(ctx.timeout, 2.0))
    finally:
        ctx.wire.call("unsubscribe", {"subscription": result.get("subscription")})
    values = [v for v in params.get("values") or [] if isinstance(v, dict) and v.get("key") == key]
    _expect(bool(values), f"the first dataChange has no value for {key!r}")
    return values[0].get("value")


def _param_type(sample: Sample, key: str, value) -> str:
    param = sample.params.get(key)
    if param is not None:
        return param["type"]
    kind = _json_type(value)
    return "integer" if kind == "number" and isinstance(value, int) else kind


def _is_writable(ctx: Context, sample: Sample, key: str) -> bool | None:
    """Whether ``key`` is writable: from getParams, else learned by writing its current value back (403: no)."""
    param = sample.params.get(key)
    if param is not None:
        return param["writable"]
    if key not in ctx.writability:
        value = _current(ctx, sample.entity, key)
        msg = ctx.wire.call("setEntityParams", {"entity": sample.entity, "values": {key: value}})
        if isinstance(msg.get("error"), dict) and msg["error"].get("code") == 403:
            ctx.writability[key] = False
        elif "result" in msg:
            ctx.writability[key] = True
        else:
            raise CheckFailed(f"writing {key!r}'s current value back failed: {describe_error(msg.get('error'))}")
    return ctx.writability[key]


def _pick(ctx: Context, writable: bool) -> tuple[Sample, str]:
    if not ctx.write:
        raise Skip("writes disabled (--no-write)")
    ctx.need("setEntityParams")
    _can_read(ctx)
    sample = ctx.need_sample("setEntityParams")
    for key in sample.keys:
        if _is_writable(ctx, sample, key) is writable:
            return sample, key
    raise Skip(f"no {'writable' if writable else 'read-only'} parameter among {sample.entity}'s {', '.join(sample.keys)}")


def check_write(ctx: Context) -> str:
    sample, key = _pick(ctx, writable=True)
    value = _current(ctx, sample.entity, key)
    result = ctx.wire.result("setEntityParams", {"entity": sample.entity, "values": {key: value}})
    _expect(result.get("written") == [key], f"written is {result.get('written')!r}, not [{key!r}]")
    return f"{sample.entity}.{key} written back with its current value"


def check_write_read_only(ctx: Context) -> str:
    sample, key = _pick(ctx, writable=False)
    value = _current(ctx, sample.entity, key)
    return ctx.wire.expect_error(403, "setEntityParams", {"entity": sample.entity, "values": {key: value}})


_WRONG = {"number": "not a number", "integer": "not an integer", "boolean": "yes", "string": 12,
          "array": {"not": "an array"}, "object": ["not", "an object"], "null": {"not": "null"}}


def check_write_wrong_type(ctx: Context) -> str:
    sample, key = _pick(ctx, writable=True)
    kind = _param_type(sample, key, _current(ctx, sample.entity, key))
    return ctx.wire.expect_error(422, "setEntityParams", {"entity": sample.entity, "values": {key: _WRONG[kind]}})


def _changed(value, type_: str):
    return {"number": lambda v: (v or 0) + 1, "integer": lambda v: (v or 0) + 1, "boolean": lambda v: not v,
            "string": lambda v: f"{v}-x", "array": lambda v: list(v or []) + [{}],
            "object": lambda v: {**(v or {}), "_conformance": 1}, "null": lambda v: v}[type_](value)


def check_write_all_or_nothing(ctx: Context) -> str:
    sample, key = _pick(ctx, writable=True)
    before = _current(ctx, sample.entity, key)
    msg = ctx.wire.call("setEntityParams", {"entity": sample.entity, "values": {
        key: _changed(before, _param_type(sample, key, before)), "no_such_key_x9": 1}})
    after = _current(ctx, sample.entity, key)
    if after != before:  # put it back before reporting
        ctx.wire.call("setEntityParams", {"entity": sample.entity, "values": {key: before}})
        raise CheckFailed(f"{key} was written although another key was refused")
    _expect("error" in msg, "a write with an unknown key succeeded")
    return "a refused key kept the good one from being written"


def _subscribe(ctx: Context, **extra) -> tuple[str, str]:
    ctx.need("subscribe")
    sample = ctx.need_sample("subscribe")
    result = ctx.wire.result("subscribe", {"entity": sample.entity, "keys": sample.keys, **extra})
    sub = result.get("subscription")
    _expect(isinstance(sub, (str, int)) and not isinstance(sub, bool), f"subscribe: subscription is {sub!r}")
    return sample.entity, sub


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
    _expect(not ctx.strays, f"the hub answered ids no request had: {', '.join(_json(s) for s in ctx.strays[:5])}")
    return "every answer matched a request"


@dataclass(frozen=True)
class Check:
    section: str   # the contract's section (docs/hub-protocol.md), e.g. "Methods/getEntityParams"
    title: str
    run: Callable[[Context], str]

    @property
    def name(self) -> str:
        return f"{self.section}: {self.title}"


CHECKS: list[Check] = [
    Check("Transport", "connects", check_connects),
    Check("Methods/getInfo", "describes the hub", check_get_info),
    Check("Methods/ping", "answers the hub's clock", check_ping),
    Check("Messages", "answers carry the request's id", check_ids),
    Check("Messages", "pipelined requests are all answered", check_pipelining),
    Check("Messages", "a wrong key gets 401", check_wrong_key),
    Check("Messages", "a missing key gets 401", check_missing_key),
    Check("Errors", "a frame that is not JSON gets -32700", check_not_json),
    Check("Errors", "a request without method gets -32600", check_no_method),
    Check("Errors", "an unknown method gets -32601", check_unknown_method),
    Check("Errors", "unsupported methods get -32601", check_unsupported_methods),
    Check("Errors", "bad params get -32602", check_invalid_params),
    Check("Methods/getEntities", "lists a tree with unique ids", check_entities),
    Check("Methods/getEntities", "honours parent and depth", check_entities_parent_depth),
    Check("Methods/getEntities", "an unknown parent gets 404", check_entities_unknown_parent),
    Check("Methods/getParams", "describes typed parameters", check_params),
    Check("Methods/getParams", "an unknown entity gets 404", check_params_unknown_entity),
    Check("Methods/getEntityParams", "returns values with ts and quality", check_values),
    Check("Methods/getEntityParams", "filters by keys; unknown key or entity gets 404", check_values_keys),
    Check("Methods/setEntityParams", "writes a writable parameter", check_write),
    Check("Methods/setEntityParams", "a read-only parameter gets 403", check_write_read_only),
    Check("Methods/setEntityParams", "a value of the wrong type gets 422", check_write_wrong_type),
    Check("Methods/setEntityParams", "is all or nothing", check_write_all_or_nothing),
    Check("Methods/subscribe", "sends dataChange; unsubscribe ends it", check_subscribe),
    Check("Methods/unsubscribe", "an unknown subscription gets 404", check_unsubscribe_unknown),
    Check("Methods/subscribe", "honours its timeout", check_subscribe_timeout),
    Check("Messages", "no answers to ids never asked", check_no_strays),
]

INSECURE_NAME = "Transport: TLS certificate verification"


def hub_conformance_check(*, url: str, key: str, timeout: float = 5.0, write: bool = True,
                          entity: str | None = None, keys: list[str] | None = None,
                          tls: TlsOptions | None = None) -> list[CheckResult]:
    """Run every check against the hub at `url`; returns one CheckResult per check, in ``CHECKS`` order.

    `entity` and `keys` choose the entity the value checks run on (default: one found through getEntities);
    `tls` how a wss:// hub is trusted (default: the system's CA store). With verification off the first
    result is a "warn" saying so. A failing check never stops the run (after a dropped connection the next
    check reconnects), except that nothing runs when the hub cannot be reached at all. No detail holds the key.
    """
    ctx = Context(url=url, key=key, timeout=timeout, write=write, tls=tls, entity=entity or None,
                  keys=list(keys) if keys else None)
    results: list[CheckResult] = []
    if url.strip().lower().startswith("wss://") and tls is not None and not tls.verify:
        results.append(CheckResult(INSECURE_NAME, "warn", "OFF (--insecure): the hub's certificate and host name were "
                                   "not checked; anyone on the path could have answered for the hub", "Transport"))
    try:
        for check in CHECKS:
            try:
                results.append(CheckResult(check.name, "pass", check.run(ctx), check.section))
            except Skip as exc:
                results.append(CheckResult(check.name, "skip", str(exc), check.section))
            except CheckFailed as exc:
                results.append(CheckResult(check.name, "fail", str(exc), check.section))
                if check.run is check_connects:
                    break
            except Exception as exc:  # a hub that breaks the checker fails the check, not the run
                results.append(CheckResult(check.name, "fail", f"{type(exc).__name__}: {exc}", check.section))
    finally:
        if ctx._wire is not None:
            ctx._wire.close()
    return [CheckResult(r.name, r.status, r.detail.replace(key, "***") if key else r.detail, r.section) for r in results]


def _counts(results: list[CheckResult]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip", "warn")}


def format_report(results: list[CheckResult]) -> str:
    """The report as text: one line per check (``PASS  Messages: a wrong key gets 401  (401 wrong key)``), then counts."""
    lines = [f"{r.status.upper():4}  {r.name}" + (f"  ({r.detail})" if r.detail else "") for r in results]
    counts = _counts(results)
    warned = f", {counts['warn']} warning{'s' if counts['warn'] > 1 else ''}" if counts["warn"] else ""
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped{warned}")
    return "\n".join(lines)


def report_json(results: list[CheckResult], *, url: str) -> str:
    """The report as JSON, for a hub team's CI: ``{"hub": masked url, "protocol": 1, "passed": bool,
    "counts": {"pass", "fail", "skip", "warn"}, "checks": [{"name", "section", "status", "detail"}]}``."""
    counts = _counts(results)
    return json.dumps({"hub": url_mask(url), "protocol": 1, "passed": counts["fail"] == 0, "counts": counts,
                       "checks": [asdict(r) for r in results]}, ensure_ascii=False, indent=2)
