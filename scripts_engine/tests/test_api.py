"""POST /api/scripts/<id>/debug, the deprecated alias of POST /api/v1/scripts/{id}/debug: by permission
(scripts_engine.debug_script), JSON in and out, nothing written unless asked, errors in the API's one shape."""

from __future__ import annotations

import json

import pytest

from api.testing import assert_error
from scripts_engine.models import Script

CODE = "a = p1 + 1\nb = a * 2\np1 = b\nnote = 'done'\n"


@pytest.fixture
def script(project):
    return Script.objects.create(project=project, name="calc", code=CODE)


def post(client, script_id, body):
    return client.post(f"/api/scripts/{script_id}/debug", data=json.dumps(body), content_type="application/json")


def test_a_debug_session_returns_the_stops_at_two_breakpoints_and_the_result(staff_client, script):
    response = post(staff_client, script.pk, {"bindings": {"p1": 1, "p2": "x"}, "breakpoints": [2, 4]})
    assert response.status_code == 200
    assert response["Deprecation"] == "true"
    assert response["Link"] == f'</api/v1/scripts/{script.pk}/debug>; rel="successor-version"'
    body = response.json()
    assert [(s["event"], s["line"]) for s in body["stops"]] == [("breakpoint", 2), ("breakpoint", 4), ("end", None)]
    assert body["stops"][0] == {"event": "breakpoint", "line": 2, "function": "<module>",
                                "bindings": {"p1": 1, "p2": "x"}, "locals": {"a": 2}}
    assert body["stops"][1]["bindings"] == {"p1": 4, "p2": "x"}
    assert body["result"] == {"bindings": {"p1": 4, "p2": "x", "a": 2, "b": 4, "note": "done"},
                              "changed": ["p1"], "output": ""}
    assert (body["written"], body["stored"]) == ({}, 0)


def test_step_records_every_line_after_the_first_breakpoint(staff_client, script):
    body = post(staff_client, script.pk, {"bindings": {"p1": 1}, "breakpoints": [2], "step": True}).json()
    assert [s["line"] for s in body["stops"]] == [2, 3, 4, None]


def test_a_failing_script_answers_with_the_error_and_its_position(staff_client, project):
    bad = Script.objects.create(project=project, name="bad", code="x = 1\ny = x / 0\n")
    body = post(staff_client, bad.pk, {"bindings": {}, "breakpoints": [1]}).json()
    assert body["error"]["kind"] == "runtime" and (body["error"]["line"], body["error"]["column"]) == (2, 5)
    assert "result" not in body and [s["line"] for s in body["stops"]] == [1]


def test_an_anonymous_caller_or_one_without_debug_script_is_refused(client, django_user_model, script):
    assert_error(post(client, script.pk, {}), 401, "not_authenticated")
    for username, staff in (("plain", False), ("staff", True)):
        user = django_user_model.objects.create_user(username=username, password="pw-123456", is_staff=staff)
        client.force_login(user)
        response = post(client, script.pk, {})
        error = assert_error(response, 403, "permission_denied")
        assert error["message"] == "permission required: scripts_engine.debug_script"


def test_bad_input_is_a_422_naming_the_field(staff_client, script):
    error = assert_error(post(staff_client, script.pk, {"breakpoints": "3"}), 422, "invalid")
    assert [d["path"] for d in error["details"]] == ["breakpoints"]
    error = assert_error(post(staff_client, script.pk, {"actions": ["jump"]}), 422, "invalid")
    assert [d["path"] for d in error["details"]] == ["actions[0]"]
    response = staff_client.post(f"/api/scripts/{script.pk}/debug", data="{", content_type="application/json")
    assert_error(response, 400, "bad_request")


def test_an_unknown_script_is_a_404(staff_client, db):
    assert_error(post(staff_client, 999999, {}), 404, "not_found")


def test_write_back_without_live_values_is_refused(staff_client, script):
    response = post(staff_client, script.pk, {"bindings": {"p1": 1}, "write_back": True})
    assert "live" in assert_error(response, 400, "bad_request")["message"]
