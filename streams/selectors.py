"""Reads for the durable log: its state and its consumers' for /api/status, the admin and the status line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from hubsched.secrets import text_mask, url_mask

from .log import EXECUTIONS, LogError, log
from .models import Forwarder, ForwarderState

STALE_REPORTS = 3  # a leader that has not reported for this many HUBSCHED_FORWARDER_REPORT_S is taken as gone


def _iso(value) -> str | None:
    return timezone.localtime(value, dt_timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def forwarders_wanted() -> set[str] | None:
    """The names of the consumers the configuration asks for now (``streams.forwarding.process``), or None
    when they cannot be told (then every row is taken as wanted)."""
    from streams.forwarding.process import consumers_wanted

    try:
        return set(consumers_wanted())
    except Exception:  # noqa: BLE001 - a status read never fails on this; rows are then all judged
        return None


def forwarder_alarms(forwarder: Forwarder, *, now: datetime | None = None) -> list[str]:
    """Why ``forwarder`` needs a person's eye, as short texts; empty when all is well.

    - its backlog at or past HUBSCHED_LOG_BACKLOG_ALARM_PERCENT of the log's retention (issue 12: values
      are dropped once it reaches 100 %);
    - records dropped by retention before it read them (lost to its sink);
    - a state other than running (retrying: the database refuses connections or writes; standby or
      stopped: no process leads it);
    - no report for STALE_REPORTS x HUBSCHED_FORWARDER_REPORT_S, or none ever: no ``manage.py forward``
      leads it (a process killed leaves its last state, running, behind).
    """
    now = now or timezone.now()
    reasons = []
    threshold = settings.HUBSCHED_LOG_BACKLOG_ALARM_PERCENT
    if forwarder.backlog_percent >= threshold:
        reasons.append(f"backlog at {forwarder.backlog_percent:.1f} % of retention (alarm at {threshold:g} %)")
    if forwarder.dropped_records:
        reasons.append(f"{forwarder.dropped_records} records dropped by retention before they were forwarded")
    if forwarder.state == ForwarderState.RETRYING:
        error = text_mask(forwarder.last_error)[:300]
        reasons.append("retrying" + (f": {error}" if error else ""))
    elif forwarder.state != ForwarderState.RUNNING:
        reasons.append(f"{forwarder.get_state_display()}: no process leads it")
    stale_after = timedelta(seconds=STALE_REPORTS * settings.HUBSCHED_FORWARDER_REPORT_S)
    if forwarder.reported_at is None:
        reasons.append("never reported: is manage.py forward running?")
    elif now - forwarder.reported_at > stale_after:
        reasons.append(f"no report since {_iso(forwarder.reported_at)} (stale: is manage.py forward running?)")
    return reasons


def _log_backend(url: str) -> str:
    if url.startswith("rabbitmq-stream://"):
        return "rabbitmq-streams"
    if not url or url.startswith("sqlite:"):
        return "sqlite"
    return "unknown"


def _stats_dict(stats) -> dict[str, Any]:
    return {
        "first_offset": stats.first_offset, "last_offset": stats.last_offset, "records": stats.records,
        "records_exact": stats.records_exact, "bytes": stats.bytes, "first_time": _iso(stats.first_time),
        "last_time": _iso(stats.last_time), "fill_percent": stats.fill_percent,
        "retention": {"max_age_s": stats.retention.max_age_s, "max_bytes": stats.retention.max_bytes},
    }


def log_status() -> dict[str, Any]:
    """The log and its consumers, for ``/api/status`` (under ``"log"``). Never raises for the log: a log
    that cannot be reached is said in ``reachable``/``error`` and in ``alarms``; raises Django database
    errors only (the forwarder rows' database away).

    ``{"backend": "sqlite" | "rabbitmq-streams" | "unknown", "url": masked HUBSCHED_LOG_URL ("" = embedded),
    "reachable": bool, "error": masked text | None,
    "streams": {name: {"first_offset", "last_offset", "records", "records_exact", "bytes" (None on RabbitMQ),
    "first_time", "last_time", "fill_percent", "retention": {"max_age_s", "max_bytes"}}} (only streams read),
    "forwarders": [{"name", "kind", "sink_id", "stream", "wanted", "state", "owner", "lease_until", "position",
    "committed_at", "lag_records", "lag_values", "lag_seconds", "backlog_percent", "executions_total",
    "values_total", "records_in_rate", "records_out_rate", "dropped", "quarantined", "last_error" (masked),
    "reported_at", "alarm": bool, "alarm_reasons": [text]}],
    "lag_records": sum over wanted forwarders, "quarantined": total, "dropped": total,
    "alarms": ["<forwarder>: <reason>" | "log: <error>"]}``.

    Times RFC 3339 UTC; rates records/s; ``lag_seconds`` seconds. A forwarder the configuration no longer
    asks for (its sink disabled; the default sink while every project has its own) is listed with
    ``wanted`` false and raises no alarm. Its numbers are what its leader last reported (every
    HUBSCHED_FORWARDER_REPORT_S): ``alarm_reasons`` (``forwarder_alarms``) says when that is stale.
    """
    url = settings.HUBSCHED_LOG_URL or ""
    status: dict[str, Any] = {"backend": _log_backend(url), "url": url_mask(url), "reachable": True, "error": None,
                              "streams": {}, "forwarders": [], "alarms": []}
    rows = list(Forwarder.objects.annotate(_quarantined=Count("quarantine")).order_by("name"))
    streams = sorted({EXECUTIONS} | {row.stream for row in rows})
    for stream in streams:
        try:
            status["streams"][stream] = _stats_dict(log().stats(stream))
        except Exception as exc:  # noqa: BLE001 - LogError mostly; whatever it is, the status still answers
            message = exc.message if isinstance(exc, LogError) else f"{type(exc).__name__}: {exc}"
            status["reachable"], status["error"] = False, text_mask(message)[:500]
            status["alarms"].append(f"log: unreachable: {status['error']}")
            break  # the same server for every stream: do not wait for it once per stream
    wanted = forwarders_wanted()
    now = timezone.now()
    for row in rows:
        is_wanted = wanted is None or row.name in wanted
        reasons = forwarder_alarms(row, now=now) if is_wanted else []
        status["forwarders"].append({
            "name": row.name, "kind": row.kind, "sink_id": row.sink_id, "stream": row.stream, "wanted": is_wanted,
            "state": row.state, "owner": row.owner, "lease_until": _iso(row.lease_until), "position": row.position,
            "committed_at": _iso(row.committed_at), "lag_records": row.lag_records, "lag_values": row.lag_values,
            "lag_seconds": row.lag_seconds, "backlog_percent": row.backlog_percent,
            "executions_total": row.executions_total, "values_total": row.values_total,
            "records_in_rate": row.records_in_rate, "records_out_rate": row.records_out_rate,
            "dropped": row.dropped_records, "quarantined": row._quarantined,
            "last_error": text_mask(row.last_error) or None, "reported_at": _iso(row.reported_at),
            "alarm": bool(reasons), "alarm_reasons": reasons,
        })
        status["alarms"] += [f"{row.name}: {reason}" for reason in reasons]
    status["lag_records"] = sum(f["lag_records"] or 0 for f in status["forwarders"] if f["wanted"])
    status["quarantined"] = sum(f["quarantined"] for f in status["forwarders"])
    status["dropped"] = sum(f["dropped"] for f in status["forwarders"])
    return status


def log_status_line(status: dict[str, Any]) -> str:
    """``log_status()`` in a few words for the ``make run`` status line:
    ``log: lag 12 rec, 0 quarantined`` (+ ``, N dropped``, ``, N alarms``, or ``log: unreachable``)."""
    if not status["reachable"]:
        head = "log: unreachable"
    else:
        head = f"log: lag {status['lag_records']} rec"
    line = f"{head}, {status['quarantined']} quarantined"
    if status["dropped"]:
        line += f", {status['dropped']} dropped"
    alarms = len(status["alarms"]) - (0 if status["reachable"] else 1)
    if alarms:
        line += f", {alarms} alarm{'s' if alarms != 1 else ''}"
    return line
