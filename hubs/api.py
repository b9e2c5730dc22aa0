"""/api/v1 endpoints of this app: projects (with their document export and import), hubs (with their actions:
enable, disable, test connection, sync entities), and the entities and parameters a hub exposes (read only).

Thin: parse, ``require`` the permission, call a service or selector of hubs/services.py, hubs/selectors.py,
present. The rules are the models' (``full_clean``: the admin's and the import's); a refused change is a 422
with a detail per field. A hub's key and TLS client key are write-only: accepted, answered as ``has_key`` and
``has_tls_client_key``, never sent back.
"""

from datetime import datetime
from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status
from ninja.pagination import paginate

from api.errors import ApiError
from api.permissions import require
from api.schemas import In, OfProject, Page, responses
from hubsched.roles import project_import_permissions

from . import selectors, services
from .client import HubError
from .models import Hub, Parameter, ParameterType, Project

router = Router(tags=["projects and hubs"])


# --- schemas -------------------------------------------------------------------------------------------------


class ProjectOut(Schema):
    id: int
    name: str
    description: str
    time_zone: str = Field(..., description="IANA time zone aligning the groups' ticks and cron triggers")
    hub_count: int
    group_count: int
    created_at: datetime
    updated_at: datetime


class ProjectIn(In):
    name: str = Field(..., description="Unique among projects; at most 200 characters")
    description: str = ""
    time_zone: str = Field("UTC", description="IANA time zone, e.g. Europe/Berlin")


class ProjectChangeIn(In):
    name: str = None
    description: str = None
    time_zone: str = None


class DeletedOut(Schema):
    id: int
    name: str
    hubs: int = Field(..., description="Hubs that went with it")
    groups: int = Field(..., description="Groups that went with it (with their runs)")
    deleted: dict[str, int] = Field(..., description='Rows deleted by model, {"hubs.hub": 2, "groups.group": 4, ...}')


class ImportedOut(Schema):
    id: int
    name: str
    created: bool = Field(..., description="false when replace updated an existing project in place")


class HubOut(OfProject):
    name: str
    url: str
    has_key: bool = Field(..., description="Whether an API key is set; the key itself is never answered")
    timeout: float = Field(..., description="Seconds to wait for one answer")
    max_in_flight: int
    max_frame_bytes: int | None
    max_value_bytes: int | None
    tls_ca_bundle: str
    tls_client_cert: str
    has_tls_client_key: bool = Field(..., description="Whether a TLS client key is set; never answered itself")
    tls_verify: bool
    tls_insecure: bool = Field(..., description="wss:// without checking the hub's certificate")
    enabled: bool
    redundancy_set: int | None = Field(..., description="Redundancy set id, or null")
    redundancy_priority: int
    entity_count: int
    group_count: int

    @staticmethod
    def resolve_has_key(obj) -> bool:
        return bool(obj.api_key)

    @staticmethod
    def resolve_has_tls_client_key(obj) -> bool:
        return bool(obj.tls_client_key)

    @staticmethod
    def resolve_redundancy_set(obj) -> int | None:
        return obj.redundancy_set_id


class HubChangeIn(In):
    name: str = None
    url: str = Field(None, description="ws://host[:port]/path, or wss:// for TLS")
    api_key: str = Field(None, description="Write-only; \"\" clears it; left out: kept")
    timeout: float = None
    max_in_flight: int = None
    max_frame_bytes: int | None = None
    max_value_bytes: int | None = None
    tls_ca_bundle: str = None
    tls_client_cert: str = None
    tls_client_key: str = Field(None, description="Write-only unencrypted PEM key; \"\" clears it; left out: kept")
    tls_verify: bool = None
    enabled: bool = Field(None, description="Needs hubs.enable_hub besides")
    redundancy_set: int | None = Field(None, description="Redundancy set id (of the hub's project), or null")
    redundancy_priority: int = None


class HubIn(HubChangeIn):
    name: str
    url: str = Field(..., description="ws://host[:port]/path, or wss:// for TLS")


