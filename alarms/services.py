"""The alarms' writes: the lifecycle (raise, clear, acknowledge, shelve, unshelve), each transition journaled, and
the rules' create/change/delete from rule documents.

Lifecycle (ISA-18.2, kept simple): raised → active; an operator acknowledges → acknowledged; the condition returns
to normal → cleared, from either state (an alarm that clears unacknowledged keeps ``acknowledged_at`` empty, visible
in the lists and journal; there is no "return to normal unacknowledged" state). Shelving hides an open alarm from
the active lists and its notifications until a time; its state still changes meanwhile. Each transition is one
transaction writing the alarm and one AlarmEvent row (with the values that caused it), then sends
``alarms.signals.alarm_transition`` once committed.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import Alarm, AlarmEvent, AlarmRule, AlarmSource, AlarmState, Severity, Transition
from .signals import alarm_transition

NOTE_MAX_CHARS = 2000  # an operator's note in the journal (acknowledge, shelve): the API's and the console's bound
SHELVE_MAX_S = 30 * 86400  # a month: shelving is for a maintenance, not for good (API and console)
_RANK = {Severity.CRITICAL: 0, Severity.HIGH: 1, Severity.MEDIUM: 2, Severity.LOW: 3}


class AlarmTransitionRefused(Exception):
    """The transition does not apply to the alarm's state (acknowledging a cleared alarm); the message says why."""


class RuleInvalid(Exception):
    """A rule document did not pass: ``errors`` are ``"<path>: <message>"`` (alarms.rules.rule_document_errors)."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def alarm_identity(*, source: str, kind: str, subject: str, rule_id: int | None = None) -> str:
    """The key of "the same alarm": ``rule:7:group:12`` for a rule's, ``system:hub_unreachable:hub:3`` otherwise."""
    if source == AlarmSource.RULE:
        return f"rule:{rule_id}:{subject}"
    return f"{source}:{kind}:{subject}"


def _journal(alarm: Alarm, transition: str, *, at: datetime, by=None, note: str = "", values=None) -> AlarmEvent:
    event = AlarmEvent.objects.create(alarm=alarm, transition=transition, at=at, by=by, note=note,
                                      values=values if values is not None else {})
    transaction.on_commit(lambda: alarm_transition.send(sender=Alarm, alarm=alarm, transition=transition, event=event))
    return event


def alarm_raise(*, project_id: int | None, source: str, kind: str, subject: str, severity: str, message: str,
                values: dict, rule_id: int | None = None, at: datetime | None = None) -> tuple[Alarm, bool]:
    """Open the alarm of (source, kind or rule, subject), or find it open: ``(alarm, created)``. Idempotent: an open
    alarm gets no new event, except when ``severity`` is more urgent than its own, which is raised to it (event
    ``reraised``, with the new message and values). Two callers at once: the unique constraint on the open
    identity makes one create it and the other find it. ``at`` defaults to now."""
    at = at or timezone.now()
    identity = alarm_identity(source=source, kind=kind, subject=subject, rule_id=rule_id)
    with transaction.atomic():
        alarm = Alarm.objects.select_for_update().open().filter(identity=identity).first()
        if alarm is None:
            try:
                with transaction.atomic():
                    alarm = Alarm.objects.create(
                        project_id=project_id, rule_id=rule_id, source=source, kind=kind, subject=subject,
                        identity=identity, severity=severity, message=message, state=AlarmState.ACTIVE,
                        raised_at=at, values=values)
            except IntegrityError:
                alarm = Alarm.objects.select_for_update().open().get(identity=identity)
            else:
                _journal(alarm, Transition.RAISED, at=at, values=values)
                return alarm, True
        if _RANK.get(severity, 9) < _RANK.get(alarm.severity, 9):
            alarm.severity, alarm.message, alarm.values = severity, message, values
            alarm.save(update_fields=["severity", "message", "values", "updated_at"])
            _journal(alarm, Transition.RERAISED, at=at, values=values)
        return alarm, False


def alarm_clear(*, alarm: Alarm | None = None, identity: str | None = None, source: str | None = None,
                kind: str | None = None, subject: str = "", rule_id: int | None = None, values: dict | None = None,
                at: datetime | None = None) -> Alarm | None:
    """Clear the open alarm given as ``alarm``, ``identity``, or its keys (``source``, ``kind``, ``subject``,
    ``rule_id``): state cleared, ``cleared_at``, event ``cleared`` with ``values``. Returns it, or ``None`` when
    nothing was open (already cleared: no event)."""
    at = at or timezone.now()
    if alarm is None and identity is None:
        identity = alarm_identity(source=source, kind=kind, subject=subject, rule_id=rule_id)
    with transaction.atomic():
        rows = Alarm.objects.select_for_update().open()
        row = rows.filter(pk=alarm.pk).first() if alarm is not None else rows.filter(identity=identity).first()
        if row is None:
            return None
        row.state, row.cleared_at = AlarmState.CLEARED, at
        if values is not None:
            row.values = values
        row.save(update_fields=["state", "cleared_at", "values", "updated_at"])
        _journal(row, Transition.CLEARED, at=at, values=values)
    if alarm is not None:
        alarm.state, alarm.cleared_at, alarm.values = row.state, row.cleared_at, row.values
    return row


def _locked(alarm: Alarm) -> Alarm:
    return Alarm.objects.select_for_update().get(pk=alarm.pk)


