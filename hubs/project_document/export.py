"""Writing a project as a ``hubsched.project/1`` document, in one stable order so that exports compare byte for byte."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from datetime import UTC, datetime

from groups.models import Group
from hubsched.secrets import url_has_password
from hubs.models import Hub, HubOffset, Project, RedundancySet
from hubs.selectors import hub_entity_tree
from jobs.models import Job
from scripts_engine.models import DataSource, Script, Sink

from .validation import FORMAT


def _slug(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") or "X"


def reference_names(kind: str, names: list[str], suffix: str) -> dict[str, str]:
    """Environment variables secrets are referenced by: ``("HUB", ["plant-a"], "KEY")`` -> ``{"plant-a": "HUB_PLANT_A_KEY"}``.

    Names that fold to the same variable (``a-b``, ``a_b``) each get a short hash of the name, so that
    two secrets never share one variable and the same names always give the same variables.
    """
    slugs = Counter(_slug(name) for name in names)
    out = {}
    for name in names:
        slug = _slug(name)
        if slugs[slug] > 1:
            slug += "_" + hashlib.sha256(name.encode()).hexdigest()[:8].upper()
        out[name] = f"{kind}_{slug}_{suffix}"
    return out


def hub_tls_key_references(names: list[str]) -> dict[str, str]:
    """The variables hubs' TLS client keys are referenced by: ``{"plant-a": "HUB_PLANT_A_TLS_KEY"}``.

    ``reference_names("HUB", names, "TLS_KEY")``, except where that is another hub's API key variable (hub
    ``a`` gets ``HUB_A_TLS_KEY``, and so would hub ``a tls``'s key): then the name's short hash goes in too,
    so that no two secrets ever share one variable.
    """
    api_keys = set(reference_names("HUB", names, "KEY").values())
    out = reference_names("HUB", names, "TLS_KEY")
    for name, variable in out.items():
        if variable in api_keys:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8].upper()
            out[name] = f"{variable[: -len('_TLS_KEY')]}_{digest}_TLS_KEY"
    return out


def _secret(value: str, *, include: bool, reference: str, is_secret: bool) -> str:
    return value if include or not is_secret else "${%s}" % reference


def _by_name(row) -> str:
    # Sorted here, not by the database: collations differ between servers, code points do not.
    return row.name


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _entity_trees(hub: Hub) -> list[dict]:
    def node(item: dict) -> dict:
        entity = item["entity"]
        return {
            "id": entity.path,
            "name": entity.name,
            "type": entity.type,
            "params": [
                {"key": p.key, "name": p.name, "type": p.type, "unit": p.unit, "writable": p.writable}
                for p in sorted(item["params"], key=lambda p: p.key)
            ],
            "children": [node(child) for child in item["children"]],
        }

    return [node(root) for root in hub_entity_tree(hub=hub)]


def _group(group: Group) -> dict:
    return {
        "name": group.name,
        "trigger": group.trigger,
        "period": group.period,
        "offset": group.offset,
        "cron": group.cron,
        "run_at": _iso(group.run_at),
        "deadband": group.deadband,
        "expires": group.expires,
        "execution_timeout": group.execution_timeout,
        "script": group.script.name if group.script_id else None,
        "enabled": group.enabled,
        "keys": [{"entity": k.entity, "key": k.key, "alias": k.alias} for k in group.keys.all()],
    }


def _job(job: Job) -> dict:
    return {
        "name": job.name, "title": job.title, "trigger": job.trigger, "period": job.period, "offset": job.offset,
        "cron": job.cron, "run_at": _iso(job.run_at), "kind": job.kind, "argv": job.argv,
        "working_directory": job.working_directory, "environment": job.environment, "method": job.method,
        "url": job.url, "headers": job.headers, "body": job.body, "success_codes": job.success_codes,
        "script": job.script.name if job.script_id else None, "timeout": job.timeout, "retries": job.retries,
        "retry_backoff": job.retry_backoff, "overlap": job.overlap, "misfire": job.misfire,
        "misfire_grace": job.misfire_grace, "output_limit_kib": job.output_limit_kib, "enabled": job.enabled,
    }


def _alarm_rules(project: Project) -> list[dict]:
    from alarms.models import AlarmRule
    from alarms.selectors import alarm_rule_document

    rules = AlarmRule.objects.filter(project=project).select_related("group__hub").prefetch_related("routes")
    return [alarm_rule_document(rule) for rule in sorted(rules, key=_by_name)]


def document_build(*, project: Project, include_secrets: bool = False) -> dict:
    """The project as a ``hubsched.project/1`` document (a dict that ``document_dumps`` writes).

    Every configuration field is written, lists in a stable order: hubs, groups, scripts, sinks and
    data sources and redundancy sets by name (a set's members master first), a hub's offsets by entity and
    key, entities by id, parameters by key, a group's keys in their position order.
    Secrets are references unless ``include_secrets``: a non-empty hub key becomes ``${HUB_<HUB>_KEY}``,
    a non-empty TLS client key ``${HUB_<HUB>_TLS_KEY}`` (``hub_tls_key_references``),
    a sink or data source URL holding a secret (a password, a user without one, a secret-looking query
    value: ``hubsched.secrets.url_has_password``) ``${SINK_<NAME>_URL}`` / ``${DATA_SOURCE_<NAME>_URL}``;
    ``<NAME>`` as ``reference_names`` makes it, and import takes exactly that reference in that field.
    """
    hubs = []
    hub_rows = sorted(Hub.objects.filter(project=project), key=_by_name)
    hub_refs = reference_names("HUB", [hub.name for hub in hub_rows], "KEY")
    tls_refs = hub_tls_key_references([hub.name for hub in hub_rows])
    for hub in hub_rows:
        groups = sorted(Group.objects.filter(hub=hub).select_related("script").prefetch_related("keys"), key=_by_name)
        hubs.append(
            {
                "name": hub.name,
                "url": hub.url,
                "api_key": _secret(
                    hub.api_key, include=include_secrets, reference=hub_refs[hub.name], is_secret=bool(hub.api_key)
                ),
                "timeout": hub.timeout,
                "max_in_flight": hub.max_in_flight,
                "max_frame_bytes": hub.max_frame_bytes,
                "max_value_bytes": hub.max_value_bytes,
                "tls_ca_bundle": hub.tls_ca_bundle,
                "tls_client_cert": hub.tls_client_cert,
                "tls_client_key": _secret(
                    hub.tls_client_key, include=include_secrets, reference=tls_refs[hub.name],
                    is_secret=bool(hub.tls_client_key),
                ),
                "tls_verify": hub.tls_verify,
                "enabled": hub.enabled,
                "entities": _entity_trees(hub),
                "groups": [_group(group) for group in groups],
                "offsets": [
                    {"entity": o.entity, "key": o.key, "add": o.add, "factor": o.factor}
                    for o in sorted(HubOffset.objects.filter(hub=hub), key=lambda o: (o.entity, o.key))
                ],
            }
        )
    redundancy_sets = [
        {
            "name": item.name,
            "mode": item.mode,
            "failback_after_s": item.failback_after_s,
            "threshold_abs": item.threshold_abs,
            "threshold_percent": item.threshold_percent,
            "key_thresholds": item.key_thresholds,
            "disagree_ticks": item.disagree_ticks,
            "members": [m.name for m in sorted(item.members.all(), key=lambda m: (m.redundancy_priority, m.name))],
        }
        for item in sorted(RedundancySet.objects.filter(project=project).prefetch_related("members"), key=_by_name)
    ]
    sinks = sorted(Sink.objects.filter(project=project), key=_by_name)
    sink_refs = reference_names("SINK", [s.name for s in sinks], "URL")
    sources = sorted(DataSource.objects.filter(project=project), key=_by_name)
    source_refs = reference_names("DATA_SOURCE", [d.name for d in sources], "URL")
    return {
        "format": FORMAT,
        "name": project.name,
        "description": project.description,
        "time_zone": project.time_zone,
        "hubs": hubs,
        "scripts": [
            {
                "name": s.name,
                "code": s.code,
                "description": s.description,
                "timeout": s.timeout,
                "memory_limit_mb": s.memory_limit_mb,
            }
            for s in sorted(Script.objects.filter(project=project), key=_by_name)
        ],
        "sinks": [
            {
                "name": s.name,
                "url": _secret(
                    s.url, include=include_secrets, reference=sink_refs[s.name], is_secret=url_has_password(s.url)
                ),
                "layout": s.layout,
                "table": s.table,
                "local_infile": s.local_infile,
                "enabled": s.enabled,
            }
            for s in sinks
        ],
        "data_sources": [
            {
                "name": d.name,
                "url": _secret(
                    d.url,
                    include=include_secrets,
                    reference=source_refs[d.name],
                    is_secret=url_has_password(d.url),
                ),
                "writable": d.writable,
                "allow_ddl": d.allow_ddl,
            }
            for d in sources
        ],
        "redundancy_sets": redundancy_sets,
        "jobs": [_job(job) for job in sorted(Job.objects.filter(project=project).select_related("script"), key=_by_name)],
        "alarm_rules": _alarm_rules(project),
    }


def document_dumps(document: dict) -> str:
    """The document as text: keys sorted, two-space indent, UTF-8 characters kept, one final newline."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
