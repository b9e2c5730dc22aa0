"""Writes for groups: keeping each group's django-celery-beat PeriodicTask in step, and executing a group."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from .models import Group, GroupRun, GroupStats, RunStatus, Trigger

logger = logging.getLogger(__name__)

GROUP_TASK = "groups.tasks.group_run"


def periodic_task_name(group: Group) -> str:
    return f"hubsched group {group.pk}: {group.hub.name}/{group.name}"


def _interval_for(period: float) -> IntervalSchedule:
    # IntervalSchedule.every is an integer: whole seconds stay readable, a fraction is kept in microseconds.
    if float(period).is_integer():
        every, unit = int(period), IntervalSchedule.SECONDS
    else:
        every, unit = round(period * 1_000_000), IntervalSchedule.MICROSECONDS
    schedule, _ = IntervalSchedule.objects.get_or_create(every=every, period=unit)
    return schedule


def _crontab_for(cron: str, time_zone: str) -> CrontabSchedule:
    # Six-field cron (seconds first); CrontabSchedule has no seconds, so the mirror holds the other five.
    fields = cron.split()
    minute, hour, day_of_month, month_of_year, day_of_week = fields[-5:]
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        timezone=time_zone,
    )
    return schedule


def group_schedule_sync(*, group: Group) -> PeriodicTask | None:
    """Create, update or remove the PeriodicTask that mirrors ``group``; returns it (None for on-change).

    The PeriodicTask is named ``hubsched group <id>: <hub>/<group>``, runs ``groups.tasks.group_run`` with
    ``{"group_id": id}``, and is enabled when the group and its hub are. On-change groups are driven by
    hub subscriptions, not by beat, and have none.
    """
    if group.trigger == Trigger.ON_CHANGE:
        group_schedule_remove(group=group)
        return None
    schedule_fields: dict[str, Any] = {"interval": None, "crontab": None, "clocked": None, "one_off": False}
    if group.trigger == Trigger.INTERVAL:
        schedule_fields["interval"] = _interval_for(group.period)
    elif group.trigger == Trigger.CRON:
        schedule_fields["crontab"] = _crontab_for(group.cron, group.hub.project.time_zone)
    elif group.trigger == Trigger.ONCE:
        if group.run_at is None:
            raise ValueError(f"group {group.pk}: a once trigger needs run_at")
        schedule_fields["clocked"], _ = ClockedSchedule.objects.get_or_create(clocked_time=group.run_at)
        schedule_fields["one_off"] = True
    values = {
        "name": periodic_task_name(group),
        "task": GROUP_TASK,
        "kwargs": json.dumps({"group_id": group.pk}),
        "enabled": bool(group.enabled and group.hub.enabled),
        "expire_seconds": max(1, round(group.expiry_seconds)) if group.trigger == Trigger.INTERVAL else None,
        "description": "Kept in step with its hubsched group; edit the group, not this entry.",
        **schedule_fields,
    }
    with transaction.atomic():
        task = group.periodic_task
        if task is None:
            task = PeriodicTask.objects.create(**values)
            Group.objects.filter(pk=group.pk).update(periodic_task=task)
            group.periodic_task = task
        else:
            for name, value in values.items():
                setattr(task, name, value)
            task.save()
    return task


def group_schedule_remove(*, group: Group) -> None:
    """Delete the group's PeriodicTask, if it has one."""
    if group.periodic_task_id:
        PeriodicTask.objects.filter(pk=group.periodic_task_id).delete()
        PeriodicTasks.update_changed()
        group.periodic_task = None


def groups_schedule_sync_all() -> int:
    """Bring every group's PeriodicTask in step (after bulk updates that bypass signals); returns the count."""
    count = 0
    for group in Group.objects.select_related("hub__project", "periodic_task"):
        group_schedule_sync(group=group)
        count += 1
    PeriodicTasks.update_changed()
    return count


# --- switches and "run now" ----------------------------------------------------------------------


def groups_enabled_set(*, group_ids: list[int], enabled: bool) -> int:
    """Enable or disable groups; saved one by one so that their PeriodicTasks follow. Returns the count."""
    count = 0
    with transaction.atomic():
        for group in Group.objects.filter(pk__in=group_ids).exclude(enabled=enabled).select_related("hub__project", "periodic_task"):
            group.enabled = enabled
            group.save(update_fields=["enabled"])
            count += 1
    return count


