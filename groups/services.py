"""Writes for groups: keeping each group's django-celery-beat PeriodicTask in step, and executing a group."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, router, transaction
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from hubsched.secrets import text_mask

from .models import Group, GroupRun, RunStatus, Trigger
from .scheduler.stats import RunTotals, group_stats_add_runs

logger = logging.getLogger(__name__)

GROUP_TASK = "groups.tasks.group_run"


_INT_MAX = 2**31 - 1  # django-celery-beat's integer columns (IntervalSchedule.every, expire_seconds) on PostgreSQL


def periodic_task_name(group: Group) -> str:
    # PeriodicTask.name holds 200 characters; the id before the names keeps a cut one unique
    return f"hubsched group {group.pk}: {group.hub.name}/{group.name}"[:200]


def _interval_for(period: float) -> IntervalSchedule:
    # IntervalSchedule.every is an integer: whole seconds stay readable, a fraction is kept in microseconds.
    # The entry only mirrors the group (the scheduler reads Group.period): a period too long for the column in
    # microseconds is mirrored in whole seconds, one too long in seconds in days.
    if float(period).is_integer() and period <= _INT_MAX:
        every, unit = int(period), IntervalSchedule.SECONDS
    elif round(period * 1_000_000) <= _INT_MAX:
        every, unit = round(period * 1_000_000), IntervalSchedule.MICROSECONDS
    elif round(period) <= _INT_MAX:
        every, unit = round(period), IntervalSchedule.SECONDS
    else:
        every, unit = min(_INT_MAX, round(period / 86400)), IntervalSchedule.DAYS
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
    values = _periodic_task_values(group)
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


def _periodic_task_values(group: Group, schedules: dict | None = None) -> dict[str, Any]:
    """The PeriodicTask fields that mirror ``group`` (not on-change): ``group_schedule_sync``'s and
    ``groups_create``'s one rule. ``schedules`` memoises the schedule rows across many groups (a bulk create)."""
    memo = {} if schedules is None else schedules
    schedule_fields: dict[str, Any] = {"interval": None, "crontab": None, "clocked": None, "one_off": False}
    if group.trigger == Trigger.INTERVAL:
        key = ("interval", group.period)
        if key not in memo:
            memo[key] = _interval_for(group.period)
        schedule_fields["interval"] = memo[key]
    elif group.trigger == Trigger.CRON:
        key = ("cron", group.cron, group.hub.project.time_zone)
        if key not in memo:
            memo[key] = _crontab_for(group.cron, group.hub.project.time_zone)
        schedule_fields["crontab"] = memo[key]
    elif group.trigger == Trigger.ONCE:
        if group.run_at is None:
            raise ValueError(f"group {group.pk}: a once trigger needs run_at")
        key = ("once", group.run_at)
        if key not in memo:
            memo[key], _ = ClockedSchedule.objects.get_or_create(clocked_time=group.run_at)
        schedule_fields["clocked"] = memo[key]
        schedule_fields["one_off"] = True
    return {
        "name": periodic_task_name(group),
        "task": GROUP_TASK,
        "kwargs": json.dumps({"group_id": group.pk}),
        "enabled": bool(group.enabled and group.hub.enabled),
        "expire_seconds": min(_INT_MAX, max(1, round(group.expiry_seconds))) if group.trigger == Trigger.INTERVAL else None,
        "description": "Kept in step with its hubsched group; edit the group, not this entry.",
        **schedule_fields,
    }


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
    """Enable or disable groups (those already so are left alone); returns how many changed.

    A few statements whatever the count (the admin's action, the API's enable/disable and bulk switch):
    the groups' ``enabled`` and ``updated_at`` (the beat scheduler's watermark), and their PeriodicTasks'
    ``enabled`` (on only where the hub is enabled too, as ``group_schedule_sync`` sets it; ``last_run_at``
    cleared when off, as ``PeriodicTask.save`` does), then ``PeriodicTasks.update_changed()`` once, since
    these updates bypass the signals. One transaction."""
    now, group_ids = timezone.now(), list(group_ids)
    with transaction.atomic():
        ids: list[int] = []
        tasks_on: list[int] = []
        tasks_off: list[int] = []
        for start in range(0, len(group_ids), BULK_CHUNK):
            rows = (Group.objects.filter(pk__in=group_ids[start : start + BULK_CHUNK]).exclude(enabled=enabled)
                    .values_list("pk", "periodic_task_id", "hub__enabled"))
            for pk, task_id, hub_enabled in rows:
                ids.append(pk)
                if task_id is not None:
                    (tasks_on if enabled and hub_enabled else tasks_off).append(task_id)
        for start in range(0, len(ids), BULK_CHUNK):
            Group.objects.filter(pk__in=ids[start : start + BULK_CHUNK]).update(enabled=enabled, updated_at=now)
        for task_ids, on in ((tasks_on, True), (tasks_off, False)):
            for start in range(0, len(task_ids), BULK_CHUNK):
                fields = {"enabled": on, "date_changed": now, **({} if on else {"last_run_at": None})}
                PeriodicTask.objects.filter(pk__in=task_ids[start : start + BULK_CHUNK]).update(**fields)
        if ids:
            PeriodicTasks.update_changed()
    return len(ids)


