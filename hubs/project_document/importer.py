"""Writing a validated ``hubsched.project/1`` document into the database, in one transaction, by natural keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from django.core.exceptions import ValidationError
from django.db import transaction

from groups.models import Group, GroupKey
from hubs.models import Entity, Hub, HubOffset, Parameter, Project, RedundancySet
from jobs.models import Job
from scripts_engine.models import DataSource, Script, Sink

from .errors import ProjectDocumentError, ProjectExistsError
from .validation import (
    document_shell_held,
    document_parse,
    document_validate,
    hub_tls_errors,
    references_resolve,
    run_at_parse,
)

# Database column limits of the fields a reference may fill (checked after the environment is read).
_SECRET_LIMITS = {"api_key": 500, "url": 1000, "tls_client_key": 100000}


@dataclass(frozen=True)
class ProjectImport:
    """What an import did: the project, and whether it was created (else replaced in place)."""

    project: Project
    created: bool


def _assign(row, values: dict[str, Any]) -> bool:
    """Set fields on ``row``; returns whether any changed (unchanged rows are not written)."""
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


def _upsert(model, existing: dict, natural_key: str, key_value, values: dict[str, Any], **owner):
    return _save(model, existing, key_value, values, **owner, **{natural_key: key_value})[0]


@dataclass
class EntityTreeChanges:
    """What writing an entity tree did, as sorted lists of ``path`` (entities) and ``path.key`` (parameters)."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.gone)

    def summary(self) -> str:
        """``"3 added, 0 changed, 1 gone"``."""
        return f"{len(self.added)} added, {len(self.changed)} changed, {len(self.gone)} gone"


def _note(changes: EntityTreeChanges, label: str, created: bool, changed: bool) -> None:
    if created:
        changes.added.append(label)
    elif changed:
        changes.changed.append(label)


def _save(model, existing: dict, key_value, values: dict[str, Any], **create) -> tuple[Any, bool, bool]:
    """(row, created, changed) after creating or updating the row ``existing[key_value]``."""
    row = existing.pop(key_value, None)
    if row is None:
        return model.objects.create(**create, **values), True, False
    changed = _assign(row, values)
    if changed:
        row.save()
    return row, False, changed


def entity_tree_write(*, hub: Hub, tree: list[dict]) -> EntityTreeChanges:
    """Make ``hub``'s entities and parameters exactly ``tree``, in place by entity id and parameter key.

    ``tree`` is in the getEntities shape, each entity with its getParams list:
    ``[{"id", "name", "type", "params": [{"key", "name", "type", "unit", "writable"}], "children": [...]}]``.
    Entities and parameters not in the tree are deleted. Call inside a transaction.
    """
    changes = EntityTreeChanges()
    existing = {e.path: e for e in Entity.objects.filter(hub=hub)}
    stack = [(entity, None) for entity in reversed(tree)]
    while stack:  # parents before children, so a parent row exists when its child points at it
        data, parent = stack.pop()
        values = {"parent": parent, "name": data.get("name", ""), "type": data.get("type", "")}
        entity, created, changed = _save(Entity, existing, data["id"], values, hub=hub, path=data["id"])
        _note(changes, entity.path, created, changed)
        params = {} if created else {p.key: p for p in Parameter.objects.filter(entity=entity)}
        for param in data.get("params", []):
            values = {
                "name": param.get("name", ""),
                "type": param.get("type", "number"),
                "unit": param.get("unit", ""),
                "writable": param.get("writable", False),
            }
            _, p_created, p_changed = _save(Parameter, params, param["key"], values, entity=entity, key=param["key"])
            _note(changes, f"{entity.path}.{param['key']}", p_created, p_changed)
        changes.gone.extend(f"{entity.path}.{key}" for key in params)
        Parameter.objects.filter(pk__in=[p.pk for p in params.values()]).delete()
        stack.extend((child, entity) for child in reversed(data.get("children", [])))
    # Kept entities were re-parented above, so deleting the rest cascades into nothing still wanted.
    changes.gone.extend(existing)
    Entity.objects.filter(pk__in=[e.pk for e in existing.values()]).delete()
    for names in (changes.added, changes.changed, changes.gone):
        names.sort()
    return changes


