"""Writes for groups: keeping each group's django-celery-beat PeriodicTask in step, and executing a group."""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

from celery.signals import worker_process_shutdown, worker_shutdown
from django.db import connections, router, transaction
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from hubsched.per_process import PerProcess
from hubsched.secrets import text_mask

from .models import Group, GroupRun, RunStatus, Trigger
from .scheduler.stats import RunTotals, group_stats_add_runs

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


def group_run(*, group_id: int, scheduled_for: datetime | None = None) -> GroupRun:
    """Execute one tick of a group: poll its keys, run its script, write back, store; returns the GroupRun.

    Waits until the values are committed and the run is recorded. Never raises for a hub, script or
    sink fault: those end the run as ``failed`` with the error text, so that a worker serving many
    groups stays up. Raises ``Group.DoesNotExist`` for an unknown id.
    """
    runs = group_runs_execute(runs=[(group_id, scheduled_for or timezone.now())], wait=True)
    if not runs:
        raise Group.DoesNotExist(f"group {group_id} does not exist")
    return runs[0]


def group_runs_execute(*, runs: list[tuple[int, datetime]], wait: bool = False) -> list[GroupRun]:
    """Execute several admitted ticks ``[(group_id, scheduled_for), ...]`` as one batch, in the order given.

    The caller (the batch task) has already applied expiry, the overlap lock and round-robin order.
    A group that no longer exists is left out. Each tick ends as a GroupRun (``ok`` or ``failed``)
    and in its group's counters, recorded once its values are committed (or their write failed).

    With ``wait`` it returns the recorded GroupRuns once that is done. Without (the batch task's
    way) it returns ``[]`` as soon as the values are handed to the sinks' batchers: the worker goes
    on with the next group while the sinks gather values of many executions into one write, and
    the process's run recorder writes the runs in bulk (``HUBSCHED_RUN_FLUSH_S``).
    """
    from .definitions import definitions
    from .execution import execute_batch

    groups = definitions().groups({group_id for group_id, _ in runs})
    ticks = []
    for group_id, scheduled_for in runs:
        if group_id in groups:
            ticks.append((groups[group_id], scheduled_for))
        else:
            logger.info("group %s is gone; tick %s dropped", group_id, scheduled_for)
    if not ticks:
        return []
    try:
        if wait:
            records = _runs_of(execute_batch(ticks=ticks))
            group_runs_record(runs=records)
            return [record for record, _ in records]
        execute_batch(ticks=ticks, on_stored=lambda outcomes: run_recorder().add(_runs_of(outcomes)))
        return []
    except Exception as exc:  # a bug must not take the worker down: the batch's ticks are recorded as failed
        from .execution import Outcome

        logger.exception("batch of %d ticks: unexpected error", len(ticks))
        now = timezone.now()
        error = f"internal error: {type(exc).__name__}: {exc}"
        records = _runs_of([Outcome(group=g, scheduled_for=t, started_at=now, finished_at=now, error=error) for g, t in ticks])
        group_runs_record(runs=records)
        return [record for record, _ in records] if wait else []


def _runs_of(outcomes) -> list[tuple[GroupRun, int]]:
    """(GroupRun, lag in ms) of each outcome; logs the failed ones."""
    records = []
    for outcome in outcomes:
        error = outcome.error
        if error:
            # Masked here, where a run's error is recorded (GroupRun.error, GroupStats.last_error, the log), as
            # well as at its source (hubs/client.py, the sinks): a URL's password or token, the hub's key.
            error = text_mask(error, secrets=(outcome.group.hub.api_key,))
            logger.warning("group %s (%s/%s) failed: %s", outcome.group.pk, outcome.group.hub.name,
                           outcome.group.name, error)
        run = GroupRun(
            group_id=outcome.group.pk,
            scheduled_for=outcome.scheduled_for,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            status=RunStatus.FAILED if error else RunStatus.OK,
            error=error,
            values_count=outcome.values,
        )
        lag_ms = max(0, int((outcome.started_at - outcome.scheduled_for).total_seconds() * 1000))
        records.append((run, lag_ms))
    return records


def group_runs_record(*, runs: list[tuple[GroupRun, int]]) -> int:
    """Store finished runs ``[(GroupRun, lag_ms)]`` and add them to their groups' counters; returns statements run.

    The GroupRuns are unsaved instances with aware datetimes; runs of groups deleted meanwhile are
    left out. They are written by multi-row INSERTs of plain tuples (``_group_runs_insert``), and
    get their ``pk`` where the backend returns it, as ``bulk_create`` would. Each group's runs are
    summed (``RunTotals``: counts, values, lag, latest tick and status, last error) and added to its
    GroupStats row by ``group_stats_add_runs``: increments in SQL, so concurrent writers add up,
    missing rows made. Raises the database's errors (the run recorder logs them).
    """
    if not runs:
        return 0
    alive, statements = _groups_alive({run.group_id for run, _ in runs})
    runs = [(run, lag) for run, lag in runs if run.group_id in alive]
    statements += _group_runs_insert([run for run, _ in runs])
    totals: dict[int, RunTotals] = {}
    ok = RunStatus.OK
    for run, lag in runs:
        group_totals = totals.get(run.group_id)
        if group_totals is None:
            group_totals = totals[run.group_id] = RunTotals()
        group_totals.add(ok=run.status == ok, scheduled_for=run.scheduled_for, status=run.status, error=run.error,
                         values=run.values_count, lag_ms=lag)
    return statements + group_stats_add_runs(totals=totals)