def groups_run_now(*, group_ids: list[int]) -> int:
    """Queue one execution of each group now (``groups.tasks.group_run``), once the transaction commits.

    Disabled groups run too: a person asked for it. Returns how many were queued.
    """
    from .tasks import group_run

    ids = list(Group.objects.filter(pk__in=group_ids).values_list("pk", flat=True))
    for group_id in ids:
        transaction.on_commit(lambda group_id=group_id: group_run.delay(group_id))
    return len(ids)


# --- the API's writes: create (one or in bulk), change, delete ----------------------------------------

BULK_CHUNK = 500  # ids per IN (...) of a bulk statement (SQLite's bound-parameter limit is 999)
GROUPS_BULK_MAX = 1000  # groups per bulk create request (the API's limit; docs/api.md)
_FREE = object()


@dataclass
class GroupDraft:
    """A group to write: ``group`` holds its fields (unsaved for a create; the saved row with the changes
    applied for a change), ``hub`` and ``script`` attached as instances; ``keys`` ``[(entity, key, alias)]`` in
    order, or None to keep a saved group's keys."""

    group: Group
    keys: list[tuple[str, str, str]] | None = None


class GroupsInvalid(ValueError):
    """Drafts that break a group rule: ``problems`` ``[(index of the draft, path within it, message)]``,
    the path like ``keys[2].entity`` (empty for the group as a whole). Nothing was written."""

    def __init__(self, problems: list[tuple[int, str, str]]):
        super().__init__("; ".join(f"[{i}].{path}: {message}" for i, path, message in problems[:5]))
        self.problems = problems


def _hub_trees(hub_ids: set[int]) -> dict[int, dict[str, set[str]]]:
    """``{hub_id: {entity path: {parameter keys}}}`` from the saved Entity and Parameter rows (two queries):
    the tree ``key_tree_problem`` checks a key against, which ``hub_key_problem`` (GroupKey.clean) reads
    row by row; a hub never synced has an empty tree (nothing checked)."""
    from hubs.models import Entity, Parameter

    trees: dict[int, dict[str, set[str]]] = {hub_id: {} for hub_id in hub_ids}
    for hub_id, path in Entity.objects.filter(hub_id__in=hub_ids).values_list("hub_id", "path").iterator(chunk_size=5000):
        trees[hub_id].setdefault(path, set())
    for hub_id, path, key in (Parameter.objects.filter(entity__hub_id__in=hub_ids)
                              .values_list("entity__hub_id", "entity__path", "key").iterator(chunk_size=5000)):
        trees[hub_id].setdefault(path, set()).add(key)
    return trees


def _validation_problems(exc: ValidationError, at: str = "") -> list[tuple[str, str]]:
    out = []
    for field, messages in (exc.message_dict.items() if hasattr(exc, "error_dict") else [("__all__", exc.messages)]):
        path = at if field == "__all__" else (f"{at}.{field}" if at else field)
        out += [(path, message) for message in messages]
    return out


def group_drafts_make(*, items: list[dict[str, Any]], saved: list[Group] | None = None) -> list[GroupDraft]:
    """GroupDrafts from ``items``: Group field values by name (``hub`` and ``script`` as ids; ``keys`` as
    ``[(entity, key, alias)]``, absent or None to keep), applied to ``saved`` (the rows a change changes, in
    the same order) or to new groups. The hubs (with their projects) and scripts are read in two queries.
    Raises GroupsInvalid for an unknown hub or script id (the messages of Django's ForeignKey checks)."""
    from hubs.models import Hub
    from scripts_engine.models import Script

    hubs = Hub.objects.select_related("project").in_bulk({i["hub"] for i in items if i.get("hub") is not None})
    scripts = Script.objects.in_bulk({i["script"] for i in items if i.get("script") is not None})
    problems: list[tuple[int, str, str]] = []
    drafts = []
    for index, item in enumerate(items):
        group = saved[index] if saved is not None else Group()
        keys = item.get("keys")
        for name, value in item.items():
            if name == "keys":
                continue
            if name in ("hub", "script"):
                field = Group._meta.get_field(name)
                rows = hubs if name == "hub" else scripts
                if value is None and not field.null:
                    problems.append((index, name, str(field.error_messages["null"])))
                elif value is not None and value not in rows:
                    problems.append((index, name, str(field.error_messages["invalid"]) % {
                        "model": field.remote_field.model._meta.verbose_name, "pk": value,
                        "field": field.remote_field.field_name, "value": value}))
                else:
                    setattr(group, name, rows[value] if value is not None else None)
            else:
                setattr(group, name, value)
        drafts.append(GroupDraft(group=group, keys=[tuple(k) for k in keys] if keys is not None else None))
    if problems:
        raise GroupsInvalid(problems)
    return drafts


