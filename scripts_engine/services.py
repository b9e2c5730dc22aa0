"""Writes and runs for scripts: create, change and delete scripts, sinks and data sources; debug sessions
(optionally on live values, with write-back and storage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .models import DataSource, Script, Sink
from .sandbox import DebugRun, ScriptError, script_debug_run


class ScriptDebugError(Exception):
    """A debug session could not start or finish (unknown group, hub unreachable, write-back refused)."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class DebugSession:
    run: DebugRun
    bindings_in: dict[str, Any]
    written: dict[str, dict[str, Any]] = field(default_factory=dict)  # entity -> {key: value} sent to the hub
    stored: int = 0  # values stored in the project's sinks


def script_data_sources(*, project_id: int) -> dict[str, dict[str, Any]]:
    """The project's data sources as ``{name: {"url": SQLAlchemy URL, "writable": bool, "allow_ddl": bool}}``.

    What ``sql("name")`` reaches, in the shape ``script_execute(data_sources=...)`` takes. A source
    is read-only unless ``writable``; ``allow_ddl`` counts only with ``writable`` (DataSource model;
    what is refused: docs/scripts.md, "SQL").
    """
    rows = DataSource.objects.filter(project_id=project_id).values_list("name", "url", "writable", "allow_ddl")
    return {name: {"url": url, "writable": writable, "allow_ddl": allow_ddl} for name, url, writable, allow_ddl in rows}


def script_debug(
    *,
    script: Script,
    bindings: dict[str, Any],
    breakpoints: list[int],
    actions: list[str] | None = None,
    group_id: int | None = None,
    write_back: bool = False,
    store: bool = False,
    code: str | None = None,
) -> DebugSession:
    """Run ``script`` under the debugger; returns its stops and result. Nothing is written unless asked.
    ``code``: run this instead of the saved code (the console's editor tests what is typed; the script's limits,
    project and data sources stay its own).

    With ``group_id`` the group is polled first (live values), and ``bindings`` override what was
    read. ``write_back`` (live only) sends changed writable bindings to the hub, one
    ``setEntityParams`` per entity; ``store`` writes every binding to the project's sinks. Both
    happen only when the script finished without error. Raises ``ScriptDebugError``.
    """
    live: dict = {}
    group = None
    if group_id is not None:
        group, live = _poll_group(script=script, group_id=group_id)
    elif write_back:
        raise ScriptDebugError("write_back needs live values: give a group")
    values = {name: b.value for name, b in live.items()}
    values.update(bindings)
    run = script_debug_run(
        code=script.code if code is None else code,
        bindings=values,
        breakpoints=breakpoints,
        actions=actions,
        timeout=script.timeout,
        memory_limit_mb=script.memory_limit_mb,
        data_sources=script_data_sources(project_id=script.project_id),
    )
    session = DebugSession(run=run, bindings_in=values)
    if run.result is None:
        return session
    if write_back:
        from groups.execution import GroupRunError, bindings_write_back

        try:
            session.written = bindings_write_back(
                hub=group.hub, bindings=dict(live), results=run.result.bindings, changed=run.result.changed
            )
        except GroupRunError as exc:
            raise ScriptDebugError(str(exc), status=502) from exc
    if store:
        session.stored = _store(script=script, group=group, live=live, result_bindings=run.result.bindings)
    return session


def _poll_group(*, script: Script, group_id: int):
    """Read the group's keys now; returns (group, {name: Binding}). Raises ScriptDebugError."""
    from groups.execution import GroupRunError, group_poll
    from groups.models import Group

    group = Group.objects.select_related("hub__project").prefetch_related("keys").filter(pk=group_id).first()
    if group is None:
        raise ScriptDebugError(f"no group {group_id}", status=404)
    if group.hub.project_id != script.project_id:
        raise ScriptDebugError(f"group {group_id} belongs to another project than script {script.pk}")
    try:
        return group, group_poll(group=group)
    except GroupRunError as exc:
        raise ScriptDebugError(f"live values of group {group.name!r}: {exc}", status=502) from exc


def _store(*, script: Script, group, live: dict, result_bindings: dict[str, Any]) -> int:
    from collections import defaultdict

    from .sinks import ExecutionValues, SinkError, sink_targets_for_project, sinks_write

    now = timezone.now()
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    by_entity: dict[str, list[dict]] = defaultdict(list)
    for name, value in result_bindings.items():
        binding = live.get(name)
        by_entity[binding.entity if binding else ""].append({
            "key": binding.key if binding else name,
            "value": value,
            "ts": binding.ts if binding else ts,
            "quality": binding.quality if binding else "good",
        })
    execution = ExecutionValues(
        tick=now,
        project=script.project.name,
        hub=group.hub.name if group else "",
        group_id=group.pk if group else 0,
        group=group.name if group else f"debug:{script.name}",
        values=list(by_entity.items()),
    )
    try:
        sinks_write(targets=sink_targets_for_project(project_id=script.project_id), executions=[execution])
    except SinkError as exc:
        raise ScriptDebugError(f"storing the bindings failed: {exc}", status=502) from exc
    return execution.value_count()


def debug_payload(session: DebugSession) -> dict[str, Any]:
    """The JSON shape of a debug session (API and command)."""
    run = session.run
    payload: dict[str, Any] = {
        "stops": [s.as_dict() for s in run.stops],
        "truncated": run.truncated,
    }
    if run.result is not None:
        payload["result"] = result_payload(run.result)
        payload["written"] = session.written
        payload["stored"] = session.stored
    if run.error is not None:
        payload["error"] = run.error.as_dict()
    return payload


