"""The acquisition side of group executions, batch-first: poll the hubs, run scripts, write back.

A batch is a list of ticks (group, scheduled time), typically one hub's due groups of one tick.
All of a batch's reads go out pipelined on the hubs' persistent connections before any answer
is awaited. One group's fault (hub, script) fails that group's execution only. What a batch
acquired goes to the durable log in one append (``groups.services.group_runs_execute``); the sinks'
forwarders store it from there (``streams.forwarding``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone

from hubs.client import HubClient, HubError, hub_client
from hubs.models import Hub
from scripts_engine.sinks.values import ESTIMATED_VALUE_BYTES, STORABLE_TS, ts_storable, value_json

from .models import Group, Trigger

logger = logging.getLogger(__name__)


class GroupRunError(Exception):
    """An execution failed for a reason a person can act on; the message says what and where."""


@dataclass
class Binding:
    """One value of an execution: where it came from and what the script left in it."""

    name: str
    entity: str
    key: str
    value: Any
    ts: str | None = None
    quality: str = "good"
    writable: bool = False


@dataclass
class Outcome:
    """What became of one tick: ``values`` stored, or ``error`` (empty when it went well).

    ``read`` holds the hub's answers as they came, ``[(entity, [value object])]`` (hub protocol v1
    ``getEntityParams`` values, exactly the group's keys); a group without a script stores them as
    they are, without a Python object per value. ``bindings`` is made only for a script.
    """

    group: Group
    scheduled_for: datetime
    started_at: datetime
    finished_at: datetime | None = None
    values: int = 0  # acquired: what the log holds for it
    error: str = ""
    bindings: dict[str, Binding] = field(default_factory=dict)
    reads: dict[str, Future] = field(default_factory=dict)  # entity -> pending getEntityParams
    read: list[tuple[str, list[dict]]] = field(default_factory=list)
    read_bytes: int = 0  # the answers' size (values_check)
    deadline: float | None = None  # epoch s: the tick's expiry; reads not answered by then fail (None: hub timeout only)


def client_for(hub: Hub) -> HubClient:
    """The process-wide persistent client of ``hub`` (hub protocol v1: one connection per hub), refusing
    frames over the hub's ``max_frame_bytes`` (default the setting HUBSCHED_HUB_MAX_FRAME_BYTES), and reaching
    a wss:// hub with its TLS settings (``Hub.tls_options()``: CA bundle, client certificate, verification)."""
    return hub_client(
        hub.url,
        hub.api_key,
        timeout=hub.timeout,
        max_in_flight=min(hub.max_in_flight, settings.HUBSCHED_HUB_MAX_IN_FLIGHT),
        max_frame_bytes=hub.max_frame_bytes or settings.HUBSCHED_HUB_MAX_FRAME_BYTES,
        tls=hub.tls_options(),
    )


def execute_batch(*, ticks: list[tuple[Group, datetime]], expire: bool = False) -> list[Outcome]:
    """Execute ``ticks`` (groups with prefetched ``keys``, ``hub__project`` and ``script``): poll, run
    scripts, write back.

    With ``expire`` (scheduled ticks) a tick's reads must be answered before the tick expires
    (``tick_deadline``): a hub that cannot be reached by then, its client still waiting out a reconnect
    backoff, fails the tick at once instead of storing values sampled late (issue 13).

    Returns one Outcome per tick, in order, final: ``finished_at``, ``error`` (empty when it went well)
    and, for those, ``read`` (what is stored) and ``values`` (how many). Never raises for a hub or
    script fault. Storing is the caller's: ``groups.services`` appends every outcome to the durable log,
    which the sinks' forwarders read (docs/streams.md).
    """
    started = timezone.now()
    outcomes = [Outcome(group=g, scheduled_for=t, started_at=started, deadline=tick_deadline(g, t) if expire else None)
                for g, t in ticks]
    writable = _writable_params({o.group.hub_id for o in outcomes})
    _send_batch_reads(outcomes)  # every read goes out before any answer is awaited
    for outcome in outcomes:
        if not outcome.error:
            _fail_on_error(outcome, _collect_reads, outcome)
        if not outcome.error and outcome.group.script_id:
            _fail_on_error(outcome, _run_script, outcome, writable)
    finished = timezone.now()
    for outcome in outcomes:
        outcome.finished_at = finished
        if not outcome.error:
            outcome.values = sum(len(items) for _, items in outcome.read)
    return outcomes


