"""The notifications' API views and admin form: the permission checks, the test button, write-only headers.

The router is not yet added to api/v1.py (the lead adds it), so the views are called with a RequestFactory request."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import RequestFactory

from alarms.models import NotificationAttempt, NotificationRoute, RouteKind
from alarms.notifications.admin import NotificationRouteForm
from alarms.notifications.api import RouteOut, route_test_view
from api.errors import ApiError
from api.testing import user_with


@pytest.fixture
def hook_url():
    got = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", got
    server.shutdown()
    server.server_close()


def _request(user):
    request = RequestFactory().post("/api/v1/notification-routes/1/test")
    request.user = user
    return request


def test_the_test_endpoint_needs_the_change_permission_and_then_sends(project, hook_url):
    url, got = hook_url
    route = NotificationRoute.objects.create(project=project, name="ops", kind=RouteKind.WEBHOOK, webhook_url=url)
    with pytest.raises(ApiError) as refused:
        route_test_view(_request(user_with(role="viewer")), route.id)
    assert refused.value.status == 403 and got == []

    attempt = route_test_view(_request(user_with(perms=("alarms.change_notificationroute",))), route.id)
    assert attempt.ok and attempt.test and attempt.status == 204
    assert got[0]["status"] == "test" and NotificationAttempt.objects.count() == 1


def test_the_route_schema_shows_header_names_never_their_values(project):
    route = NotificationRoute.objects.create(project=project, name="ops", kind=RouteKind.WEBHOOK,
                                             webhook_url="https://ann:pw@example.com/hook",
                                             webhook_headers=json.dumps({"Authorization": "Bearer s3cret"}))
    shown = RouteOut.from_orm(route).model_dump()
    assert shown["webhook_headers"] == ["Authorization"]
    assert "s3cret" not in json.dumps(shown) and "pw" not in shown["webhook_url"]


def test_the_admin_form_never_renders_the_headers_and_keeps_them_when_left_empty(project):
    route = NotificationRoute.objects.create(project=project, name="ops", kind=RouteKind.WEBHOOK,
                                             webhook_url="https://example.com/hook",
                                             webhook_headers=json.dumps({"X-Token": "s3cret"}))
    assert "s3cret" not in str(NotificationRouteForm(instance=route))
    data = {"project": project.id, "name": "ops", "kind": "webhook", "webhook_url": "https://example.com/hook",
            "webhook_headers": "", "min_severity": "low", "group_wait_s": 10, "repeat_interval_s": 3600,
            "all_rules": "on", "system_alarms": "on", "send_cleared": "on", "enabled": "on", "email_to": ""}
    form = NotificationRouteForm(data, instance=route)
    assert form.is_valid(), form.errors
    form.save()
    assert NotificationRoute.objects.get(id=route.id).headers() == {"X-Token": "s3cret"}
    bad = NotificationRouteForm({**data, "webhook_headers": "[1"}, instance=route)
    assert not bad.is_valid() and "webhook_headers" in bad.errors
