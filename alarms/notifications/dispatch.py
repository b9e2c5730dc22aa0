"""Which routes an alarm goes to, the pending notifications a transition creates, and the sending loop: grouping
(group_wait_s), repeat (repeat_interval_s), retries with backoff, each attempt recorded.

Called by the ``alarms`` management command every second (``notifications_dispatch()``); tests call it with ``now``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from ..models import (Alarm, AlarmSource, AlarmState, Notification, NotificationAttempt, NotificationRoute,
                      NotificationStatus, RouteKind)
from .body import body_build, email_subject, email_text
from .email import EmailError, email_send
from .webhook import WebhookError, webhook_post

logger = logging.getLogger(__name__)

MAX_TRIES = 5  # then the batch is failed: 1 try + 4 retries, 1 s, 2 s, 4 s, 8 s apart
_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
_SENT_TRANSITIONS = {"raised", "reraised", "cleared"}


def _route_takes(route: NotificationRoute, alarm: Alarm) -> bool:
    if not route.enabled or _RANK.get(alarm.severity, 9) > _RANK.get(route.min_severity, 3):
        return False
    if alarm.source == AlarmSource.SYSTEM:
        return route.system_alarms
    return route.all_rules


def routes_for(alarm: Alarm) -> list[NotificationRoute]:
    """The enabled routes ``alarm`` goes to, severity at least their ``min_severity``: the rule's own routes when it
    names some (``AlarmRule.routes``), else the routes of the alarm's project with ``system_alarms`` (system alarms)
    or ``all_rules`` (rule alarms). A site-wide system alarm (no project) goes to every project's routes with
    ``system_alarms``."""
    rule = alarm.rule if alarm.rule_id else None
    if rule is not None:
        candidates = list(rule.routes.filter(enabled=True))
        if candidates:
            return [r for r in candidates if _RANK.get(alarm.severity, 9) <= _RANK.get(r.min_severity, 3)]
    routes = NotificationRoute.objects.enabled().select_related("project")
    if alarm.project_id:
        routes = routes.filter(project_id=alarm.project_id)
    return [r for r in routes if _route_takes(r, alarm)]


def _shelved(alarm: Alarm, now: datetime) -> bool:
    return alarm.shelved_until is not None and alarm.shelved_until > now


def notifications_on_transition(sender, *, alarm: Alarm, transition: str, **kwargs) -> None:
    """The ``alarm_transition`` receiver: one pending notification per route that takes it. Sent: raised,
    reraised, and cleared (routes with ``send_cleared``); a shelved alarm's raise is not sent."""
    if transition not in _SENT_TRANSITIONS:
        return
    now = timezone.now()
    if transition != "cleared" and _shelved(alarm, now):
        return
    rows = [Notification(route=route, alarm=alarm, transition=transition, created_at=now)
            for route in routes_for(alarm) if transition != "cleared" or route.send_cleared]
    Notification.objects.bulk_create(rows)


def repeats_create(*, now: datetime) -> int:
    """A "repeat" notification for each active, unacknowledged, unshelved alarm whose latest notification on a
    route is older than the route's ``repeat_interval_s`` (and none is pending). Returns how many were made."""
    made = []
    for route in NotificationRoute.objects.enabled().select_related("project"):
        cutoff = now - timedelta(seconds=route.repeat_interval_s)
        alarms = (Alarm.objects.filter(state=AlarmState.ACTIVE).unshelved(now=now)
                  .filter(notifications__route=route)
                  .annotate(last=Max("notifications__created_at", filter=Q(notifications__route=route)))
                  .filter(last__lt=cutoff)
                  .exclude(id__in=Notification.objects.filter(route=route, status=NotificationStatus.PENDING)
                           .values("alarm_id")))
        made += [Notification(route=route, alarm=a, transition="repeat", created_at=now)
                 for a in alarms if _route_takes(route, a) or (a.rule_id and hasattr(a.rule, "routes"))]
    Notification.objects.bulk_create(made)
    return len(made)


