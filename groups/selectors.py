"""Reads for groups: the status summary (``/api/v1/status``, alias ``/api/status``) and the scheduler's plan (``/api/v1/scheduler``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timezone as dt_timezone
from typing import Any

from django.db.models import Sum
from django.utils import timezone

from hubsched.secrets import text_mask
from streams.selectors import log_status

from .models import Group, GroupRun, GroupStats, RunStatus


def _iso(value) -> str | None:
    return timezone.localtime(value, dt_timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def status_summary() -> dict[str, Any]:
    """``{"values_acquired": N, "beat": beat_status(), "log": streams.selectors.log_status(), "redundancy":
    redundancy_status(), "groups": [{"id", "name", "hub", "hub_id", "project", "project_id", "trigger", "enabled",
    "last_run_at", "last_status", "last_error", "last_error_at", "previous_error", "runs", "values", "dispatched",
    "started", "done", "failed", "skipped", "missed", "killed", "lag_ms_mean"}]}``; times are RFC 3339 UTC,
    ``runs`` counts finished executions.
    ``last_error`` is the error still standing: null once the group's latest run is ok (it ran ok again since);
    ``last_error_at`` the tick of that failed run; the error an ok run has since cleared stays visible,
    marked old, as ``previous_error`` (null when there is none). A latest tick skipped or missed clears nothing.
    ``values_acquired`` sums the groups' values, durable in the log once counted (the sinks' own progress is
    under ``log``: each forwarder's position, lag and alarms). ``last_error`` is masked (``hubsched.secrets.text_mask``: URLs without passwords or secret query
    values, the hub's key as ``***``), whoever asks."""
    groups = []
    rows = list(Group.objects.select_related("hub__project", "stats").order_by("hub__project__name", "hub__name", "name"))
    error_ticks = _last_error_ticks(rows)
    for group in rows:
        stats = getattr(group, "stats", None) or GroupStats(group=group)
        # masked where the run was recorded too; again here, for errors recorded before that
        error = text_mask(stats.last_error, secrets=(group.hub.api_key,)) if stats.last_error else None
        standing = error if stats.last_status != RunStatus.OK else None
        groups.append(
            {
                "id": group.pk,
                "name": group.name,
                "hub": group.hub.name,
                "hub_id": group.hub_id,
                "project": group.hub.project.name,
                "project_id": group.hub.project_id,
                "trigger": group.trigger,
                "enabled": group.enabled,
                "last_run_at": _iso(stats.last_run_at),
                "last_status": stats.last_status or None,
                "last_error": standing,
                "last_error_at": _iso(error_ticks.get(group.pk)) if standing else None,
                "previous_error": error if standing is None else None,
                "runs": stats.runs,
                "values": stats.values,
                "dispatched": stats.dispatched,
                "started": stats.started,
                "done": stats.done,
                "failed": stats.failed,
                "skipped": stats.skipped,
                "missed": stats.missed,
                "killed": stats.killed,
                "lag_ms_mean": round(stats.lag_ms_mean, 1) if stats.lag_ms_mean is not None else None,
            }
        )
    total = GroupStats.objects.aggregate(total=Sum("values"))["total"] or 0
    return {"values_acquired": total, "beat": beat_status(), "log": log_status(), "redundancy": redundancy_status(),
            "groups": groups}


def _last_error_ticks(groups: list[Group]) -> dict[int, Any]:
    """``{group_id: scheduled_for}`` of the latest failed run of each group whose error still stands.

    A group whose latest run failed: its ``last_run_at``, no query. One query per other group with a standing
    error (its latest ticks were skipped, missed or killed since: those record no error), each reading the runs
    index ``(group, scheduled_for)`` backwards over those ticks only."""
    out = {}
    for group in groups:
        stats = getattr(group, "stats", None)
        if stats is None or not stats.last_error or stats.last_status == RunStatus.OK:
            continue
        if stats.last_status == RunStatus.FAILED:
            out[group.pk] = stats.last_run_at
            continue
        out[group.pk] = (GroupRun.objects.filter(group_id=group.pk, status=RunStatus.FAILED)
                         .order_by("-scheduled_for").values_list("scheduled_for", flat=True).first())
    return out