def alarm_acknowledge(*, alarm: Alarm, by, note: str = "", at: datetime | None = None) -> Alarm:
    """An operator saw it: active → acknowledged, with who and their note. ``AlarmTransitionRefused`` when it is
    not active (already acknowledged, or cleared)."""
    at = at or timezone.now()
    with transaction.atomic():
        row = _locked(alarm)
        if row.state != AlarmState.ACTIVE:
            raise AlarmTransitionRefused(f"the alarm is {row.state}: only an active alarm is acknowledged")
        row.state, row.acknowledged_at, row.acknowledged_by, row.acknowledged_note = (
            AlarmState.ACKNOWLEDGED, at, by, note)
        row.save(update_fields=["state", "acknowledged_at", "acknowledged_by", "acknowledged_note", "updated_at"])
        _journal(row, Transition.ACKNOWLEDGED, at=at, by=by, note=note, values=row.values)
    return row


def alarm_shelve(*, alarm: Alarm, by, until: datetime, note: str = "", at: datetime | None = None) -> Alarm:
    """Hide an open alarm until ``until`` (later than ``at``): no notifications, not in the active lists; it still
    acknowledges and clears. Shelving a shelved alarm moves its end. ``AlarmTransitionRefused`` for a cleared alarm
    or an ``until`` not in the future."""
    at = at or timezone.now()
    if until <= at:
        raise AlarmTransitionRefused("shelve until a time in the future")
    with transaction.atomic():
        row = _locked(alarm)
        if row.state == AlarmState.CLEARED:
            raise AlarmTransitionRefused("the alarm is cleared: only an open alarm is shelved")
        row.shelved_until, row.shelved_by = until, by
        row.save(update_fields=["shelved_until", "shelved_by", "updated_at"])
        _journal(row, Transition.SHELVED, at=at, by=by, note=note, values={"until": until.isoformat()})
    return row


def alarm_unshelve(*, alarm: Alarm, by, note: str = "", at: datetime | None = None) -> Alarm:
    """End the shelving now. ``AlarmTransitionRefused`` when it is not shelved."""
    at = at or timezone.now()
    with transaction.atomic():
        row = _locked(alarm)
        if row.shelved_until is None or row.shelved_until <= at:
            raise AlarmTransitionRefused("the alarm is not shelved")
        row.shelved_until, row.shelved_by = None, None
        row.save(update_fields=["shelved_until", "shelved_by", "updated_at"])
        _journal(row, Transition.UNSHELVED, at=at, by=by, note=note, values={})
    return row


# --- rules ---------------------------------------------------------------------------------------------------


def alarm_rule_save(*, project, doc: dict, rule: AlarmRule | None = None, where: str = "") -> AlarmRule:
    """Create (``rule`` None) or replace ``rule`` from a rule document (rules_schema.json) of ``project``: the
    schema's errors, then the names (``hub``, ``group`` on that hub, a name already taken), all raised at once as
    ``RuleInvalid`` with paths from ``where``. ``routes`` name notification routes of the project; given, they
    replace the rule's."""
    from groups.models import Group

    from .rules import rule_document_errors

    errors = rule_document_errors(doc, where)
    if errors:
        raise RuleInvalid(errors)
    at = (lambda key: f"{where}.{key}" if where else key)
    group = (Group.objects.select_related("hub").filter(hub__project=project, hub__name=doc["hub"], name=doc["group"])
             .first())
    if group is None:
        hub_known = project.hubs.filter(name=doc["hub"]).exists()
        errors.append(f"{at('group')}: no group {doc['group']!r} on hub {doc['hub']!r}" if hub_known
                      else f"{at('hub')}: no hub {doc['hub']!r} in project {project.name!r}")
    from .models import NotificationRoute

    wanted = list(dict.fromkeys(doc.get("routes") or []))
    routes = {r.name: r for r in NotificationRoute.objects.filter(project=project, name__in=wanted)}
    for index, name in enumerate(doc.get("routes") or []):
        if name not in routes:
            errors.append(f"{at('routes')}[{index}]: no notification route {name!r} in project {project.name!r}")
    taken = AlarmRule.objects.filter(project=project, name=doc["name"])
    if rule is not None:
        taken = taken.exclude(pk=rule.pk)
    if taken.exists():
        errors.append(f"{at('name')}: a rule named {doc['name']!r} exists in the project")
    if errors:
        raise RuleInvalid(errors)
    rule = rule or AlarmRule(project=project)
    rule.name, rule.group, rule.condition = doc["name"], group, doc["condition"]
    rule.deadband, rule.for_s, rule.severity = doc.get("deadband"), doc.get("for"), doc["severity"]
    rule.message, rule.enabled = doc.get("message", ""), doc.get("enabled", True)
    with transaction.atomic():
        rule.save()
        rule.routes.set([routes[name] for name in wanted])
        if not rule.enabled:
            alarm_rule_disabled(rule=rule)
    return rule


def alarm_rule_disabled(*, rule: AlarmRule) -> None:
    """A rule no longer evaluated: its open alarm is cleared now (nothing else would clear it), its shared state
    forgotten (it starts again from "not holding" when enabled)."""
    from .models import RuleState

    with transaction.atomic():
        for alarm in Alarm.objects.open().filter(rule=rule):
            alarm_clear(alarm=alarm, values={"cleared_by": "rule disabled"})
        RuleState.objects.filter(rule=rule).delete()


def alarm_rule_delete(*, rule: AlarmRule) -> None:
    """Delete the rule; its alarms stay (their ``rule`` empty), the open ones cleared now."""
    with transaction.atomic():
        for alarm in Alarm.objects.open().filter(rule=rule):
            alarm_clear(alarm=alarm, values={"cleared_by": "rule deleted"})
        rule.delete()