def groups_run_now(*, group_ids: list[int]) -> int:
    """Queue one execution of each group now (``groups.tasks.group_run``), once the transaction commits.

    Disabled groups run too: a person asked for it. Returns how many were queued.
    """
    from .tasks import group_run

    ids = list(Group.objects.filter(pk__in=group_ids).values_list("pk", flat=True))
    for group_id in ids:
        transaction.on_commit(lambda group_id=group_id: group_run.delay(group_id))
    return len(ids)


# --- execution ------------------------------------------------------------------------------------


def _groups_for_execution(group_ids: set[int]) -> dict[int, Group]:
    return {
        g.pk: g
        for g in Group.objects.select_related("hub__project", "script").prefetch_related("keys").filter(pk__in=group_ids)
    }


def group_run(*, group_id: int, scheduled_for: datetime | None = None) -> GroupRun:
    """Execute one tick of a group: poll its keys, run its script, write back, store; returns the GroupRun.

    Never raises for a hub, script or sink fault: those end the run as ``failed`` with the error text,
    so that a worker serving many groups stays up. Raises ``Group.DoesNotExist`` for an unknown id.
    """
    runs = group_runs_execute(runs=[(group_id, scheduled_for or timezone.now())])
    if not runs:
        raise Group.DoesNotExist(f"group {group_id} does not exist")
    return runs[0]


def group_runs_execute(*, runs: list[tuple[int, datetime]]) -> list[GroupRun]:
    """Execute several admitted ticks ``[(group_id, scheduled_for), ...]`` as one batch, in the order given.

    The caller (the batch task) has already applied expiry, the overlap lock and round-robin order.
    A group that no longer exists is left out. Each tick ends as a GroupRun (``ok`` or ``failed``),
    written in one bulk insert, and in its group's counters.
    """
    from .execution import Outcome, execute_batch

    groups = _groups_for_execution({group_id for group_id, _ in runs})
    ticks = []
    for group_id, scheduled_for in runs:
        if group_id in groups:
            ticks.append((groups[group_id], scheduled_for))
        else:
            logger.info("group %s is gone; tick %s dropped", group_id, scheduled_for)
    try:
        outcomes = execute_batch(ticks=ticks)
    except Exception as exc:  # a bug must not take the worker down: the batch's ticks are recorded as failed
        logger.exception("batch of %d ticks: unexpected error", len(ticks))
        now = timezone.now()
        error = f"internal error: {type(exc).__name__}: {exc}"
        outcomes = [Outcome(group=g, scheduled_for=t, started_at=now, finished_at=now, error=error) for g, t in ticks]
    records = []
    for outcome in outcomes:
        if outcome.error:
            logger.warning("group %s (%s/%s) failed: %s", outcome.group.pk, outcome.group.hub.name,
                           outcome.group.name, outcome.error)
        records.append(
            GroupRun(
                group=outcome.group,
                scheduled_for=outcome.scheduled_for,
                started_at=outcome.started_at,
                finished_at=outcome.finished_at,
                status=RunStatus.FAILED if outcome.error else RunStatus.OK,
                error=outcome.error,
                values_count=outcome.values,
            )
        )
    GroupRun.objects.bulk_create(records, batch_size=500)
    for record in records:
        lag_ms = max(0, int((record.started_at - record.scheduled_for).total_seconds() * 1000))
        group_stats_record(group_id=record.group_id, run=record, lag_ms=lag_ms)
    return records


def group_stats_record(*, group_id: int, run: GroupRun, lag_ms: int) -> None:
    """Add one finished run to the group's counters (F() expressions: concurrent workers add up)."""
    ok = run.status == RunStatus.OK
    updates = {
        "started": F("started") + 1,
        "done": F("done") + (1 if ok else 0),
        "failed": F("failed") + (0 if ok else 1),
        "values": F("values") + run.values_count,
        "lag_ms_total": F("lag_ms_total") + lag_ms,
        "last_run_at": run.scheduled_for,
        "last_status": run.status,
    }
    if not ok:
        updates["last_error"] = run.error
    if not GroupStats.objects.filter(group_id=group_id).update(**updates):
        GroupStats.objects.get_or_create(group_id=group_id)
        GroupStats.objects.filter(group_id=group_id).update(**updates)