def redundancy_status() -> dict[str, Any]:
    """``{"open_disagreements": N, "disagreements": [{"set", "master", "member", "entity", "key", "master_value",
    "member_value", "raised_at"}]}``: the parallel redundancy sets' disagreements not cleared yet (at most 50,
    newest first; docs/redundancy.md), times RFC 3339 UTC."""
    from hubs.models import RedundancyEvent

    open_events = RedundancyEvent.objects.filter(cleared_at=None)
    latest = open_events.select_related("redundancy_set").order_by("-raised_at")[:50]
    return {"open_disagreements": open_events.count(),
            "disagreements": [{"set": e.redundancy_set.name, "master": e.master, "member": e.member, "entity": e.entity, "key": e.key,
                               "master_value": e.master_value, "member_value": e.member_value,
                               "raised_at": _iso(e.raised_at)} for e in latest]}


def beat_status() -> dict[str, Any] | None:
    """The leading beat (``groups.scheduler.leader.beat_leader``: owner ``host:pid:tag``, and its ``host`` and
    ``pid`` apart, epoch, since, lease_until as RFC 3339; epoch and lease_until null on the embedded broker's file
    lock), None while no beat leads, ``{"error": ...}`` when the lease store does not answer."""
    from datetime import datetime

    from groups.scheduler.leader import beat_leader

    try:
        leader = beat_leader()
    except Exception:  # noqa: BLE001 - the status page must not fail with the lock store
        return {"error": "the beat lease store (Redis) did not answer"}
    if leader is None:
        return None

    def at(t):
        return _iso(datetime.fromtimestamp(t, dt_timezone.utc)) if t else None

    host, _, rest = str(leader.get("owner") or "").partition(":")
    pid = rest.partition(":")[0]
    return {**leader, "host": host or None, "pid": int(pid) if pid.isdigit() else None,
            "since": at(leader.get("since")), "lease_until": at(leader.get("lease_until"))}


# --- the API's reads -----------------------------------------------------------------------------------


def groups_list(*, project_id: int | None = None, hub_id: int | None = None, enabled: bool | None = None,
                trigger: str | None = None, search: str | None = None, ids: list[int] | None = None):
    """Groups (a QuerySet, ordered by project, hub and name) with their hub, project, script, counters and keys
    (in order) loaded: by ``project_id``, ``hub_id``, ``enabled``, ``trigger``, ``ids``, and ``search`` (part of the
    name, any case). None leaves a filter out."""
    from django.db.models import Prefetch

    from .models import GroupKey

    qs = Group.objects.select_related("hub__project", "stats").prefetch_related(
        Prefetch("keys", queryset=GroupKey.objects.order_by("position", "pk"))
    ).order_by("hub__project__name", "hub__name", "name", "pk")
    return groups_filter(qs, project_id=project_id, hub_id=hub_id, enabled=enabled, trigger=trigger, search=search, ids=ids)


def groups_filter(qs, *, project_id: int | None = None, hub_id: int | None = None, enabled: bool | None = None,
                  trigger: str | None = None, search: str | None = None, ids: list[int] | None = None):
    """``qs`` (of Group) narrowed by the filters of ``groups_list``."""
    if project_id is not None:
        qs = qs.filter(hub__project_id=project_id)
    if hub_id is not None:
        qs = qs.filter(hub_id=hub_id)
    if enabled is not None:
        qs = qs.filter(enabled=enabled)
    if trigger:
        qs = qs.filter(trigger=trigger)
    if search:
        qs = qs.filter(name__icontains=search)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    return qs


def group_runs_list(*, group_id: int, status: str | None = None, since=None, until=None):
    """The GroupRuns of a group, newest tick first (the unique ``(group, scheduled_for)`` index serves it):
    ``status`` one of RunStatus, ``since``/``until`` (aware datetimes) bounding ``scheduled_for``, both
    inclusive. A QuerySet."""
    from .models import GroupRun

    qs = GroupRun.objects.filter(group_id=group_id).order_by("-scheduled_for")
    if status:
        qs = qs.filter(status=status)
    if since is not None:
        qs = qs.filter(scheduled_for__gte=since)
    if until is not None:
        qs = qs.filter(scheduled_for__lte=until)
    return qs


RUN_VALUES_SCAN = 20_000  # log records read at most looking for one run's (about 1 s of 10,000 groups at 1 s)
RUN_VALUES_SLACK_S = 2.0  # the log's record time is its append's, shortly after the run finished