def groups_check(*, drafts: list[GroupDraft]) -> list[tuple[int, str, str]]:
    """Every problem of ``drafts`` as ``[(index, path, message)]`` (GroupsInvalid's), found with the rules the
    admin and project import use, in a few queries for the whole batch:

    - each group's fields: ``Group.clean_fields`` (the field validators of period, expiry, timeout, deadband,
      the choices, the lengths), its hub and script being attached instances;
    - ``Group.clean()``'s rules, called as project import calls them (groups/validators.py): the trigger and its
      fields, a cron that parses (``group_trigger_problems``), a script of the hub's project
      (``script_project_problem``), no wide table shared with another group of the project, saved or in the
      batch (``wide_table_problems``, the project's wide sinks read once, not once a group as ``clean()`` does);
    - the name unique in its hub (Django's own message for ``group_name_unique_in_hub``), against the saved
      groups and the other drafts;
    - each key's fields (``GroupKey.clean_fields``), its place in the hub's saved tree (``key_tree_problem``, what
      ``GroupKey.clean`` asks row by row, on the tree read once) and the rules across keys (``group_keys_problems``,
      the admin's key formset's): at least one, each once, bindings once, wide columns.
    """
    from .models import GroupKey
    from .validators import (
        group_keys_problems, group_trigger_problems, key_tree_problem, project_wide_sinks, script_project_problem,
        wide_table_problems,
    )

    problems: list[tuple[int, str, str]] = []
    hub_ids = {d.group.hub_id for d in drafts if d.group.hub_id}
    trees = _hub_trees(hub_ids)
    taken: dict[tuple[int, str], int | None] = {}  # (hub, name) -> the saved group's pk, or a draft's (None: new)
    hubs = sorted(hub_ids)
    for start in range(0, len(hubs), BULK_CHUNK):
        for pk, hub_id, name in Group.objects.filter(hub_id__in=hubs[start : start + BULK_CHUNK]).values_list("pk", "hub_id", "name"):
            taken[(hub_id, name)] = pk
    saved_keys: dict[int, list[tuple[str, str, str]]] = {}
    keep = [d.group.pk for d in drafts if d.keys is None and d.group.pk is not None]
    if keep:
        for group_id, entity, key, alias in (GroupKey.objects.filter(group_id__in=keep).order_by("group", "position", "pk")
                                             .values_list("group_id", "entity", "key", "alias")):
            saved_keys.setdefault(group_id, []).append((entity, key, alias))
    wide: dict[int, list[tuple[str, str]]] = {}
    named: dict[int, list[tuple[int, tuple[str, str]]]] = {}  # project -> [(draft index, (hub name, group name))]
    for index, draft in enumerate(drafts):
        group = draft.group
        try:
            group.clean_fields(exclude=["hub", "script", "periodic_task", "updated_at"])
        except ValidationError as exc:
            problems += [(index, path, message) for path, message in _validation_problems(exc)]
        for field, problem in group_trigger_problems(trigger=group.trigger, cron=group.cron or "",
                                                     has_run_at=group.run_at is not None):
            problems.append((index, field, problem))
        if not group.hub_id:
            continue
        hub = group.hub
        if group.script_id:
            problem = script_project_problem(script_name=group.script.name, script_project_id=group.script.project_id,
                                             hub_name=hub.name, hub_project_id=hub.project_id)
            if problem:
                problems.append((index, "script", problem))
        if hub.project_id not in wide:
            wide[hub.project_id] = project_wide_sinks(project_id=hub.project_id)
        if group.name:
            owner = taken.get((hub.pk, group.name), _FREE)
            if owner is not _FREE and (owner is None or owner != group.pk):
                message = group.unique_error_message(Group, ("hub", "name")).messages[0]
                problems.append((index, "name", message))
            else:
                taken[(hub.pk, group.name)] = group.pk
            named.setdefault(hub.project_id, []).append((index, (hub.name, group.name)))
        keys = draft.keys if draft.keys is not None else saved_keys.get(group.pk, [])
        tree = trees.get(hub.pk, {})
        for k, (entity, key, alias) in enumerate(keys):
            try:
                GroupKey(entity=entity, key=key, alias=alias, position=k).clean_fields(exclude=["group"])
            except ValidationError as exc:
                problems += [(index, path, message) for path, message in _validation_problems(exc, f"keys[{k}]")]
                continue
            problem = key_tree_problem(entity=entity, key=key, tree=tree)
            if problem:
                problems.append((index, f"keys[{k}].{'key' if entity in tree else 'entity'}", problem))
        for k, message in group_keys_problems(keys=keys, tree=None, wide=bool(wide[hub.project_id])):
            problems.append((index, "keys" if k is None else f"keys[{k}]", message))
    for project_id, mine in named.items():
        if not wide.get(project_id):
            continue
        changed = [drafts[i].group.pk for i, _ in mine if drafts[i].group.pk is not None]
        others = list(Group.objects.filter(hub__project_id=project_id).exclude(pk__in=changed)
                      .order_by("hub__name", "name").values_list("hub__name", "name"))
        for i, message in wide_table_problems(sinks=wide[project_id], groups=[*others, *(n for _, n in mine)],
                                              start=len(others)):
            problems.append((mine[i - len(others)][0], "name", message))
    problems.sort(key=lambda p: p[0])
    return problems


