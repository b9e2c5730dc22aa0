"""Writes for projects and hubs: create, change, delete; project documents (export, import), entity discovery,
connection tests, switches."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from django.db import transaction

from .client import HubError, hub_client
from .models import Hub, ParameterType, Project
from .project_document import ProjectImport, document_build, document_dumps, document_import
from .project_document.importer import EntityTreeChanges, entity_tree_write

logger = logging.getLogger(__name__)


# --- project documents -------------------------------------------------------------------------------------


def project_export(*, project: Project, include_secrets: bool = False) -> str:
    """The project as ``hubsched.project/1`` JSON text (keys sorted, stable order, final newline).

    Hub keys, and sink/data source URLs holding a password, are written as ``${NAME}`` references
    unless ``include_secrets``. Exporting, importing into an empty database and exporting again
    gives the same text byte for byte.
    """
    return document_dumps(document_build(project=project, include_secrets=include_secrets))


def project_import(*, raw: bytes | str, replace: bool = False, environ: Mapping[str, str] | None = None) -> ProjectImport:
    """Import a project document (UTF-8 bytes or str) as one transaction; returns the project and whether it is new.

    Raises ``ProjectDocumentError(errors)`` listing every problem (``"hubs[1].groups[0].period: must
    be greater than 0"``), ``ProjectExistsError`` when the project exists and not ``replace``; either way
    the database is unchanged. ``environ`` resolves ``${NAME}`` references (default: os.environ).
    """
    result = document_import(raw=raw, replace=replace, environ=environ)
    logger.info("project %r imported (%s)", result.project.name, "created" if result.created else "replaced")
    return result


def project_export_filename(name: str) -> str:
    """A download's file name for the project ``name``, without its ``.json``: letters, digits, ``-_.`` kept, any
    other character ``_`` (``"line 2/a"`` -> ``"line_2_a"``); ``"project"`` for an empty name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "project"


def project_import_as(*, user, raw: bytes | str, replace: bool = False) -> ProjectImport:
    """``project_import`` for ``user``: what importing takes (``hubsched.roles.project_import_permissions``: the
    add permissions of every kind of row, with ``replace`` their change and delete ones too; ``jobs.shell_job`` for
    a document holding a shell job) checked first. Raises ProjectDocumentError listing what is missing
    (``"permission required: ..."``, prefixed ``replace:`` for what replacing adds), and the import's own errors;
    either way nothing is changed. The console's and the admin's import."""
    from hubsched.roles import permissions_missing, project_import_permissions

    from .project_document import ProjectDocumentError
    from .project_document.importer import document_import_permissions

    missing = permissions_missing(user, *project_import_permissions(replace=False))
    if missing:
        raise ProjectDocumentError([f"permission required: {', '.join(missing)}"])
    if replace:
        missing = permissions_missing(user, *project_import_permissions(replace=True))
        if missing:
            raise ProjectDocumentError([f"replace: permission required: {', '.join(missing)}"])
    missing = permissions_missing(user, *document_import_permissions(raw=raw, replace=replace))
    if missing:
        raise ProjectDocumentError([f"permission required: {', '.join(missing)}"])
    return project_import(raw=raw, replace=replace)


# --- hubs: discovery and connection test -------------------------------------------------------------------


def _client(hub: Hub):
    return hub_client(hub.url, hub.api_key, timeout=hub.timeout, max_in_flight=hub.max_in_flight,
                      max_frame_bytes=hub.max_frame_bytes, tls=hub.tls_options())


def _remote_tree(client, entities: list[dict], seen: set[str]) -> list[dict]:
    """getEntities nodes with their getParams lists attached; repeated ids are kept once (first wins)."""
    tree = []
    for node in entities:
        if not isinstance(node, dict) or not isinstance(node.get("id"), str) or not node["id"] or node["id"] in seen:
            continue
        seen.add(node["id"])
        params = [p for p in client.get_params(node["id"]) if isinstance(p, dict) and isinstance(p.get("key"), str)]
        tree.append(
            {
                "id": node["id"],
                "name": str(node.get("name") or ""),
                "type": str(node.get("type") or ""),
                "params": [
                    {
                        "key": p["key"],
                        "name": str(p.get("name") or ""),
                        "type": p.get("type") if p.get("type") in ParameterType.values else ParameterType.STRING,
                        "unit": str(p.get("unit") or ""),
                        "writable": bool(p.get("writable", False)),
                    }
                    for p in {p["key"]: p for p in params}.values()
                ],
                "children": _remote_tree(client, node.get("children") or [], seen),
            }
        )
    return tree


class _DryRunDone(Exception):
    """Rolls a dry run's writes back, carrying what they would have been."""

    def __init__(self, changes: EntityTreeChanges):
        self.changes = changes


def hub_entities_sync(*, hub: Hub, dry_run: bool = False) -> EntityTreeChanges:
    """Read the hub's whole entity tree (getEntities) and each entity's parameters (getParams), and make
    the hub's Entity and Parameter rows match, in one transaction.

    Returns what was ``added``, ``changed`` and ``gone`` (entity paths and ``path.key`` for parameters).
    With ``dry_run`` the same writes are made and rolled back, so the answer is exactly what applying would
    do at that moment, and nothing is changed. Raises HubError when the hub cannot be read; then nothing is
    changed. Group keys are not touched: a key naming a parameter that is gone fails at the group's next
    run, where it is visible.
    """
    client = _client(hub)
    tree = _remote_tree(client, client.get_entities(), set())  # every call before the first write
    try:
        with transaction.atomic():
            changes = entity_tree_write(hub=hub, tree=tree)
            if dry_run:
                raise _DryRunDone(changes)
    except _DryRunDone as done:
        logger.info("hub %s: entities sync dry run, %s", hub.pk, done.changes.summary())
        return done.changes
    logger.info("hub %s: entities synced, %s", hub.pk, changes.summary())
    return changes


@dataclass
class HubConnectionReport:
    """Outcome of a connection test: ``ok``, what the hub said (getInfo, or ping when it has no getInfo),
    round-trip time in milliseconds, and an error text for a person when not ok (never the key)."""

    ok: bool
    info: dict[str, Any] = field(default_factory=dict)
    round_trip_ms: float | None = None
    error: str = ""
    clock_offset_ms: float | None = None
    """The hub's clock (its answer's ``time``) minus ours at the call's midpoint, in ms; uncertain by up to
    half the round trip. None when the hub sent no readable time."""

    def summary(self) -> str:
        if not self.ok:
            return f"failed: {self.error}"
        hub = self.info.get("hub")
        methods = self.info.get("methods")
        parts = [f"hub {hub!r}" if hub else "hub answered", f"protocol {self.info['protocol']}" if "protocol" in self.info else ""]
        parts.append(f"{len(methods)} methods" if isinstance(methods, list) else "")
        parts.append(f"clock {self.info['time']}" if "time" in self.info else "")
        parts.append(f"{self.round_trip_ms:.1f} ms")
        return "ok: " + ", ".join(p for p in parts if p)


def hub_connection_test(*, hub: Hub) -> HubConnectionReport:
    """Call getInfo (falling back to ping when the hub has no getInfo) and report; never raises HubError."""
    client = _client(hub)
    started_wall, started = time.time(), time.perf_counter()
    try:
        try:
            info = client.get_info()
        except HubError as exc:
            if exc.code != -32601:  # hub protocol v1: getInfo is optional, ping is not
                raise
            started_wall, started = time.time(), time.perf_counter()  # the clock is read from ping's answer
            info = client.ping()
    except HubError as exc:
        return HubConnectionReport(ok=False, error=str(exc))
    elapsed = time.perf_counter() - started
    hub_clock = rfc3339_seconds(info.get("time"))
    offset = None if hub_clock is None else (hub_clock - (started_wall + elapsed / 2)) * 1000
    return HubConnectionReport(ok=True, info=info, round_trip_ms=elapsed * 1000, clock_offset_ms=offset)


def hub_entity_values(*, hub: Hub, entity: str, keys: list[str] | None = None) -> list[dict]:
    """The current values of ``entity``'s parameters on ``hub`` (``keys``; default all): hub protocol v1
    ``getEntityParams``, ``[{"key", "value", "ts", "quality"}]``. Raises HubError (an unknown entity, a timeout,
    the hub unreachable: its text never holds the key)."""
    return _client(hub).get_entity_params(entity, keys)


def hub_entity_write(*, hub: Hub, entity: str, values: Mapping[str, Any], by: str) -> list[str]:
    """Write ``values`` ``{key: value}`` to ``entity`` on ``hub`` (hub protocol v1 ``setEntityParams``: all or
    nothing); returns the keys written. ``by``: who asked (logged with the entity and keys, not the values). The
    caller checks ``hubs.write_hub``. Raises HubError (404 an unknown key, 403 not writable, 422 a value that does
    not fit its type)."""
    written = _client(hub).set_entity_params(entity, dict(values))
    logger.info("hub %s: %s wrote %s of %s", hub.pk, by, ", ".join(sorted(values)), entity)
    return written


HUB_METHODS_TRIED = ("getInfo", "ping", "getEntities", "getParams", "getEntityParams", "setEntityParams", "subscribe")
"""The methods ``hub_method_try`` calls (hub protocol v1, docs/hub-protocol.md "Methods"); ``unsubscribe`` is made
by ``subscribe``'s try itself."""


@dataclass
class HubMethodTry:
    """What one call of a hub method gave: ``result`` (the answer's ``result``; for ``subscribe``, the subscription
    and its first ``dataChange``), or ``error`` (words, never the key); ``round_trip_ms``."""

    method: str
    params: dict
    result: Any = None
    error: str = ""
    round_trip_ms: float = 0.0


def hub_method_try(*, hub: Hub, method: str, params: Mapping[str, Any]) -> HubMethodTry:
    """Call ``method`` (one of HUB_METHODS_TRIED) on ``hub`` with ``params``, as a person tries the hub's API in
    the console. ``subscribe`` waits for the first ``dataChange`` (at most the hub's timeout), then unsubscribes.
    The caller checks ``hubs.write_hub`` for ``setEntityParams``. Raises ValueError for another method; a hub's
    refusal is in ``error``."""
    if method not in HUB_METHODS_TRIED:
        raise ValueError(f"method: one of {', '.join(HUB_METHODS_TRIED)}")
    client = _client(hub)
    outcome = HubMethodTry(method=method, params=dict(params))
    started = time.perf_counter()
    try:
        if method == "subscribe":
            outcome.result = _first_data_change(client, dict(params), hub.timeout)
        else:
            outcome.result = client.call(method, dict(params) or None)
    except HubError as exc:
        outcome.error = str(exc)
    outcome.round_trip_ms = (time.perf_counter() - started) * 1000
    if method == "setEntityParams" and not outcome.error:
        logger.info("hub %s: setEntityParams of %s tried in the console", hub.pk, params.get("entity"))
    return outcome


def _first_data_change(client, params: dict, timeout: float) -> dict:
    from concurrent.futures import Future, TimeoutError as FutureTimeout

    first: Future = Future()
    keys = params.get("keys")
    if not isinstance(params.get("entity"), str) or not isinstance(keys, list):
        raise HubError('subscribe needs "entity" (an entity id) and "keys" (a list of keys)', "protocol")
    subscription = client.subscribe(params["entity"], keys, period=params.get("period"),
                                    on_change=params.get("onChange", True), timeout=params.get("timeout") or timeout + 1,
                                    callback=lambda change: first.done() or first.set_result(change))
    try:
        change = first.result(timeout)
    except FutureTimeout:
        change = None
    finally:
        try:
            client.unsubscribe(subscription)
        except HubError as exc:
            logger.info("hub: unsubscribe %s failed: %s", subscription, exc)
    return {"subscription": subscription, "first dataChange": change if change is not None else
            f"none within {timeout:g} s (an on-change subscription sends when a value changes)"}


def rfc3339_seconds(value) -> float | None:
    """A hub's RFC 3339 timestamp (hub protocol v1: UTC with milliseconds) as POSIX seconds, else None."""
    from datetime import datetime, timezone

    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


# --- projects and hubs: create, change, delete (the API's; the rules are the models' clean()) -------------

PROJECT_FIELDS = frozenset({"name", "description", "time_zone"})
HUB_FIELDS = frozenset({
    "name", "url", "api_key", "timeout", "max_in_flight", "max_frame_bytes", "max_value_bytes", "tls_ca_bundle",
    "tls_client_cert", "tls_client_key", "tls_verify", "enabled", "redundancy_set_id", "redundancy_priority",
})


def _validated_save(row, values: Mapping[str, Any], allowed: frozenset[str]):
    """Set ``values`` on ``row``, run the model's full validation (the admin's and import's rules: fields,
    ``clean()``, unique constraints) and save, in one transaction. Raises Django's ValidationError by field;
    TypeError for a field that is not in ``allowed``."""
    unknown = set(values) - allowed
    if unknown:
        raise TypeError(f"not a field that can be set here: {', '.join(sorted(unknown))}")
    for name, value in values.items():
        setattr(row, name, value)
    with transaction.atomic():
        row.full_clean()
        row.save()
    return row


def project_create(*, name: str, description: str = "", time_zone: str = "UTC") -> Project:
    """A new, empty project. Raises ValidationError (a name taken, an unknown time zone)."""
    project = _validated_save(Project(), {"name": name, "description": description, "time_zone": time_zone},
                              PROJECT_FIELDS)
    logger.info("project %s created", project.pk)
    return project


def project_change(*, project: Project, **changes: Any) -> Project:
    """Change ``project``'s ``name``, ``description`` or ``time_zone`` (its groups' schedules follow:
    groups/signals.py). Raises ValidationError, and then nothing is saved."""
    return _validated_save(project, changes, PROJECT_FIELDS)


def _deleted_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Django's ``delete()`` counts (``{"hubs.Hub": 2}``) as ``{"hubs.hub": 2}``, rows of every model that went."""
    return {label.lower(): n for label, n in sorted(counts.items()) if n}


class _DeleteRolledBack(Exception):
    """Rolls a dry-run delete back, carrying its counts."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts


def _delete(row, *, dry_run: bool) -> dict[str, int]:
    """Delete ``row`` with what cascades from it in one transaction; with ``dry_run`` the same delete is made and
    rolled back, so the counts are exactly what deleting would remove at that moment."""
    try:
        with transaction.atomic():
            _total, counts = row.delete()
            if dry_run:
                raise _DeleteRolledBack(_deleted_counts(counts))
    except _DeleteRolledBack as done:
        return done.counts
    return _deleted_counts(counts)


def project_delete(*, project: Project, dry_run: bool = False) -> dict[str, int]:
    """Delete ``project`` and everything in it (hubs, their entities and groups with their runs, scripts,
    sinks, data sources); returns how many rows of each model went, ``{"hubs.hub": 2, "groups.group": 4, ...}``.
    ``dry_run``: what would go (the console's confirmation), nothing deleted."""
    pk = project.pk
    counts = _delete(project, dry_run=dry_run)
    if dry_run:
        project.pk = pk  # Model.delete() cleared it; the row is still there
    else:
        logger.info("project deleted: %s", counts)
    return counts


def hub_create(*, project: Project, **fields: Any) -> Hub:
    """A new hub of ``project`` with ``fields`` (``HUB_FIELDS``; the model's defaults for the rest).
    Raises ValidationError by field (a bad URL, TLS settings that do not parse, a name taken in the project)."""
    hub = _validated_save(Hub(project=project), fields, HUB_FIELDS)
    logger.info("hub %s created in project %s", hub.pk, project.pk)
    return hub


def hub_change(*, hub: Hub, **changes: Any) -> Hub:
    """Change fields of ``hub`` (``HUB_FIELDS``); a key or TLS key left out stays, ``""`` clears it. Its groups'
    schedules follow (groups/signals.py). Raises ValidationError, and then nothing is saved."""
    return _validated_save(hub, changes, HUB_FIELDS)


def hub_delete(*, hub: Hub, dry_run: bool = False) -> dict[str, int]:
    """Delete ``hub`` with its entities, parameters, offsets and groups (and their runs); returns the rows of
    each model that went, ``{"hubs.hub": 1, "hubs.entity": 12, "groups.group": 3, ...}``. ``dry_run``: what
    would go, nothing deleted."""
    pk = hub.pk
    counts = _delete(hub, dry_run=dry_run)
    if dry_run:
        hub.pk = pk
    else:
        logger.info("hub deleted: %s", counts)
    return counts


# --- switches and "run now" --------------------------------------------------------------------------------


def hubs_enabled_set(*, hub_ids: list[int], enabled: bool) -> int:
    """Enable or disable hubs; saved one by one so that their groups' PeriodicTasks follow. Returns the count."""
    count = 0
    with transaction.atomic():
        for hub in Hub.objects.filter(pk__in=hub_ids).exclude(enabled=enabled):
            hub.enabled = enabled
            hub.save(update_fields=["enabled"])
            count += 1
    return count


# --- secrets -----------------------------------------------------------------------------------------------


def secrets_rotate() -> int:
    """Re-encrypt every stored secret (``Hub.api_key``, ``Sink.url``, ``DataSource.url``) with the first key
    of ``HUBSCHED_SECRETS_KEY``; returns how many values were re-encrypted (empty ones are left alone).

    For key rotation (docs/projects.md, Secrets): with ``NEW,OLD`` configured, after this every value opens
    with ``NEW`` alone. A value stored in clear (from before encryption) is encrypted. The stored text is
    read as it is (a Cast keeps the field from decrypting it) and written with UPDATE, so no model is saved
    and no signal runs. One transaction, rows locked where the database can: raises
    ``hubsched.secrets.SecretsKeyError`` (its message never holds a value) when a value opens with no
    configured key, and then nothing has changed.
    """
    from django.db.models import TextField
    from django.db.models.functions import Cast

    from hubsched.secrets import secret_reencrypt
    from scripts_engine.models import DataSource, Sink

    count = 0
    with transaction.atomic():
        for model, field_name in ((Hub, "api_key"), (Hub, "tls_client_key"), (Sink, "url"), (DataSource, "url")):
            rows = (
                model.objects.select_for_update()
                .exclude(**{f"{field_name}__isnull": True})
                .annotate(stored=Cast(field_name, TextField()))
                .values_list("pk", "stored")
            )
            for pk, stored in list(rows):
                if not stored:
                    continue
                model.objects.filter(pk=pk).update(**{field_name: secret_reencrypt(stored)})
                count += 1
    logger.info("secrets rotated: %d values re-encrypted", count)
    return count