class ConnectionOut(Schema):
    ok: bool
    hub: str | None = Field(None, description="The hub's own name (getInfo)")
    protocol: int | None = Field(None, description="Protocol version (getInfo)")
    methods: list[str] | None = Field(None, description="Methods the hub supports (getInfo); null: it has no getInfo")
    time: str | None = Field(None, description="The hub's clock, RFC 3339 UTC")
    clock_offset_ms: float | None = Field(None, description="The hub's clock minus the scheduler's, in ms "
                                          "(uncertain by half the round trip)")
    round_trip_ms: float | None = Field(None, description="Time of the call, in ms (with connecting, when no "
                                        "connection was open)")
    error: str = Field("", description="Why the test failed, in words; empty when ok")
    summary: str


class SyncOut(Schema):
    dry_run: bool = Field(..., description="true: nothing was changed; this is what applying would do")
    added: list[str] = Field(..., description="Entity ids, and entity.key for parameters")
    changed: list[str]
    removed: list[str]
    summary: str


class EntityOut(Schema):
    id: int
    path: str = Field(..., description="The hub's entity id (plant/line1/pump1)")
    name: str
    type: str
    parent: str | None = Field(..., description="Parent entity id, or null for a root")
    depth: int
    param_count: int

    @staticmethod
    def resolve_parent(obj) -> str | None:
        return obj.parent.path if obj.parent_id else None


class ParameterOut(Schema):
    id: int
    entity: str = Field(..., description="Entity id")
    key: str
    name: str
    type: ParameterType
    unit: str
    writable: bool

    @staticmethod
    def resolve_entity(obj) -> str:
        return obj.entity.path


class EntityDetailOut(EntityOut):
    params: list[ParameterOut]

    @staticmethod
    def resolve_params(obj) -> list:
        return list(obj.params.all())


# --- helpers -------------------------------------------------------------------------------------------------


def _validated(call, *args, **kwargs):
    """``call`` with a Django ValidationError at a schema's field name (``redundancy_set_id`` -> ``redundancy_set``)."""
    from django.core.exceptions import ValidationError

    from api.errors import django_validation_details

    try:
        return call(*args, **kwargs)
    except ValidationError as exc:
        details = [{**d, "path": d["path"].removesuffix("_id")} for d in django_validation_details(exc)]
        raise ApiError(422, "the request did not pass validation", details=details) from None


def _project(project_id: int) -> Project:
    return get_object_or_404(selectors.project_list(), pk=project_id)


def _hub(hub_id: int) -> Hub:
    return get_object_or_404(selectors.hub_list(), pk=hub_id)


def _hub_fields(payload: HubChangeIn) -> dict[str, Any]:
    fields = payload.model_dump(exclude_unset=True)
    if "redundancy_set" in fields:
        fields["redundancy_set_id"] = fields.pop("redundancy_set")
    return fields


# --- projects ------------------------------------------------------------------------------------------------


@router.get("/projects", response=responses(list[ProjectOut], 400, 401, 403, 422), summary="List projects")
@paginate(Page)
def projects_list(request, search: str | None = Query(None, description="Part of the name, any case"),
                  time_zone: str | None = None):
    """Projects by name, with their counts of hubs and groups. Needs ``hubs.view_project``."""
    require(request, "hubs.view_project")
    return selectors.project_list(search=search, time_zone=time_zone)


@router.post("/projects", response=responses({201: ProjectOut}, 400, 401, 403, 409, 422), summary="Create a project")
def projects_create(request, payload: ProjectIn):
    """An empty project (hubs are added under it; or import a whole document). Needs ``hubs.add_project``."""
    require(request, "hubs.add_project")
    project = _validated(services.project_create, name=payload.name, description=payload.description,
                         time_zone=payload.time_zone)
    return Status(201, _project(project.pk))


@router.get("/projects/{int:project_id}", response=responses(ProjectOut, 401, 403, 404), summary="Get a project")
def projects_get(request, project_id: int):
    """Needs ``hubs.view_project``."""
    require(request, "hubs.view_project")
    return _project(project_id)


@router.patch("/projects/{int:project_id}", response=responses(ProjectOut), summary="Change a project")
def projects_change(request, project_id: int, payload: ProjectChangeIn):
    """The fields sent are changed, the others kept. Needs ``hubs.change_project``."""
    require(request, "hubs.change_project")
    project = _project(project_id)
    _validated(services.project_change, project=project, **payload.model_dump(exclude_unset=True))
    return _project(project_id)


@router.delete("/projects/{int:project_id}", response=responses(DeletedOut, 401, 403, 404, 409),
               summary="Delete a project and everything in it")
