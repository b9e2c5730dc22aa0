"""/api/v1 endpoints of the alarms: the alarms (list, one with its journal, acknowledge, shelve, unshelve) and the
value alarm rules (list, get, create, change, delete). A ninja Router, added in api/v1.py.

Views parse, check the permission (``api.permissions.require``) and call one service or selector of
alarms/services.py and alarms/selectors.py. A rule's body is a rule document (alarms/rules_schema.json) plus
``project``; its errors are those of project import (``alarms.rules.rule_document_errors``), answered 422 with
their paths (``condition.all[1].op``).
"""


from datetime import datetime, timedelta
from typing import Annotated, Any

from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, Path, Query, Router, Schema, Status
from ninja.pagination import paginate
from pydantic import ConfigDict, model_validator

from api.errors import ApiError
from api.permissions import require
from api.schemas import In, Page, responses

from .models import Alarm, AlarmRule, AlarmState, Severity
from .services import NOTE_MAX_CHARS, SHELVE_MAX_S

router = Router(tags=["alarms"])

MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
AlarmId = Annotated[int, Path(ge=1, le=MAX_ID, description="alarm id")]
RuleId = Annotated[int, Path(ge=1, le=MAX_ID, description="alarm rule id")]


# --- schemas ---------------------------------------------------------------------------------------------


class AlarmEventOut(Schema):
    transition: str = Field(..., description="raised, acknowledged, cleared, shelved, unshelved, reraised")
    at: datetime
    by: str = Field(..., description="the user's name; empty for the system")
    note: str
    values: dict[str, Any] = Field(..., description="the values that caused it")

    @staticmethod
    def resolve_by(obj) -> str:
        return obj.by.get_username() if obj.by_id else ""


class AlarmOut(Schema):
    id: int
    project: int | None
    rule: int | None
    source: str = Field(..., description="rule or system")
    kind: str = Field(..., description="rule, or the system check (hub_unreachable, group_failing, ...)")
    subject: str = Field(..., description="group:12, hub:3, sink:2, job:5 or empty")
    severity: str = Field(..., description="critical, high, medium, low")
    message: str
    state: str = Field(..., description="active, acknowledged, cleared")
    raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str
    acknowledged_note: str
    cleared_at: datetime | None
    shelved_until: datetime | None
    shelved_by: str
    values: dict[str, Any] = Field(..., description='what caused the latest transition: {"p1": {"value", "quality"}}')
    updated_at: datetime

    @staticmethod
    def resolve_project(obj) -> int | None:
        return obj.project_id

    @staticmethod
    def resolve_rule(obj) -> int | None:
        return obj.rule_id

    @staticmethod
    def resolve_acknowledged_by(obj) -> str:
        return obj.acknowledged_by.get_username() if obj.acknowledged_by_id else ""

    @staticmethod
    def resolve_shelved_by(obj) -> str:
        return obj.shelved_by.get_username() if obj.shelved_by_id else ""


class AlarmDetailOut(AlarmOut):
    events: list[AlarmEventOut] = Field(..., description="the journal, oldest first")

    @staticmethod
    def resolve_events(obj) -> list:
        return list(obj.events.all())


class AlarmFilter(Schema):
    state: AlarmState | None = Field(None, description="active (shelved ones hidden unless shelved=true), "
                                     "acknowledged, cleared")
    severity: Severity | None = Field(None, description="critical, high, medium, low")
    project: Id | None = Field(None, description="project id")
    shelved: bool | None = Field(None, description="true: only those shelved now; false: only those not")


class NoteIn(In):
    note: str = Field("", max_length=NOTE_MAX_CHARS, description="what the operator writes in the journal")


class ShelveIn(In):
    until: datetime | None = Field(None, description="shelved until (ISO 8601 with offset)")
    for_s: float | None = Field(None, gt=0, le=SHELVE_MAX_S, description="or: for this many seconds from now")
    note: str = Field("", max_length=NOTE_MAX_CHARS)

    @model_validator(mode="after")
    def _one(self):
        if (self.until is None) == (self.for_s is None):
            raise ValueError("give until or for_s, not both and not neither")
        return self


class RuleOut(Schema):
    id: int
    project: int
    group_id: int = Field(..., description="id of the rule's group")
    name: str
    group: str = Field(..., description="the group's name")
    hub: str = Field(..., description="the group's hub's name")
    condition: dict[str, Any]
    deadband: float | None
    for_: float | None = Field(..., validation_alias="for_s", serialization_alias="for",
                               description="seconds the condition must hold before it raises")
    severity: str
    message: str
    routes: list[str] = Field(..., description="names of the notification routes its alarms go to")
    enabled: bool
    updated_at: datetime

    @staticmethod
    def resolve_project(obj) -> int:
        return obj.project_id

    @staticmethod
    def resolve_routes(obj) -> list[str]:
        return sorted(route.name for route in obj.routes.all())

    @staticmethod
    def resolve_group(obj) -> str:
        return obj.group.name

    @staticmethod
    def resolve_hub(obj) -> str:
        return obj.group.hub.name