def _fail_on_error(outcome: Outcome, step, *args) -> None:
    try:
        step(*args)
    except GroupRunError as exc:
        outcome.error = str(exc)


def _writable_params(hub_ids: set[int]) -> set[tuple[int, str, str]]:
    from .definitions import definitions

    return definitions().writable(hub_ids)


ReadPlan = tuple[list[tuple[str, str, str]], dict[str, list[str]]]


def read_plan_of(keys: list[tuple[str, str, str]]) -> ReadPlan:
    """``([(binding, entity, key)], {entity: [key]})`` from a group's keys ``[(binding, entity, key)]``
    in their order. Keys are unique per entity (GroupKey)."""
    by_entity: dict[str, list[str]] = defaultdict(list)
    for _, entity, key in keys:
        by_entity[entity].append(key)
    return keys, dict(by_entity)


def read_plan_set(group: Group, keys: list[tuple[str, str, str]]) -> None:
    """Give ``group`` its read plan from keys read in bulk (groups/definitions.py), instead of its
    ``keys`` relation."""
    group.__dict__["_read_plan"] = read_plan_of(keys)


def _read_plan(group: Group) -> ReadPlan:
    """The group's read plan, worked out once per Group instance (the worker keeps instances)."""
    plan = group.__dict__.get("_read_plan")
    if plan is None:
        plan = group.__dict__["_read_plan"] = read_plan_of([(gk.binding, gk.entity, gk.key) for gk in group.keys.all()])
    return plan


def _send_reads(outcome: Outcome) -> None:
    """One pipelined ``getEntityParams`` per entity of the group."""
    _send_batch_reads([outcome])
    if outcome.error:
        raise GroupRunError(outcome.error)


def tick_deadline(group: Group, scheduled_for: datetime) -> float | None:
    """Epoch seconds at which a tick of ``group`` expires (as the worker counts it, groups.scheduler.dispatch:
    ``expires``, else one period); None for a cron group without ``expires``, whose period is the gap to its
    next tick, not known here."""
    if group.expires is None and group.trigger == Trigger.CRON:
        return None
    return scheduled_for.timestamp() + group.expiry_seconds


def _send_batch_reads(outcomes: list[Outcome]) -> None:
    """The ``getEntityParams`` of every entity of every outcome's group, each hub's written together
    (``HubClient.call_many_async``: one socket write for as many as the in-flight limit lets go).

    Each call's timeout is the hub's, cut to what is left of the tick (``Outcome.deadline``): connecting,
    the client's reconnect backoff included, and the answer must fit in it. A tick already expired is
    failed without a call."""
    by_hub: dict[tuple[int, float | None], tuple[Hub, list[tuple[Outcome, str, list[str]]]]] = {}
    for outcome in outcomes:
        keys, by_entity = _read_plan(outcome.group)
        if not keys:
            outcome.error = "the group reads no keys"
            continue
        hub = outcome.group.hub
        reads = by_hub.setdefault((hub.pk, outcome.deadline), (hub, []))[1]
        reads.extend((outcome, entity, entity_keys) for entity, entity_keys in by_entity.items())
    now = time.time()
    for (_, deadline), (hub, reads) in by_hub.items():
        timeout = hub.timeout if deadline is None else min(hub.timeout, deadline - now)
        if timeout <= 0:
            for outcome, _, _ in reads:
                outcome.error = f"hub {hub.name!r}: the tick expired before its reads were sent"
            continue
        futures = client_for(hub).call_many_async(
            [("getEntityParams", {"entity": entity, "keys": entity_keys}) for _, entity, entity_keys in reads],
            timeout=timeout)
        for (outcome, entity, _), future in zip(reads, futures):
            outcome.reads[entity] = future