def group_run_values(*, run) -> dict[str, Any] | None:
    """What the durable log holds of ``run`` (a GroupRun): ``{"tick", "status", "error", "values_count",
    "values": [[entity, [{"key", "value", "ts"?, "quality"?}]]], "served_by", "logged_at"}``, the values being
    those stored (after the script and its write-back; entity ``""`` for what the script computed), or None
    when the log no longer keeps it (retention: HUBSCHED_LOG_RETENTION_S) or never had it (a run recorded
    without the log: run now with the log refusing). Reads the stream ``executions`` from the run's finish
    on, at most RUN_VALUES_SCAN records, decoding only the matching one. Raises ``streams.log.LogError``."""
    from datetime import timedelta

    from streams.codec import CodecError, outcome_decode, outcome_header
    from streams.log import EXECUTIONS, log

    tick = run.scheduled_for
    start = (run.finished_at or run.scheduled_for) - timedelta(seconds=RUN_VALUES_SLACK_S)
    source = log()
    scanned, offset = 0, None
    while scanned < RUN_VALUES_SCAN:
        records = source.read(EXECUTIONS, time=start, max_records=1000) if offset is None else \
            source.read(EXECUTIONS, offset=offset, max_records=1000)
        if not records:
            return None
        for record in records:
            scanned += 1
            try:
                header = outcome_header(record.body)
            except CodecError:
                continue
            if header.get("group_id") != run.group_id:
                continue
            try:
                outcome = outcome_decode(record.body)
            except CodecError:
                continue
            if outcome.execution.tick != tick:
                continue
            execution = outcome.execution
            return {"tick": _iso(execution.tick), "status": outcome.status, "error": outcome.error,
                    "values_count": execution.value_count(),
                    "values": [[entity, items] for entity, items in execution.values],
                    "served_by": execution.served_by, "logged_at": _iso(record.timestamp)}
        offset = records[-1].offset + 1
    return None


SCHEDULER_TICKS_MAX = 1000  # tick instants listed at most by scheduler_summary (a 0.1 s group makes 10 a second)