def _groups_write(hub: Hub, groups: list[dict], scripts: dict[str, Script]) -> None:
    existing = {g.name: g for g in Group.objects.filter(hub=hub).select_related("hub__project", "periodic_task")}
    for data in groups:
        values = {
            "trigger": data["trigger"],
            "period": float(data.get("period", 10.0)),
            "offset": float(data.get("offset", 0.0)),
            "cron": data.get("cron", ""),
            "run_at": run_at_parse(data["run_at"]) if data.get("run_at") else None,
            "deadband": data.get("deadband"),
            "expires": data.get("expires"),
            "execution_timeout": data.get("execution_timeout"),
            "script": scripts[data["script"]] if data.get("script") is not None else None,
            "enabled": data.get("enabled", True),
        }
        # Saved through the model (never deleted and re-created): groups/signals.py keeps the PeriodicTask
        # in step, and the group's runs and counters stay attached to it.
        group = _upsert(Group, existing, "name", data["name"], values, hub=hub)
        keys = [(k["entity"], k["key"], k.get("alias", "")) for k in data.get("keys", [])]
        if [(k.entity, k.key, k.alias) for k in group.keys.all()] != keys:
            group.keys.all().delete()
            GroupKey.objects.bulk_create(
                GroupKey(group=group, entity=entity, key=key, alias=alias, position=position)
                for position, (entity, key, alias) in enumerate(keys)
            )
    for gone in existing.values():
        gone.delete()


def _named(model, project: Project, items: list[dict], fields: dict[str, Any]) -> dict[str, Any]:
    """Upsert ``items`` of a project-owned model by name, delete the rest; returns ``{name: row}``."""
    existing = {row.name: row for row in model.objects.filter(project=project)}
    rows = {}
    for item in items:
        values = {name: item.get(name, default) for name, default in fields.items()}
        rows[item["name"]] = _upsert(model, existing, "name", item["name"], values, project=project)
    model.objects.filter(pk__in=[row.pk for row in existing.values()]).delete()
    return rows


def _with_secrets(doc: dict, resolved: dict[tuple, str]) -> dict:
    errors = []
    for (section, index, name), value in resolved.items():
        if len(value) > _SECRET_LIMITS[name]:
            errors.append(f"{section}[{index}].{name}: the referenced value is longer than {_SECRET_LIMITS[name]} characters")
        doc[section][index] = {**doc[section][index], name: value}
    for section, index, name in resolved:
        if (section, name) == ("hubs", "tls_client_key"):  # checked now that it is the key itself
            errors.extend(hub_tls_errors(doc["hubs"][index], ["hubs", index]))
    if errors:
        raise ProjectDocumentError(errors)
    return doc


def document_import_permissions(*, raw: bytes | str, replace: bool) -> tuple[str, ...]:
    """What importing ``raw`` takes (``hubsched.roles.project_import_permissions``), the document read for its jobs:
    ``jobs.shell_job`` too when it holds a shell job. The import does not know the user: its callers check these
    (hubs/api.py, hubs/admin.py). A document that cannot be read takes the others only; the import refuses it."""
    from hubsched.roles import project_import_permissions

    try:
        data = document_parse(raw=raw)
    except ProjectDocumentError:
        data = None
    return project_import_permissions(replace=replace, shell=document_shell_held(data=data))