def _groups_alive(group_ids: set[int]) -> tuple[set[int], int]:
    """Those of ``group_ids`` whose Group row exists, and the statements run (a SELECT per 1,000 ids, 999 on SQLite)."""
    connection = connections[router.db_for_read(Group)]
    qn = connection.ops.quote_name
    pk = qn(Group._meta.pk.column)
    select = f"SELECT {pk} FROM {qn(Group._meta.db_table)} WHERE {pk} IN "
    ids = list(group_ids)
    size = min(1000, connection.features.max_query_params or 1000)
    alive: set[int] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            cursor.execute(f"{select}({', '.join(['%s'] * len(chunk))})", chunk)
            alive.update(row[0] for row in cursor.fetchall())
    return alive, -(-len(ids) // size)


# GroupRun fields written, in the INSERT's column order (the primary key is the database's)
RUN_FIELDS = ("group", "scheduled_for", "started_at", "finished_at", "status", "error", "values_count")
RUN_ROWS = 500  # rows per INSERT at most; fewer where the backend's bound-parameter limit asks (SQLite: 142)


def _group_runs_insert(runs: list[GroupRun]) -> int:
    """INSERT the unsaved ``runs`` as they are, several rows a statement, all or none; returns statements run.

    Stores what ``bulk_create`` would, without its per-field, per-object preparation (1,000 runs on
    SQLite: 43 µs of CPU a run with ``bulk_create``, 17 µs so): the datetimes (aware) pass through
    the connection's ``adapt_datetimefield_value`` (SQLite and MySQL store naive text in the
    connection's time zone, PostgreSQL takes the value), the other fields are plain values. Where the
    backend returns inserted rows (PostgreSQL, SQLite 3.35+, MariaDB 10.5+) each run gets its ``pk``
    and is marked saved, as ``bulk_create`` does.
    """
    if not runs:
        return 0
    connection = connections[router.db_for_write(GroupRun)]
    ops, meta = connection.ops, GroupRun._meta
    returning = connection.features.can_return_rows_from_bulk_insert
    insert = (f"INSERT INTO {ops.quote_name(meta.db_table)} "
              f"({', '.join(ops.quote_name(meta.get_field(name).column) for name in RUN_FIELDS)}) VALUES ")
    suffix = f" {ops.return_insert_columns([meta.pk])[0]}" if returning else ""
    row = f"({', '.join(['%s'] * len(RUN_FIELDS))})"
    size = RUN_ROWS
    if connection.features.max_query_params:
        size = max(1, min(size, connection.features.max_query_params // len(RUN_FIELDS)))
    adapt = ops.adapt_datetimefield_value
    ticks: dict[datetime, Any] = {}  # scheduled_for adapted once: the runs of a flush share few ticks
    statements = 0
    with transaction.atomic(using=connection.alias, savepoint=False), connection.cursor() as cursor:
        for start in range(0, len(runs), size):
            chunk = runs[start : start + size]
            params: list = []
            for run in chunk:
                tick = ticks.get(run.scheduled_for)
                if tick is None:
                    tick = ticks[run.scheduled_for] = adapt(run.scheduled_for)
                params += (run.group_id, tick, adapt(run.started_at), adapt(run.finished_at), run.status, run.error,
                           run.values_count)
            cursor.execute(f"{insert}{', '.join([row] * len(chunk))}{suffix}", params)
            statements += 1
            if returning:
                for run, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
                    run.pk = pk
                    run._state.adding, run._state.db = False, connection.alias
    return statements


class RunRecorder:
    """Finished runs gathered per process and written by ``group_runs_record`` every ``interval`` seconds.

    Runs waiting to be written are lost if the process dies (their values are in the sinks already);
    a worker shutting down writes them first (``runs_drain``).
    """

    max_pending = 50_000  # beyond this the adding thread writes them itself (the Django database is slow)

    def __init__(self, *, interval: float):
        self.interval = interval
        self._pending: list[tuple[GroupRun, int]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, runs: list[tuple[GroupRun, int]]) -> None:
        with self._lock:
            self._pending.extend(runs)
            full = len(self._pending) >= self.max_pending
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="run-recorder", daemon=True)
                self._thread.start()
        if full:
            self.flush()

    def flush(self) -> int:
        """Write what is pending now; returns how many runs."""
        with self._flush_lock:
            with self._lock:
                runs, self._pending = self._pending, []
            if runs:
                try:
                    group_runs_record(runs=runs)
                except Exception:
                    logger.exception("recording %d runs failed; they are lost (their values are stored)", len(runs))
            return len(runs)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()


def _new_recorder() -> RunRecorder:
    from django.conf import settings

    return RunRecorder(interval=settings.HUBSCHED_RUN_FLUSH_S)


process_recorder: PerProcess[RunRecorder] = PerProcess(_new_recorder)


def run_recorder() -> RunRecorder:
    """The process's run recorder, configured from settings on first use."""
    return process_recorder.get()


def runs_drain(**_kwargs) -> None:
    """Write what the sinks and the run recorder still hold (at worker shutdown)."""
    from scripts_engine.sinks import sinks_drain

    sinks_drain(timeout=10.0)
    recorder = process_recorder.peek()
    if recorder is not None:
        recorder.flush()


atexit.register(runs_drain)
worker_process_shutdown.connect(runs_drain, dispatch_uid="groups.services.runs_drain.process")
worker_shutdown.connect(runs_drain, dispatch_uid="groups.services.runs_drain")