def result_payload(result) -> dict[str, Any]:
    return {"bindings": result.bindings, "changed": sorted(result.changed), "output": result.output}


# --- create, change, delete ----------------------------------------------------------------------
# One validation for the admin, the project import and the API: the model's full_clean (field limits,
# choices, the project's existence, unique names, Script.clean's compile check, Sink.clean's wide-layout
# names) and, for a URL, the admin form's rule for a masked secret (forms.url_secrets_keep).


def _saved(row):
    """``row`` after ``full_clean`` and ``save`` in one transaction. Raises ValidationError (per field).

    A text holding a NUL character is refused first, with the admin form's message (Django's
    ProhibitNullCharactersValidator, which form fields have and model fields lack): PostgreSQL cannot store it."""
    from django.core.validators import ProhibitNullCharactersValidator

    nul = ProhibitNullCharactersValidator()
    errors = {}
    for model_field in row._meta.concrete_fields:
        value = getattr(row, model_field.attname)
        if isinstance(value, str) and "\x00" in value:
            errors[model_field.name] = [nul.message]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        row.full_clean()
        row.save()
    return row


def _changed(row, changes: dict[str, Any]):
    for name, value in changes.items():
        setattr(row, name, value)
    return _saved(row)


def _url_kept(*, submitted: str, stored: str) -> str:
    """``submitted`` with each ``***`` standing for a secret of ``stored`` filled in (forms.url_secrets_keep:
    the admin's rule); raises ValidationError on ``url``."""
    from .forms import url_secrets_keep

    try:
        return url_secrets_keep(submitted=(submitted or "").strip(), stored=stored)
    except ValidationError as exc:
        raise ValidationError({"url": exc.messages}) from None


def script_create(*, project_id: int, name: str, code: str = "", description: str = "", timeout: float = 2.0,
                  memory_limit_mb: int = 256) -> Script:
    """A new script of the project. Raises ValidationError: ``code`` that does not compile under the sandbox
    policy (the message gives line and column: ``line 2, column 5: SyntaxError: ...``), a name taken in the
    project, an unknown project, limits below their minimum (timeout 0.01 s, memory 16 MB)."""
    return _saved(Script(project_id=project_id, name=name, code=code, description=description, timeout=timeout,
                         memory_limit_mb=memory_limit_mb))


def script_change(*, script: Script, changes: dict[str, Any]) -> Script:
    """``script`` with ``changes`` (field name -> value: name, code, description, timeout, memory_limit_mb)
    applied and saved; the rules of ``script_create``."""
    return _changed(script, changes)


def script_delete(*, script: Script) -> None:
    """Delete ``script``; its groups keep running without a script (Group.script is SET_NULL)."""
    script.delete()


def sink_create(*, project_id: int, name: str, url: str, layout: str = "tall", table: str = "hubsched_values",
                local_infile: bool = False, enabled: bool = True) -> Sink:
    """A new sink of the project (a SQLAlchemy ``url``, stored encrypted). Raises ValidationError: an empty
    URL or one holding ``***`` (no stored secret to fill in), an unknown layout, a wide layout whose table
    names would lose values (Sink.clean), a name taken in the project, an unknown project."""
    url = _url_kept(submitted=url, stored="")
    return _saved(Sink(project_id=project_id, name=name, url=url, layout=layout, table=table,
                       local_infile=local_infile, enabled=enabled))


def sink_change(*, sink: Sink, changes: dict[str, Any]) -> Sink:
    """``sink`` with ``changes`` applied (name, url, layout, table, local_infile, enabled). A ``url`` may carry
    ``***`` where the stored one has a secret: that secret is kept, as in the admin, when the host, port and
    user stay the same. The rules of ``sink_create``."""
    if "url" in changes:
        changes = {**changes, "url": _url_kept(submitted=changes["url"], stored=sink.url)}
    return _changed(sink, changes)


def sink_delete(*, sink: Sink) -> None:
    """Delete ``sink`` (and its forwarders' rows); the values it holds stay in its database."""
    sink.delete()


def data_source_create(*, project_id: int, name: str, url: str, writable: bool = False,
                       allow_ddl: bool = False) -> DataSource:
    """A new data source of the project; the URL rules of ``sink_create``. Raises ValidationError."""
    url = _url_kept(submitted=url, stored="")
    return _saved(DataSource(project_id=project_id, name=name, url=url, writable=writable, allow_ddl=allow_ddl))


def data_source_change(*, data_source: DataSource, changes: dict[str, Any]) -> DataSource:
    """``data_source`` with ``changes`` applied (name, url, writable, allow_ddl); the URL rule of ``sink_change``."""
    if "url" in changes:
        changes = {**changes, "url": _url_kept(submitted=changes["url"], stored=data_source.url)}
    return _changed(data_source, changes)


def data_source_delete(*, data_source: DataSource) -> None:
    data_source.delete()


__all__ = [
    "DebugSession", "ScriptDebugError", "ScriptError", "data_source_change", "data_source_create", "data_source_delete",
    "debug_payload", "script_change", "script_create", "script_debug", "script_delete", "sink_change", "sink_create",
    "sink_delete",
]