def _deliver(route: NotificationRoute, body: dict) -> int | None:
    """Send one message; the HTTP status for webhooks. Raises ``WebhookError`` / ``EmailError``."""
    if route.kind == RouteKind.WEBHOOK:
        return webhook_post(url=route.webhook_url, body=body, headers=route.headers())
    to = [a.strip() for a in route.email_to.split(",") if a.strip()]
    email_send(to=to, subject=email_subject(body), text=email_text(body))
    return None


def _attempt(route, *, batch, number, body, now, test=False) -> NotificationAttempt:
    try:
        status, ok, error = _deliver(route, body), True, ""
    except (WebhookError, EmailError) as exc:
        status, ok, error = getattr(exc, "status", None), False, str(exc)
    final = ok or test or number >= MAX_TRIES  # a test message is tried once
    return NotificationAttempt.objects.create(route=route, batch=batch, number=number, at=now, ok=ok, status=status,
                                              error=error, alarms_count=body["total"], final=final, test=test)


def _route_send(route: NotificationRoute, now: datetime) -> bool:
    """Send the route's due pending notifications as one message; True when a message was tried."""
    with transaction.atomic():
        pending = list(route.notifications.filter(status=NotificationStatus.PENDING)
                       .filter(Q(next_try_at__isnull=True) | Q(next_try_at__lte=now))
                       .select_related("alarm").select_for_update(skip_locked=True, of=("self",))
                       .order_by("created_at", "id"))
        if not pending:
            return False
        retrying = [n for n in pending if n.tries]
        if not retrying and pending[0].created_at > now - timedelta(seconds=route.group_wait_s):
            return False  # still gathering: group_wait_s since the oldest
        shelved = [n.id for n in pending if n.transition != "cleared" and _shelved(n.alarm, now)]
        if shelved:
            Notification.objects.filter(id__in=shelved).update(status=NotificationStatus.SKIPPED)
        pending = [n for n in pending if n.id not in set(shelved)]
        if not pending:
            return False
        batch = next((n.batch for n in retrying if n.batch), None) or uuid.uuid4()
        number = max(n.tries for n in pending) + 1
        body = body_build(route=route, items=[(n.alarm, n.transition) for n in pending], now=now)
        attempt = _attempt(route, batch=batch, number=number, body=body, now=now)
        ids = [n.id for n in pending]
        if attempt.ok:
            Notification.objects.filter(id__in=ids).update(status=NotificationStatus.SENT, sent_at=now, batch=batch,
                                                           tries=number, next_try_at=None)
        elif attempt.final:
            logger.warning("notifications: route %s: batch %s failed after %s attempts: %s", route.id, batch, number,
                           attempt.error)
            Notification.objects.filter(id__in=ids).update(status=NotificationStatus.FAILED, batch=batch,
                                                           tries=number, next_try_at=None)
        else:
            Notification.objects.filter(id__in=ids).update(
                batch=batch, tries=number, next_try_at=now + timedelta(seconds=2 ** (number - 1)))
    return True


def notifications_dispatch(*, now: datetime | None = None) -> int:
    """One round: make the repeats, then for each enabled route send its due pending notifications as ONE message
    (grouping), retrying a failed one after 1 s, 2 s, 4 s, 8 s (``MAX_TRIES`` attempts, then its notifications are
    ``failed`` and stay listed). Returns the number of messages tried. One route failing never stops the others."""
    now = now or timezone.now()
    repeats_create(now=now)
    tried = 0
    for route in NotificationRoute.objects.enabled().select_related("project"):
        try:
            tried += _route_send(route, now)
        except Exception:
            logger.exception("notifications: route %s: sending failed", route.id)
    return tried


def route_test_send(*, route: NotificationRoute, by=None) -> NotificationAttempt:
    """The test button: send a test message on ``route`` now (one attempt, no retry); the attempt says how it went."""
    now = timezone.now()
    body = body_build(route=route, items=[], now=now, test=True)
    logger.info("notifications: route %s: test message by %s", route.id, getattr(by, "pk", None))
    return _attempt(route, batch=uuid.uuid4(), number=1, body=body, now=now, test=True)
