"""Request handling for the reference hub: parse, check, dispatch, and encode answers (hub protocol v1)."""

from __future__ import annotations

import itertools
import json
import logging

import orjson

from .signals import encode, now_ts
from .state import Entity, HubState, matches_type

log = logging.getLogger(__name__)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Methods whose answer cannot change when an integer in the request is read as a float
_FLOAT_PROOF = frozenset({"getEntityParams", "getParams", "getInfo", "ping", "unsubscribe"})


def _loads(text: str | bytes):
    """The JSON value of a request frame, as json.loads reads it; raises ValueError when it is not JSON.

    orjson reads a getEntityParams frame twice as fast. It reads JSON as json does, except
    integers beyond 64 bits (floats to orjson) and what it refuses (NaN, lone surrogates:
    json reads those); so json reads again any frame where that could matter: every method
    but the float-proof ones, whose params either are strings or make the request invalid
    either way, and any frame whose id came out a float.
    """
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    if type(msg) is dict and type(msg.get("id")) is not float:
        method = msg.get("method")
        if type(method) is str and method in _FLOAT_PROOF:
            return msg
    return json.loads(text)

ALL_METHODS = frozenset({
    "getInfo", "ping", "getEntities", "getParams", "getEntityParams",
    "setEntityParams", "subscribe", "unsubscribe",
})

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def error_frame(rid, code: int, message: str, data: dict | None = None) -> str:
    err = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return _dumps({"id": rid, "error": err})


def notification_frame(subscription: str, entity: Entity, fragments: list[str]) -> str:
    return (f'{{"method":"dataChange","params":{{"subscription":{_dumps(subscription)},'
            f'"entity":{entity.id_json},"values":[{",".join(fragments)}]}}}}')


class Session:
    """What the protocol needs from a connection: starting and stopping subscriptions."""

    def subscribe(self, sub_id: str, entity: Entity, keys: list[str], *, period: float | None,
                  on_change: bool, timeout: float | None) -> None:
        raise NotImplementedError

    def unsubscribe(self, sub_id: str) -> bool:
        raise NotImplementedError


def _number(params: dict, name: str, *, positive: bool = True):
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
        raise RpcError(INVALID_PARAMS, f"'{name}' must be a positive number of seconds", {"param": name})
    return float(value)