def document_import(
    *, raw: bytes | str, replace: bool = False, environ: Mapping[str, str] | None = None
) -> ProjectImport:
    """Read a project document and write it into the database as one transaction.

    ``raw`` is the document's text (UTF-8 bytes or str). A project of the same name is refused with
    ProjectExistsError unless ``replace``; replacing updates rows in place by their natural keys (hub
    name, entity id, parameter key, group name, script/sink/data source name), deletes what the document
    no longer has, and so keeps the run history of every group that stays. A secret field that is a
    reference is read from ``environ`` (default: the process environment), and only the reference export
    writes for that field (``${HUB_<HUB NAME>_KEY}`` in that hub's ``api_key``, ``${HUB_<HUB NAME>_TLS_KEY}`` in
    its ``tls_client_key``, ``${SINK_<NAME>_URL}``,
    ``${DATA_SOURCE_<NAME>_URL}``; ``validation.references_resolve``): ``${SECRET_KEY}`` or another
    field's variable is refused, so a document cannot make the server send its own environment to a hub
    the document names. Raises ProjectDocumentError listing every problem; then nothing has been written.
    """
    doc = document_validate(data=document_parse(raw=raw))
    doc = _with_secrets(doc, references_resolve(doc=doc, environ=environ))
    with transaction.atomic():
        project = Project.objects.select_for_update().filter(name=doc["name"]).first()
        created = project is None
        if project is not None and not replace:
            raise ProjectExistsError([f"name: a project named {doc['name']!r} already exists; import with replace to update it"])
        values = {"description": doc.get("description", ""), "time_zone": doc.get("time_zone", "UTC")}
        if project is None:
            project = Project.objects.create(name=doc["name"], **values)
        elif _assign(project, values):
            project.save()
        _jobs_release(project, doc)  # before the scripts: a job's script is protected from deletion
        scripts = _named(
            Script, project, doc.get("scripts", []), {"code": "", "description": "", "timeout": 2.0, "memory_limit_mb": 256}
        )
        _named(Sink, project, doc.get("sinks", []), {"url": "", "layout": "tall", "table": "hubsched_values", "local_infile": False, "enabled": True})
        _named(DataSource, project, doc.get("data_sources", []), {"url": "", "writable": False, "allow_ddl": False})
        hubs = {hub.name: hub for hub in Hub.objects.filter(project=project)}
        for data in doc.get("hubs", []):
            values = {
                "url": data["url"],
                "api_key": data.get("api_key", ""),
                "timeout": float(data.get("timeout", 5.0)),
                "max_in_flight": data.get("max_in_flight", 128),
                "max_frame_bytes": data.get("max_frame_bytes"),
                "max_value_bytes": data.get("max_value_bytes"),
                "tls_ca_bundle": data.get("tls_ca_bundle", ""),
                "tls_client_cert": data.get("tls_client_cert", ""),
                "tls_client_key": data.get("tls_client_key", ""),
                "tls_verify": data.get("tls_verify", True),
                "enabled": data.get("enabled", True),
            }
            hub = _upsert(Hub, hubs, "name", data["name"], values, project=project)
            entity_tree_write(hub=hub, tree=data.get("entities", []))
            _groups_write(hub, data.get("groups", []), scripts)
            _offsets_write(hub, data.get("offsets", []))
        for gone in hubs.values():
            gone.delete()
        _redundancy_sets_write(project, doc.get("redundancy_sets", []))
        _jobs_write(project, doc.get("jobs", []), scripts)
        _alarm_rules_write(project, doc.get("alarm_rules", []))
    return ProjectImport(project=project, created=created)


# a job's fields in a document and their defaults (the model's); run_at and script are converted
JOB_FIELDS = {
    "title": "", "trigger": "interval", "period": 60.0, "offset": 0.0, "cron": "", "kind": "shell", "argv": [],
    "working_directory": "", "environment": {}, "method": "POST", "url": "", "headers": {}, "body": None,
    "success_codes": "200-299", "timeout": 3600.0, "retries": 0, "retry_backoff": 10.0, "overlap": "forbid",
    "misfire": "skip", "misfire_grace": 60.0, "output_limit_kib": 64, "enabled": True,
}
_JOB_FLOATS = ("period", "offset", "timeout", "retry_backoff", "misfire_grace")


def _jobs_release(project: Project, doc: dict) -> None:
    """Delete the jobs the document dropped (``jobs.services.job_delete``: a running run is killed first), and let
    the kept ones go of scripts the document drops (they get their new script, or none, in ``_jobs_write``)."""
    from jobs.services import job_delete

    for job in Job.objects.filter(project=project).exclude(name__in=[j["name"] for j in doc.get("jobs", [])]):
        job_delete(job=job)
    kept = [s["name"] for s in doc.get("scripts", [])]
    Job.objects.filter(project=project, script__isnull=False).exclude(script__name__in=kept).update(script=None)