def scheduler_summary(*, within_s: float = 10.0, now: float | None = None) -> dict[str, Any]:
    """What the beat will do next, read from the same triggers it runs (``groups.scheduler.engine``), and how it did::

        {"now": RFC 3339, "within_s": 10.0,
         "next_tick_at": RFC 3339 | None,   # the earliest tick of an active timed group
         "next_wakeup": RFC 3339 | None,    # when beat sends it: the tick less its cohort's lead (HUBSCHED_DISPATCH_LEAD_S)
         "ticks": [{"at": RFC 3339, "groups": N, "hubs": N, "cohorts": ["interval 1 s", ...]}],  # due in (now, now + within_s]
         "ticks_truncated": bool,           # more than SCHEDULER_TICKS_MAX instants fell in the window
         "groups": {"total", "active", "interval", "cron", "once", "on_change"},   # active ones per trigger
         "counters": {"dispatched", "started", "done", "failed", "skipped", "missed", "killed", "values"},  # sums
         "leader": beat_status()}

    ``within_s`` is 0..3600. Active: the group, its hub and its PeriodicTask enabled (``groups.scheduler.source``);
    on-change groups tick on events, so they are counted, not listed. Reads one GROUP BY over the groups (a row per
    trigger setting and hub), not every group. Cohorts whose settings fail to build (TriggerError) are left out.
    """
    import time as _time

    from django.conf import settings
    from django.db.models import Count

    from .scheduler.engine import CRON, INTERVAL, ONCE, GroupSpec, cohort_key_and_trigger, cohort_lead
    from .scheduler.triggers import TriggerError

    now = _time.time() if now is None else now
    end = now + max(0.0, min(3600.0, within_s))
    lead = settings.HUBSCHED_DISPATCH_LEAD_S
    active = (Group.objects.filter(enabled=True, hub__enabled=True).exclude(periodic_task__enabled=False))
    by_trigger = dict(active.values_list("trigger").annotate(n=Count("id")).order_by())
    rows = (active.filter(trigger__in=(INTERVAL, CRON, ONCE))
            .values("trigger", "period", "offset", "cron", "run_at", "hub__project__time_zone", "hub_id")
            .annotate(n=Count("id")).order_by())
    cohorts: dict[Any, dict] = {}
    for row in rows:
        if row["trigger"] == ONCE and (row["run_at"] is None or row["run_at"].timestamp() <= now):
            continue  # past once groups have run (or been missed): nothing more to send
        spec = GroupSpec(id=0, hub_id=row["hub_id"], trigger=row["trigger"], period=row["period"] or 0.0,
                         offset=row["offset"] or 0.0, cron=row["cron"] or "",
                         run_at=row["run_at"].timestamp() if row["run_at"] else None,
                         tz=row["hub__project__time_zone"] or "UTC")
        try:
            key, trigger = cohort_key_and_trigger(spec, now)
        except TriggerError:
            continue
        if row["trigger"] == ONCE:
            key = ("once",)
        cohort = cohorts.setdefault(key, {"trigger": trigger, "hubs": {}, "name": _cohort_name(spec, trigger),
                                          "lead": cohort_lead(trigger, lead)})
        if row["trigger"] == ONCE:
            cohort.setdefault("once", []).append((spec.run_at, row["hub_id"], row["n"]))
        else:
            cohort["hubs"][row["hub_id"]] = cohort["hubs"].get(row["hub_id"], 0) + row["n"]
    instants: dict[float, dict] = {}
    next_tick = next_send = None
    truncated = False
    for cohort in cohorts.values():
        if "once" in cohort:
            for at, hub_id, n in cohort["once"]:
                next_tick, next_send = _earlier(next_tick, next_send, at, at - cohort["lead"])
                if at <= end:
                    truncated |= _add_instant(instants, at, cohort["name"], {hub_id: n})
            continue
        at = cohort["trigger"].next_after(now)
        if at is None:
            continue
        next_tick, next_send = _earlier(next_tick, next_send, at, at - cohort["lead"])
        while at is not None and at <= end and not truncated:
            truncated |= _add_instant(instants, at, cohort["name"], cohort["hubs"])
            at = cohort["trigger"].next_after(at)
    ticks = [{"at": _iso_epoch(at), "groups": sum(i["hubs"].values()), "hubs": len(i["hubs"]), "cohorts": sorted(i["cohorts"])}
             for at, i in sorted(instants.items())][:SCHEDULER_TICKS_MAX]
    sums = GroupStats.objects.aggregate(**{f: Sum(f) for f in
                                           ("dispatched", "started", "done", "failed", "skipped", "missed", "killed", "values")})
    return {
        "now": _iso_epoch(now), "within_s": end - now,
        "next_tick_at": _iso_epoch(next_tick), "next_wakeup": _iso_epoch(max(now, next_send) if next_send else None),
        "ticks": ticks, "ticks_truncated": truncated or len(instants) > SCHEDULER_TICKS_MAX,
        "groups": {"total": Group.objects.count(), "active": sum(by_trigger.values()),
                   **{t: by_trigger.get(t, 0) for t in ("interval", "cron", "once", "on_change")}},
        "counters": {f: v or 0 for f, v in sums.items()},
        "leader": beat_status(),
    }


def _earlier(tick, send, at, at_send):
    return (at if tick is None or at < tick else tick), (at_send if send is None or at_send < send else send)


def _add_instant(instants: dict, at: float, name: str, hubs: dict[int, int]) -> bool:
    """Add ``hubs`` ({hub_id: groups}) of cohort ``name`` at ``at``; True once the listing is full."""
    key = round(at, 6)
    entry = instants.get(key)
    if entry is None:
        if len(instants) >= SCHEDULER_TICKS_MAX:
            return True
        entry = instants[key] = {"hubs": {}, "cohorts": set()}
    for hub_id, n in hubs.items():
        entry["hubs"][hub_id] = entry["hubs"].get(hub_id, 0) + n
    entry["cohorts"].add(name)
    return False


def _cohort_name(spec, trigger) -> str:
    """``interval 1 s``, ``interval 10 s +2.5 s``, ``cron */5 * * * * * Europe/Berlin``, ``once``."""
    if spec.trigger == "interval":
        offset = f" +{spec.offset:g} s" if spec.offset else ""
        return f"interval {trigger.period:g} s{offset}"
    if spec.trigger == "cron":
        return f"cron {trigger.expr} {trigger.tz}"
    return "once"


