"""Writes for projects and hubs: project documents (export, import), entity discovery, connection tests, switches."""

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


def hub_entities_sync(*, hub: Hub) -> EntityTreeChanges:
    """Read the hub's whole entity tree (getEntities) and each entity's parameters (getParams), and make
    the hub's Entity and Parameter rows match, in one transaction.

    Returns what was ``added``, ``changed`` and ``gone`` (entity paths and ``path.key`` for parameters).
    Raises HubError when the hub cannot be read; then nothing is changed. Group keys are not touched:
    a key naming a parameter that is gone fails at the group's next run, where it is visible.
    """
    client = _client(hub)
    tree = _remote_tree(client, client.get_entities(), set())  # every call before the first write
    with transaction.atomic():
        changes = entity_tree_write(hub=hub, tree=tree)
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
    started = time.perf_counter()
    try:
        try:
            info = client.get_info()
        except HubError as exc:
            if exc.code != -32601:  # hub protocol v1: getInfo is optional, ping is not
                raise
            info = client.ping()
    except HubError as exc:
        return HubConnectionReport(ok=False, error=str(exc))
    return HubConnectionReport(ok=True, info=info, round_trip_ms=(time.perf_counter() - started) * 1000)


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
