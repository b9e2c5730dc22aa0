"""/api/v1 endpoints of the groups app: groups with their keys (one and in bulk), their actions (run now,
enable, disable, kill), their runs and counters. A ninja Router, added in api/v1.py; docs/api.md, "Groups and runs".

Views parse, check the permission (``api.permissions.require``) and call one service or selector of
groups/services.py and groups/selectors.py; the rules are those of the admin and project import
(``groups.services.groups_check``: the models' ``clean_fields``/``clean()`` and groups/validators.py).
"""

from datetime import datetime
from typing import Annotated, Any

from django.http import Http404
from django.shortcuts import get_object_or_404
from ninja import Field, Path, Query, Router, Schema, Status
from ninja.pagination import paginate
from pydantic import model_validator

from api.errors import ApiError
from api.permissions import require
from api.schemas import In, Page, responses
from hubsched.secrets import text_mask

from .models import Group, GroupRun, GroupStats, Trigger

router = Router(tags=["groups"])


MAX_ID = 2**63 - 1  # ids are 64-bit (BigAutoField): a larger number is no id, and the databases refuse it (SQLite: OverflowError)
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
GroupId = Annotated[int, Path(ge=1, le=MAX_ID, description="group id")]
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="run id")]


def _default(name: str):
    return Group._meta.get_field(name).get_default()


# --- schemas ---------------------------------------------------------------------------------------------


class KeyIn(In):
    entity: str = Field(..., description="Entity id on the hub (plant/line1/pump1)")
    key: str = Field(..., description="Parameter key on that entity (p1)")
    alias: str = Field("", description="Name of the value in the script; empty: the key itself")


class KeyOut(Schema):
    entity: str
    key: str
    alias: str


TRIGGERS = ", ".join(Trigger.values)


class GroupFields(In):
    """What a group is; every field's rule is the model's (422 with its path when broken)."""

    trigger: str = Field(_default("trigger"), description=f"What starts an execution: {TRIGGERS}")
    period: float = Field(_default("period"), description="interval: seconds between ticks (0.1 and up)")
    offset: float = Field(_default("offset"), description="interval: shift of the tick grid, seconds")
    cron: str = Field("", description="cron: six fields, seconds first (*/5 * * * * *), in the project's time zone")
    run_at: datetime | None = Field(None, description="once: when to run (ISO 8601 with offset)")
    deadband: float | None = Field(None, description="on_change: a numeric change smaller than this is no event")
    expires: float | None = Field(None, description="seconds a tick may wait for a worker before it is missed; "
                                  "null: one period")
    execution_timeout: float | None = Field(None, description="most seconds one execution may take (more than 0); "
                                            "null: none")
    script: Id | None = Field(None, description="id of a script of the hub's project, run after every poll")
    enabled: bool = Field(_default("enabled"), description="a disabled group is not scheduled")


class GroupIn(GroupFields):
    hub: Id = Field(..., description="id of the hub the group reads")
    name: str = Field(..., description="unique within the hub")
    keys: list[KeyIn] = Field(..., description="the keys read, in order (at least one)")


class GroupPatch(In):
    """A change: only the fields given change; ``keys``, when given, replace the group's keys as a whole."""

    hub: Id | None = None
    name: str | None = None
    trigger: str | None = None
    period: float | None = None
    offset: float | None = None
    cron: str | None = None
    run_at: datetime | None = None
    deadband: float | None = None
    expires: float | None = None
    execution_timeout: float | None = None
    script: Id | None = None
    enabled: bool | None = None
    keys: list[KeyIn] | None = None


class StatsOut(Schema):
    """The group's counters (GroupStats): every due tick ends in one of ok, failed, skipped, missed, killed."""

    dispatched: int = Field(..., description="ticks sent to workers")
    started: int
    done: int = Field(..., description="executions that ended ok (values durable in the log)")
    failed: int
    skipped: int = Field(..., description="ticks skipped: the group was still running")
    missed: int = Field(..., description="ticks dropped: older than their expiry")
    killed: int
    values: int = Field(..., description="values acquired")
    runs: int = Field(..., description="finished executions: done + failed + killed")
    lag_ms_mean: float | None = Field(..., description="mean start lag behind the tick, ms")
    last_run_at: datetime | None
    last_status: str | None
    last_error: str | None = Field(..., description="error of the latest failed run (secrets masked)")


