"""The acquisition side of group executions, batch-first: poll the hubs, run scripts, write back.

A batch is a list of ticks (group, scheduled time), typically one hub's due groups of one tick.
All of a batch's reads go out pipelined on the hubs' persistent connections before any answer
is awaited. One group's fault (hub, script) fails that group's execution only. What a batch
acquired goes to the durable log in one append (``groups.services.group_runs_execute``); the sinks'
forwarders store it from there (``streams.forwarding``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone

from hubsched.metrics.reports import hub_client_watch
from hubs.client import HubClient, HubError, hub_client
from hubs.models import Hub
from scripts_engine.sinks.values import ESTIMATED_VALUE_BYTES, STORABLE_TS, ts_storable, value_json

from .models import Group, Trigger

logger = logging.getLogger(__name__)


class GroupRunError(Exception):
    """An execution failed for a reason a person can act on; the message says what and where."""


class ExecutionKilled(GroupRunError):
    """A person killed the execution while it ran (``KillRequest``); its remaining steps are abandoned."""


KILL_POLL_S = 0.2  # how often a worker process's kill watcher reads the pending kill requests of its groups
KILL_WAKE_S = 0.1  # how often an execution waiting for a hub's answer looks whether it was killed


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
    execution_deadline: float | None = None  # epoch s: started + the group's execution_timeout (None: none); deadline <= it
    killed_by: str = ""  # username of who killed it while it ran (the kill watcher sets it from another thread)
    step: str = ""  # the step running: "reads", "script", "write-back" (for a timeout's or a kill's message)
    served_by: Hub | None = None  # the redundancy set member read (groups/redundancy.py); None: the group's hub
    redundancy: Any = None  # the group's hub's redundancy.SetConfig, when it is in a set
    parallel: dict = field(default_factory=dict)  # parallel set: member pk -> {entity: Future} of its reads


def client_for(hub: Hub) -> HubClient:
    """The process-wide persistent client of ``hub`` (hub protocol v1: one connection per hub), with at most the
    hub's ``max_in_flight`` calls in flight (what it accepts; HUBSCHED_HUB_MAX_IN_FLIGHT is a site-wide ceiling,
    1024 by default; a changed limit applies to the shared client from this batch on: issue 19), refusing
    frames over the hub's ``max_frame_bytes`` (default the setting HUBSCHED_HUB_MAX_FRAME_BYTES), and reaching
    a wss:// hub with its TLS settings (``Hub.tls_options()``: CA bundle, client certificate, verification)."""
    client = hub_client(
        hub.url,
        hub.api_key,
        timeout=hub.timeout,
        max_in_flight=min(hub.max_in_flight, settings.HUBSCHED_HUB_MAX_IN_FLIGHT),
        max_frame_bytes=hub.max_frame_bytes or settings.HUBSCHED_HUB_MAX_FRAME_BYTES,
        tls=hub.tls_options(),
    )
    hub_client_watch(hub.pk, client)  # its connection state, calls in flight and latency in /metrics
    return client


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

    A group's ``execution_timeout`` (seconds) bounds its whole execution from the batch's start: the reads
    (``Outcome.deadline``: the earlier of it and the tick's expiry), the script (at most the time left, in
    wall-clock seconds; the tick's expiry does not cut a script) and the write-back;
    past it the outcome fails with ``execution timeout of T s exceeded during the <step>``. While the batch
    runs, this process's kill watcher (``kill_watch``) stops the executions a person killed (``KillRequest``):
    their ``killed_by`` is set, their pending reads are no longer awaited, their sandbox process is killed,
    and their ``error`` says ``killed by <user> during the <step>``.
    """
    started = timezone.now()
    start_s = started.timestamp()
    outcomes = [_outcome(g, t, started, start_s, expire) for g, t in ticks]
    with kill_watch(outcomes) as watch:
        writable = _writable_params({o.group.hub_id for o in outcomes})
        _send_batch_reads(outcomes)  # every read goes out before any answer is awaited
        for outcome in outcomes:
            if not outcome.error:
                _fail_on_error(outcome, "reads", _collect_reads, outcome)
            if not outcome.error and outcome.group.script_id:
                _fail_on_error(outcome, "script", _run_script, outcome, writable)
            watch.finished(outcome)
    finished = timezone.now()
    for outcome in outcomes:
        outcome.finished_at = finished
        if not outcome.error:
            outcome.values = sum(len(items) for _, items in outcome.read)
    return outcomes


def _outcome(group: Group, scheduled_for: datetime, started: datetime, start_s: float, expire: bool) -> Outcome:
    """A tick's Outcome with its deadline: the earlier of the tick's expiry (with ``expire``) and the group's
    execution timeout counted from ``start_s`` (epoch s)."""
    deadline = tick_deadline(group, scheduled_for) if expire else None
    limit = group.execution_timeout
    if limit is None:
        return Outcome(group=group, scheduled_for=scheduled_for, started_at=started, deadline=deadline)
    execution_deadline = start_s + limit
    return Outcome(group=group, scheduled_for=scheduled_for, started_at=started, execution_deadline=execution_deadline,
                   deadline=execution_deadline if deadline is None else min(deadline, execution_deadline))


def _fail_on_error(outcome: Outcome, name: str, step, *args) -> None:
    """Run ``step(*args)``; its GroupRunError becomes ``outcome.error``, said as a kill or an execution timeout
    when one of those ended it. A step that ran past the execution timeout fails too. ``name``: the step's
    name in those messages ("reads", "script"; the script's write-back names itself in ``outcome.step``)."""
    outcome.step = name
    try:
        if outcome.killed_by:
            raise ExecutionKilled("killed")
        step(*args)
        error = None
    except GroupRunError as exc:
        error = str(exc)
    if outcome.killed_by:
        outcome.error = f"killed by {outcome.killed_by} during the {outcome.step}"
    elif outcome.execution_deadline is not None \
            and time.time() >= outcome.execution_deadline - (TIMEOUT_SLACK_S if error is not None else 0.0):
        outcome.error = (f"execution timeout of {float(outcome.group.execution_timeout)} s exceeded during the {outcome.step}"
                         + (f" ({error})" if error else ""))
    elif error is not None:
        outcome.error = error


TIMEOUT_SLACK_S = 0.05  # a hub call cut to the deadline may give up this much before it (timer resolution)


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


def outcome_bindings(outcome: Outcome, names: frozenset | set) -> tuple[dict[str, Any], dict[str, str]]:
    """``({binding: value}, {binding: quality})`` of an ok outcome for the bindings ``names`` (those its alarm rules
    read: alarms.evaluation): the script's final bindings, or for a group without a script its reads. Quality
    ``good`` is left out. Built only when asked, and only for those names."""
    values: dict[str, Any] = {}
    quality: dict[str, str] = {}
    if outcome.bindings:
        for name in names:
            b = outcome.bindings.get(name)
            if b is not None:
                values[name] = b.value
                if b.quality != "good":
                    quality[name] = b.quality
        return values, quality
    wanted = outcome.group.__dict__.get("_rule_keys")
    if wanted is None or wanted[0] != names:  # (names, [(binding, entity, position, key)]), kept on the Group instance
        plan = _read_plan(outcome.group)
        wanted = outcome.group.__dict__["_rule_keys"] = (names, [
            (binding, entity, plan[1][entity].index(key), key) for binding, entity, key in plan[0] if binding in names])
    # outcome.read holds, per entity, one value object per key in the read plan's order (_answer_values), so a
    # binding is found at its position; a value object found elsewhere (a failover's answer) is looked up by key
    read = dict(outcome.read)
    for name, entity, position, key in wanted[1]:
        items = read.get(entity)
        if not items:
            continue
        item = items[position] if position < len(items) else None
        if item is None or item.get("key") != key:
            item = next((i for i in items if i.get("key") == key), None)
            if item is None:
                continue
        values[name] = item.get("value")
        quality_of = item.get("quality")
        if quality_of not in (None, "good"):
            quality[name] = quality_of
    return values, quality


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
        if hub.redundancy_set_id is not None:  # a hub in no set pays this one attribute test
            hub = _redundant_member(outcome, by_entity)
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


def _redundant_member(outcome: Outcome, by_entity: dict[str, list[str]]) -> Hub:
    """The member of the group's redundancy set to read now (``outcome.served_by``); while a backup serves,
    the master is probed with the same reads now and then (groups/redundancy.py: failback)."""
    from . import redundancy

    member, config = redundancy.member_to_read(outcome.group.hub)
    outcome.served_by, outcome.redundancy = member, config
    if config.mode == "parallel":
        def send(other: Hub) -> dict:
            return _reads_send(other, by_entity, max(0.01, _time_left(other, outcome)))

        redundancy.parallel_reads_send(outcome, config, send)
        return member  # every member is read each tick: no probe needed
    if member.pk != config.master.pk and redundancy.health().probe_due(config):
        master = config.master
        try:
            futures = list(_reads_send(master, by_entity, max(0.01, _time_left(master, outcome))).values())
        except HubError:
            redundancy.health().failed(config, master)
        else:
            redundancy.probe_master(config, futures)
    return member


def _time_left(hub: Hub, outcome: Outcome) -> float:
    """Seconds a call to ``hub`` for ``outcome`` may take: the hub's timeout, cut to the outcome's deadline."""
    return hub.timeout if outcome.deadline is None else min(hub.timeout, outcome.deadline - time.time())


def _reads_send(hub: Hub, by_entity: dict[str, list[str]], timeout: float) -> dict[str, Future]:
    """One ``getEntityParams`` per entity to ``hub``, pipelined: ``{entity: Future}``. Raises HubError."""
    futures = client_for(hub).call_many_async(
        [("getEntityParams", {"entity": entity, "keys": keys}) for entity, keys in by_entity.items()], timeout=timeout)
    return dict(zip(by_entity, futures))


def _send_reads_to(outcome: Outcome, hub: Hub) -> None:
    """The group's reads sent again, to ``hub`` (a backup taking over within the tick), cut to the deadline."""
    outcome.reads = {}
    timeout = _time_left(hub, outcome)
    if timeout <= 0:
        outcome.error = f"hub {hub.name!r}: the tick expired before its reads were sent"
        return
    outcome.reads = _reads_send(hub, _read_plan(outcome.group)[1], timeout)


def _collect_reads(outcome: Outcome) -> None:
    """Wait for the group's answers into ``outcome.read``: per entity, one value object per key asked, in
    order, each meeting the value contract (``values_check``); ``outcome.read_bytes``, the answers' size.
    A group whose hub is in a redundancy set fails over to the next member within the tick
    (``redundancy.reads_collect_with_failover``); ``outcome.served_by`` is then the member that served."""
    if outcome.served_by is None:
        outcome.read, outcome.read_bytes = _collect_from(outcome, outcome.group.hub)
    else:
        from .redundancy import parallel_compare, reads_collect_with_failover

        _, outcome.read, outcome.read_bytes = reads_collect_with_failover(
            outcome, outcome.redundancy, _collect_from, _send_reads_to)
        if outcome.parallel:
            parallel_compare(outcome, outcome.redundancy, _collect_from)
    outcome.reads = {}


def _collect_from(outcome: Outcome, hub: Hub) -> tuple[list[tuple[str, list[dict]]], int]:
    """``(read, bytes)`` of the answers ``hub`` gives to ``outcome.reads``; raises GroupRunError."""
    by_entity = _read_plan(outcome.group)[1]
    max_value_bytes = hub.max_value_bytes or settings.HUBSCHED_HUB_MAX_VALUE_BYTES
    read = []
    size = 0
    for entity, future in outcome.reads.items():
        try:
            values = answer_await(outcome, future, hub.timeout + 1.0).get("values")
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
    return read, size


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
    cpu_s, wall_s = script.timeout, None
    if outcome.execution_deadline is not None:  # the script gets at most what is left of the execution
        wall_s = outcome.execution_deadline - time.time()
        if wall_s <= 0:
            raise GroupRunError(f"script {script.name!r}: no time left to run it")
        cpu_s = min(cpu_s, wall_s)
    try:
        result = script_execute(
            code=script.code,
            bindings={name: b.value for name, b in bindings.items()},
            timeout=cpu_s,
            memory_limit_mb=script.memory_limit_mb,
            data_sources=script_data_sources(project_id=hub.project_id),
            wall_s=wall_s,
            token=id(outcome),  # the kill watcher stops its sandbox process by it (sandbox_kill)
        )
    except ScriptError as exc:
        raise GroupRunError(f"script {script.name!r}: {exc}") from exc
    if outcome.killed_by:  # killed after the script ended: nothing is written back
        raise ExecutionKilled("killed")
    outcome.step = "write-back"
    # to the member that served the reads: while a backup serves, the master may be down (docs/redundancy.md)
    bindings_write_back(hub=outcome.served_by or hub, bindings=bindings, results=result.bindings,
                        changed=result.changed, outcome=outcome)
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


def bindings_write_back(*, hub: Hub, bindings: dict[str, Binding], results: dict[str, Any], changed: set[str],
                        outcome: Outcome | None = None) -> dict[str, dict]:
    """Apply a script's ``results`` to ``bindings`` and write the changed writable ones back to ``hub``.

    One ``setEntityParams`` per entity (hub protocol v1: all or nothing). Names the script bound
    anew join ``bindings`` as derived values (entity ""). Returns what was written,
    ``{entity: {key: value}}``; raises ``GroupRunError`` naming the entity and keys of a refused write.
    With ``outcome`` (an execution's), each write's timeout is cut to what is left of ``outcome.execution_deadline``
    (GroupRunError when nothing is), and a kill abandons the write waiting for its answer (ExecutionKilled).
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
            if outcome is None:
                client.set_entity_params(entity, values)
                continue
            left = outcome.execution_deadline
            timeout = hub.timeout if left is None else min(hub.timeout, left - time.time())
            if timeout <= 0:
                raise GroupRunError(f"hub {hub.name!r}, entity {entity!r}: write-back of {sorted(values)}: no time left")
            future = client.call_async("setEntityParams", {"entity": entity, "values": values}, timeout=timeout)
            answer = answer_await(outcome, future, timeout + 1.0)
            if not isinstance(answer, dict) or not isinstance(answer.get("written"), list):
                raise HubError("setEntityParams: the result has no list 'written'", "protocol")
        except HubError as exc:
            raise GroupRunError(f"hub {hub.name!r}, entity {entity!r}: write-back of {sorted(values)} failed: {exc}") from exc
    return dict(writes)


def _now_ts() -> str:
    return timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- kill: a watcher per worker process, alive while a batch executes ---------------------------------


def answer_await(outcome: Outcome, future: Future, timeout: float) -> Any:
    """The result of a hub call of ``outcome`` (a Future of ``HubClient.call_async``), waited for at most
    ``timeout`` seconds; raises its HubError, ``TimeoutError`` past ``timeout``, or ExecutionKilled as soon as
    the execution is killed (the call is abandoned: the client drops its answer when it comes, or times it out).
    An answer already there costs one ``done()``."""
    if not future.done():
        end = time.monotonic() + timeout
        while not future.done():
            if outcome.killed_by:
                raise ExecutionKilled("killed")
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            futures_wait([future], timeout=min(KILL_WAKE_S, remaining))
    return future.result(timeout=0)


class KillWatch:
    """This process's running executions by group, and the thread that kills those a person asked to kill.

    ``watching(outcomes)`` registers a batch's outcomes (``kill_watch``); ``finished(outcome)`` takes one out
    once its steps are done. The thread runs while any outcome is registered (and KILL_LINGER_S after, idle,
    without a query): every KILL_POLL_S it reads the
    pending KillRequests of the registered groups (one query for the process, whatever its batches), claims
    each one that matches a running outcome (a conditional UPDATE, so one worker and never the requester's
    "nothing was running" wins) and kills its outcomes: ``killed_by`` set, the sandbox process killed
    (``sandbox_kill``); a waiting read or write sees it within KILL_WAKE_S. Requests older than
    KILL_PICKUP_S are the requester's to close (``groups.services.group_kill``).
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.running: dict[int, dict[int, Outcome]] = {}  # group id -> {id(outcome): outcome}
        self.thread: threading.Thread | None = None

    def watching(self, outcomes: list[Outcome]) -> None:
        with self.lock:
            for outcome in outcomes:
                self.running.setdefault(outcome.group.pk, {})[id(outcome)] = outcome
            if self.thread is None and self.running:
                self.thread = threading.Thread(target=self._loop, name="hubsched-kill-watch", daemon=True)
                self.thread.start()

    def finished(self, outcome: Outcome) -> None:
        with self.lock:
            of_group = self.running.get(outcome.group.pk)
            if of_group is not None:
                of_group.pop(id(outcome), None)
                if not of_group:
                    del self.running[outcome.group.pk]

    def _loop(self) -> None:
        from django.db import connection

        idle_since = None
        try:
            while True:
                with self.lock:
                    if not self.running:
                        # no query while idle; gone after KILL_LINGER_S, so that a process whose batches come
                        # every second keeps one thread and one database connection instead of one a batch
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since >= KILL_LINGER_S:
                            self.thread = None
                            return
                        group_ids = None
                    else:
                        idle_since, group_ids = None, list(self.running)
                if group_ids is None:
                    time.sleep(KILL_POLL_S)
                    continue
                try:
                    self.poll(group_ids)
                except Exception:  # a database hiccup must not end the watcher: the next poll tries again
                    logger.exception("kill watcher: poll failed")
                time.sleep(KILL_POLL_S)
        finally:
            connection.close()  # this thread's own connection

    def poll(self, group_ids: list[int]) -> int:
        """Claim and carry out the pending kill requests of ``group_ids`` that match a running execution (one
        SELECT, and an UPDATE per request claimed); returns how many were claimed."""
        from .models import KillOutcome, KillRequest

        # Every recent pending request, filtered here: they are few, and the query stays one whatever the
        # number of groups this process runs (no IN list past a backend's parameter limit).
        since = timezone.now() - timedelta(seconds=KILL_PICKUP_S)
        pending = KillRequest.objects.filter(done_at=None, requested_at__gte=since).values_list(
            "pk", "group_id", "scheduled_for", "requested_by")
        wanted = set(group_ids)
        claimed = 0
        for pk, group_id, scheduled_for, requested_by in list(pending):
            if group_id not in wanted:
                continue
            with self.lock:
                targets = [o for o in self.running.get(group_id, {}).values()
                           if not o.error and not o.killed_by and (scheduled_for is None or o.scheduled_for == scheduled_for)]
            if not targets:
                continue
            if not KillRequest.objects.filter(pk=pk, done_at=None).update(outcome=KillOutcome.KILLED, done_at=timezone.now()):
                continue  # the requester closed it meanwhile (nothing was running, as it saw)
            claimed += 1
            for outcome in targets:
                outcome_kill(outcome, killed_by=requested_by)
        return claimed


KILL_PICKUP_S = 3.0  # a kill request no worker claimed within this many seconds is closed as "nothing was running"
KILL_LINGER_S = 1.5  # a watcher with no batch to watch ends after this long (it queries nothing meanwhile)


def outcome_kill(outcome: Outcome, *, killed_by: str) -> int | None:
    """Kill one running execution: ``killed_by`` set (its waits for hub answers end within KILL_WAKE_S), its
    sandbox process SIGKILLed; returns that process's pid, or None when no script was running."""
    from scripts_engine.sandbox import sandbox_kill

    outcome.killed_by = killed_by
    pid = sandbox_kill(id(outcome))
    logger.warning("group %s (%s): execution of %s killed by %s%s", outcome.group.pk, outcome.group.name,
                   outcome.scheduled_for.isoformat(), killed_by, f" (sandbox process {pid})" if pid else "")
    return pid


_watch: KillWatch | None = None
_watch_lock = threading.Lock()


def kill_watcher() -> KillWatch:
    """The process-wide KillWatch (a forked process makes its own: threads do not cross a fork)."""
    global _watch
    with _watch_lock:
        if _watch is None or _watch.pid != os.getpid():
            _watch = KillWatch()
        return _watch


@contextmanager
def kill_watch(outcomes: list[Outcome]):
    """Register ``outcomes`` with the process's KillWatch while the block runs; yields the watch."""
    watch = kill_watcher()
    watch.watching(outcomes)
    try:
        yield watch
    finally:
        for outcome in outcomes:
            watch.finished(outcome)