def groups_create(*, drafts: list[GroupDraft]) -> list[Group]:
    """Create the groups of ``drafts`` (new, with their keys) and their schedules, all or none, in one
    transaction; returns the saved groups in order.

    Checked first by ``groups_check`` (raises GroupsInvalid listing every problem; nothing is written).
    Written in bulk: the groups, their keys, and each one's PeriodicTask (built by ``_periodic_task_values``,
    the same fields ``group_schedule_sync`` gives a group saved in the admin; none for on-change), then
    ``PeriodicTasks.update_changed()`` once: bulk writes bypass the signals (groups/signals.py). The beat
    scheduler finds the new groups through ``updated_at``. 1,000 groups of 10 keys: docs/api.md, "Bulk".
    """
    from .models import GroupKey

    problems = groups_check(drafts=drafts)
    if problems:
        raise GroupsInvalid(problems)
    if not drafts:
        return []
    with transaction.atomic():
        groups = Group.objects.bulk_create([d.group for d in drafts], batch_size=BULK_CHUNK)
        if any(g.pk is None for g in groups):  # a backend that returns no ids from a bulk insert (MySQL)
            ids = {(hub_id, name): pk for pk, hub_id, name in
                   Group.objects.filter(hub_id__in={g.hub_id for g in groups}).values_list("pk", "hub_id", "name")}
            for group in groups:
                group.pk = ids[(group.hub_id, group.name)]
                group._state.adding = False
        GroupKey.objects.bulk_create(
            [GroupKey(group=group, entity=entity, key=key, alias=alias, position=position)
             for group, draft in zip(groups, drafts, strict=True) for position, (entity, key, alias) in enumerate(draft.keys or [])],
            batch_size=BULK_CHUNK,
        )
        _schedules_create(groups)
    return groups


def _schedules_create(groups: list[Group]) -> None:
    """The PeriodicTasks of freshly created ``groups`` in a few statements, linked to them."""
    schedules: dict = {}
    scheduled = [g for g in groups if g.trigger != Trigger.ON_CHANGE]
    if not scheduled:
        return
    tasks = PeriodicTask.objects.bulk_create(
        [PeriodicTask(**_periodic_task_values(g, schedules)) for g in scheduled], batch_size=BULK_CHUNK
    )
    if any(t.pk is None for t in tasks):
        ids = dict(PeriodicTask.objects.filter(name__in=[t.name for t in tasks]).values_list("name", "pk"))
        for task in tasks:
            task.pk = ids[task.name]
    for group, task in zip(scheduled, tasks, strict=True):
        group.periodic_task = task
    Group.objects.bulk_update(scheduled, ["periodic_task"], batch_size=BULK_CHUNK)
    PeriodicTasks.update_changed()