def _collect_reads(outcome: Outcome) -> None:
    """Wait for the group's answers into ``outcome.read``: per entity, one value object per key asked, in
    order, each meeting the value contract (``values_check``); ``outcome.read_bytes``, the answers' size."""
    hub = outcome.group.hub
    by_entity = _read_plan(outcome.group)[1]
    max_value_bytes = hub.max_value_bytes or settings.HUBSCHED_HUB_MAX_VALUE_BYTES
    read = []
    size = 0
    for entity, future in outcome.reads.items():
        try:
            values = future.result(timeout=hub.timeout + 1.0).get("values")
            frame_bytes = getattr(future, "hub_frame_bytes", 0)
        except HubError as exc:
            if exc.code != -32601:
                raise GroupRunError(f"hub {hub.name!r}, entity {entity!r}: {exc}") from exc
            # hub protocol v1: a hub without getEntityParams is read through subscribe
            values = _read_via_subscribe(hub, entity, by_entity[entity])
            frame_bytes = 0
        picked = _answer_values(hub, entity, by_entity[entity], values)
        size += values_check(hub=hub.name, entity=entity, values=picked, max_value_bytes=max_value_bytes,
                             frame_bytes=frame_bytes)
        read.append((entity, picked))
    outcome.read = read
    outcome.read_bytes = size
    outcome.reads = {}


# hub protocol v1: quality is good, uncertain or bad; absent means good
QUALITIES = frozenset({"good", "uncertain", "bad"})
_QUALITY_OK = QUALITIES | {None}
_NUMBERS = (float, int, bool, type(None))  # values that need no look inside: JSON numbers, booleans, null


def values_check(*, hub: str, entity: str, values: list[dict], max_value_bytes: int, frame_bytes: int = 0) -> int:
    """Check hub value objects against the value contract; returns their size in bytes.

    A value object passes when its ``quality`` is good, uncertain, bad or absent; its ``ts`` is absent or
    a text the sinks can store (``scripts_engine.sinks.values.ts_storable``: RFC 3339, hub protocol v1);
    its ``value`` holds no string with a NUL character (anywhere, keys of nested objects included: no
    sink can store one in a text column); and the value's JSON is at most ``max_value_bytes`` bytes
    (the hub's ``max_value_bytes``, HUBSCHED_HUB_MAX_VALUE_BYTES). ``frame_bytes`` is the size of the
    answer they came in (0: unknown): an answer no larger than ``max_value_bytes`` holds no larger
    value, so then no value is measured. The size returned is ``frame_bytes`` when known, else an
    estimate (``ESTIMATED_VALUE_BYTES`` per value plus the measured size of strings and containers).

    Raises GroupRunError naming the hub, entity and key and what is wrong; the execution fails, not its
    batch-mates. Cost (docs/data-path.md): a number value with a timestamp seen before is three dict
    lookups, two set memberships and a type test; strings are scanned for NUL in C; containers are encoded once by orjson.
    """
    measure = not 0 < frame_bytes <= max_value_bytes
    quality_ok, known_ts, numbers = _QUALITY_OK, STORABLE_TS, _NUMBERS
    extra = 0
    try:
        for item in values:
            get = item.get
            if get("quality") not in quality_ok:
                raise _NotContract
            ts = get("ts")
            if ts not in known_ts and not ts_storable(ts):
                raise _NotContract
            value = get("value")
            kind = type(value)
            if kind in numbers:
                continue
            if kind is str:
                if "\x00" in value:
                    raise _NotContract
                if measure and len(value) * 6 + 2 > max_value_bytes:
                    size = _json_size(value)
                    if size > max_value_bytes:
                        raise _NotContract
                    extra += size
            elif _json_problem(value, max_value_bytes if measure else 0):
                raise _NotContract
            elif measure:
                extra += _json_size(value)
    except (_NotContract, TypeError):  # TypeError: an unhashable quality or ts
        for item in values:
            problem = _value_problem(item, max_value_bytes)
            if problem:
                raise GroupRunError(f"hub {hub!r}, entity {entity!r}, key {item.get('key')!r}: {problem}") from None
        raise  # not reached: the slow check finds what the fast one did
    return frame_bytes if frame_bytes > 0 else ESTIMATED_VALUE_BYTES * len(values) + extra


