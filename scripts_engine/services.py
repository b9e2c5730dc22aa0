"""Writes and runs for scripts: debug sessions (optionally on live values, with write-back and storage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from .models import DataSource, Script
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
) -> DebugSession:
    """Run ``script`` under the debugger; returns its stops and result. Nothing is written unless asked.

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
        code=script.code,
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


__all__ = ["DebugSession", "ScriptDebugError", "ScriptError", "debug_payload", "script_debug"]