def group_change(*, draft: GroupDraft) -> Group:
    """Save a changed group (``draft.group``, the saved row with new values) and, when ``draft.keys`` is
    given, replace its keys as a whole; one transaction. Checked by ``groups_check`` (raises GroupsInvalid).
    Saved through the model, so groups/signals.py brings its PeriodicTask in step."""
    from .models import GroupKey

    problems = groups_check(drafts=[draft])
    if problems:
        raise GroupsInvalid(problems)
    group = draft.group
    with transaction.atomic():
        group.save()
        if draft.keys is not None and [(k.entity, k.key, k.alias) for k in group.keys.all()] != draft.keys:
            group.keys.all().delete()
            GroupKey.objects.bulk_create(GroupKey(group=group, entity=entity, key=key, alias=alias, position=position)
                                         for position, (entity, key, alias) in enumerate(draft.keys))
    return group


def groups_delete(*, group_ids: list[int]) -> int:
    """Delete groups with their keys, runs and counters, and their PeriodicTasks, in one transaction;
    returns how many groups were deleted. The PeriodicTasks go first in a few statements (which clears
    the groups' link, so the per-group signal has nothing left to remove), then ``PeriodicTasks.update_changed()``."""
    deleted = 0
    with transaction.atomic():
        for start in range(0, len(group_ids), BULK_CHUNK):
            chunk = group_ids[start : start + BULK_CHUNK]
            task_ids = list(Group.objects.filter(pk__in=chunk).exclude(periodic_task=None).values_list("periodic_task_id", flat=True))
            if task_ids:
                PeriodicTask.objects.filter(pk__in=task_ids).delete()
            _total, per_model = Group.objects.filter(pk__in=chunk).delete()
            deleted += per_model.get(Group._meta.label, 0)
        if deleted:
            PeriodicTasks.update_changed()
    return deleted


# --- kill ------------------------------------------------------------------------------------------


def group_kill(*, group_id: int, requested_by: str, scheduled_for: datetime | None = None, wait_s: float | None = None):
    """Ask the workers to kill group ``group_id``'s running execution (of tick ``scheduled_for``; None: whichever
    runs now) and wait until one did or ``wait_s`` seconds (default ``KILL_PICKUP_S``) passed; returns the
    closed KillRequest: ``outcome`` ``killed`` (a worker's kill watcher stopped it; the GroupRun, recorded as
    ``killed`` with ``killed_by=requested_by``, follows through the log) or ``nothing_running`` (no worker ran
    it: closed here). Raises ``Group.DoesNotExist`` for an unknown id."""
    return groups_kill(group_ids=[group_id], requested_by=requested_by, scheduled_for=scheduled_for, wait_s=wait_s,
                       _must_exist=True)[0]


def groups_kill(*, group_ids: list[int], requested_by: str, scheduled_for: datetime | None = None,
                wait_s: float | None = None, _must_exist: bool = False) -> list:
    """``group_kill`` for several groups at once (the admin's action), waiting ``wait_s`` in all; returns their
    closed KillRequests in the order of ``group_ids`` (groups that do not exist left out)."""
    import time

    from .execution import KILL_PICKUP_S, KILL_POLL_S
    from .models import KillOutcome, KillRequest

    existing = set(Group.objects.filter(pk__in=group_ids).values_list("pk", flat=True))
    if _must_exist and not existing:
        raise Group.DoesNotExist(f"group {group_ids[0]} does not exist")
    requests = [KillRequest.objects.create(group_id=gid, scheduled_for=scheduled_for, requested_by=requested_by)
                for gid in group_ids if gid in existing]
    # never past the watchers' pick-up window, which they count from requested_at
    end = time.monotonic() + min(KILL_PICKUP_S, KILL_PICKUP_S if wait_s is None else wait_s)
    pending = {r.pk for r in requests}
    while pending and time.monotonic() < end:
        time.sleep(KILL_POLL_S / 2)
        pending -= set(KillRequest.objects.filter(pk__in=pending).exclude(done_at=None).values_list("pk", flat=True))
    if pending:
        KillRequest.objects.filter(pk__in=pending, done_at=None).update(outcome=KillOutcome.NOTHING_RUNNING, done_at=timezone.now())
    closed = KillRequest.objects.in_bulk([r.pk for r in requests])
    return [closed[r.pk] for r in requests]


# --- execution ------------------------------------------------------------------------------------


def group_run(*, group_id: int, scheduled_for: datetime | None = None) -> GroupRun:
    """Execute one tick of a group now (run now, ``script_run``): poll its keys, run its script, write
    back, append the outcome to the log, store the values in the project's sinks and record the run;
    returns the GroupRun.

    Never raises for a hub, script or sink fault: those end the run as ``failed`` with the error text
    (a sink that fails here leaves the values to its forwarder, which reads them from the log). Raises
    ``Group.DoesNotExist`` for an unknown id.
    """
    runs = group_runs_execute(runs=[(group_id, scheduled_for or timezone.now())], wait=True)
    if not runs:
        raise Group.DoesNotExist(f"group {group_id} does not exist")
    return runs[0]


