"""The reference hub's state: the entity index, current values, and writes."""

from __future__ import annotations

import json
import math
import threading
import time

from .signals import Signal, format_ts
from .tree import PUBLIC_PARAM_FIELDS, private_tree, walk

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _encode(value) -> str:
    """JSON text of a value; numbers and booleans without the encoder's overhead (the hub's hot path)."""
    kind = type(value)
    if kind is float and math.isfinite(value):
        return repr(value)  # what json.dumps writes for a finite float
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    return _dumps(value)


class Param:
    __slots__ = ("key", "public", "type", "writable", "signal", "value", "ts", "prefix")

    def __init__(self, entity: str, raw: dict, *, seed: int, tick: float):
        self.key = raw["key"]
        self.prefix = f'{{"key":{_dumps(self.key)},"value":'  # the start of every value item, encoded once
        self.public = {f: raw[f] for f in PUBLIC_PARAM_FIELDS}
        self.type = raw["type"]
        self.writable = raw["writable"]
        self.signal = None
        self.value = None
        self.ts = None
        if self.writable:
            self.value = raw["initial"]
            self.ts = format_ts(time.time())
        else:
            self.signal = Signal(self.type, raw["signal"], seed=seed, entity=entity, key=self.key, tick=tick, flaky=raw.get("flaky", False))


class Entity:
    __slots__ = ("id", "name", "type", "children", "params", "params_json", "id_json", "_tick", "_frags", "_values")

    def __init__(self, raw: dict, *, seed: int, tick: float):
        self.id = raw["id"]
        self.id_json = _dumps(self.id)
        self.name = raw["name"]
        self.type = raw["type"]
        self.children: list[Entity] = []
        self.params: dict[str, Param] = {p["key"]: Param(self.id, p, seed=seed, tick=tick) for p in raw["params"]}
        self.params_json = _dumps([p.public for p in self.params.values()])
        self._tick = -1
        self._frags: dict[str, str] = {}
        self._values: dict[str, object] = {}

    def invalidate(self):
        self._tick = -1


def matches_type(type_: str, value) -> bool:
    """Whether a JSON value fits a parameter type (hub protocol v1: 422 when it does not)."""
    if type_ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_ == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "object":
        return isinstance(value, dict)
    return False


class HubState:
    """Entities, parameters and their current values for one hub.

    Values are sampled per tick (`tick` seconds, default 0.1): within a tick, reads of an
    entity reuse the JSON fragments already encoded, which keeps the hot path cheap.
    Thread-safe for writes from tests (reads happen on the hub's event loop thread).
    """

    def __init__(self, *, name: str = "hub", seed: int = 1, tick: float = 0.1, tree: list[dict] | None = None):
        self.name = name
        self.seed = seed
        self.tick = tick
        self.entities: dict[str, Entity] = {}
        self.roots: list[Entity] = []
        self.lock = threading.Lock()
        self._ts_tick = -1
        self._ts = ""
        for raw, parent in walk(tree if tree is not None else private_tree()):
            entity = Entity(raw, seed=seed, tick=tick)
            if name and parent is None:
                entity.name = f"{entity.name} ({name})"
            self.entities[entity.id] = entity
            (self.entities[parent].children if parent else self.roots).append(entity)

    # -- time

    def current_tick(self) -> int:
        return int(time.time() / self.tick)

    def tick_ts(self, k: int) -> str:
        if k != self._ts_tick:
            self._ts, self._ts_tick = format_ts(k * self.tick), k
        return self._ts

    # -- reads

    def entity_tree(self, roots: list[Entity], depth: int | None) -> list[dict]:
        """Entities in the getEntities shape; entities at the depth limit carry `children: []`."""
        def one(e: Entity, level: int) -> dict:
            deeper = depth is None or level < depth
            return {"id": e.id, "name": e.name, "type": e.type,
                    "children": [one(c, level + 1) for c in e.children] if deeper else []}
        return [one(e, 1) for e in roots]

    def _refresh(self, entity: Entity, k: int) -> None:
        ts = self.tick_ts(k)
        frags, values = {}, {}
        for key, p in entity.params.items():
            if p.writable:
                value, vts, quality = p.value, p.ts, "good"
            else:
                value, vts, quality = p.signal.value(k), ts, p.signal.quality(k)
            values[key] = (value, quality)
            frags[key] = f'{p.prefix}{_encode(value)},"ts":"{vts}","quality":"{quality}"}}'
        entity._frags, entity._values, entity._tick = frags, values, k

    def _sampled(self, entity: Entity, k: int | None) -> Entity:
        k = self.current_tick() if k is None else k
        if entity._tick != k:
            self._refresh(entity, k)
        return entity

    def value_fragments(self, entity: Entity, keys: list[str] | None, k: int | None = None) -> list[str]:
        """JSON-encoded `{"key","value","ts","quality"}` items for the given keys (all when None)."""
        frags = self._sampled(entity, k)._frags
        return list(frags.values()) if keys is None else [frags[key] for key in keys]

    def values_now(self, entity: Entity, k: int | None = None) -> dict[str, tuple]:
        """{key: (value, quality)} at tick k (now when None), used for change detection."""
        return self._sampled(entity, k)._values

    def read(self, entity_id: str, key: str):
        """The current value of one parameter (for tests and the demo)."""
        entity = self.entities[entity_id]
        return json.loads(self.value_fragments(entity, [key])[0])["value"]

    # -- writes

    def write(self, entity: Entity, values: dict) -> list[str]:
        """Write already validated values (all or nothing is the caller's check)."""
        ts = format_ts(time.time())
        with self.lock:
            for key, value in values.items():
                p = entity.params[key]
                if p.type == "integer" and isinstance(value, float):
                    value = int(value)
                p.value, p.ts = value, ts
            entity.invalidate()
        return list(values)