def _iso_epoch(t: float | None) -> str | None:
    from datetime import datetime

    return _iso(datetime.fromtimestamp(t, dt_timezone.utc)) if t is not None else None


@dataclass
class FireTimes:
    """A group's next ticks as its settings give them (``group_fire_times``): ``times`` aware datetimes in the
    project's time zone; ``offset_changes`` ``[(index, before, after)]``: the UTC offset changes (a daylight-saving
    change) between ``times[index - 1]`` (or now, for index 0) and ``times[index]``, offsets as "+01:00";
    ``cron_words`` the cron expression in words (cron-descriptor), ``""`` for another trigger; ``error``: why no
    time can be given (settings that do not build a trigger), else ``""``; ``note`` for a trigger without times
    (on change)."""

    times: list = field(default_factory=list)
    offset_changes: list = field(default_factory=list)
    cron_words: str = ""
    error: str = ""
    note: str = ""


def _utc_offset(moment) -> str:
    total = int(moment.utcoffset().total_seconds() // 60)
    sign = "+" if total >= 0 else "-"
    return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


def group_fire_times(*, group: Group, time_zone: str, count: int = 5, now: float | None = None) -> FireTimes:
    """The next ``count`` ticks of ``group`` (saved or not: its trigger, period, offset, cron, run_at) after ``now``
    (epoch s, default the clock) in ``time_zone`` (the project's), computed by the scheduler's own triggers
    (groups.scheduler.engine.cohort_key_and_trigger), so they are the ticks the beat will send."""
    import time as _time
    from zoneinfo import ZoneInfo

    from .scheduler.engine import CRON, ON_CHANGE, ONCE, GroupSpec, cohort_key_and_trigger
    from .scheduler.triggers import TriggerError

    now = _time.time() if now is None else now
    out = FireTimes()
    if group.trigger == ON_CHANGE:
        out.note = "an on-change group runs when a value changes beyond its deadband, not at set times"
        return out
    if group.trigger == CRON and group.cron:
        from cron_descriptor import ExpressionDescriptor, Options

        options = Options()
        options.use_24hour_time_format = True
        try:
            out.cron_words = str(ExpressionDescriptor(group.cron, options))
        except Exception:  # cron-descriptor's own errors; the trigger below says what is wrong
            out.cron_words = ""
    spec = GroupSpec(id=group.pk or 0, hub_id=group.hub_id or 0, trigger=group.trigger, period=group.period or 0.0,
                     offset=group.offset or 0.0, cron=group.cron or "",
                     run_at=group.run_at.timestamp() if group.run_at else None, tz=time_zone)
    try:
        zone = ZoneInfo(time_zone)
        _key, trigger = cohort_key_and_trigger(spec, now)
    except (TriggerError, ValueError, KeyError) as exc:
        out.error = str(exc) or "these settings give no schedule"
        return out
    from datetime import datetime as _datetime

    at, previous = now, _utc_offset(_datetime.fromtimestamp(now, zone))
    for index in range(count):
        at = trigger.next_after(at)
        if at is None:
            break
        moment = _datetime.fromtimestamp(at, zone)
        offset = _utc_offset(moment)
        if offset != previous:
            out.offset_changes.append((index, previous, offset))
        previous = offset
        out.times.append(moment)
        if group.trigger == ONCE:
            break
    return out


def group_delete_counts(*, group: Group) -> dict[str, int]:
    """What deleting ``group`` takes with it, ``{"groups.group": 1, "groups.groupkey": 3, "groups.grouprun": 120, ...}``
    (``app_label.model``: rows), as Django's deletion collector finds them; nothing is deleted. Its PeriodicTask
    goes too (``groups.services.groups_delete``)."""
    from django.db import router
    from django.db.models.deletion import Collector

    collector = Collector(using=router.db_for_write(Group))
    collector.collect([group])
    counts: dict[str, int] = {}
    for model, rows in collector.data.items():
        counts[model._meta.label_lower] = counts.get(model._meta.label_lower, 0) + len(rows)
    for queryset in collector.fast_deletes:
        label = queryset.model._meta.label_lower
        counts[label] = counts.get(label, 0) + queryset.count()
    if group.periodic_task_id:
        counts["django_celery_beat.periodictask"] = 1
    return {label: n for label, n in sorted(counts.items()) if n}