def group_runs_execute(*, runs: list[tuple[int, datetime]], wait: bool = False) -> list[GroupRun]:
    """Execute several admitted ticks ``[(group_id, scheduled_for), ...]`` as one batch, in the order given,
    and return once every outcome is durable in the log (stream ``executions``, docs/streams.md).

    The caller (the batch task) has already applied expiry, the overlap lock and round-robin order, and
    acknowledges its message only after this returns: a worker killed before then leaves the message
    to be delivered again, and the run recorder keeps the first outcome of a tick. A group that no
    longer exists is left out. Each tick's outcome (``ok`` with its values, or ``failed``) becomes one
    record; the sinks' forwarders store the values and the run recorder the GroupRun and counters
    (``streams.forwarding``). Should the log refuse the batch for longer than HUBSCHED_LOG_APPEND_DEADLINE_S,
    the ticks are recorded here as ``failed`` (nothing of them is stored), so none goes uncounted.

    Returns one GroupRun per tick run (``status``, ``values_count``, ``killed_by``): without ``wait`` they are
    not saved (the run recorder stores them from the log; the batch task reports their counts as its result,
    docs/flower.md). With ``wait`` (one tick run now) it also writes the values to the sinks and records the
    runs here, and returns them saved: the forwarders find them stored.
    """
    from .definitions import definitions
    from .execution import Outcome, execute_batch

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
        outcomes = execute_batch(ticks=ticks, expire=not wait)  # run now keeps the hub's timeout only
    except Exception as exc:  # a bug must not take the worker down: the batch's ticks are recorded as failed
        logger.exception("batch of %d ticks: unexpected error", len(ticks))
        now = timezone.now()
        error = f"internal error: {type(exc).__name__}: {exc}"
        outcomes = [Outcome(group=g, scheduled_for=t, started_at=now, finished_at=now, error=error) for g, t in ticks]
    records = _runs_of(outcomes)
    logged = outcomes_log(outcomes=outcomes, runs=records)
    if logged:
        _alarm_rules_evaluate(outcomes)
    if wait:
        if logged:
            _sinks_write_now(outcomes)
        group_runs_record(runs=records)
    return [record for record, _ in records]


def _alarm_rules_evaluate(outcomes) -> None:
    """Value alarm rules on the values just made durable (alarms.evaluation); a group without a rule costs one set
    look-up, and the bindings are built only for groups with rules."""
    from alarms.evaluation import groups_with_rules, rules_bindings, rules_evaluate

    from .execution import outcome_bindings

    ruled = groups_with_rules()
    if not ruled:
        return
    for outcome in outcomes:
        if outcome.error or outcome.group.pk not in ruled:
            continue
        try:
            values, quality = outcome_bindings(outcome, rules_bindings(outcome.group.pk))
            rules_evaluate(group_id=outcome.group.pk, bindings=values, quality=quality, at=outcome.scheduled_for)
        except Exception:  # an alarm rule must never cost a group its values: they are durable already
            logger.exception("group %s: alarm rules failed", outcome.group.pk)


def _served_by(outcome) -> str:
    """The name of the redundancy set member that served ``outcome`` when it is not the group's hub, else ""."""
    member = outcome.served_by
    return member.name if member is not None and member.pk != outcome.group.hub_id else ""


def outcomes_log(*, outcomes, runs: list[tuple[GroupRun, int]]) -> bool:
    """Append one record per outcome (``streams.codec``, the runs' masked errors) to the log; True once durable.

    When the log refuses past HUBSCHED_LOG_APPEND_DEADLINE_S, the runs are recorded here as ``failed``
    with the log's error instead (their values are lost, and counted so) and False is returned."""
    from django.conf import settings

    from scripts_engine.sinks import ExecutionValues
    from streams.codec import CodecError, TickOutcome, outcome_encode
    from streams.log import EXECUTIONS, LogError
    from streams.services import log_append

    bodies = []
    for outcome, (run, _lag) in zip(outcomes, runs, strict=True):
        group, hub = outcome.group, outcome.group.hub
        ok = run.status == RunStatus.OK
        execution = ExecutionValues(outcome.scheduled_for, hub.project.name, hub.name, group.pk, group.name,
                                    outcome.read if ok else [], outcome.read_bytes if ok else 0, _served_by(outcome))
        try:
            bodies.append(outcome_encode(TickOutcome(execution, hub.project_id, run.status, run.error,
                                                     run.started_at, run.finished_at, run.killed_by)))
        except CodecError as exc:  # a script's value no JSON encoder takes: that run fails, the others go on
            run.status, run.error, run.values_count = RunStatus.FAILED, str(exc), 0
            bodies.append(outcome_encode(TickOutcome(execution._replace(values=[], size=0), hub.project_id,
                                                     run.status, run.error, run.started_at, run.finished_at)))
    try:
        log_append(stream=EXECUTIONS, bodies=bodies, deadline_s=settings.HUBSCHED_LOG_APPEND_DEADLINE_S)
        return True
    except LogError as exc:
        logger.error("log: %d outcomes not appended (%s); recorded as failed", len(bodies), exc.message)
        for run, _lag in runs:
            run.status, run.values_count = RunStatus.FAILED, 0
            run.error = f"not stored: the log refused the append: {exc.message}"
        group_runs_record(runs=runs)
        return False