def projects_delete(request, project_id: int):
    """Deletes the project with its hubs, entities, groups (and their runs), scripts, sinks and data sources;
    answers what went. Needs ``hubs.delete_project``."""
    require(request, "hubs.delete_project")
    project = _project(project_id)
    counts = services.project_delete(project=project)
    return {"id": project_id, "name": project.name, "hubs": counts.get("hubs.hub", 0),
            "groups": counts.get("groups.group", 0), "deleted": counts}


@router.get("/projects/{int:project_id}/export", response=responses({200: dict[str, Any]}, 401, 403, 404, 422),
            summary="Export a project document")
def projects_export(request, project_id: int,
                    include_secrets: bool = Query(False, description="Hub keys and URL passwords in clear; needs "
                                                  "hubs.export_secrets (403 without: never a document without "
                                                  "them by surprise)")):
    """The ``hubsched.project/1`` document (docs/projects.md) as a JSON download; secrets as ``${NAME}``
    references unless ``include_secrets``. Needs ``hubs.view_project`` (and ``hubs.export_secrets``)."""
    require(request, "hubs.view_project", *(["hubs.export_secrets"] if include_secrets else []))
    project = get_object_or_404(Project, pk=project_id)
    response = HttpResponse(services.project_export(project=project, include_secrets=include_secrets),
                            content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{services.project_export_filename(project.name)}.json"'
    return response


_DOCUMENT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "A hubsched.project/1 document (docs/projects.md)"}}}}}


@router.post("/projects/import", response=responses({201: ImportedOut}, 400, 401, 403, 409, 413, 422),
             summary="Import a project document", openapi_extra=_DOCUMENT_BODY)
def projects_import(request, replace: bool = Query(False, description="Update the project of the document's "
                                                   "name in place (and delete what the document dropped)")):
    """The document is the body. All or nothing: 201 ``{"id", "name", "created"}``; 422 with every problem at
    its JSON path (``hubs[1].groups[0].period``); 400 for a body that is not a JSON document, 413 past
    ``HUBSCHED_PROJECT_DOCUMENT_MAX_BYTES``, 409 for a project that exists when ``replace`` was not asked.
    Needs the add permissions of every kind of row a document holds, with ``replace`` also their change and
    delete ones (``hubsched.roles.project_import_permissions``: the integrator role)."""
    from .project_document import ProjectDocumentError, ProjectDocumentUnreadable, ProjectExistsError
    from .project_document.validation import max_bytes

    require(request, *project_import_permissions(replace=replace))
    # read the stream ourselves: request.body would stop at DATA_UPLOAD_MAX_MEMORY_SIZE; never past the limit
    raw = request.read(max_bytes() + 1)
    from .project_document.importer import document_import_permissions

    require(request, *document_import_permissions(raw=raw, replace=replace))  # a shell job: jobs.shell_job too
    try:
        result = services.project_import(raw=raw, replace=replace)
    except ProjectDocumentError as exc:
        details = [_document_detail(error) for error in exc.errors]
        if isinstance(exc, ProjectDocumentUnreadable):
            status, message = (413, "the document is too large") if exc.too_large else (400, "the body is not a "
                                                                                        "readable JSON document")
        elif isinstance(exc, ProjectExistsError):
            status, message = 409, "the project exists: import with ?replace=true to update it"
        else:
            status, message = 422, "the document did not pass validation"
        raise ApiError(status, message, details=details) from None
    return Status(201, {"id": result.project.pk, "name": result.project.name, "created": result.created})


def _document_detail(error: str) -> dict[str, str]:
    """``"hubs[0].colour: unknown field"`` as ``{"path": "hubs[0].colour", "message": "unknown field"}``
    (``document``, the whole document, is the path "")."""
    path, sep, message = error.partition(": ")
    if not sep or " " in path:
        return {"path": "", "message": error}
    return {"path": "" if path == "document" else path, "message": message}


# --- hubs ----------------------------------------------------------------------------------------------------


@router.get("/hubs", response=responses(list[HubOut], 400, 401, 403, 422), summary="List hubs")
@paginate(Page)
def hubs_list(request, project: int | None = Query(None, ge=1, le=2**62, description="Project id"),
              search: str | None = Query(None, description="Part of the name, any case"),
              enabled: bool | None = None):
    """Every hub, by project name then name. Needs ``hubs.view_hub``."""
    require(request, "hubs.view_hub")
    return selectors.hub_list(project_id=project, search=search, enabled=enabled)