class GroupOut(Schema):
    id: int
    project: int
    hub: int
    name: str
    trigger: str
    period: float
    offset: float
    cron: str
    run_at: datetime | None
    deadband: float | None
    expires: float | None
    execution_timeout: float | None
    script: int | None
    enabled: bool
    keys: list[KeyOut]
    periodic_task: int | None = Field(..., description="id of the django-celery-beat entry mirroring it "
                                      "(null for on_change)")
    updated_at: datetime
    stats: StatsOut

    @staticmethod
    def resolve_project(obj) -> int:
        return obj.hub.project_id

    @staticmethod
    def resolve_hub(obj) -> int:
        return obj.hub_id

    @staticmethod
    def resolve_script(obj) -> int | None:
        return obj.script_id

    @staticmethod
    def resolve_periodic_task(obj) -> int | None:
        return obj.periodic_task_id

    @staticmethod
    def resolve_keys(obj) -> list:
        return list(obj.keys.all())

    @staticmethod
    def resolve_stats(obj) -> dict[str, Any]:
        stats = getattr(obj, "stats", None) or GroupStats(group_id=obj.pk)
        return {
            "dispatched": stats.dispatched, "started": stats.started, "done": stats.done, "failed": stats.failed,
            "skipped": stats.skipped, "missed": stats.missed, "killed": stats.killed, "values": stats.values,
            "runs": stats.runs, "lag_ms_mean": round(stats.lag_ms_mean, 1) if stats.lag_ms_mean is not None else None,
            "last_run_at": stats.last_run_at, "last_status": stats.last_status or None,
            # masked where the run was recorded; again here, for errors recorded before that
            "last_error": text_mask(stats.last_error, secrets=(obj.hub.api_key,)) if stats.last_error else None,
        }


class GroupFilter(Schema):
    project: Id | None = Field(None, description="project id")
    hub: Id | None = Field(None, description="hub id")
    enabled: bool | None = None
    trigger: str | None = Field(None, description=TRIGGERS)
    search: str | None = Field(None, description="part of the name, any case")


class FilterIn(In):
    project: Id | None = None
    hub: Id | None = None
    enabled: bool | None = None
    trigger: str | None = None
    search: str | None = None


class BulkCreateIn(In):
    groups: list[GroupIn] = Field(..., description="at most 1,000 groups, created all or none")


class BulkCreated(Schema):
    count: int
    ids: list[int] = Field(..., description="the new groups' ids, in the order given")


class SelectionIn(In):
    """Which groups: ``ids``, or ``filter`` (the list's filters; ``{}`` is every group). Exactly one."""

    ids: list[Id] | None = None
    filter: FilterIn | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give ids or filter, not both and not neither")
        return self


class BulkDone(Schema):
    matched: int = Field(..., description="groups the selection named (that exist)")
    changed: int = Field(..., description="groups changed or deleted (enable: those that were disabled)")


class RunQueued(Schema):
    queued: int = Field(..., description="executions queued (1): the run appears under /runs once done")


class KillOut(Schema):
    request: int = Field(..., description="id of the KillRequest")
    outcome: str = Field(..., description="killed")
    killed_by: str


class RunOut(Schema):
    id: int
    scheduled_for: datetime = Field(..., description="the tick")
    started_at: datetime | None
    finished_at: datetime | None
    status: str = Field(..., description="ok, failed, skipped, missed, killed")
    error: str = Field(..., description="why it failed (secrets masked); empty otherwise")
    values_count: int
    killed_by: str


class RunFilter(Schema):
    status: str | None = Field(None, description="ok, failed, skipped, missed or killed")
    since: datetime | None = Field(None, description="ticks at or after (ISO 8601 with offset)")
    until: datetime | None = Field(None, description="ticks at or before (ISO 8601 with offset)")


class RunValuesOut(Schema):
    tick: datetime
    status: str
    error: str
    values_count: int
    values: list[tuple[str, list[dict[str, Any]]]] = Field(
        ..., description='[[entity, [{"key", "value", "ts"?, "quality"?}]]]: the values stored, after the script '
        'and its write-back; entity "" for values the script computed')
    served_by: str = Field(..., description="the redundancy set member read, when not the group's hub")
    logged_at: datetime = Field(..., description="when the log recorded it")


# --- helpers -------------------------------------------------------------------------------------------------


def _invalid(problems: list[tuple[int, str, str]], prefix: str | None) -> ApiError:
    """GroupsInvalid's problems as a 422; ``prefix`` ``groups`` gives paths ``groups[7].keys[2].entity``."""

    def path(index: int, at: str) -> str:
        if prefix is None:
            return at
        return f"{prefix}[{index}]" + (f".{at}" if at else "")

    details = [{"path": path(i, at), "message": message} for i, at, message in problems]
    return ApiError(422, "the request did not pass validation", details=details)