def _sinks_write_now(outcomes) -> None:
    """Write the good outcomes' values to their projects' sinks now (run now); a sink that fails is logged
    and left to its forwarder, which reads the same values from the log (the writes are idempotent)."""
    from scripts_engine.sinks import ExecutionValues, SinkError, sink_targets_for_projects, sinks_write

    good = [o for o in outcomes if not o.error]
    targets = sink_targets_for_projects(project_ids={o.group.hub.project_id for o in good})
    for project_id, project_targets in targets.items():
        executions = [ExecutionValues(o.scheduled_for, o.group.hub.project.name, o.group.hub.name, o.group.pk,
                                      o.group.name, o.read, o.read_bytes, _served_by(o))
                      for o in good if o.group.hub.project_id == project_id]
        try:
            sinks_write(targets=project_targets, executions=executions)
        except SinkError as exc:
            logger.warning("run now: %s; the sink's forwarder stores these values from the log", exc.message)


def ticks_untaken_log(*, untaken: list[tuple[int, float, str]]) -> None:
    """Append a ``skipped``, ``missed`` (or, after a fault outside the groups' runs, ``failed``) record for each
    ``(group_id, scheduled_for epoch s, status)`` of a batch that did not run them (``groups.scheduler.dispatch``), so that every due tick has its one
    outcome (the run recorder counts them). Should the log refuse them, they are counted here instead."""
    from datetime import timezone as dt_timezone

    from django.conf import settings

    from scripts_engine.sinks import ExecutionValues
    from streams.codec import TickOutcome, outcome_encode
    from streams.log import EXECUTIONS, LogError
    from streams.services import log_append

    from .definitions import definitions

    if not untaken:
        return
    groups = definitions().groups({gid for gid, _, _ in untaken})
    bodies = []
    for gid, t, status in untaken:
        group = groups.get(gid)
        hub = group.hub if group is not None else None
        tick = datetime.fromtimestamp(t, dt_timezone.utc)
        execution = ExecutionValues(tick, hub.project.name if hub else "", hub.name if hub else "", gid,
                                    group.name if group else "", [])
        error = "internal error in the batch: see the worker's log" if status == RunStatus.FAILED else ""
        bodies.append(outcome_encode(TickOutcome(execution, hub.project_id if hub else None, status, error)))
    try:
        log_append(stream=EXECUTIONS, bodies=bodies, deadline_s=settings.HUBSCHED_LOG_APPEND_DEADLINE_S)
    except LogError as exc:
        logger.error("log: %d skipped/missed ticks not appended (%s); recorded here", len(bodies), exc.message)
        now = timezone.now()
        group_runs_record(runs=[(GroupRun(group_id=gid, scheduled_for=datetime.fromtimestamp(t, dt_timezone.utc),
                                          status=status, finished_at=now, error="internal error" if status == RunStatus.FAILED else ""), 0)
                                for gid, t, status in untaken])


def _runs_of(outcomes) -> list[tuple[GroupRun, int]]:
    """(GroupRun, lag in ms) of each outcome; logs the failed ones."""
    records = []
    for outcome in outcomes:
        error = outcome.error
        if error:
            # Masked here, where a run's error is recorded (the log's record, GroupRun.error, GroupStats.last_error,
            # the log lines), as well as at its source (hubs/client.py, the sinks): a URL's password or token, the hub's key.
            error = text_mask(error, secrets=(outcome.group.hub.api_key,))
            logger.warning("group %s (%s/%s) failed: %s", outcome.group.pk, outcome.group.hub.name,
                           outcome.group.name, error)
        run = GroupRun(
            group_id=outcome.group.pk,
            scheduled_for=outcome.scheduled_for,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            status=RunStatus.KILLED if outcome.killed_by else RunStatus.FAILED if error else RunStatus.OK,
            error=error,
            values_count=0 if error else outcome.values,
            killed_by=outcome.killed_by,
        )
        lag_ms = max(0, int((outcome.started_at - outcome.scheduled_for).total_seconds() * 1000))
        records.append((run, lag_ms))
    return records