@router.get("/projects/{int:project_id}/hubs", response=responses(list[HubOut], 400, 401, 403, 404, 422),
            summary="List a project's hubs")
@paginate(Page)
def project_hubs_list(request, project_id: int, search: str | None = Query(None, description="Part of the name"),
                      enabled: bool | None = None):
    """Needs ``hubs.view_hub``."""
    require(request, "hubs.view_hub")
    get_object_or_404(Project, pk=project_id)
    return selectors.hub_list(project_id=project_id, search=search, enabled=enabled)


@router.post("/projects/{int:project_id}/hubs", response=responses({201: HubOut}), summary="Add a hub to a project")
def project_hubs_create(request, project_id: int, payload: HubIn):
    """A new hub (then sync its entities). Needs ``hubs.add_hub``, and ``hubs.enable_hub`` to send ``enabled``."""
    require(request, "hubs.add_hub", *(["hubs.enable_hub"] if "enabled" in payload.model_fields_set else []))
    project = get_object_or_404(Project, pk=project_id)
    hub = _validated(services.hub_create, project=project, **_hub_fields(payload))
    return Status(201, _hub(hub.pk))


@router.get("/hubs/{int:hub_id}", response=responses(HubOut, 401, 403, 404), summary="Get a hub")
def hubs_get(request, hub_id: int):
    """Needs ``hubs.view_hub``."""
    require(request, "hubs.view_hub")
    return _hub(hub_id)


@router.patch("/hubs/{int:hub_id}", response=responses(HubOut), summary="Change a hub")
def hubs_change(request, hub_id: int, payload: HubChangeIn):
    """The fields sent are changed, the others kept (a key left out stays; ``""`` clears it). Needs
    ``hubs.change_hub``, and ``hubs.enable_hub`` to send ``enabled``."""
    require(request, "hubs.change_hub", *(["hubs.enable_hub"] if "enabled" in payload.model_fields_set else []))
    hub = get_object_or_404(Hub, pk=hub_id)
    _validated(services.hub_change, hub=hub, **_hub_fields(payload))
    return _hub(hub_id)


@router.delete("/hubs/{int:hub_id}", response=responses(DeletedOut, 401, 403, 404, 409), summary="Delete a hub")
def hubs_delete(request, hub_id: int):
    """Deletes the hub with its entities, parameters, offsets and groups (with their runs); answers what went.
    Needs ``hubs.delete_hub``."""
    require(request, "hubs.delete_hub")
    hub = get_object_or_404(Hub, pk=hub_id)
    counts = services.hub_delete(hub=hub)
    return {"id": hub_id, "name": hub.name, "hubs": counts.get("hubs.hub", 0), "groups": counts.get("groups.group", 0),
            "deleted": counts}


def _switch(request, hub_id: int, *, enabled: bool) -> Hub:
    require(request, "hubs.enable_hub")
    hub = get_object_or_404(Hub, pk=hub_id)
    services.hubs_enabled_set(hub_ids=[hub.pk], enabled=enabled)
    return _hub(hub_id)


@router.post("/hubs/{int:hub_id}/enable", response=responses(HubOut, 401, 403, 404), summary="Enable a hub")
def hubs_enable(request, hub_id: int):
    """Its enabled groups run again. Needs ``hubs.enable_hub``."""
    return _switch(request, hub_id, enabled=True)


@router.post("/hubs/{int:hub_id}/disable", response=responses(HubOut, 401, 403, 404), summary="Disable a hub")
def hubs_disable(request, hub_id: int):
    """Its groups stop (they keep their own enabled flag). Needs ``hubs.enable_hub``."""
    return _switch(request, hub_id, enabled=False)


@router.post("/hubs/{int:hub_id}/test-connection", response=responses(ConnectionOut, 401, 403, 404),
             summary="Test the connection to a hub")
