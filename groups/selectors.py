"""Reads for groups: the status summary served at /api/status."""

from __future__ import annotations

from datetime import timezone as dt_timezone
from typing import Any

from django.db.models import Sum
from django.utils import timezone

from hubsched.secrets import text_mask
from streams.selectors import log_status

from .models import Group, GroupStats


def _iso(value) -> str | None:
    return timezone.localtime(value, dt_timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def status_summary() -> dict[str, Any]:
    """``{"values_acquired": N, "beat": beat_status(), "log": streams.selectors.log_status(), "redundancy":
    redundancy_status(), "groups": [{"id", "name", "hub", "project", "trigger", "enabled", "last_run_at",
    "last_status", "last_error", "runs", "values", "dispatched", "started", "done", "failed", "skipped",
    "missed", "killed", "lag_ms_mean"}]}``; times are RFC 3339 UTC, ``runs`` counts finished executions.
    ``values_acquired`` sums the groups' values, durable in the log once counted (the sinks' own progress is
    under ``log``: each forwarder's position, lag and alarms). ``last_error`` is masked (``hubsched.secrets.text_mask``: URLs without passwords or secret query
    values, the hub's key as ``***``), whoever asks."""
    groups = []
    for group in Group.objects.select_related("hub__project", "stats").order_by("hub__project__name", "hub__name", "name"):
        stats = getattr(group, "stats", None) or GroupStats(group=group)
        groups.append(
            {
                "id": group.pk,
                "name": group.name,
                "hub": group.hub.name,
                "project": group.hub.project.name,
                "trigger": group.trigger,
                "enabled": group.enabled,
                "last_run_at": _iso(stats.last_run_at),
                "last_status": stats.last_status or None,
                # masked where the run was recorded too; again here, for errors recorded before that
                "last_error": text_mask(stats.last_error, secrets=(group.hub.api_key,)) if stats.last_error else None,
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
    """The leading beat (``groups.scheduler.leader.beat_leader``: owner, epoch, since, lease_until as RFC 3339),
    None while no beat leads, ``{"error": ...}`` when the lease store does not answer."""
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

    return {**leader, "since": at(leader.get("since")), "lease_until": at(leader.get("lease_until"))}
