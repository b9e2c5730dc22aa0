"""The alarms' reads: the lists (API, console) and a rule as its document."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from .models import Alarm, AlarmRule


def alarms_list(*, state: str | None = None, severity: str | None = None, project_id: int | None = None,
                shelved: bool | None = None) -> QuerySet[Alarm]:
    """Alarms newest first, filtered. ``state`` active, acknowledged, cleared; ``shelved`` True: only those shelved
    now, False: only those not. An active list hides the shelved ones unless ``shelved`` is given."""
    rows = Alarm.objects.select_related("project", "acknowledged_by", "shelved_by")
    now = timezone.now()
    if state:
        rows = rows.filter(state=state)
    if severity:
        rows = rows.filter(severity=severity)
    if project_id is not None:
        rows = rows.filter(project_id=project_id)
    if shelved is True:
        rows = rows.shelved(now=now)
    elif shelved is False or state == "active":
        rows = rows.unshelved(now=now)
    return rows.order_by("-raised_at", "-id")


def alarm_get(*, alarm_id: int) -> Alarm:
    """One alarm with its journal prefetched; ``Alarm.DoesNotExist`` when absent."""
    return (Alarm.objects.select_related("project", "acknowledged_by", "shelved_by")
            .prefetch_related("events__by").get(pk=alarm_id))


def alarm_rules_list(*, project_id: int | None = None) -> QuerySet[AlarmRule]:
    rows = AlarmRule.objects.select_related("project", "group__hub").prefetch_related("routes")
    if project_id is not None:
        rows = rows.filter(project_id=project_id)
    return rows.order_by("project_id", "name")


def alarm_rule_document(rule: AlarmRule) -> dict:
    """The rule as a rule document (rules_schema.json), for export and the API."""
    return {"name": rule.name, "group": rule.group.name, "hub": rule.group.hub.name, "condition": rule.condition,
            "deadband": rule.deadband, "for": rule.for_s, "severity": rule.severity, "message": rule.message,
            "routes": sorted(route.name for route in rule.routes.all()), "enabled": rule.enabled}
