"""Groups (tag groups: a subscription with a name, a trigger and the keys it reads), their runs and counters."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from .validators import MIN_PERIOD_S, PERIOD_MESSAGE

EXECUTION_TIMEOUT_MESSAGE = "The execution timeout must be more than 0 seconds (empty: none)."


def execution_timeout_problem(value: float | None) -> str | None:
    """Why ``value`` (seconds) is not a Group.execution_timeout, or None: it is more than 0, or None (no timeout).
    The one rule for the admin (the field's validator) and project import (hubs/project_document/validation.py)."""
    return EXECUTION_TIMEOUT_MESSAGE if value is not None and not value > 0 else None


def execution_timeout_validate(value: float | None) -> None:
    """Group.execution_timeout's validator; raises ValidationError with ``execution_timeout_problem``'s text."""
    problem = execution_timeout_problem(value)
    if problem:
        raise ValidationError(problem, code="min_value")


class Trigger(models.TextChoices):
    INTERVAL = "interval", "interval"
    CRON = "cron", "cron (six fields, with seconds)"
    ONCE = "once", "once at a date and time"
    ON_CHANGE = "on_change", "on change (hub subscription)"


class GroupQuerySet(models.QuerySet):
    def enabled(self) -> GroupQuerySet:
        return self.filter(enabled=True, hub__enabled=True)


class Group(models.Model):
    hub = models.ForeignKey(
        "hubs.Hub", on_delete=models.CASCADE, related_name="groups", verbose_name="hub", help_text="Hub the group reads."
    )
    name = models.CharField("name", max_length=200, help_text="Name, unique within the hub.")
    trigger = models.CharField(
        "trigger", max_length=16, choices=Trigger.choices, default=Trigger.INTERVAL, help_text="What starts an execution."
    )
    period = models.FloatField(
        "period (s)",
        default=10.0,
        validators=[MinValueValidator(MIN_PERIOD_S, message=PERIOD_MESSAGE)],
        help_text="Interval trigger: seconds between ticks (0.1 and up). Ticks sit on a grid aligned to the period.",
    )
    offset = models.FloatField(
        "offset (s)", default=0.0, help_text="Interval trigger: shift of the tick grid, in seconds (0 puts 10 s ticks at :00, :10)."
    )
    cron = models.CharField(
        "cron", max_length=200, blank=True, help_text="Cron trigger: six fields with seconds first (*/5 * * * * *)."
    )
    run_at = models.DateTimeField("run at", null=True, blank=True, help_text="Once trigger: when to run.")
    deadband = models.FloatField(
        "deadband",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0)],
        help_text="On-change trigger: a numeric change smaller than this is not an event.",
    )
    expires = models.FloatField(
        "expiry (s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0)],
        help_text="A tick that cannot start within this many seconds is dropped as missed; empty means one period.",
    )
    execution_timeout = models.FloatField(
        "execution timeout (s)",
        null=True,
        blank=True,
        validators=[execution_timeout_validate],
        help_text="Most seconds one execution may take, reads, script and write-back together (more than 0); "
        "past it the run fails. Empty: only the hub's call timeout and the script's CPU limit apply.",
    )
    script = models.ForeignKey(
        "scripts_engine.Script",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="groups",
        verbose_name="script",
        help_text="Runs on the polled values after every poll.",
    )
    enabled = models.BooleanField("enabled", default=True, help_text="A disabled group is not scheduled.")
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="hubsched_group",
        verbose_name="periodic task",
        help_text="The django-celery-beat entry kept in step with this group.",
    )

    updated_at = models.DateTimeField(
        "updated at",
        auto_now=True,
        help_text="When the group (or one of its keys) last changed; the beat scheduler reads changes since a watermark.",
    )

    objects = GroupQuerySet.as_manager()

    class Meta:
        ordering = ["hub", "name"]
        verbose_name = "group"
        verbose_name_plural = "groups"
        permissions = [("run_group", "Can run groups now"), ("enable_group", "Can enable and disable groups"),
                       ("kill_group", "Can kill a running execution")]
        constraints = [models.UniqueConstraint(fields=["hub", "name"], name="group_name_unique_in_hub")]
        indexes = [
            # serves the beat scheduler's "groups changed since <watermark>" poll (groups.scheduler.source)
            models.Index(fields=["updated_at"], name="group_updated_at"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def expiry_seconds(self) -> float:
        return self.expires if self.expires is not None else self.period

    def clean(self) -> None:
        """The group rules import checks too (groups/validators.py): a trigger with its fields, a cron expression
        that parses, a script of the hub's project, and no wide table shared with another group of the project.
        The keys' rules are checked with the keys (GroupKey.clean, the admin's key formset, import)."""
        super().clean()
        from .validators import group_trigger_problems, group_wide_table_problem, script_project_problem

        errors: dict[str, list[str]] = {}
        for field, problem in group_trigger_problems(trigger=self.trigger, cron=self.cron or "", has_run_at=self.run_at is not None):
            errors.setdefault(field, []).append(problem)
        hub = self.hub if self.hub_id else None
        if hub is not None and self.script_id:
            problem = script_project_problem(
                script_name=self.script.name, script_project_id=self.script.project_id, hub_name=hub.name, hub_project_id=hub.project_id
            )
            if problem:
                errors.setdefault("script", []).append(problem)
        if hub is not None and self.name:
            problem = group_wide_table_problem(project_id=hub.project_id, hub_name=hub.name, group_name=self.name, group_id=self.pk)
            if problem:
                errors.setdefault("name", []).append(problem)
        if errors:
            raise ValidationError(errors)


class GroupKey(models.Model):
    group = models.ForeignKey(
        Group, on_delete=models.CASCADE, related_name="keys", verbose_name="group", help_text="Group reading the key."
    )
    entity = models.CharField("entity", max_length=1000, help_text="Entity id on the hub (plant/line1/pump1).")
    key = models.CharField("key", max_length=200, help_text="Parameter key on that entity (p1).")
    alias = models.CharField(
        "binding", max_length=200, blank=True, help_text="Name of the value in the script; empty means the key itself."
    )
    position = models.PositiveIntegerField("position", default=0, help_text="Order within the group.")

    class Meta:
        ordering = ["group", "position", "id"]
        verbose_name = "group key"
        verbose_name_plural = "group keys"
        constraints = [models.UniqueConstraint(fields=["group", "entity", "key"], name="group_key_unique")]

    def __str__(self) -> str:
        return f"{self.entity}.{self.key}"

    @property
    def binding(self) -> str:
        return self.alias or self.key

    def clean(self) -> None:
        """The key must be in its hub's entity tree, when the hub has one (groups/validators.py, as import checks).
        Rules across a group's keys (twice, bindings, wide columns, none) need them all: the admin's key formset."""
        super().clean()
        from .validators import hub_key_problem

        group = self.group if self.group_id or GroupKey._meta.get_field("group").is_cached(self) else None
        if group is not None and group.hub_id and self.entity and self.key:
            problem = hub_key_problem(hub_id=group.hub_id, entity=self.entity, key=self.key)
            if problem:
                raise ValidationError(problem)


class RunStatus(models.TextChoices):
    # Every due tick ends in exactly one of these, stored as one GroupRun (unique per group and tick)
    # and counted in GroupStats: due = ok + failed + skipped + missed + killed (docs/streams.md, "Every tick").
    OK = "ok", "ok (stored)"  # its values are durable in the log; the sinks' forwarders store them
    FAILED = "failed", "failed"  # hub, script or write-back error: nothing stored
    SKIPPED = "skipped", "skipped"  # the group was still running (the overlap lock)
    MISSED = "missed", "missed"  # older than its expiry before a worker could start it
    KILLED = "killed", "killed"  # a person killed it while it ran (GroupRun.killed_by): nothing stored


class GroupRun(models.Model):
    group = models.ForeignKey(
        Group, on_delete=models.CASCADE, related_name="runs", verbose_name="group", help_text="Group executed."
    )
    scheduled_for = models.DateTimeField("scheduled for", help_text="The tick this execution belongs to.")
    started_at = models.DateTimeField("started", null=True, blank=True, help_text="When a worker began it.")
    finished_at = models.DateTimeField("finished", null=True, blank=True, help_text="When it ended.")
    status = models.CharField("status", max_length=16, choices=RunStatus.choices, help_text="Outcome.")
    error = models.TextField("error", blank=True, help_text="Why it failed, for a person to act on.")
    values_count = models.PositiveIntegerField("values", default=0, help_text="Values this execution acquired (durable in the log, stored by the sinks' forwarders).")
    # db_default: the runs INSERT leaves the column out unless a run of the statement was killed (groups.services)
    killed_by = models.CharField("killed by", max_length=150, blank=True, default="", db_default="", help_text="Username of who killed the execution (status killed).")

    class Meta:
        ordering = ["-scheduled_for"]
        verbose_name = "group run"
        verbose_name_plural = "group runs"
        constraints = [
            # one outcome per tick: the run recorder keeps the first of a tick executed twice (a redelivered
            # task); also serves "latest runs of a group" (admin inline, status page), read backwards
            models.UniqueConstraint(fields=["group", "scheduled_for"], name="grouprun_one_per_tick"),
        ]

    def __str__(self) -> str:
        return f"{self.group} @ {self.scheduled_for:%Y-%m-%d %H:%M:%S.%f}"[:-3]


class GroupStats(models.Model):
    """Running counters of a group's ticks, updated with F() so that concurrent workers add up."""

    group = models.OneToOneField(
        Group, on_delete=models.CASCADE, primary_key=True, related_name="stats", verbose_name="group", help_text="Group."
    )
    dispatched = models.PositiveBigIntegerField("dispatched", default=0, help_text="Ticks sent to workers.")
    started = models.PositiveBigIntegerField("started", default=0, help_text="Executions a worker began.")
    done = models.PositiveBigIntegerField("done", default=0, help_text="Executions that ended ok.")
    failed = models.PositiveBigIntegerField("failed", default=0, help_text="Executions that ended in an error.")
    skipped = models.PositiveBigIntegerField("skipped", default=0, help_text="Ticks skipped: the group was still running.")
    missed = models.PositiveBigIntegerField("missed", default=0, help_text="Ticks dropped: older than their expiry.")
    killed = models.PositiveBigIntegerField("killed", default=0, db_default=0, help_text="Executions a person killed while they ran.")
    values = models.PositiveBigIntegerField("values", default=0, help_text="Values stored.")
    lag_ms_total = models.PositiveBigIntegerField(
        "lag total (ms)", default=0, help_text="Sum of start lag behind the scheduled tick over started executions."
    )
    last_run_at = models.DateTimeField("last run", null=True, blank=True, help_text="Scheduled time of the latest run.")
    last_status = models.CharField(
        "last status", max_length=16, choices=RunStatus.choices, blank=True, help_text="Outcome of the latest run."
    )
    last_error = models.TextField("last error", blank=True, help_text="Error of the latest failed run.")

    class Meta:
        verbose_name = "group counters"
        verbose_name_plural = "group counters"

    @property
    def runs(self) -> int:
        return self.done + self.failed + self.killed

    @property
    def lag_ms_mean(self) -> float | None:
        return self.lag_ms_total / self.started if self.started else None


class KillOutcome(models.TextChoices):
    PENDING = "", "pending"
    KILLED = "killed", "killed"  # a worker found the execution and stopped it
    NOTHING_RUNNING = "nothing_running", "nothing was running"  # no worker picked it up in time


class KillRequest(models.Model):
    """A person's request to kill a group's running execution: the row is the message, so that it reaches the worker
    on every deployment (embedded or Redis broker). A worker executing a batch polls the pending ones of its groups
    (``groups.execution``, the kill watcher); the requester closes one no worker took as ``nothing_running``."""

    group = models.ForeignKey(
        Group, on_delete=models.CASCADE, related_name="kill_requests", verbose_name="group", help_text="Group whose execution to kill."
    )
    scheduled_for = models.DateTimeField(
        "scheduled for", null=True, blank=True, help_text="The tick whose execution to kill; empty means whichever execution of the group runs now."
    )
    requested_by = models.CharField("requested by", max_length=150, help_text="Username of who asked.")
    requested_at = models.DateTimeField("requested at", auto_now_add=True, help_text="When it was asked.")
    outcome = models.CharField(
        "outcome", max_length=16, choices=KillOutcome.choices, blank=True, default=KillOutcome.PENDING, help_text="What came of it."
    )
    done_at = models.DateTimeField("done at", null=True, blank=True, help_text="When it was closed (killed, or nothing running).")

    class Meta:
        ordering = ["-requested_at"]
        verbose_name = "kill request"
        verbose_name_plural = "kill requests"
        indexes = [
            # serves the kill watchers' poll: the recent pending requests (done_at IS NULL, requested_at >= now - 3 s)
            models.Index(fields=["done_at", "requested_at"], name="killrequest_pending"),
        ]

    def __str__(self) -> str:
        return f"kill {self.group_id} by {self.requested_by}"