class RuleFields(In):
    """A rule document (alarms/rules_schema.json): checked by the schema, so that the errors are import's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    name: Any = Field(None, description="unique within the project")
    group: Any = Field(None, description="name of the group, on hub")
    hub: Any = Field(None, description="name of the group's hub")
    condition: Any = Field(None, description='{"binding": "p1", "op": ">", "value": 80}, {"all": [...]}, ...')
    deadband: Any = Field(None, description="hysteresis, in the values' unit")
    for_: Any = Field(None, alias="for", description="seconds the condition must hold before it raises")
    severity: Any = Field(None, description="critical, high, medium, low")
    message: Any = Field(None, description="template: {p1}, {rule}, {group}, {hub}")
    routes: Any = Field(None, description="names of notification routes")
    enabled: Any = Field(None, description="a disabled rule is not evaluated")


class RuleIn(RuleFields):
    project: Id = Field(..., description="id of the project")


class RuleFilter(Schema):
    project: Id | None = Field(None, description="project id")


# --- helpers ------------------------------------------------------------------------------------------------


def _alarm(alarm_id: int) -> Alarm:
    from .selectors import alarm_get

    try:
        return alarm_get(alarm_id=alarm_id)
    except Alarm.DoesNotExist:
        raise ApiError(404, "no such alarm") from None


def _user(request):
    return getattr(request, "auth", None) or request.user


def _refused(exc) -> ApiError:
    return ApiError(409, str(exc), details=[{"path": "", "message": str(exc)}])


def _invalid(errors: list[str]) -> ApiError:
    details = []
    for error in errors:
        path, _sep, message = error.partition(": ")
        details.append({"path": "" if path == "(document)" else path, "message": message})
    return ApiError(422, "the request did not pass validation", details=details)


def _doc(payload: RuleFields) -> dict[str, Any]:
    doc = payload.model_dump(by_alias=True, exclude_unset=True)
    doc.pop("project", None)
    return doc


# --- alarms -------------------------------------------------------------------------------------------------


@router.get("/alarms", response=responses(list[AlarmOut], 400, 401, 403, 422), summary="List alarms")
@paginate(Page)
def alarms_list_view(request, filters: Query[AlarmFilter]):
    """Alarms newest first; filter by ``state``, ``severity``, ``project``, ``shelved``. ``state=active`` leaves out
    the alarms shelved now (add ``shelved=true`` for those). Needs ``alarms.view_alarm``."""
    from .selectors import alarms_list

    require(request, "alarms.view_alarm")
    return alarms_list(state=filters.state, severity=filters.severity, project_id=filters.project,
                       shelved=filters.shelved)


@router.get("/alarms/{int:alarm_id}", response=responses(AlarmDetailOut, 401, 403, 404, 422), summary="Get an alarm")
def alarm_get_view(request, alarm_id: AlarmId):
    """One alarm with its journal (every transition with who, the note and the values). Needs ``alarms.view_alarm``."""
    require(request, "alarms.view_alarm")
    return _alarm(alarm_id)


@router.post("/alarms/{int:alarm_id}/acknowledge", response=responses(AlarmDetailOut, 400, 401, 403, 404, 409, 422),
             summary="Acknowledge an alarm")
def alarm_acknowledge_view(request, alarm_id: AlarmId, payload: NoteIn):
    """Active → acknowledged, with the caller and ``note``; 409 when it is not active. Needs
    ``alarms.acknowledge_alarm``."""
    from .services import AlarmTransitionRefused, alarm_acknowledge

    require(request, "alarms.acknowledge_alarm")
    try:
        alarm_acknowledge(alarm=_alarm(alarm_id), by=_user(request), note=payload.note)
    except AlarmTransitionRefused as exc:
        raise _refused(exc) from None
    return _alarm(alarm_id)


@router.post("/alarms/{int:alarm_id}/shelve", response=responses(AlarmDetailOut, 400, 401, 403, 404, 409, 422),
             summary="Shelve an alarm")
def alarm_shelve_view(request, alarm_id: AlarmId, payload: ShelveIn):
    """Hide an open alarm ``until`` a time or ``for_s`` seconds (at most 30 days): no notifications, not in the
    active list; 409 when it is cleared. Needs ``alarms.shelve_alarm``."""
    from .services import AlarmTransitionRefused, alarm_shelve

    require(request, "alarms.shelve_alarm")
    now = timezone.now()
    until = payload.until
    if until is not None:
        if until.tzinfo is None:
            raise ApiError(422, "the request did not pass validation",
                           details=[{"path": "until", "message": "expected an ISO 8601 time with a UTC offset (or Z)"}])
        if until > now + timedelta(seconds=SHELVE_MAX_S):
            raise ApiError(422, "the request did not pass validation",
                           details=[{"path": "until", "message": "at most 30 days from now"}])
    else:
        until = now + timedelta(seconds=payload.for_s)
    try:
        alarm_shelve(alarm=_alarm(alarm_id), by=_user(request), until=until, note=payload.note, at=now)
    except AlarmTransitionRefused as exc:
        raise _refused(exc) from None
    return _alarm(alarm_id)


@router.post("/alarms/{int:alarm_id}/unshelve", response=responses(AlarmDetailOut, 400, 401, 403, 404, 409, 422),
             summary="Unshelve an alarm")
def alarm_unshelve_view(request, alarm_id: AlarmId, payload: NoteIn):
    """End the shelving now; 409 when it is not shelved. Needs ``alarms.shelve_alarm``."""
    from .services import AlarmTransitionRefused, alarm_unshelve

    require(request, "alarms.shelve_alarm")
    try:
        alarm_unshelve(alarm=_alarm(alarm_id), by=_user(request), note=payload.note)
    except AlarmTransitionRefused as exc:
        raise _refused(exc) from None
    return _alarm(alarm_id)


# --- rules --------------------------------------------------------------------------------------------------


@router.get("/alarm-rules", response=responses(list[RuleOut], 400, 401, 403, 422), summary="List alarm rules", by_alias=True)
@paginate(Page)
def alarm_rules_list_view(request, filters: Query[RuleFilter]):
    """Value alarm rules by project and name. Needs ``alarms.view_alarmrule``."""
    from .selectors import alarm_rules_list

    require(request, "alarms.view_alarmrule")
    return alarm_rules_list(project_id=filters.project)


def _rule(rule_id: int) -> AlarmRule:
    from .selectors import alarm_rules_list

    return get_object_or_404(alarm_rules_list(), pk=rule_id)


@router.get("/alarm-rules/{int:rule_id}", response=responses(RuleOut, 401, 403, 404, 422), summary="Get an alarm rule", by_alias=True)
def alarm_rule_get(request, rule_id: RuleId):
    """One rule. Needs ``alarms.view_alarmrule``."""
    require(request, "alarms.view_alarmrule")
    return _rule(rule_id)


@router.post("/alarm-rules", response=responses({201: RuleOut}, 400, 401, 403, 409, 422), summary="Create an alarm rule", by_alias=True)
def alarm_rule_create(request, payload: RuleIn):
    """A new rule from a rule document and ``project``; 422 with each problem at its path. Workers pick it up
    within ``HUBSCHED_EXECUTION_CHECK_S``. Needs ``alarms.add_alarmrule``."""
    from hubs.models import Project

    from .services import RuleInvalid, alarm_rule_save

    require(request, "alarms.add_alarmrule")
    project = Project.objects.filter(pk=payload.project).first()
    if project is None:
        raise ApiError(422, "the request did not pass validation",
                       details=[{"path": "project", "message": f"no project {payload.project}"}])
    try:
        rule = alarm_rule_save(project=project, doc=_doc(payload))
    except RuleInvalid as exc:
        raise _invalid(exc.errors) from None
    return Status(201, _rule(rule.pk))


@router.patch("/alarm-rules/{int:rule_id}", response=responses(RuleOut, 400, 401, 403, 404, 409, 422),
              summary="Change an alarm rule", by_alias=True)
def alarm_rule_update(request, rule_id: RuleId, payload: RuleFields):
    """Change the fields given (a field given as null is removed from the document); the result is checked as a
    whole document. Needs ``alarms.change_alarmrule``."""
    from .selectors import alarm_rule_document
    from .services import RuleInvalid, alarm_rule_save

    require(request, "alarms.change_alarmrule")
    rule = _rule(rule_id)
    doc = alarm_rule_document(rule)
    doc.update(_doc(payload))
    doc = {key: value for key, value in doc.items() if value is not None}
    try:
        alarm_rule_save(project=rule.project, doc=doc, rule=rule)
    except RuleInvalid as exc:
        raise _invalid(exc.errors) from None
    return _rule(rule_id)


@router.delete("/alarm-rules/{int:rule_id}", response=responses({204: None}, 401, 403, 404, 422),
               summary="Delete an alarm rule")
def alarm_rule_delete_view(request, rule_id: RuleId):
    """Delete a rule; its open alarm is cleared, its alarms stay in the history. Needs ``alarms.delete_alarmrule``."""
    from .services import alarm_rule_delete

    require(request, "alarms.delete_alarmrule")
    alarm_rule_delete(rule=get_object_or_404(AlarmRule, pk=rule_id))
    return Status(204, None)