def hubs_test_connection(request, hub_id: int):
    """Calls getInfo (ping when the hub has none) and answers what the hub said: its name, protocol version,
    methods, clock and its offset from ours, the round trip; or, with ``ok: false``, the error in words
    (a failed test is still a 200: the test ran). Needs ``hubs.view_hub``."""
    require(request, "hubs.view_hub")
    report = services.hub_connection_test(hub=get_object_or_404(Hub, pk=hub_id))
    info = report.info
    methods = info.get("methods")
    return {
        "ok": report.ok,
        "hub": info.get("hub") if isinstance(info.get("hub"), str) else None,
        "protocol": info.get("protocol") if isinstance(info.get("protocol"), int) else None,
        "methods": [m for m in methods if isinstance(m, str)] if isinstance(methods, list) else None,
        "time": info.get("time") if isinstance(info.get("time"), str) else None,
        "clock_offset_ms": report.clock_offset_ms,
        "round_trip_ms": report.round_trip_ms,
        "error": report.error,
        "summary": report.summary(),
    }


@router.post("/hubs/{int:hub_id}/sync", response=responses(SyncOut, 401, 403, 404, 422, 502),
             summary="Sync a hub's entities and parameters")
def hubs_sync(request, hub_id: int,
              dry_run: bool = Query(False, description="Answer what would be added, changed and removed; change nothing")):
    """Reads the hub's tree (getEntities, getParams) and makes its entities and parameters match, in one
    transaction; answers what was (with ``dry_run``: would be) added, changed and removed. Group keys are left
    alone. 502 when the hub cannot be read (then nothing changed). Needs ``hubs.change_hub`` (``hubs.view_hub``
    for a dry run)."""
    require(request, "hubs.view_hub" if dry_run else "hubs.change_hub")
    hub = get_object_or_404(Hub, pk=hub_id)
    try:
        changes = services.hub_entities_sync(hub=hub, dry_run=dry_run)
    except HubError as exc:
        raise ApiError(502, f"the hub could not be read, nothing changed: {exc}", code="hub_error") from None
    return {"dry_run": dry_run, "added": changes.added, "changed": changes.changed, "removed": changes.gone,
            "summary": changes.summary().replace("gone", "removed")}


# --- entities and parameters (read) --------------------------------------------------------------------------


@router.get("/hubs/{int:hub_id}/entities", response=responses(list[EntityOut], 400, 401, 403, 404, 422),
            summary="List a hub's entities")
@paginate(Page)
def hub_entities_list(request, hub_id: int,
                      search: str | None = Query(None, description="Part of the id or name, any case"),
                      type: str | None = None,
                      parent: str | None = Query(None, description='Children of this entity id ("": the roots)'),
                      path: str | None = Query(None, description="Exactly this entity id")):
    """By entity id. Needs ``hubs.view_entity``."""
    require(request, "hubs.view_entity")
    hub = get_object_or_404(Hub, pk=hub_id)
    return selectors.hub_entity_list(hub=hub, search=search, type=type, parent=parent, path=path)


@router.get("/hubs/{int:hub_id}/entities/{int:entity_id}", response=responses(EntityDetailOut, 401, 403, 404),
            summary="Get an entity with its parameters")
def hub_entities_get(request, hub_id: int, entity_id: int):
    """Needs ``hubs.view_entity`` and ``hubs.view_parameter``."""
    require(request, "hubs.view_entity", "hubs.view_parameter")
    return get_object_or_404(selectors.hub_entity_list(hub=get_object_or_404(Hub, pk=hub_id))
                             .prefetch_related("params__entity"), pk=entity_id)


@router.get("/hubs/{int:hub_id}/parameters", response=responses(list[ParameterOut], 400, 401, 403, 404, 422),
            summary="List a hub's parameters")
@paginate(Page)
def hub_parameters_list(request, hub_id: int,
                        search: str | None = Query(None, description="Part of the key or name, any case"),
                        entity: str | None = Query(None, description="Of this entity id"),
                        type: ParameterType | None = None, writable: bool | None = None):
    """By entity id, then key. Needs ``hubs.view_parameter``."""
    require(request, "hubs.view_parameter")
    hub = get_object_or_404(Hub, pk=hub_id)
    return selectors.hub_parameter_list(hub=hub, search=search, entity=entity, type=type, writable=writable)


@router.get("/hubs/{int:hub_id}/parameters/{int:parameter_id}", response=responses(ParameterOut, 401, 403, 404),
            summary="Get a parameter")
def hub_parameters_get(request, hub_id: int, parameter_id: int):
    """Needs ``hubs.view_parameter``."""
    require(request, "hubs.view_parameter")
    return get_object_or_404(Parameter.objects.select_related("entity"), entity__hub_id=hub_id, pk=parameter_id)

