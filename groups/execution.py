"""The data path of one group execution: poll the hub, run the script, write back, store in the sinks."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from hubs.client import HubError, hub_client
from hubs.models import Parameter
from scripts_engine.sinks import SinkError, ValueRow, sink_targets_for_project, sinks_write

from .models import Group
from .services import Binding, GroupRunError


def execute(*, group: Group, scheduled_for: datetime) -> int:
    """Run the whole path for ``group`` at tick ``scheduled_for``; returns the number of values stored.

    Raises ``GroupRunError`` with a message naming the hub, entity, key or script line at fault.
    """
    hub = group.hub
    keys = list(group.keys.all())
    if not keys:
        raise GroupRunError("the group reads no keys")
    client = hub_client(
        hub.url,
        hub.api_key,
        timeout=hub.timeout,
        max_in_flight=min(hub.max_in_flight, settings.HUBSCHED_HUB_MAX_IN_FLIGHT),
    )
    bindings = poll(client=client, hub_name=hub.name, group=group, keys=keys)
    if group.script_id:
        run_script(client=client, hub_name=hub.name, group=group, bindings=bindings)
    rows = [
        ValueRow(
            tick=scheduled_for,
            ts=b.ts,
            project=hub.project.name,
            hub=hub.name,
            group_id=group.pk,
            group=group.name,
            entity=b.entity,
            key=b.key,
            value=b.value,
            quality=b.quality,
        )
        for b in bindings.values()
    ]
    targets = sink_targets_for_project(project_id=hub.project_id)
    try:
        sinks_write(targets=targets, rows=rows)
    except SinkError as exc:
        raise GroupRunError(str(exc)) from exc
    return len(rows)


def poll(*, client, hub_name: str, group: Group, keys: list) -> dict[str, Binding]:
    """Read every key of the group, one pipelined ``getEntityParams`` per entity; returns bindings by name."""
    by_entity: dict[str, list] = defaultdict(list)
    for gk in keys:
        by_entity[gk.entity].append(gk)
    writable = set(
        Parameter.objects.filter(
            entity__hub_id=group.hub_id, writable=True, entity__path__in=list(by_entity)
        ).values_list("entity__path", "key")
    )
    futures = {
        entity: client.call_async("getEntityParams", {"entity": entity, "keys": [gk.key for gk in gks]})
        for entity, gks in by_entity.items()
    }
    bindings: dict[str, Binding] = {}
    for entity, future in futures.items():
        try:
            values = _result(future, client).get("values")
        except HubError as exc:
            if exc.code == -32601:  # hub protocol v1: no getEntityParams, fall back to subscribe
                values = _fallback(client, hub_name, entity, [gk.key for gk in by_entity[entity]])
            else:
                raise GroupRunError(f"hub {hub_name!r}, entity {entity!r}: {exc}") from exc
        if not isinstance(values, list):
            raise GroupRunError(f"hub {hub_name!r}, entity {entity!r}: answer has no 'values' list")
        got = {v.get("key"): v for v in values if isinstance(v, dict)}
        for gk in by_entity[entity]:
            item = got.get(gk.key)
            if item is None:
                raise GroupRunError(f"hub {hub_name!r}, entity {entity!r}: no value for key {gk.key!r}")
            bindings[gk.binding] = Binding(
                name=gk.binding,
                entity=entity,
                key=gk.key,
                value=item.get("value"),
                ts=item.get("ts"),
                quality=str(item.get("quality") or "good"),
                writable=(entity, gk.key) in writable,
            )
    return bindings


def _result(future, client) -> dict:
    return future.result(timeout=client.timeout + 1.0)


def _fallback(client, hub_name: str, entity: str, keys: list[str]) -> list:
    try:
        return client.get_entity_params(entity, keys)
    except HubError as exc:
        raise GroupRunError(f"hub {hub_name!r}, entity {entity!r}: {exc}") from exc


def run_script(*, client, hub_name: str, group: Group, bindings: dict[str, Binding]) -> None:
    """Run the group's script on the bindings; write back changed writable ones, one call per entity.

    Rule (docs/scripts.md): a binding is written back when the script changed its value and the
    parameter is writable in the hub's entity tree; all of an entity's changes go in one
    ``setEntityParams`` (hub protocol v1: all or nothing). New names the script binds are stored as
    derived values (entity ""). Every binding is stored with its final value.
    """
    from scripts_engine.sandbox import ScriptError, script_execute

    script = group.script
    before = {name: b.value for name, b in bindings.items()}
    try:
        result = script_execute(
            code=script.code,
            bindings=before,
            timeout=script.timeout,
            memory_limit_mb=script.memory_limit_mb,
            data_sources=_data_sources(group),
        )
    except ScriptError as exc:
        raise GroupRunError(f"script {script.name!r}: {exc}") from exc
    writes: dict[str, dict[str, Any]] = defaultdict(dict)
    now_ts = _now_ts()
    for name, value in result.bindings.items():
        binding = bindings.get(name)
        if binding is None:
            bindings[name] = Binding(name=name, entity="", key=name, value=value, ts=now_ts)
            continue
        if name in result.changed:
            binding.value = value
            if binding.writable:
                writes[binding.entity][binding.key] = value
    for entity, values in writes.items():
        try:
            client.set_entity_params(entity, values)
        except HubError as exc:
            raise GroupRunError(f"hub {hub_name!r}, entity {entity!r}: write-back of {sorted(values)} failed: {exc}") from exc


def _data_sources(group: Group) -> dict[str, str]:
    from scripts_engine.models import DataSource

    return dict(DataSource.objects.filter(project_id=group.hub.project_id).values_list("name", "url"))


def _now_ts() -> str:
    return timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
