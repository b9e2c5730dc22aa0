"""The reference hub's state: the entity index, current values, and writes."""

from __future__ import annotations

import json
import sys
import threading
import time
from operator import itemgetter

from .signals import Signal, cycle_texts, encode, format_ts, number_texts, quality_bucket, uncertain
from .tree import PUBLIC_PARAM_FIELDS, private_tree, walk

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Param:
    """One parameter: its public description, and either a signal (read-only) or the last written value.

    `head` is the start of its value item, `{"key":"<key>","value":`, encoded once. A writable
    parameter also keeps the rest of its item, which changes only when it is written: `text`
    (the value's JSON) and `tail` (`,"ts":"<when written>","quality":"good"}`).
    """

    __slots__ = ("key", "public", "type", "writable", "signal", "value", "ts", "head", "text", "tail")

    def __init__(self, entity: str, raw: dict, *, seed: int, tick: float):
        self.key = raw["key"]
        self.head = sys.intern(f'{{"key":{_dumps(self.key)},"value":')  # shared by entities with the same keys
        self.public = {f: raw[f] for f in PUBLIC_PARAM_FIELDS}
        self.type = raw["type"]
        self.writable = raw["writable"]
        self.signal = None
        self.value = self.ts = self.text = self.tail = None
        if self.writable:
            self.set(raw["initial"], format_ts(time.time()))
        else:
            self.signal = Signal(self.type, raw["signal"], seed=seed, entity=entity, key=self.key, tick=tick, flaky=raw.get("flaky", False))

    def set(self, value, ts: str) -> None:
        """Hold a written value (writable parameters: always quality "good", the write's own ts)."""
        self.value, self.ts = value, ts
        self.text, self.tail = encode(value), _tail(ts, "good")


def _tail(ts: str, quality: str) -> str:
    """The end of a value item, after the value."""
    return f',"ts":"{ts}","quality":"{quality}"}}'


class Entity:
    """One entity, its parameters, and its values as sampled at its last read tick (see HubState).

    A refresh samples the read-only parameters in sampling order: numbers without steps first
    and values that cycle through a list next (both in bulk, `signals.number_texts` and
    `signals.cycle_texts`), then the others; `_in_order` puts their texts, and the writable
    parameters', back in the entity's order.
    """

    __slots__ = ("id", "name", "type", "children", "params", "keys", "positions", "params_json", "id_json",
                 "_readonly", "_plain", "_cycles", "_others", "_writable", "_writable_at", "_in_order", "_heads",
                 "_qbucket", "_uncertain", "_flaky", "_tick", "_texts", "_tails", "_joined", "_vtick", "_values")

    def __init__(self, raw: dict, *, seed: int, tick: float):
        self.id = raw["id"]
        self.id_json = _dumps(self.id)
        self.name = raw["name"]
        self.type = raw["type"]
        self.children: list[Entity] = []
        self.params: dict[str, Param] = {p["key"]: Param(self.id, p, seed=seed, tick=tick) for p in raw["params"]}
        self.keys: list[str] = list(self.params)        # every key, in the entity's order
        self.positions = {key: i for i, key in enumerate(self.keys)}
        self.params_json = _dumps([p.public for p in self.params.values()])
        params = list(self.params.values())
        signals = [p for p in params if p.signal is not None]
        plain = [p for p in signals if p.signal.plain is not None]
        cycles = [p for p in signals if p.signal.cycle is not None]
        others = [p for p in signals if p.signal.plain is None and p.signal.cycle is None]
        self._readonly = [(self.positions[p.key], p) for p in plain + cycles + others]  # sampling order
        self._plain = [p.signal.plain for p in plain]
        self._cycles = [p.signal.cycle for p in cycles]
        self._others = [p.signal for p in others]
        self._writable = [p for p in params if p.writable]
        self._writable_at = [(self.positions[p.key], p) for p in self._writable]
        sampling = {id(p): i for i, p in enumerate(plain + cycles + others + self._writable)}
        self._in_order = _picker([sampling[id(p)] for p in params])
        # the joined items, piece by piece: head, text, tail, with a comma before every head but the first
        self._heads = [p.head if i == 0 else sys.intern("," + p.head) for i, p in enumerate(params)]
        self._qbucket = None
        self._uncertain: list[tuple[int, str]] = []  # (position, "uncertain") in the quality bucket _qbucket
        self._flaky = [(i, p.signal) for i, p in self._readonly if p.signal.flaky]
        self._tick = -1
        self._texts: tuple[str, ...] = ()  # at _tick, in the entity's order: the values' JSON
        self._tails: list[str] = []        # the items' ends (ts and quality)
        self._joined = ""                  # every item, joined with ","
        self._vtick = -1
        self._values: dict[str, tuple] = {}

    def invalidate(self):
        self._tick = self._vtick = -1


