"""System alarms, built in: what hubsched itself knows to be wrong, checked every ``HUBSCHED_ALARMS_CHECK_S`` seconds by
``python manage.py alarms`` (``SystemChecks.run``), raised and cleared through the alarms' lifecycle like rule alarms.

| kind | subject | raised while | setting |
|---|---|---|---|
| ``group_failing`` | ``group:<id>`` | the group's latest N runs all failed | ``HUBSCHED_ALARM_GROUP_FAILURES`` (10) |
| ``ticks_missed`` | ``hub:<id>`` | missed + skipped ticks of the hub's groups since the last check exceed a share of those dispatched | ``HUBSCHED_ALARM_MISSED_RATIO`` (0.1) |
| ``hub_unreachable`` | ``hub:<id>`` | an enabled hub with enabled groups has not answered getInfo/ping for N seconds | ``HUBSCHED_ALARM_HUB_UNREACHABLE_S`` (60) |
| ``sink_backlog`` | ``sink:<id>`` / ``forwarder:<name>`` | a wanted forwarder lags its stream by more than N seconds | ``HUBSCHED_ALARM_SINK_BACKLOG_S`` (60) |
| ``no_beat_leader`` | ``beat`` | no beat holds the lead (Redis lease, or the embedded lock file) | |
| ``redundancy_disagree`` | ``redundancy_set:<id>`` | a parallel redundancy set recorded a disagreement since the last check | |
| ``quarantine_not_empty`` | ``forwarder:<name>`` | executions wait in a forwarder's quarantine | |

(``job_failed`` alarms are raised by the jobs' worker when a run fails and cleared by the job's next ok run:
``jobs.execution.job_failure_alert``.) Each check is one or two aggregate queries (the hub probe one getInfo per hub);
one failing check is logged and the others still run. The state between checks (counter snapshots, when a hub first
failed) is the process's: a restarted checker starts those timers again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings

logger = logging.getLogger(__name__)

KINDS = ("group_failing", "ticks_missed", "hub_unreachable", "sink_backlog", "no_beat_leader", "redundancy_disagree",
         "quarantine_not_empty")
MISSED_MIN = 10  # missed + skipped ticks below this in one check raise nothing, whatever the share


@dataclass(frozen=True)
class Finding:
    """Something wrong now: the alarm ``kind`` of ``subject`` should be open, with this message and these values."""

    kind: str
    subject: str
    project_id: int | None
    severity: str
    message: str
    values: dict = field(default_factory=dict)


class SystemChecks:
    """The system alarms' checks and the state they keep between runs (see the module docstring)."""

    def __init__(self, *, clock=time.time):
        self.clock = clock
        self._counters: dict[int, tuple[int, int]] | None = None  # hub -> (dispatched, missed + skipped)
        self._hub_down_since: dict[int, float] = {}
        self._redundancy_seen: int | None = None  # the latest RedundancyEvent id seen

    def run(self) -> dict[str, int]:
        """Run every check, raise what is found and clear what no longer is; returns ``{kind: alarms open}``."""
        out = {}
        for kind in KINDS:
            try:
                findings = getattr(self, kind)()
            except Exception:
                logger.exception("system alarm check %s failed; its alarms are left as they are", kind)
                continue
            if findings is None:  # the check could not tell this time (a first snapshot)
                continue
            out[kind] = alarms_apply(kind=kind, findings=findings)
        return out

    # --- the checks: each returns the Findings of its kind now, or None when it cannot tell yet ----------------------

    def group_failing(self) -> list[Finding]:
        from groups.models import Group, GroupRun, GroupStats

        n = settings.HUBSCHED_ALARM_GROUP_FAILURES
        found = []
        suspects = GroupStats.objects.filter(last_status="failed").values_list("group_id", flat=True)[:10_000]
        for gid in suspects:
            statuses = list(GroupRun.objects.filter(group_id=gid).order_by("-scheduled_for")
                            .values_list("status", flat=True)[:n])
            if len(statuses) == n and all(s == "failed" for s in statuses):
                group = Group.objects.select_related("hub", "stats").filter(pk=gid).first()
                if group is None:
                    continue
                found.append(Finding(
                    "group_failing", f"group:{gid}", group.hub.project_id, "high",
                    f"group {group.name} (hub {group.hub.name}) failed its last {n} executions: {group.stats.last_error[:300]}",
                    {"failures_in_row": n, "last_error": group.stats.last_error[:1000]}))
        return found

    def ticks_missed(self) -> list[Finding] | None:
        from django.db.models import Sum

        from groups.models import GroupStats
        from hubs.models import Hub

        rows = (GroupStats.objects.values("group__hub_id")
                .annotate(d=Sum("dispatched"), m=Sum("missed"), s=Sum("skipped")))
        now = {r["group__hub_id"]: (r["d"] or 0, (r["m"] or 0) + (r["s"] or 0)) for r in rows}
        before, self._counters = self._counters, now
        if before is None:
            return None
        ratio = settings.HUBSCHED_ALARM_MISSED_RATIO
        found = []
        hubs = {h.pk: h for h in Hub.objects.filter(pk__in=list(now))}
        for hub_id, (dispatched, lost) in now.items():
            d0, l0 = before.get(hub_id, (0, 0))
            sent, untaken = max(0, dispatched - d0), max(0, lost - l0)
            if untaken >= MISSED_MIN and untaken > ratio * max(sent, 1) and hub_id in hubs:
                hub = hubs[hub_id]
                found.append(Finding(
                    "ticks_missed", f"hub:{hub_id}", hub.project_id, "medium",
                    f"hub {hub.name}: {untaken} ticks missed or skipped of {sent} dispatched since the last check",
                    {"missed_or_skipped": untaken, "dispatched": sent}))
        return found

    def hub_unreachable(self) -> list[Finding]:
        from hubs.models import Hub
        from hubs.services import hub_connection_test

        now = self.clock()
        after = settings.HUBSCHED_ALARM_HUB_UNREACHABLE_S
        found = []
        hubs = list(Hub.objects.enabled().filter(groups__enabled=True).distinct())
        for hub in hubs:
            report = hub_connection_test(hub=hub)
            if report.ok:
                self._hub_down_since.pop(hub.pk, None)
                continue
            since = self._hub_down_since.setdefault(hub.pk, now)
            if now - since >= after:
                found.append(Finding(
                    "hub_unreachable", f"hub:{hub.pk}", hub.project_id, "high",
                    f"hub {hub.name} has not answered for {now - since:.0f} s: {report.error[:300]}",
                    {"down_s": round(now - since, 1), "error": report.error[:1000]}))
        alive = {hub.pk for hub in hubs}
        for pk in [pk for pk in self._hub_down_since if pk not in alive]:
            del self._hub_down_since[pk]
        return found

    def sink_backlog(self) -> list[Finding]:
        from scripts_engine.models import Sink
        from streams.selectors import log_status

        limit = settings.HUBSCHED_ALARM_SINK_BACKLOG_S
        found = []
        projects = dict(Sink.objects.values_list("pk", "project_id"))
        for fw in log_status()["forwarders"]:
            lag = fw.get("lag_seconds")
            if fw.get("wanted") and lag is not None and lag > limit:
                subject = f"sink:{fw['sink_id']}" if fw.get("sink_id") else f"forwarder:{fw['name']}"
                found.append(Finding(
                    "sink_backlog", subject, projects.get(fw.get("sink_id")), "high",
                    f"{fw['name']} is {lag:.0f} s behind the log ({fw.get('lag_values') or 0} values waiting)",
                    {"lag_seconds": lag, "lag_values": fw.get("lag_values"), "lag_records": fw.get("lag_records")}))
        return found

    def no_beat_leader(self) -> list[Finding]:
        from groups.selectors import beat_status

        status = beat_status()
        if status is not None and not status.get("error"):
            return []
        why = status["error"] if status else "no beat holds the lead"
        return [Finding("no_beat_leader", "beat", None, "critical",
                        f"no beat leads ({why}): no group or job is being scheduled", {"reason": why})]

    def redundancy_disagree(self) -> list[Finding] | None:
        from hubs.models import RedundancyEvent

        last = RedundancyEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        seen, self._redundancy_seen = self._redundancy_seen, last
        if seen is None:
            return None
        by_set: dict[int, list] = defaultdict(list)
        for event in RedundancyEvent.objects.filter(pk__gt=seen).select_related("redundancy_set").order_by("pk"):
            by_set[event.redundancy_set_id].append(event)
        found = []
        for set_id, events in by_set.items():
            rset = events[0].redundancy_set
            found.append(Finding(
                "redundancy_disagree", f"redundancy_set:{set_id}", rset.project_id, "medium",
                f"redundancy set {rset.name}: its members disagreed {len(events)} times since the last check",
                {"events": len(events), "member": events[-1].member, "entity": events[-1].entity, "key": events[-1].key}))
        return found

    def quarantine_not_empty(self) -> list[Finding]:
        from django.db.models import Count

        from streams.models import Forwarder

        found = []
        for fw in Forwarder.objects.annotate(n=Count("quarantine")).filter(n__gt=0):
            found.append(Finding(
                "quarantine_not_empty", f"forwarder:{fw.name}", None, "medium",
                f"{fw.n} executions wait in the quarantine of {fw.name}: retry or delete them (admin, streams)",
                {"quarantined": fw.n}))
        return found


def alarms_apply(*, kind: str, findings: list[Finding]) -> int:
    """Raise an alarm for each finding (already open: its values are kept as they are) and clear the open system
    alarms of ``kind`` no finding names any more; returns how many are open."""
    from .models import Alarm
    from .services import alarm_clear, alarm_raise

    subjects = set()
    for f in findings:
        subjects.add(f.subject)
        alarm_raise(project_id=f.project_id, source="system", kind=f.kind, subject=f.subject, severity=f.severity,
                    message=f.message, values=f.values)
    for alarm in Alarm.objects.filter(source="system", kind=kind).exclude(state="cleared"):
        if alarm.subject not in subjects:
            alarm_clear(alarm=alarm, values={"cleared_by": "system check"})
    return len(subjects)