class _NotContract(Exception):
    pass


def _json_size(value: Any) -> int:
    """Bytes of the value's JSON (orjson's, or the sinks' ``value_json`` where orjson cannot encode it)."""
    try:
        return len(orjson.dumps(value))
    except TypeError:  # integers past 64 bits, lone surrogates
        return len(value_json(value).encode("utf-8", "surrogatepass"))


def _json_problem(value: Any, max_bytes: int) -> bool:
    """Whether a list or object holds a NUL character, or (``max_bytes`` > 0) its JSON is larger than that."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        return _has_nul(value) or (max_bytes > 0 and _json_size(value) > max_bytes)
    except RecursionError:
        return True
    if max_bytes and len(encoded) > max_bytes:
        return True
    return b"\\u0000" in encoded and _has_nul(value)  # the text "\u0000" is also encoded with it


def _has_nul(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return "\x00" in value
    if kind is list:
        return any(_has_nul(v) for v in value)
    if kind is dict:
        return any("\x00" in k if type(k) is str else False for k in value) or any(_has_nul(v) for v in value.values())
    return False


def _value_problem(item: Any, max_value_bytes: int) -> str:
    """What is wrong with one value object ("" when nothing), for the error message."""
    quality = item.get("quality")
    if not (quality is None or (type(quality) is str and quality in QUALITIES)):
        return f"quality {_shown(quality)} is not good, uncertain or bad (hub protocol v1)"
    ts = item.get("ts")
    if ts is not None and not (type(ts) is str and ts_storable(ts)):
        return f"ts {_shown(ts)} is not an RFC 3339 timestamp that can be stored (hub protocol v1)"
    value = item.get("value")
    try:
        if _has_nul(value):
            return "the value holds a NUL character, which no sink stores"
        size = _json_size(value)
    except RecursionError:
        return "the value is nested too deeply to store"
    if size > max_value_bytes:
        return (f"the value's JSON is {size} bytes, over the hub's limit of {max_value_bytes} bytes "
                f"(max_value_bytes, HUBSCHED_HUB_MAX_VALUE_BYTES)")
    return ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _answer_values(hub: Hub, entity: str, keys: list[str], values: Any) -> list[dict]:
    """The value objects of ``keys`` from a ``getEntityParams`` answer, in the order of ``keys``.

    The usual answer has exactly those keys in that order and is taken as it is; any other is
    picked from (extra keys dropped). Raises GroupRunError naming a key the hub left out.
    """
    if not isinstance(values, list):
        raise GroupRunError(f"hub {hub.name!r}, entity {entity!r}: the answer has no 'values' list")
    try:
        if [v["key"] for v in values] == keys:
            return values
    except (TypeError, KeyError, IndexError):
        pass
    got = {v.get("key"): v for v in values if isinstance(v, dict)}
    picked = []
    for key in keys:
        item = got.get(key)
        if item is None:
            raise GroupRunError(f"hub {hub.name!r}, entity {entity!r}: no value for key {key!r}")
        picked.append(item)
    return picked


def _bindings(outcome: Outcome, writable: set[tuple[int, str, str]]) -> dict[str, Binding]:
    """The script's view of ``outcome.read``: one Binding per group key, by binding name."""
    hub_id = outcome.group.hub_id
    items = {(entity, item["key"]): item for entity, values in outcome.read for item in values}
    bindings = {}
    for binding, entity, key in _read_plan(outcome.group)[0]:
        item = items[(entity, key)]
        bindings[binding] = Binding(binding, entity, key, item.get("value"), item.get("ts"),
                                    str(item.get("quality") or "good"), bool(writable) and (hub_id, entity, key) in writable)
    return bindings


