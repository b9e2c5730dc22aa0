"""Notifications against real servers: a local HTTP server for webhooks, Django's locmem backend and a real
aiosmtpd server for e-mail. Nothing of requests or smtplib is mocked."""

from __future__ import annotations

import json
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.utils import timezone

from alarms.models import (Notification, NotificationAttempt, NotificationRoute, NotificationStatus, RouteKind)
from alarms.notifications import notifications_connect
from alarms.notifications.body import ALARMS_MAX
from alarms.notifications.dispatch import MAX_TRIES, notifications_dispatch, route_test_send
from alarms.services import alarm_clear, alarm_raise, alarm_shelve
from alarms.signals import alarm_transition

ALARM_KEYS = {"id", "state", "severity", "message", "kind", "subject", "transition", "raised_at", "cleared_at",
              "values", "url"}


@pytest.fixture(autouse=True)
def _connected():
    notifications_connect()
    yield
    alarm_transition.disconnect(dispatch_uid="alarms.notifications.on_transition")


class Hook:
    """A real HTTP server in a thread: answers the next of ``statuses`` (then 200) and keeps what it got."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                hook.requests.append((dict(self.headers), json.loads(self.rfile.read(length))))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.close()


def _route(project, **fields):
    defaults = {"name": "ops", "kind": RouteKind.WEBHOOK, "group_wait_s": 10.0}
    return NotificationRoute.objects.create(project=project, **{**defaults, **fields})


def _raise(project, capture, subject="hub:1", severity="high", n=None):
    with capture(execute=True):
        if n is None:
            return alarm_raise(project_id=project.id, source="system", kind="hub_unreachable", subject=subject,
                               severity=severity, message=f"{subject} is unreachable", values={"tries": 3})[0]
        for i in range(n):
            alarm_raise(project_id=project.id, source="system", kind="hub_unreachable", subject=f"hub:{i}",
                        severity="high" if i % 3 else "low", message=f"hub {i} is unreachable", values={})


def _later(seconds):
    return timezone.now() + timedelta(seconds=seconds)


def test_a_webhook_is_delivered_with_the_documented_body_after_group_wait(
        project, hook, django_capture_on_commit_callbacks):
    route = _route(project, webhook_url=hook.url, webhook_headers=json.dumps({"Authorization": "Bearer s3cret"}))
    alarm = _raise(project, django_capture_on_commit_callbacks)
    assert notifications_dispatch(now=_later(1)) == 0  # still within group_wait_s
    assert hook.requests == []

    assert notifications_dispatch(now=_later(11)) == 1
    headers, body = hook.requests[0]
    assert headers["Authorization"] == "Bearer s3cret"
    assert set(body) == {"version", "route", "project", "status", "alarms", "counts", "total", "truncated", "sent_at"}
    assert (body["version"], body["route"], body["project"], body["status"]) == ("1", "ops", "plant", "firing")
    assert set(body["alarms"][0]) == ALARM_KEYS
    assert body["alarms"][0]["id"] == alarm.id and body["alarms"][0]["values"] == {"tries": 3}
    assert body["counts"] == {"critical": 0, "high": 1, "medium": 0, "low": 0}
    assert body["total"] == 1 and body["truncated"] == 0
    attempt = NotificationAttempt.objects.get(route=route)
    assert attempt.ok and attempt.status == 200 and attempt.number == 1 and attempt.final
    assert Notification.objects.get().status == NotificationStatus.SENT
    assert notifications_dispatch(now=_later(12)) == 0  # nothing sent twice


def test_a_webhook_that_answers_500_first_is_retried_and_both_attempts_are_recorded(
        project, django_capture_on_commit_callbacks):
    server = Hook(statuses=[500])
    try:
        route = _route(project, webhook_url=server.url)
        _raise(project, django_capture_on_commit_callbacks)
        now = _later(11)
        assert notifications_dispatch(now=now) == 1
        assert notifications_dispatch(now=now + timedelta(seconds=0.5)) == 0  # backoff: 1 s
        assert notifications_dispatch(now=now + timedelta(seconds=1)) == 1
    finally:
        server.close()
    attempts = list(NotificationAttempt.objects.filter(route=route).order_by("number"))
    assert [(a.number, a.ok, a.status) for a in attempts] == [(1, False, 500), (2, True, 200)]
    assert attempts[0].batch == attempts[1].batch and "500" in attempts[0].error
    assert len(server.requests) == 2 and server.requests[0][1]["alarms"] == server.requests[1][1]["alarms"]
    assert Notification.objects.get().status == NotificationStatus.SENT


def test_a_webhook_that_keeps_failing_is_recorded_failed_after_the_last_attempt(
        project, django_capture_on_commit_callbacks):
    server = Hook(statuses=[503] * 10)
    try:
        route = _route(project, webhook_url=server.url)
        _raise(project, django_capture_on_commit_callbacks)
        now = _later(11)
        for i in range(MAX_TRIES + 2):
            notifications_dispatch(now=now + timedelta(seconds=60 * i))
    finally:
        server.close()
    assert NotificationAttempt.objects.filter(route=route).count() == MAX_TRIES
    assert NotificationAttempt.objects.filter(route=route, final=True, ok=False).count() == 1
    assert Notification.objects.get().status == NotificationStatus.FAILED  # stays visible, not dropped


def test_a_thousand_alarms_raised_at_once_send_one_webhook_post(project, hook, django_capture_on_commit_callbacks):
    route = _route(project, webhook_url=hook.url)
    _raise(project, django_capture_on_commit_callbacks, n=1000)
    assert notifications_dispatch(now=_later(11)) == 1
    assert len(hook.requests) == 1
    body = hook.requests[0][1]
    assert body["total"] == 1000 and len(body["alarms"]) == ALARMS_MAX and body["truncated"] == 1000 - ALARMS_MAX
    assert body["counts"]["high"] + body["counts"]["low"] == 1000 and body["counts"]["low"] == 334
    assert NotificationAttempt.objects.get(route=route).alarms_count == 1000


def test_an_active_alarm_is_sent_again_after_the_repeat_interval_but_not_before(
        project, hook, django_capture_on_commit_callbacks):
    _route(project, webhook_url=hook.url, repeat_interval_s=3600)
    _raise(project, django_capture_on_commit_callbacks)
    notifications_dispatch(now=_later(11))
    notifications_dispatch(now=_later(1800))
    notifications_dispatch(now=_later(1811))
    assert len(hook.requests) == 1
    notifications_dispatch(now=_later(3601))
    notifications_dispatch(now=_later(3612))
    assert len(hook.requests) == 2
    assert hook.requests[1][1]["alarms"][0]["transition"] == "repeat"


def test_a_cleared_alarm_is_not_repeated_and_its_clear_is_sent_as_resolved(
        project, hook, django_capture_on_commit_callbacks):
    _route(project, webhook_url=hook.url, repeat_interval_s=3600)
    alarm = _raise(project, django_capture_on_commit_callbacks)
    notifications_dispatch(now=_later(11))
    with django_capture_on_commit_callbacks(execute=True):
        alarm_clear(alarm=alarm, values={})
    notifications_dispatch(now=_later(22))
    notifications_dispatch(now=_later(4000))
    notifications_dispatch(now=_later(4011))
    assert [r[1]["status"] for r in hook.requests] == ["firing", "resolved"]


def test_an_acknowledged_alarm_is_not_repeated(project, hook, admin_user, django_capture_on_commit_callbacks):
    from alarms.services import alarm_acknowledge

    _route(project, webhook_url=hook.url, repeat_interval_s=3600)
    alarm = _raise(project, django_capture_on_commit_callbacks)
    notifications_dispatch(now=_later(11))
    with django_capture_on_commit_callbacks(execute=True):
        alarm_acknowledge(alarm=alarm, by=admin_user)
    notifications_dispatch(now=_later(3700))
    notifications_dispatch(now=_later(3711))
    assert len(hook.requests) == 1


def test_a_shelved_alarm_is_not_sent(project, hook, admin_user, django_capture_on_commit_callbacks):
    _route(project, webhook_url=hook.url, repeat_interval_s=3600)
    alarm = _raise(project, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        alarm_shelve(alarm=alarm, by=admin_user, until=_later(8 * 3600))
    notifications_dispatch(now=_later(11))
    notifications_dispatch(now=_later(3700))
    notifications_dispatch(now=_later(3711))
    assert hook.requests == []
    assert Notification.objects.get().status == NotificationStatus.SKIPPED


def test_an_alarm_less_urgent_than_the_route_minimum_is_not_sent(project, hook, django_capture_on_commit_callbacks):
    _route(project, webhook_url=hook.url, min_severity="high")
    _raise(project, django_capture_on_commit_callbacks, severity="low")
    notifications_dispatch(now=_later(11))
    assert hook.requests == [] and not Notification.objects.exists()


def test_an_email_goes_through_the_locmem_backend_with_the_counts_in_its_subject(
        project, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    _route(project, kind=RouteKind.EMAIL, email_to="ops@example.com, ann@example.com")
    _raise(project, django_capture_on_commit_callbacks, subject="hub:1", severity="high")
    _raise(project, django_capture_on_commit_callbacks, subject="hub:2", severity="high")
    _raise(project, django_capture_on_commit_callbacks, subject="hub:3", severity="low")
    assert notifications_dispatch(now=_later(11)) == 1
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.subject == "[hubsched] 3 alarms: 2 high, 1 low — project plant"
    assert message.to == ["ops@example.com", "ann@example.com"]
    assert "hub:2 is unreachable" in message.body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_email_goes_through_the_smtp_backend_to_a_real_smtp_server(
        project, settings, django_capture_on_commit_callbacks):
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")

    class Handler:
        def __init__(self):
            self.envelopes = []

        async def handle_DATA(self, server, session, envelope):
            self.envelopes.append(envelope)
            return "250 OK"

    handler, port = Handler(), _free_port()
    controller = aiosmtpd.Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        route = _route(project, kind=RouteKind.EMAIL, email_to="ops@example.com")
        _raise(project, django_capture_on_commit_callbacks)
        assert notifications_dispatch(now=_later(11)) == 1
    finally:
        controller.stop()
    assert len(handler.envelopes) == 1
    assert handler.envelopes[0].rcpt_tos == ["ops@example.com"]
    text = handler.envelopes[0].content.decode()
    assert "hub:1 is unreachable" in text
    assert NotificationAttempt.objects.get(route=route).ok


def test_an_email_to_a_closed_smtp_port_is_recorded_as_a_failed_attempt(
        project, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", _free_port(), 5
    route = _route(project, kind=RouteKind.EMAIL, email_to="ops@example.com")
    _raise(project, django_capture_on_commit_callbacks)
    notifications_dispatch(now=_later(11))
    attempt = NotificationAttempt.objects.get(route=route)
    assert not attempt.ok and attempt.error and Notification.objects.get().status == NotificationStatus.PENDING


def test_the_test_button_sends_a_test_message_at_once(project, hook, admin_user):
    route = _route(project, webhook_url=hook.url)
    attempt = route_test_send(route=route, by=admin_user)
    assert attempt.ok and attempt.test and attempt.status == 200
    assert hook.requests[0][1]["status"] == "test" and hook.requests[0][1]["alarms"] == []


def test_a_route_with_a_bad_address_or_url_is_refused(project):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as bad_email:
        NotificationRoute(project=project, name="a", kind=RouteKind.EMAIL, email_to="ops@, x").full_clean()
    assert "email_to" in bad_email.value.message_dict
    with pytest.raises(ValidationError) as bad_url:
        NotificationRoute(project=project, name="b", kind=RouteKind.WEBHOOK, webhook_url="ftp://x/").full_clean()
    assert "webhook_url" in bad_url.value.message_dict


def test_webhook_headers_are_encrypted_at_rest(project):
    from django.db import connection

    route = _route(project, webhook_url="http://127.0.0.1:1/", webhook_headers=json.dumps({"X-Token": "s3cret"}))
    with connection.cursor() as cursor:
        cursor.execute("SELECT webhook_headers FROM alarms_notificationroute WHERE id = %s", [route.id])
        stored = cursor.fetchone()[0]
    assert "s3cret" not in stored and stored.startswith("fernet:")
    assert NotificationRoute.objects.get(id=route.id).headers() == {"X-Token": "s3cret"}
