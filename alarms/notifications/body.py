"""The documented JSON body of a notification (webhook POST; the e-mail is its plain-text rendering).

Shape (docs/alarms.md, "Notifications")::

    {"version": "1", "route": str, "project": str | null, "status": "firing" | "resolved" | "test",
     "alarms": [{"id": int, "state": str, "severity": str, "message": str, "kind": str, "subject": str,
                 "transition": str, "raised_at": iso8601, "cleared_at": iso8601 | null, "values": {...},
                 "url": str}],
     "counts": {"critical": int, "high": int, "medium": int, "low": int}, "total": int, "truncated": int,
     "sent_at": iso8601}

The list is bounded: the first ``ALARMS_MAX`` alarms in full; ``counts`` and ``total`` cover all of them and
``truncated`` says how many were left out of the list.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

ALARMS_MAX = 100
SEVERITIES = ("critical", "high", "medium", "low")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def alarm_url(alarm_id: int) -> str:
    """Where an operator sees the alarm: ``HUBSCHED_BASE_URL`` (if set) + the API's alarm path."""
    base = getattr(settings, "HUBSCHED_BASE_URL", "") or ""
    return f"{base.rstrip('/')}/api/v1/alarms/{alarm_id}"


def body_build(*, route, items: list[tuple], now: datetime, test: bool = False) -> dict:
    """The body of one message: ``items`` is ``[(alarm, transition), ...]`` in order of transition.
    ``status`` is "resolved" when every item is a clear, "test" for the test button, else "firing"."""
    counts = {s: 0 for s in SEVERITIES}
    for alarm, _ in items:
        counts[alarm.severity] = counts.get(alarm.severity, 0) + 1
    if test:
        status = "test"
    elif items and all(t == "cleared" for _, t in items):
        status = "resolved"
    else:
        status = "firing"
    alarms = [{"id": a.id, "state": a.state, "severity": a.severity, "message": a.message, "kind": a.kind,
               "subject": a.subject, "transition": t, "raised_at": _iso(a.raised_at),
               "cleared_at": _iso(a.cleared_at), "values": a.values, "url": alarm_url(a.id)}
              for a, t in items[:ALARMS_MAX]]
    return {"version": "1", "route": route.name, "project": route.project.name if route.project_id else None,
            "status": status, "alarms": alarms, "counts": counts, "total": len(items),
            "truncated": max(0, len(items) - ALARMS_MAX), "sent_at": now.isoformat()}


def email_subject(body: dict) -> str:
    """``[hubsched] 3 alarms: 2 high, 1 low — project plant`` (``resolved``/``test`` said when so)."""
    total = body["total"]
    parts = ", ".join(f"{n} {s}" for s, n in body["counts"].items() if n)
    word = "alarm" if total == 1 else "alarms"
    head = {"resolved": f"{total} {word} cleared", "test": "test message"}.get(body["status"], f"{total} {word}")
    return f"[hubsched] {head}{': ' + parts if parts else ''} — project {body['project']}"


def email_text(body: dict) -> str:
    """The plain-text e-mail: one paragraph per alarm, then what was left out."""
    lines = [f"Route {body['route']}, project {body['project']}, {body['status']}, sent at {body['sent_at']}.", ""]
    if body["status"] == "test":
        lines.append("This is a test message from hubsched: the route works.")
    for a in body["alarms"]:
        lines.append(f"[{a['severity']}] {a['message']} ({a['transition']}, {a['state']})")
        lines.append(f"  kind {a['kind']} {a['subject']}, raised at {a['raised_at']}"
                     + (f", cleared at {a['cleared_at']}" if a["cleared_at"] else ""))
        lines.append(f"  {a['url']}")
    if body["truncated"]:
        lines.append("")
        lines.append(f"... and {body['truncated']} more (of {body['total']}).")
    return "\n".join(lines) + "\n"