def _picker(positions: list[int]):
    """A function that returns the items at `positions` of a sequence, as a tuple."""
    if len(positions) == 1:
        only = positions[0]
        return lambda items: (items[only],)
    return itemgetter(*positions) if positions else (lambda items: ())


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

    Values are sampled per tick (`tick` seconds, default 0.1): read-only values carry the
    tick's start as ts, and within a tick, reads of an entity reuse what the first read
    encoded. A read in a new tick encodes each of the entity's values once (numbers in bulk)
    and joins them with parts kept ready: each key's head, the tick's ts-and-quality tails,
    and the qualities of the current quality bucket: a poll of every key of an entity
    (`values_json`) is the hub's hot path. Thread-safe for writes from tests (reads happen
    on the hub's event loop thread).
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
        self._tails: dict[str, str] = {}
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
            self._tails = {q: _tail(self._ts, q) for q in ("good", "uncertain", "bad")}
        return self._ts

    # -- reads

    def entity_tree(self, roots: list[Entity], depth: int | None) -> list[dict]:
        """Entities in the getEntities shape; entities at the depth limit carry `children: []`."""
        def one(e: Entity, level: int) -> dict:
            deeper = depth is None or level < depth
            return {"id": e.id, "name": e.name, "type": e.type,
                    "children": [one(c, level + 1) for c in e.children] if deeper else []}
        return [one(e, 1) for e in roots]

    def _odd_qualities(self, entity: Entity, k: int) -> list[tuple[int, str]]:
        """(position, quality) at tick k of the read-only parameters whose quality is not "good", bad last."""
        t = k * self.tick
        bucket = quality_bucket(t)
        if bucket != entity._qbucket:
            flags = uncertain([p.signal for _, p in entity._readonly], bucket)
            entity._uncertain = [(i, "uncertain") for (i, _), flag in zip(entity._readonly, flags) if flag]
            entity._qbucket = bucket
        if not entity._flaky:
            return entity._uncertain
        bad = [(i, "bad") for i, signal in entity._flaky if signal.outage(t)]
        return entity._uncertain + bad if bad else entity._uncertain

    def _refresh(self, entity: Entity, k: int) -> None:
        self.tick_ts(k)
        t = k * self.tick
        texts = number_texts(entity._plain, t) if entity._plain else []
        texts += cycle_texts(entity._cycles, t)
        texts += [signal.text(k) for signal in entity._others]
        texts += [p.text for p in entity._writable]
        texts = entity._in_order(texts)
        tails = [self._tails["good"]] * len(texts)
        for i, quality in self._odd_qualities(entity, k):
            tails[i] = self._tails[quality]
        for i, p in entity._writable_at:
            tails[i] = p.tail
        pieces = [""] * (3 * len(texts))
        pieces[0::3], pieces[1::3], pieces[2::3] = entity._heads, texts, tails
        entity._texts, entity._tails, entity._joined, entity._tick = texts, tails, "".join(pieces), k

    def _sampled(self, entity: Entity, k: int | None) -> Entity:
        k = self.current_tick() if k is None else k
        if entity._tick != k:
            self._refresh(entity, k)
        return entity

    def value_fragments(self, entity: Entity, keys: list[str] | None, k: int | None = None) -> list[str]:
        """JSON-encoded `{"key","value","ts","quality"}` items for the given keys (all when None)."""
        entity = self._sampled(entity, k)
        params, texts, tails, positions = entity.params, entity._texts, entity._tails, entity.positions
        return [f"{params[key].head}{texts[positions[key]]}{tails[positions[key]]}"
                for key in (entity.keys if keys is None else keys)]

    def values_json(self, entity: Entity, keys: list[str] | None, k: int | None = None) -> str:
        """The items of `value_fragments` joined with "," (the inside of a `values` array).

        Every key in the entity's order (`keys` None or equal to `entity.keys`, the usual poll)
        is the tick's join, built once.
        """
        entity = self._sampled(entity, k)
        if keys is None or keys is entity.keys or keys == entity.keys:
            return entity._joined
        return ",".join(self.value_fragments(entity, keys, entity._tick))

    def values_now(self, entity: Entity, k: int | None = None) -> dict[str, tuple]:
        """{key: (value, quality)} at tick k (now when None), used for change detection."""
        k = self.current_tick() if k is None else k
        if entity._vtick != k:
            qualities = ["good"] * len(entity.keys)
            for i, quality in self._odd_qualities(entity, k):
                qualities[i] = quality
            entity._values = {
                key: (p.value, "good") if p.writable else (p.signal.value(k), qualities[i])
                for i, (key, p) in enumerate(entity.params.items())
            }
            entity._vtick = k
        return entity._values

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
                p.set(value, ts)
            entity.invalidate()
        return list(values)