def _read_from_bindings(bindings: dict[str, Binding]) -> list[tuple[str, list[dict]]]:
    """What a script's execution stores: every binding with its final value, per entity (computed ones under "")."""
    by_entity: dict[str, list[dict]] = defaultdict(list)
    for b in bindings.values():
        by_entity[b.entity].append({"key": b.key, "value": b.value, "ts": b.ts, "quality": b.quality})
    return list(by_entity.items())


def _read_via_subscribe(hub: Hub, entity: str, keys: list[str]) -> list:
    try:
        return client_for(hub).get_entity_params(entity, keys)
    except HubError as exc:
        raise GroupRunError(f"hub {hub.name!r}, entity {entity!r}: {exc}") from exc


def _run_script(outcome: Outcome, writable: set[tuple[int, str, str]]) -> None:
    """Run the group's script on the bindings; write back changed writable ones, one call per entity.

    Rule (docs/scripts.md): a binding is written back when the script changed its value and the
    parameter is writable in the hub's entity tree; all of an entity's changes go in one
    ``setEntityParams`` (hub protocol v1: all or nothing). New names the script binds are stored as
    derived values (entity ""). Every binding is stored with its final value.
    """
    from scripts_engine.sandbox import ScriptError, script_execute
    from scripts_engine.services import script_data_sources

    group, hub = outcome.group, outcome.group.hub
    bindings = outcome.bindings = _bindings(outcome, writable)
    script = group.script
    try:
        result = script_execute(
            code=script.code,
            bindings={name: b.value for name, b in bindings.items()},
            timeout=script.timeout,
            memory_limit_mb=script.memory_limit_mb,
            data_sources=script_data_sources(project_id=hub.project_id),
        )
    except ScriptError as exc:
        raise GroupRunError(f"script {script.name!r}: {exc}") from exc
    bindings_write_back(hub=hub, bindings=bindings, results=result.bindings, changed=result.changed)
    outcome.read = _read_from_bindings(bindings)
    # what the script made is measured like a hub's values (no frame bounds it): NUL, size
    limit = hub.max_value_bytes or settings.HUBSCHED_HUB_MAX_VALUE_BYTES
    outcome.read_bytes = sum(values_check(hub=hub.name, entity=entity or "(script)", values=values, max_value_bytes=limit)
                             for entity, values in outcome.read)


def group_poll(*, group: Group) -> dict[str, Binding]:
    """Read ``group``'s keys now; returns its bindings by name. Raises ``GroupRunError`` naming the fault."""
    now = timezone.now()
    outcome = Outcome(group=group, scheduled_for=now, started_at=now)
    _send_reads(outcome)
    _collect_reads(outcome)
    return _bindings(outcome, _writable_params({group.hub_id}))


def bindings_write_back(*, hub: Hub, bindings: dict[str, Binding], results: dict[str, Any], changed: set[str]) -> dict[str, dict]:
    """Apply a script's ``results`` to ``bindings`` and write the changed writable ones back to ``hub``.

    One ``setEntityParams`` per entity (hub protocol v1: all or nothing). Names the script bound
    anew join ``bindings`` as derived values (entity ""). Returns what was written,
    ``{entity: {key: value}}``; raises ``GroupRunError`` naming the entity and keys of a refused write.
    """
    writes: dict[str, dict[str, Any]] = defaultdict(dict)
    now_ts = _now_ts()
    for name, value in results.items():
        binding = bindings.get(name)
        if binding is None:
            bindings[name] = Binding(name=name, entity="", key=name, value=value, ts=now_ts)
        elif name in changed:
            binding.value = value
            if binding.writable:
                writes[binding.entity][binding.key] = value
    client = client_for(hub)
    for entity, values in writes.items():
        try:
            client.set_entity_params(entity, values)
        except HubError as exc:
            raise GroupRunError(f"hub {hub.name!r}, entity {entity!r}: write-back of {sorted(values)} failed: {exc}") from exc
    return dict(writes)


def _now_ts() -> str:
    return timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