DEDUPE_CHUNK = 500  # group ids per SELECT of the runs already recorded (SQLite's bound-parameter limit is 999)


def group_runs_record(*, runs: list[tuple[GroupRun, int]]) -> list[tuple[GroupRun, int]]:
    """Store finished tick outcomes ``[(GroupRun, lag_ms)]`` and add them to their groups' counters, in one
    transaction; returns those stored.

    One outcome per tick (the unique ``(group, scheduled_for)``): a run whose tick already has one
    (recorded by run now, or before a redelivery) is left out, as is a second of the same tick in
    ``runs`` and the runs of groups deleted meanwhile. The GroupRuns are unsaved instances with aware
    datetimes; they are written by multi-row INSERTs of plain tuples (``_group_runs_insert``) and get
    their ``pk`` where the backend returns it, as ``bulk_create`` would. Each group's runs are summed
    (``RunTotals``: counts by outcome, values, lag, latest tick and status, last error) and added to its
    GroupStats row by ``group_stats_add_runs``: increments in SQL, so concurrent writers add up. A
    concurrent writer of the same tick (run now against the run recorder) makes the transaction fail
    on the constraint: it is tried again, up to 3 times. Raises the database's errors.
    """
    from django.db import IntegrityError

    for attempt in range(3):
        try:
            with transaction.atomic(using=router.db_for_write(GroupRun)):
                return _group_runs_record(runs)
        except IntegrityError:
            if attempt == 2:
                raise
    return []


def _group_runs_record(runs: list[tuple[GroupRun, int]]) -> list[tuple[GroupRun, int]]:
    if not runs:
        return []
    alive, _statements = _groups_alive({run.group_id for run, _ in runs})
    present = _runs_present([run for run, _ in runs if run.group_id in alive])
    fresh = []
    for run, lag in runs:
        key = (run.group_id, run.scheduled_for)
        if run.group_id in alive and key not in present:
            present.add(key)
            fresh.append((run, lag))
    _group_runs_insert([run for run, _ in fresh])
    totals: dict[int, RunTotals] = {}
    for run, lag in fresh:
        group_totals = totals.get(run.group_id)
        if group_totals is None:
            group_totals = totals[run.group_id] = RunTotals()
        group_totals.add(scheduled_for=run.scheduled_for, status=run.status, error=run.error,
                         values=run.values_count, lag_ms=lag)
    group_stats_add_runs(totals=totals)
    return fresh


def _runs_present(runs: list[GroupRun]) -> set[tuple[int, datetime]]:
    """The ``(group_id, scheduled_for)`` of ``runs`` that already have a GroupRun: one SELECT per chunk of
    groups, over the runs' range of ticks (the unique index serves it)."""
    if not runs:
        return set()
    low = min(run.scheduled_for for run in runs)
    high = max(run.scheduled_for for run in runs)
    gids = sorted({run.group_id for run in runs})
    present: set[tuple[int, datetime]] = set()
    for start in range(0, len(gids), DEDUPE_CHUNK):
        present.update(GroupRun.objects.filter(group_id__in=gids[start : start + DEDUPE_CHUNK],
                                               scheduled_for__gte=low, scheduled_for__lte=high)
                       .values_list("group_id", "scheduled_for"))
    return present


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
KILLED_RUN_FIELDS = (*RUN_FIELDS, "killed_by")  # only when a run was killed: more rows fit a statement without it
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
    killed = any(run.killed_by for run in runs)
    fields = KILLED_RUN_FIELDS if killed else RUN_FIELDS
    insert = (f"INSERT INTO {ops.quote_name(meta.db_table)} "
              f"({', '.join(ops.quote_name(meta.get_field(name).column) for name in fields)}) VALUES ")
    suffix = f" {ops.return_insert_columns([meta.pk])[0]}" if returning else ""
    row = f"({', '.join(['%s'] * len(fields))})"
    size = RUN_ROWS
    if connection.features.max_query_params:
        size = max(1, min(size, connection.features.max_query_params // len(fields)))
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
                if killed:
                    params.append(run.killed_by)
            cursor.execute(f"{insert}{', '.join([row] * len(chunk))}{suffix}", params)
            statements += 1
            if returning:
                for run, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
                    run.pk = pk
                    run._state.adding, run._state.db = False, connection.alias
    return statements
