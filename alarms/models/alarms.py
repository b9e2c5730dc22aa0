"""Alarm rules of a project, the alarms they and the system checks raise, their journal, and each rule's shared state."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

__all__ = ["Severity", "AlarmState", "AlarmSource", "Transition", "AlarmRule", "RuleState", "Alarm", "AlarmEvent",
           "AlarmQuerySet"]


class Severity(models.TextChoices):
    """ISA-18.2 priorities, most urgent first."""

    CRITICAL = "critical", "critical"
    HIGH = "high", "high"
    MEDIUM = "medium", "medium"
    LOW = "low", "low"


class AlarmState(models.TextChoices):
    ACTIVE = "active", "active"
    ACKNOWLEDGED = "acknowledged", "acknowledged"
    CLEARED = "cleared", "cleared"


class AlarmSource(models.TextChoices):
    RULE = "rule", "rule"
    SYSTEM = "system", "system"


class Transition(models.TextChoices):
    RAISED = "raised", "raised"
    ACKNOWLEDGED = "acknowledged", "acknowledged"
    CLEARED = "cleared", "cleared"
    SHELVED = "shelved", "shelved"
    UNSHELVED = "unshelved", "unshelved"
    RERAISED = "reraised", "reraised"


class AlarmRule(models.Model):
    """A value alarm rule: a condition on the bindings of one group, evaluated after each of its executions
    (alarms/rules.py for the condition's language, alarms/evaluation.py for where and how often)."""

    project = models.ForeignKey("hubs.Project", on_delete=models.CASCADE, related_name="alarm_rules",
                                verbose_name="project", help_text="Project the rule belongs to.")
    name = models.CharField("name", max_length=200, help_text="Name, unique within the project.")
    group = models.ForeignKey("groups.Group", on_delete=models.CASCADE, related_name="alarm_rules",
                              verbose_name="group", help_text="Group whose values the condition reads.")
    condition = models.JSONField(
        "condition", help_text='What raises the alarm, e.g. {"binding": "p1", "op": ">", "value": 80} or '
        '{"all": [...]}, {"any": [...]}, {"not": {...}} (docs: alarms/rules_schema.json).')
    deadband = models.FloatField(
        "deadband", null=True, blank=True, validators=[MinValueValidator(0.0)],
        help_text="Hysteresis: once active, a > 80 condition with deadband 2 holds until the value is 78 or below.")
    for_s = models.FloatField(
        "for (s)", null=True, blank=True, validators=[MinValueValidator(0.0)],
        help_text="Seconds the condition must hold (by the executions' ticks) before the alarm raises; empty: at once.")
    severity = models.CharField("severity", max_length=16, choices=Severity.choices, default=Severity.MEDIUM,
                                help_text="ISA-18.2 priority of the alarm it raises.")
    message = models.CharField(
        "message", max_length=500, blank=True,
        help_text="Template: {p1} (a binding's value), {rule}, {group}, {hub}; empty: the rule's name.")
    enabled = models.BooleanField("enabled", default=True, help_text="A disabled rule is not evaluated.")
    routes = models.ManyToManyField("alarms.NotificationRoute", blank=True, related_name="rules",
                                    verbose_name="routes", help_text="Notification routes its alarms go to.")
    updated_at = models.DateTimeField("updated at", auto_now=True,
                                      help_text="Last change; the workers reload their rules when it moves.")

    class Meta:
        verbose_name = "alarm rule"
        verbose_name_plural = "alarm rules"
        ordering = ["project_id", "name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="alarm_rule_name_unique_in_project")]
        indexes = [
            # rules_evaluate's version check: Max(updated_at) over every rule
            models.Index(fields=["updated_at"], name="alarm_rule_updated_at"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        """The condition's rule is import's and the API's (alarms.rules.condition_errors): the same texts."""
        from django.core.exceptions import ValidationError

        from ..rules import condition_errors

        problems = {}
        if self.condition is not None:
            errors = condition_errors(self.condition, "condition")
            if errors:
                problems["condition"] = errors
        if self.group_id and self.project_id and self.group.hub.project_id != self.project_id:
            problems["group"] = ["the group belongs to another project"]
        if problems:
            raise ValidationError(problems)


class RuleState(models.Model):
    """What every worker must agree on for one rule: whether its alarm is open and since when its condition holds.
    Written on the condition's flips only (alarms/evaluation.py), never per execution."""

    rule = models.OneToOneField(AlarmRule, on_delete=models.CASCADE, primary_key=True, related_name="state",
                                verbose_name="rule", help_text="The rule.")
    active = models.BooleanField("active", default=False, help_text="The rule's alarm is open (raised, not cleared).")
    holding_since = models.DateTimeField(
        "holding since", null=True, blank=True,
        help_text="Tick of the first execution of the current run of executions where the condition held.")
    updated_at = models.DateTimeField("updated at", auto_now=True,
                                      help_text="Last flip; the workers read the states changed since they last looked.")

    class Meta:
        verbose_name = "rule state"
        verbose_name_plural = "rule states"
        indexes = [
            # rules_evaluate's version check (Max(updated_at)) and its reload (updated_at > the last seen)
            models.Index(fields=["updated_at"], name="alarm_rule_state_updated_at"),
        ]


class AlarmQuerySet(models.QuerySet):
    def open(self):
        """Not cleared: active or acknowledged."""
        return self.exclude(state=AlarmState.CLEARED)

    def shelved(self, *, now):
        return self.filter(shelved_until__gt=now)

    def unshelved(self, *, now):
        return self.filter(Q(shelved_until__isnull=True) | Q(shelved_until__lte=now))


class Alarm(models.Model):
    """One occurrence of an alarm, from raised to cleared. ``identity`` names what it is about
    (``rule:7:group:12``, ``system:hub_unreachable:hub:3``): at most one not-cleared alarm per identity."""

    project = models.ForeignKey("hubs.Project", on_delete=models.CASCADE, null=True, blank=True,
                                related_name="alarms", verbose_name="project",
                                help_text="Project concerned; empty for a system alarm about the whole site.")
    rule = models.ForeignKey(AlarmRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="alarms",
                             verbose_name="rule", help_text="Rule that raised it; empty for system alarms.")
    source = models.CharField("source", max_length=16, choices=AlarmSource.choices,
                              help_text="rule: a value alarm rule; system: hubsched's own checks.")
    kind = models.CharField("kind", max_length=64,
                            help_text="rule, or the system check: group_failing, ticks_missed, hub_unreachable, "
                            "sink_backlog, no_beat_leader, redundancy_disagree, quarantine_not_empty, job_failed.")
    subject = models.CharField("subject", max_length=200, blank=True,
                               help_text="What it is about: group:12, hub:3, sink:2, job:5; may be empty.")
    identity = models.CharField("identity", max_length=300, editable=False,
                                help_text="source, kind or rule, and subject in one key: rule:7:group:12.")
    severity = models.CharField("severity", max_length=16, choices=Severity.choices,
                                help_text="ISA-18.2 priority.")
    message = models.TextField("message", help_text="The rendered message.")
    state = models.CharField("state", max_length=16, choices=AlarmState.choices, default=AlarmState.ACTIVE,
                             help_text="active, acknowledged (by an operator) or cleared (returned to normal).")
    raised_at = models.DateTimeField("raised at", help_text="When it was raised (the execution's tick for rules).")
    acknowledged_at = models.DateTimeField("acknowledged at", null=True, blank=True,
                                           help_text="When an operator acknowledged it; stays empty for an alarm "
                                           "that cleared unacknowledged.")
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                        related_name="+", verbose_name="acknowledged by",
                                        help_text="Who acknowledged it.")
    acknowledged_note = models.TextField("acknowledgement note", blank=True, help_text="What they wrote.")
    cleared_at = models.DateTimeField("cleared at", null=True, blank=True, help_text="When it returned to normal.")
    shelved_until = models.DateTimeField("shelved until", null=True, blank=True,
                                         help_text="Until then it sends no notification and is hidden from the "
                                         "active lists (its state still changes).")
    shelved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", verbose_name="shelved by", help_text="Who shelved it.")
    values = models.JSONField("values", default=dict, blank=True,
                              help_text='What caused the latest transition: {"p1": {"value": 81.5, "quality": '
                              '"good"}} for rules, the check\'s figures for system alarms.')
    updated_at = models.DateTimeField("updated at", auto_now=True, help_text="Last change.")

    objects = AlarmQuerySet.as_manager()

    class Meta:
        verbose_name = "alarm"
        verbose_name_plural = "alarms"
        ordering = ["-raised_at", "-id"]
        permissions = [("acknowledge_alarm", "Can acknowledge alarms"), ("shelve_alarm", "Can shelve alarms")]
        constraints = [
            models.UniqueConstraint(fields=["identity"], condition=~Q(state="cleared"),
                                    name="alarm_one_open_per_identity"),
        ]
        indexes = [
            # the lists: GET /alarms?state=active, the admin's filter, newest first
            models.Index(fields=["state", "-raised_at"], name="alarm_state_raised"),
            # system.alarms_apply: the open alarms of one source and kind
            models.Index(fields=["source", "kind", "state"], name="alarm_source_kind_state"),
        ]

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


class AlarmEvent(models.Model):
    """The journal: one row per transition of an alarm, with the values that caused it."""

    alarm = models.ForeignKey(Alarm, on_delete=models.CASCADE, related_name="events", verbose_name="alarm",
                              help_text="The alarm.")
    transition = models.CharField("transition", max_length=16, choices=Transition.choices,
                                  help_text="raised, acknowledged, cleared, shelved, unshelved or reraised.")
    at = models.DateTimeField("at", help_text="When it happened.")
    by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                           related_name="+", verbose_name="by", help_text="Who did it; empty for the system.")
    note = models.TextField("note", blank=True, help_text="The operator's note.")
    values = models.JSONField("values", default=dict, blank=True, help_text="The values that caused it.")

    class Meta:
        verbose_name = "alarm event"
        verbose_name_plural = "alarm events"
        ordering = ["at", "id"]
        indexes = [
            # an alarm's journal (GET /alarms/{id}, the admin's inline), in order
            models.Index(fields=["alarm", "at"], name="alarm_event_alarm_at"),
        ]

    def __str__(self) -> str:
        return f"{self.transition} at {self.at:%Y-%m-%d %H:%M:%S}"