def _item(payload: In, **dump) -> dict[str, Any]:
    """A body's fields for ``group_drafts_make``: keys as ``[(entity, key, alias)]``."""
    item = payload.model_dump(**dump)
    if item.get("keys") is not None:
        item["keys"] = [(k["entity"], k["key"], k.get("alias") or "") for k in item["keys"]]
    return item


def _group(group_id: int) -> Group:
    from .selectors import groups_list

    return get_object_or_404(groups_list(), pk=group_id)


def _tz_aware(value: datetime | None, path: str) -> None:
    if value is not None and value.tzinfo is None:
        raise ApiError(422, "the request did not pass validation",
                       details=[{"path": path, "message": "expected an ISO 8601 time with a UTC offset (or Z)"}])


def _selected(selection: SelectionIn) -> list[int]:
    from .selectors import groups_filter

    if selection.ids is not None:
        ids = sorted(set(selection.ids))
        return [pk for start in range(0, len(ids), 500)
                for pk in Group.objects.filter(pk__in=ids[start : start + 500]).values_list("pk", flat=True)]
    f = selection.filter
    return list(groups_filter(Group.objects.all(), project_id=f.project, hub_id=f.hub, enabled=f.enabled,
                              trigger=f.trigger, search=f.search).values_list("pk", flat=True))


# --- groups ----------------------------------------------------------------------------------------------


@router.get("/groups", response=responses(list[GroupOut], 400, 401, 403, 422), summary="List groups")
@paginate(Page)
def groups_list_view(request, filters: Query[GroupFilter]):
    """Groups ordered by project, hub and name, with their keys and counters; filter by ``project``, ``hub``
    (ids), ``enabled``, ``trigger``; ``search`` in the name. Needs ``groups.view_group``."""
    from .selectors import groups_list

    require(request, "groups.view_group")
    return groups_list(project_id=filters.project, hub_id=filters.hub, enabled=filters.enabled,
                       trigger=filters.trigger, search=filters.search)


@router.get("/groups/{int:group_id}", response=responses(GroupOut, 401, 403, 404, 422), summary="Get a group")
def group_get(request, group_id: GroupId):
    """One group with its keys (in order) and counters. Needs ``groups.view_group``."""
    require(request, "groups.view_group")
    return _group(group_id)


@router.post("/groups", response=responses({201: GroupOut}, 400, 401, 403, 409, 422), summary="Create a group")
def group_create(request, payload: GroupIn):
    """A new group with its keys, scheduled at once (its django-celery-beat entry is made with it). The rules
    are the admin's and import's: 422 with each problem at its path (``keys[2].entity``). Needs
    ``groups.add_group``."""
    from .services import GroupsInvalid, group_drafts_make, groups_create

    require(request, "groups.add_group")
    _tz_aware(payload.run_at, "run_at")
    try:
        drafts = group_drafts_make(items=[_item(payload)])
        group = groups_create(drafts=drafts)[0]
    except GroupsInvalid as exc:
        raise _invalid(exc.problems, None) from None
    return Status(201, _group(group.pk))


@router.patch("/groups/{int:group_id}", response=responses(GroupOut, 400, 401, 403, 404, 409, 422),
              summary="Change a group")
def group_update(request, group_id: GroupId, payload: GroupPatch):
    """Change the fields given; ``keys``, when given, replace the keys as a whole (in the order given). The
    schedule follows. Needs ``groups.change_group``."""
    from .services import GroupsInvalid, group_change, group_drafts_make

    require(request, "groups.change_group")
    group = get_object_or_404(Group.objects.select_related("hub__project", "script"), pk=group_id)
    changes = _item(payload, exclude_unset=True)
    _tz_aware(changes.get("run_at"), "run_at")
    try:
        draft = group_drafts_make(items=[changes], saved=[group])[0]
        group_change(draft=draft)
    except GroupsInvalid as exc:
        raise _invalid(exc.problems, None) from None
    return _group(group_id)


@router.delete("/groups/{int:group_id}", response=responses({204: None}, 401, 403, 404, 422), summary="Delete a group")
def group_delete(request, group_id: GroupId):
    """Delete a group with its keys, runs, counters and schedule. Needs ``groups.delete_group``."""
    from .services import groups_delete

    require(request, "groups.delete_group")
    if not groups_delete(group_ids=[get_object_or_404(Group, pk=group_id).pk]):
        raise Http404
    return Status(204, None)