class HubProtocol:
    """Turns one request frame into one answer frame for a hub's state.

    `methods` restricts what the hub supports (others answer -32601), to emulate deployed
    hubs without getInfo or getEntityParams.
    """

    def __init__(self, state: HubState, *, key: str, methods: set[str] | frozenset[str] | None = None):
        unknown = set(methods or ()) - ALL_METHODS
        if unknown:
            raise ValueError(f"unknown hub methods: {sorted(unknown)}")
        self.state = state
        self.key = key
        self.methods = frozenset(methods) if methods else ALL_METHODS
        self._sub_ids = itertools.count(1)
        self._handlers = {
            "getInfo": self.get_info, "ping": self.ping, "getEntities": self.get_entities,
            "getParams": self.get_params, "getEntityParams": self.get_entity_params,
            "setEntityParams": self.set_entity_params, "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
        }

    def handle(self, text: str | bytes, session: Session) -> str:
        try:
            msg = _loads(text)
        except (ValueError, TypeError):
            return error_frame(None, PARSE_ERROR, "parse error: the frame is not JSON")
        if not isinstance(msg, dict):
            return error_frame(None, INVALID_REQUEST, "invalid request: not a JSON object")
        rid = msg.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (int, str)):
            return error_frame(None, INVALID_REQUEST, "invalid request: missing or bad 'id' (integer or string)")
        method = msg.get("method")
        if not isinstance(method, str):
            return error_frame(rid, INVALID_REQUEST, "invalid request: no 'method'")
        if msg.get("key") != self.key:
            # hub protocol v1: every request carries the key; never echo what was sent
            return error_frame(rid, 401, "wrong or missing key")
        if method not in self.methods:
            return error_frame(rid, METHOD_NOT_FOUND, f"method not found: {method!r}", {"method": method})
        params = msg.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            return error_frame(rid, INVALID_PARAMS, "invalid params: 'params' must be an object")
        try:
            result = self._handlers[method](params, session)
        except RpcError as exc:
            return error_frame(rid, exc.code, exc.message, exc.data)
        except Exception:
            log.exception("hub %s: internal error in %s", self.state.name, method)
            return error_frame(rid, INTERNAL_ERROR, "internal hub error")
        return f'{{"id":{encode(rid)},"result":{result}}}'

    # -- parameter checks

    def _entity(self, params: dict, name: str = "entity", *, required: bool = True) -> Entity | None:
        ident = params.get(name)
        if ident is None and not required:
            return None
        if not isinstance(ident, str):
            raise RpcError(INVALID_PARAMS, f"invalid params: '{name}' must be an entity id", {"param": name})
        entity = self.state.entities.get(ident)
        if entity is None:
            raise RpcError(404, f"unknown entity {ident!r}", {"entity": ident})
        return entity

    def _keys(self, params: dict, entity: Entity, *, required: bool) -> list[str] | None:
        keys = params.get("keys")
        if keys is None and not required:
            return None
        if keys and keys == entity.keys:  # every key in order, the usual poll: one comparison checks them all
            return entity.keys
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or (required and not keys):
            raise RpcError(INVALID_PARAMS, "invalid params: 'keys' must be a list of parameter keys", {"param": "keys"})
        for key in keys:
            if key not in entity.params:
                raise RpcError(404, f"unknown key {key!r} of entity {entity.id!r}", {"entity": entity.id, "key": key})
        return keys

    # -- methods (each returns the result as JSON text)

    def get_info(self, params: dict, session: Session) -> str:
        return _dumps({"hub": self.state.name, "protocol": 1, "methods": sorted(self.methods), "time": now_ts()})

    def ping(self, params: dict, session: Session) -> str:
        return f'{{"time":"{now_ts()}"}}'

    def get_entities(self, params: dict, session: Session) -> str:
        parent = self._entity(params, "parent", required=False)
        depth = params.get("depth")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise RpcError(INVALID_PARAMS, "invalid params: 'depth' must be a positive integer", {"param": "depth"})
        roots = parent.children if parent else self.state.roots
        return _dumps({"entities": self.state.entity_tree(roots, depth)})

    def get_params(self, params: dict, session: Session) -> str:
        entity = self._entity(params)
        return f'{{"entity":{entity.id_json},"params":{entity.params_json}}}'

    def get_entity_params(self, params: dict, session: Session) -> str:
        entity = self._entity(params)
        keys = self._keys(params, entity, required=False)
        return f'{{"entity":{entity.id_json},"values":[{self.state.values_json(entity, keys)}]}}'

    def set_entity_params(self, params: dict, session: Session) -> str:
        entity = self._entity(params)
        values = params.get("values")
        if not isinstance(values, dict) or not values:
            raise RpcError(INVALID_PARAMS, "invalid params: 'values' must be an object of key -> value", {"param": "values"})
        # hub protocol v1: setEntityParams is all-or-nothing, so check every key before writing any
        for key, value in values.items():
            p = entity.params.get(key)
            if p is None:
                raise RpcError(404, f"unknown key {key!r} of entity {entity.id!r}", {"entity": entity.id, "key": key})
            if not p.writable:
                raise RpcError(403, f"parameter {key!r} is not writable", {"entity": entity.id, "key": key})
            if not matches_type(p.type, value):
                raise RpcError(422, f"value for {key!r} does not fit type {p.type}",
                               {"entity": entity.id, "key": key, "type": p.type})
        written = self.state.write(entity, values)
        return _dumps({"entity": entity.id, "written": written})

    def subscribe(self, params: dict, session: Session) -> str:
        entity = self._entity(params)
        keys = self._keys(params, entity, required=True)
        period = _number(params, "period")
        timeout = _number(params, "timeout")
        on_change = params.get("onChange", True)
        if not isinstance(on_change, bool):
            raise RpcError(INVALID_PARAMS, "invalid params: 'onChange' must be a boolean", {"param": "onChange"})
        sub_id = f"s-{next(self._sub_ids)}"
        session.subscribe(sub_id, entity, keys, period=period, on_change=on_change, timeout=timeout)
        return _dumps({"subscription": sub_id})

    def unsubscribe(self, params: dict, session: Session) -> str:
        sub_id = params.get("subscription")
        if not isinstance(sub_id, str):
            raise RpcError(INVALID_PARAMS, "invalid params: 'subscription' must be a subscription id", {"param": "subscription"})
        if not session.unsubscribe(sub_id):
            raise RpcError(404, f"unknown subscription {sub_id!r}", {"subscription": sub_id})
        return "{}"
