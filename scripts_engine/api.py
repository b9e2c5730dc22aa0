"""``/api/v1`` endpoints of scripts, sinks and data sources (list, get, create, change, delete) and the script
debugger (``POST /api/v1/scripts/{id}/debug``).

Secrets are write-only: a sink's or data source's URL is accepted whole, and answered only as
``hubsched.secrets.url_mask`` writes it (``postgresql://ann:***@db/x``) with ``has_password``; a URL sent
back with ``***`` where the secret was keeps the stored secret (as in the admin). Validation is the model's
``full_clean`` (services.py), the one the admin and the project import use; its errors answer 422 per field.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.pagination import paginate
from pydantic import StrictInt

from api.errors import ApiError
from api.permissions import require
from api.schemas import In, OfProject, Page, responses
from hubsched.secrets import url_has_password, url_mask

from . import selectors, services
from .models import DataSource, Script, Sink, SinkLayout

router = Router(tags=["scripts, sinks, data sources"])

# A row id as the database can hold it (a BigAutoField): a larger number is a 422, not an overflow in the driver
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]
# A search term: a NUL character is refused as the admin's form refuses it (PostgreSQL cannot compare it)
Search = Annotated[str, Field(max_length=200, pattern=r"^[^\x00]*$")]

LIST_ERRORS = (401, 403, 422)
GET_ERRORS = (401, 403, 404, 422)
WRITE_ERRORS = (400, 401, 403, 404, 409, 422)


class _MaskedURL(Schema):
    url: str = Field(..., description="The SQLAlchemy URL with its password and secret-looking query values "
                     "as *** (the secret itself is never answered)")
    has_password: bool = Field(..., description="Whether the stored URL carries a password or secret query value")

    @staticmethod
    def resolve_url(obj) -> str:
        return url_mask(obj.url)

    @staticmethod
    def resolve_has_password(obj) -> bool:
        return url_has_password(obj.url)


def _changes(payload: In) -> dict[str, Any]:
    """The fields a PATCH body names (an absent field is unchanged)."""
    return payload.model_dump(exclude_unset=True)


# --- scripts ----------------------------------------------------------------------------------------


class ScriptOut(OfProject):
    name: str
    code: str
    description: str
    timeout: float = Field(..., description="CPU time limit, seconds")
    memory_limit_mb: int = Field(..., description="Memory limit, MB")


class ScriptIn(In):
    project: RowId = Field(..., description="Id of the owning project")
    name: str = Field(..., description="Unique within the project (at most 200 characters)")
    code: str = Field("", description="Python run in the sandbox; must compile under its policy (422 with the "
                      "line and column otherwise)")
    description: str = ""
    timeout: float = Field(2.0, allow_inf_nan=False, description="CPU time limit, seconds (at least 0.01)")
    memory_limit_mb: int = Field(256, description="Memory limit, MB (at least 16)")


class ScriptPatch(In):
    name: str | None = None
    code: str | None = None
    description: str | None = None
    timeout: float | None = Field(None, allow_inf_nan=False)
    memory_limit_mb: int | None = None


def _script(request, script_id: int) -> Script:
    return get_object_or_404(selectors.script_list(user=request.user), pk=script_id)


@router.get("/scripts", response=responses(list[ScriptOut], *LIST_ERRORS), summary="List scripts")
@paginate(Page)
def scripts_list(request, project: RowId | None = None, search: Search | None = None):
    """Scripts by project and name; ``project`` (id) filters, ``search`` matches name, description or code.
    Needs ``scripts_engine.view_script``."""
    require(request, "scripts_engine.view_script")
    return selectors.script_list(user=request.user, project_id=project, search=search)


@router.get("/scripts/{script_id}", response=responses(ScriptOut, *GET_ERRORS), summary="Get a script")
def scripts_get(request, script_id: RowId):
    """Needs ``scripts_engine.view_script``."""
    require(request, "scripts_engine.view_script")
    return _script(request, script_id)


@router.post("/scripts", response=responses({201: ScriptOut}, *WRITE_ERRORS), summary="Create a script")
def scripts_create(request, payload: ScriptIn):
    """Needs ``scripts_engine.add_script``. 422 for code that does not compile (``details[0].path`` ``code``,
    the message with its line and column), a name taken in the project, an unknown project."""
    require(request, "scripts_engine.add_script")
    data = payload.model_dump()
    return Status(201, services.script_create(project_id=data.pop("project"), **data))


@router.patch("/scripts/{script_id}", response=responses(ScriptOut, *WRITE_ERRORS), summary="Change a script")
def scripts_change(request, script_id: RowId, payload: ScriptPatch):
    """The fields given change, the rules of create. Needs ``scripts_engine.change_script``."""
    require(request, "scripts_engine.change_script")
    return services.script_change(script=_script(request, script_id), changes=_changes(payload))


@router.delete("/scripts/{script_id}", response=responses({204: None}, *GET_ERRORS, 409), summary="Delete a script")
def scripts_delete(request, script_id: RowId):
    """Its groups stay, without a script. Needs ``scripts_engine.delete_script``."""
    require(request, "scripts_engine.delete_script")
    services.script_delete(script=_script(request, script_id))
    return Status(204, None)


# --- the debugger -----------------------------------------------------------------------------------

# What each part of a debug request needs beyond scripts_engine.debug_script. Storing writes the bindings
# into the project's sinks, the step a group run ends with, so it needs what running a group needs.
DEBUG_PERMISSIONS_OF = {
    "live": ("groups.view_group",),
    "write_back": ("hubs.write_hub",),
    "store": ("groups.run_group",),
}


class DebugIn(In):
    bindings: dict[str, Any] = Field(default_factory=dict, description="name -> value; with live, they override "
                                     "what was read")
    breakpoints: list[StrictInt] = Field(default_factory=list, description="Line numbers to stop before")
    actions: list[Literal["step", "continue"]] = Field(
        default_factory=list, description='After each stop in turn: "step" or "continue" (continue when they run out)')
    step: bool = Field(False, description="Step after every stop: every line after the first breakpoint")
    live: bool = Field(False, description="Read the group's values from its hub first (needs group)")
    group: Annotated[StrictInt, Field(ge=1, le=2**63 - 1)] | None = Field(
        None, description="Id of the group whose values live reads")
    write_back: bool = Field(False, description="Live only: send changed writable bindings to the hub")
    store: bool = Field(False, description="Store every binding in the project's sinks")


class DebugStopOut(Schema):
    event: str = Field(..., description="breakpoint, step or end")
    line: int | None
    function: str
    bindings: dict[str, Any]
    locals: dict[str, Any]


class DebugResultOut(Schema):
    bindings: dict[str, Any]
    changed: list[str]
    output: str


class DebugErrorOut(Schema):
    kind: str = Field(..., description="syntax, refused, runtime, timeout, memory, output, internal or killed")
    message: str
    line: int | None
    column: int | None
    traceback: str
    output: str


class DebugOut(Schema):
    stops: list[DebugStopOut]
    truncated: bool = Field(..., description="More than 1,000 stops: the rest were not recorded")
    result: DebugResultOut | None = Field(None, description="When the script finished (absent when it failed)")
    written: dict[str, dict[str, Any]] | None = Field(None, description="entity -> {key: value} sent to the hub")
    stored: int | None = Field(None, description="Values stored in the project's sinks")
    error: DebugErrorOut | None = Field(None, description="When the script failed: the stops so far, then this")


@router.post("/scripts/{script_id}/debug", response=responses(DebugOut, 400, 401, 403, 404, 422, 502),
             summary="Run a script under the debugger")
def scripts_debug(request, script_id: RowId, payload: DebugIn | None = None):
    """Run the script on ``bindings`` (or, ``live``, on its group's values read now), stopping at
    ``breakpoints``; nothing is written unless ``write_back`` or ``store`` asks (docs/scripts.md).

    Needs ``scripts_engine.debug_script`` and ``view_script`` (an unseen script is a 404); ``live`` also
    ``groups.view_group``, ``write_back`` also ``hubs.write_hub``, ``store`` also ``groups.run_group``.
    422 for a malformed body, 400 for a request the debugger cannot do (write_back without live values, a
    group of another project), 404 for an unknown group, 502 when the hub or a sink fails.
    """
    require(request, "scripts_engine.debug_script")
    script = _script(request, script_id)
    body = payload or DebugIn()
    actions = ["step"] * 1000 if body.step else body.actions  # step: record every line after the first breakpoint
    asked = [part for part in DEBUG_PERMISSIONS_OF if getattr(body, part)]
    require(request, *dict.fromkeys(p for part in asked for p in DEBUG_PERMISSIONS_OF[part]))
    if body.live and body.group is None:
        raise ApiError(422, 'live values need a group id: {"live": true, "group": <id>}',
                       details=[{"path": "group", "message": "required with live"}])
    try:
        session = services.script_debug(
            script=script, bindings=body.bindings, breakpoints=body.breakpoints, actions=actions,
            group_id=body.group if body.live else None, write_back=body.write_back, store=body.store,
        )
    except services.ScriptDebugError as exc:
        raise ApiError(exc.status, exc.message) from exc
    # as it is, not through DebugOut: a key absent (result of a failed run) stays absent, as before v1
    return JsonResponse(services.debug_payload(session))


# --- sinks ------------------------------------------------------------------------------------------


class SinkOut(OfProject, _MaskedURL):
    name: str
    layout: str = Field(..., description=", ".join(f"{v}: {label}" for v, label in SinkLayout.choices))
    table: str
    local_infile: bool
    enabled: bool
    created_at: datetime


class SinkIn(In):
    project: RowId = Field(..., description="Id of the owning project")
    name: str = Field(..., description="Unique within the project")
    url: str = Field(..., description="SQLAlchemy URL, stored encrypted; write-only (answered masked)")
    layout: str = Field(SinkLayout.TALL, description=" or ".join(SinkLayout.values))
    table: str = "hubsched_values"
    local_infile: bool = False
    enabled: bool = True


class SinkPatch(In):
    name: str | None = None
    url: str | None = Field(None, description="A new URL; *** where the stored one has its secret keeps that "
                            "secret (same host, port and user)")
    layout: str | None = None
    table: str | None = None
    local_infile: bool | None = None
    enabled: bool | None = None


def _sink(request, sink_id: int) -> Sink:
    return get_object_or_404(selectors.sink_list(user=request.user), pk=sink_id)


@router.get("/sinks", response=responses(list[SinkOut], *LIST_ERRORS), summary="List sinks")
@paginate(Page)
def sinks_list(request, project: RowId | None = None, search: Search | None = None, enabled: bool | None = None):
    """Sinks by project and name; ``project`` (id), ``enabled`` filter, ``search`` matches name or table (never
    the URL). Needs ``scripts_engine.view_sink``."""
    require(request, "scripts_engine.view_sink")
    return selectors.sink_list(user=request.user, project_id=project, search=search, enabled=enabled)


@router.get("/sinks/{sink_id}", response=responses(SinkOut, *GET_ERRORS), summary="Get a sink")
def sinks_get(request, sink_id: RowId):
    """Needs ``scripts_engine.view_sink``."""
    require(request, "scripts_engine.view_sink")
    return _sink(request, sink_id)


@router.post("/sinks", response=responses({201: SinkOut}, *WRITE_ERRORS), summary="Create a sink")
def sinks_create(request, payload: SinkIn):
    """Needs ``scripts_engine.add_sink``. 422: an empty URL or one holding ***, an unknown layout, a wide layout
    whose tables would lose values, a name taken in the project, an unknown project."""
    require(request, "scripts_engine.add_sink")
    data = payload.model_dump()
    return Status(201, services.sink_create(project_id=data.pop("project"), **data))


@router.patch("/sinks/{sink_id}", response=responses(SinkOut, *WRITE_ERRORS), summary="Change a sink")
def sinks_change(request, sink_id: RowId, payload: SinkPatch):
    """The fields given change, the rules of create. Needs ``scripts_engine.change_sink``."""
    require(request, "scripts_engine.change_sink")
    return services.sink_change(sink=_sink(request, sink_id), changes=_changes(payload))


@router.delete("/sinks/{sink_id}", response=responses({204: None}, *GET_ERRORS, 409), summary="Delete a sink")
def sinks_delete(request, sink_id: RowId):
    """The values it stored stay in its database. Needs ``scripts_engine.delete_sink``."""
    require(request, "scripts_engine.delete_sink")
    services.sink_delete(sink=_sink(request, sink_id))
    return Status(204, None)


# --- data sources -----------------------------------------------------------------------------------


class DataSourceOut(OfProject, _MaskedURL):
    name: str = Field(..., description='What scripts call it: sql("name")')
    writable: bool
    allow_ddl: bool


class DataSourceIn(In):
    project: RowId = Field(..., description="Id of the owning project")
    name: str = Field(..., description='Unique within the project; scripts use sql("name")')
    url: str = Field(..., description="SQLAlchemy URL, stored encrypted; write-only (answered masked)")
    writable: bool = Field(False, description="Off: sql() runs read-only transactions and refuses writes")
    allow_ddl: bool = Field(False, description="With writable: CREATE, ALTER, DROP are allowed")


class DataSourcePatch(In):
    name: str | None = None
    url: str | None = Field(None, description="As a sink's: *** keeps the stored secret")
    writable: bool | None = None
    allow_ddl: bool | None = None


def _data_source(request, data_source_id: int) -> DataSource:
    return get_object_or_404(selectors.data_source_list(user=request.user), pk=data_source_id)


@router.get("/data-sources", response=responses(list[DataSourceOut], *LIST_ERRORS), summary="List data sources")
@paginate(Page)
def data_sources_list(request, project: RowId | None = None, search: Search | None = None):
    """Data sources by project and name; ``project`` (id) filters, ``search`` matches the name. Needs
    ``scripts_engine.view_datasource``."""
    require(request, "scripts_engine.view_datasource")
    return selectors.data_source_list(user=request.user, project_id=project, search=search)


@router.get("/data-sources/{data_source_id}", response=responses(DataSourceOut, *GET_ERRORS),
            summary="Get a data source")
def data_sources_get(request, data_source_id: RowId):
    """Needs ``scripts_engine.view_datasource``."""
    require(request, "scripts_engine.view_datasource")
    return _data_source(request, data_source_id)


@router.post("/data-sources", response=responses({201: DataSourceOut}, *WRITE_ERRORS), summary="Create a data source")
def data_sources_create(request, payload: DataSourceIn):
    """Needs ``scripts_engine.add_datasource``. 422 as for a sink."""
    require(request, "scripts_engine.add_datasource")
    data = payload.model_dump()
    return Status(201, services.data_source_create(project_id=data.pop("project"), **data))


@router.patch("/data-sources/{data_source_id}", response=responses(DataSourceOut, *WRITE_ERRORS),
              summary="Change a data source")
def data_sources_change(request, data_source_id: RowId, payload: DataSourcePatch):
    """The fields given change. Needs ``scripts_engine.change_datasource``."""
    require(request, "scripts_engine.change_datasource")
    return services.data_source_change(data_source=_data_source(request, data_source_id), changes=_changes(payload))


@router.delete("/data-sources/{data_source_id}", response=responses({204: None}, *GET_ERRORS, 409),
               summary="Delete a data source")
def data_sources_delete(request, data_source_id: RowId):
    """Needs ``scripts_engine.delete_datasource``."""
    require(request, "scripts_engine.delete_datasource")
    services.data_source_delete(data_source=_data_source(request, data_source_id))
    return Status(204, None)