# --- bulk ----------------------------------------------------------------------------------------------------


@router.post("/groups/bulk", response=responses({201: BulkCreated}, 400, 401, 403, 409, 413, 422),
             summary="Create groups in bulk")
def groups_bulk_create(request, payload: BulkCreateIn):
    """Create up to 1,000 groups (``GROUPS_BULK_MAX``) in one transaction: all or none. Every problem of
    every group is answered at once, 422 with paths like ``groups[7].keys[2].entity``, and nothing is written.
    Their schedules are made with them. Needs ``groups.add_group``."""
    from .services import GROUPS_BULK_MAX, GroupsInvalid, group_drafts_make, groups_create

    require(request, "groups.add_group")
    if len(payload.groups) > GROUPS_BULK_MAX:
        raise ApiError(413, f"at most {GROUPS_BULK_MAX} groups per request; got {len(payload.groups)}",
                       details=[{"path": "groups", "message": f"at most {GROUPS_BULK_MAX} items"}])
    for index, item in enumerate(payload.groups):
        _tz_aware(item.run_at, f"groups[{index}].run_at")
    try:
        drafts = group_drafts_make(items=[_item(item) for item in payload.groups])
        groups = groups_create(drafts=drafts)
    except GroupsInvalid as exc:
        raise _invalid(exc.problems, "groups") from None
    return Status(201, {"count": len(groups), "ids": [g.pk for g in groups]})


@router.post("/groups/bulk/enable", response=responses(BulkDone, 400, 401, 403, 422), summary="Enable groups in bulk")
def groups_bulk_enable(request, payload: SelectionIn):
    """Enable the groups named by ``ids`` or ``filter``; their schedules follow. Needs ``groups.enable_group``."""
    from .services import groups_enabled_set

    require(request, "groups.enable_group")
    ids = _selected(payload)
    return {"matched": len(ids), "changed": groups_enabled_set(group_ids=ids, enabled=True)}


@router.post("/groups/bulk/disable", response=responses(BulkDone, 400, 401, 403, 422), summary="Disable groups in bulk")
def groups_bulk_disable(request, payload: SelectionIn):
    """Disable the groups named by ``ids`` or ``filter``; they are no longer scheduled. Needs ``groups.enable_group``."""
    from .services import groups_enabled_set

    require(request, "groups.enable_group")
    ids = _selected(payload)
    return {"matched": len(ids), "changed": groups_enabled_set(group_ids=ids, enabled=False)}


@router.post("/groups/bulk/delete", response=responses(BulkDone, 400, 401, 403, 422), summary="Delete groups in bulk")
def groups_bulk_delete(request, payload: SelectionIn):
    """Delete the groups named by ``ids`` or ``filter`` (``{}``: every group) with their keys, runs, counters
    and schedules, in one transaction. Needs ``groups.delete_group``."""
    from .services import groups_delete

    require(request, "groups.delete_group")
    ids = _selected(payload)
    return {"matched": len(ids), "changed": groups_delete(group_ids=ids)}


# --- actions -------------------------------------------------------------------------------------------------


@router.post("/groups/{int:group_id}/run", response=responses({202: RunQueued}, 401, 403, 404, 422), summary="Run a group now")
def group_run_now(request, group_id: GroupId):
    """Queue one execution now, in a worker (a disabled group runs too: a person asked). Needs ``groups.run_group``."""
    from .services import groups_run_now

    require(request, "groups.run_group")
    group = get_object_or_404(Group, pk=group_id)
    return Status(202, {"queued": groups_run_now(group_ids=[group.pk])})


@router.post("/groups/{int:group_id}/enable", response=responses(GroupOut, 401, 403, 404, 422), summary="Enable a group")
def group_enable(request, group_id: GroupId):
    """Enable the group (its schedule follows). Needs ``groups.enable_group``."""
    from .services import groups_enabled_set

    require(request, "groups.enable_group")
    groups_enabled_set(group_ids=[get_object_or_404(Group, pk=group_id).pk], enabled=True)
    return _group(group_id)


@router.post("/groups/{int:group_id}/disable", response=responses(GroupOut, 401, 403, 404, 422), summary="Disable a group")
def group_disable(request, group_id: GroupId):
    """Disable the group: no longer scheduled (a running execution finishes; kill stops it). Needs
    ``groups.enable_group``."""
    from .services import groups_enabled_set

    require(request, "groups.enable_group")
    groups_enabled_set(group_ids=[get_object_or_404(Group, pk=group_id).pk], enabled=False)
    return _group(group_id)