def _jobs_write(project: Project, jobs: list[dict], scripts: dict[str, Script]) -> None:
    """Upsert the document's jobs by name through ``jobs.services`` (``Job.full_clean``: the admin's rules); only
    changed jobs are saved, so the beat scheduler's ``updated_at`` watermark sees only real changes. Raises
    ProjectDocumentError with each refused field at its path (validation has checked the same rules already)."""
    from jobs.services import job_change, job_create

    existing = {job.name: job for job in Job.objects.filter(project=project).select_related("script")}
    errors: list[str] = []
    for index, data in enumerate(jobs):
        values = {name: data.get(name, default) for name, default in JOB_FIELDS.items()}
        values.update({name: float(values[name]) for name in _JOB_FLOATS if values[name] is not None})
        values["run_at"] = run_at_parse(data["run_at"]) if data.get("run_at") else None
        values["script"] = scripts[data["script"]] if data.get("script") is not None else None
        job = existing.pop(data["name"], None)
        try:
            if job is None:
                job_create(project_id=project.pk, name=data["name"], **values)
            elif any(getattr(job, name) != value for name, value in values.items()):
                job_change(job=job, changes=values)
        except ValidationError as exc:
            for field_name, messages in exc.message_dict.items():
                where = f"jobs[{index}]" + ("" if field_name == "__all__" else f".{field_name}")
                errors.extend(f"{where}: {message}" for message in messages)
    if errors:
        raise ProjectDocumentError(errors)


def _offsets_write(hub: Hub, offsets: list[dict]) -> None:
    existing = {(o.entity, o.key): o for o in HubOffset.objects.filter(hub=hub)}
    for data in offsets:
        natural = (data.get("entity", ""), data["key"])
        values = {"add": float(data.get("add", 0.0)), "factor": float(data.get("factor", 1.0))}
        _save(HubOffset, existing, natural, values, hub=hub, entity=natural[0], key=natural[1])
    HubOffset.objects.filter(pk__in=[o.pk for o in existing.values()]).delete()


def _alarm_rules_write(project: Project, rules: list[dict]) -> None:
    """Rules by name (``alarms.services.alarm_rule_save``: the API's rule), written after the groups they watch;
    the rules the document dropped are deleted (their open alarms cleared). A rule refused (a route the project
    lacks) refuses the document: the transaction rolls back."""
    from alarms.models import AlarmRule
    from alarms.services import RuleInvalid, alarm_rule_delete, alarm_rule_save

    existing = {rule.name: rule for rule in AlarmRule.objects.filter(project=project)}
    wanted = {rule["name"] for rule in rules}
    for name, rule in existing.items():
        if name not in wanted:
            alarm_rule_delete(rule=rule)
    errors = []
    for index, doc in enumerate(rules):
        try:
            alarm_rule_save(project=project, doc=doc, rule=existing.get(doc["name"]), where=f"alarm_rules[{index}]")
        except RuleInvalid as exc:
            errors.extend(exc.errors)
    if errors:
        raise ProjectDocumentError(errors)


def _redundancy_sets_write(project: Project, sets: list[dict]) -> None:
    """Sets by name, their members' priorities by position (0: the master); sets the document dropped are
    deleted (their hubs stay, in no set)."""
    fields = {"mode": "master_backup", "failback_after_s": 30.0, "threshold_abs": None, "threshold_percent": None,
              "key_thresholds": {}, "disagree_ticks": 3}
    rows = _named(RedundancySet, project, sets, fields)
    wanted = {name: (rows[item["name"]].pk, priority) for item in sets for priority, name in enumerate(item["members"])}
    hubs = list(Hub.objects.filter(project=project).only("pk", "name", "redundancy_set_id", "redundancy_priority"))
    moved = [hub for hub in hubs if (hub.redundancy_set_id, hub.redundancy_priority) != wanted.get(hub.name, (None, 0))]
    # out of every set first, so that no (set, priority) is held twice while members swap places
    Hub.objects.filter(pk__in=[hub.pk for hub in moved]).update(redundancy_set=None, redundancy_priority=0)
    for hub in moved:
        if hub.name in wanted:
            set_id, priority = wanted[hub.name]
            Hub.objects.filter(pk=hub.pk).update(redundancy_set_id=set_id, redundancy_priority=priority)