@router.post("/groups/{int:group_id}/kill", response=responses(KillOut, 401, 403, 404, 409, 422),
             summary="Kill a group's running execution")
def group_kill_view(request, group_id: GroupId, scheduled_for: datetime | None = None):
    """Kill the group's running execution (of tick ``scheduled_for``, ISO 8601 with offset; without it
    whichever runs now). Waits up to ``groups.execution.KILL_PICKUP_S`` (3 s) for a worker to stop it: 200,
    the run is then recorded as ``killed`` (through the log, within seconds); 409 (``conflict``, "nothing was
    running: ...") when no worker ran it. Needs ``groups.kill_group`` and ``groups.view_group``."""
    from .models import KillOutcome
    from .services import group_kill

    require(request, "groups.kill_group", "groups.view_group")
    _tz_aware(scheduled_for, "scheduled_for")
    try:
        kill = group_kill(group_id=group_id, requested_by=request.user.get_username(), scheduled_for=scheduled_for)
    except Group.DoesNotExist:
        raise ApiError(404, f"group {group_id} does not exist") from None
    if kill.outcome != KillOutcome.KILLED:
        raise ApiError(409, f"nothing was running: no worker was executing group {group_id}"
                       + (f" at {scheduled_for.isoformat()}" if scheduled_for else ""))
    return {"request": kill.pk, "outcome": kill.outcome, "killed_by": kill.requested_by}


# --- runs ------------------------------------------------------------------------------------------------------


@router.get("/groups/{int:group_id}/runs", response=responses(list[RunOut], 400, 401, 403, 404, 422),
            summary="Runs of a group")
@paginate(Page)
def group_runs(request, group_id: GroupId, filters: Query[RunFilter]):
    """The group's runs (one per tick that fell due), newest tick first: ``status``, ticks ``since``/``until``
    (inclusive). Errors are masked. The counters are the group's ``stats``; the values of one run are at
    ``/runs/{run_id}/values``. Needs ``groups.view_group`` and ``groups.view_grouprun``."""
    from .selectors import group_runs_list

    require(request, "groups.view_group", "groups.view_grouprun")
    _tz_aware(filters.since, "since")
    _tz_aware(filters.until, "until")
    group = get_object_or_404(Group.objects.select_related("hub"), pk=group_id)
    if filters.status:
        from .models import RunStatus

        if filters.status not in RunStatus.values:
            raise ApiError(422, "the request did not pass validation", details=[
                {"path": "status", "message": f"expected one of {', '.join(RunStatus.values)}"}])
    return _MaskedRuns(group_runs_list(group_id=group.pk, status=filters.status, since=filters.since,
                                       until=filters.until), group.hub.api_key)


class _MaskedRuns:
    """The runs QuerySet for ``Page``, each run's error masked again with the hub's key (as the status does)."""

    def __init__(self, qs, secret: str):
        self.qs, self.secret = qs, secret

    def count(self) -> int:
        return self.qs.count()

    def __getitem__(self, item):
        runs = list(self.qs[item])
        for run in runs:
            if run.error:
                run.error = text_mask(run.error, secrets=(self.secret,))
        return runs


@router.get("/groups/{int:group_id}/runs/{int:run_id}/values", response=responses(RunValuesOut, 401, 403, 404, 422, 503),
            summary="Values of one run")
def group_run_values_view(request, group_id: GroupId, run_id: RunId):
    """What the durable log holds of the run: its values as stored (after the script and write-back), status
    and error. 404 when the log no longer keeps it (retention, HUBSCHED_LOG_RETENTION_S) or the run stored
    nothing there; 503 when the log does not answer. Needs ``groups.view_grouprun`` and ``streams.read_stream``."""
    from streams.log import LogError

    from .selectors import group_run_values

    require(request, "groups.view_group", "groups.view_grouprun", "streams.read_stream")
    run = get_object_or_404(GroupRun.objects.select_related("group__hub"), pk=run_id, group_id=group_id)
    try:
        found = group_run_values(run=run)
    except LogError as exc:
        raise ApiError(503, f"the log did not answer: {exc.message}") from None
    if found is None:
        raise ApiError(404, "the log no longer holds this run's values (retention), or never did")
    if found["error"]:
        found["error"] = text_mask(found["error"], secrets=(run.group.hub.api_key,))
    return found
