"""/api/v1/alarms and /api/v1/alarm-rules: success, bad input with its path, 401, 403, 404, 409."""

from __future__ import annotations

import pytest
from django.test import Client

from alarms.models import Alarm, AlarmRule
from alarms.services import alarm_clear, alarm_raise
from api.testing import assert_error, token_client

pytestmark = pytest.mark.django_db

JSON = "application/json"


def open_alarm(project, subject="hub:1", severity="high"):
    alarm, _ = alarm_raise(project_id=project.pk, source="system", kind="hub_unreachable", subject=subject,
                           severity=severity, message=f"{subject} down", values={"down_s": 61})
    return alarm


def rule_body(project, **kw):
    body = {"project": project.pk, "name": "hot", "group": "pumps", "hub": "hub-a", "severity": "high",
            "condition": {"binding": "p1", "op": ">", "value": 80}, "deadband": 2, "for": 10,
            "message": "p1 {p1} above 80"}
    body.update(kw)
    return body


def test_the_list_filters_by_state_and_severity_and_paginates(project):
    viewer = token_client(role="viewer")
    first, second = open_alarm(project, "hub:1"), open_alarm(project, "hub:2", severity="low")
    cleared = open_alarm(project, "hub:3")
    alarm_clear(alarm=cleared, values={})
    body = viewer.get("/api/v1/alarms?state=active").json()
    assert body["count"] == 2 and {a["id"] for a in body["items"]} == {first.pk, second.pk}
    assert [a["id"] for a in viewer.get("/api/v1/alarms?state=active&severity=low").json()["items"]] == [second.pk]
    assert [a["id"] for a in viewer.get("/api/v1/alarms?state=cleared").json()["items"]] == [cleared.pk]
    assert viewer.get("/api/v1/alarms?limit=1").json()["count"] == 3
    assert len(viewer.get("/api/v1/alarms?limit=1").json()["items"]) == 1
    bad = assert_error(viewer.get("/api/v1/alarms?state=open"), 422)
    assert bad["details"][0]["path"] == "state"


def test_one_alarm_comes_with_its_journal(project):
    alarm = open_alarm(project)
    body = token_client(role="viewer").get(f"/api/v1/alarms/{alarm.pk}").json()
    assert body["state"] == "active" and body["values"] == {"down_s": 61}
    assert [(e["transition"], e["values"]) for e in body["events"]] == [("raised", {"down_s": 61})]
    assert_error(token_client(role="viewer").get("/api/v1/alarms/999999"), 404)


def test_an_operator_acknowledges_with_a_note_once(project):
    alarm = open_alarm(project)
    operator = token_client(role="operator")
    done = operator.post(f"/api/v1/alarms/{alarm.pk}/acknowledge", {"note": "on it"}, content_type=JSON)
    assert done.status_code == 200, done.content
    body = done.json()
    assert (body["state"], body["acknowledged_by"], body["acknowledged_note"]) == (
        "acknowledged", operator.user.get_username(), "on it")
    assert body["events"][-1]["by"] == operator.user.get_username()
    assert_error(operator.post(f"/api/v1/alarms/{alarm.pk}/acknowledge", {}, content_type=JSON), 409, "conflict")


def test_shelving_takes_until_or_for_s_and_unshelving_ends_it(project):
    alarm = open_alarm(project)
    operator = token_client(role="operator")
    shelved = operator.post(f"/api/v1/alarms/{alarm.pk}/shelve", {"for_s": 3600, "note": "maintenance"},
                            content_type=JSON)
    assert shelved.status_code == 200, shelved.content
    assert shelved.json()["shelved_until"] is not None
    assert operator.get("/api/v1/alarms?state=active").json()["count"] == 0
    assert operator.get("/api/v1/alarms?state=active&shelved=true").json()["count"] == 1
    unshelved = operator.post(f"/api/v1/alarms/{alarm.pk}/unshelve", {}, content_type=JSON)
    assert unshelved.json()["shelved_until"] is None
    assert_error(operator.post(f"/api/v1/alarms/{alarm.pk}/unshelve", {}, content_type=JSON), 409)
    both = assert_error(operator.post(f"/api/v1/alarms/{alarm.pk}/shelve",
                                      {"for_s": 60, "until": "2030-01-01T00:00:00Z"}, content_type=JSON), 422)
    assert "not both" in str(both)
    far = assert_error(operator.post(f"/api/v1/alarms/{alarm.pk}/shelve", {"until": "2999-01-01T00:00:00Z"},
                                     content_type=JSON), 422)
    assert far["details"] == [{"path": "until", "message": "at most 30 days from now"}]


def test_alarms_need_a_login_and_their_permissions(project):
    alarm = open_alarm(project)
    assert_error(Client().get("/api/v1/alarms"), 401)
    assert_error(Client().post(f"/api/v1/alarms/{alarm.pk}/acknowledge", {}, content_type=JSON), 401)
    nobody = token_client(role=None)
    assert_error(nobody.get("/api/v1/alarms"), 403, "permission_denied")
    viewer = token_client(role="viewer")
    denied = assert_error(viewer.post(f"/api/v1/alarms/{alarm.pk}/acknowledge", {}, content_type=JSON), 403)
    assert "alarms.acknowledge_alarm" in denied["message"]
    assert_error(viewer.post(f"/api/v1/alarms/{alarm.pk}/shelve", {"for_s": 60}, content_type=JSON), 403)
    assert Alarm.objects.get().state == "active"


def test_an_integrator_creates_changes_and_deletes_a_rule(project, group):
    integrator = token_client(role="integrator")
    made = integrator.post("/api/v1/alarm-rules", rule_body(project), content_type=JSON)
    assert made.status_code == 201, made.content
    body = made.json()
    assert (body["name"], body["group"], body["hub"], body["for"], body["group_id"]) == (
        "hot", "pumps", "hub-a", 10, group.pk)
    changed = integrator.patch(f"/api/v1/alarm-rules/{body['id']}", {"severity": "critical", "for": None},
                               content_type=JSON)
    assert changed.status_code == 200, changed.content
    assert (changed.json()["severity"], changed.json()["for"], changed.json()["deadband"]) == ("critical", None, 2)
    listed = integrator.get(f"/api/v1/alarm-rules?project={project.pk}").json()
    assert [r["id"] for r in listed["items"]] == [body["id"]]
    assert integrator.delete(f"/api/v1/alarm-rules/{body['id']}").status_code == 204
    assert not AlarmRule.objects.exists()
    assert_error(integrator.delete(f"/api/v1/alarm-rules/{body['id']}"), 404)


def test_a_bad_rule_is_refused_with_each_problem_at_its_path(project, group):
    integrator = token_client(role="integrator")
    body = rule_body(project, condition={"all": [{"binding": "p1", "op": ">", "value": 1},
                                                 {"binding": "p1", "op": ">>", "value": 2}]}, severity="urgent")
    error = assert_error(integrator.post("/api/v1/alarm-rules", body, content_type=JSON), 422, "invalid")
    paths = [d["path"] for d in error["details"]]
    assert "condition.all[1].op" in paths and "severity" in paths
    unknown = assert_error(integrator.post("/api/v1/alarm-rules", rule_body(project, group="nope"),
                                           content_type=JSON), 422)
    assert unknown["details"] == [{"path": "group", "message": "no group 'nope' on hub 'hub-a'"}]
    missing = assert_error(integrator.post("/api/v1/alarm-rules", {"project": project.pk, "name": "x"},
                                           content_type=JSON), 422)
    assert {"path": "", "message": "'condition' is a required property"} in missing["details"]
    extra = assert_error(integrator.post("/api/v1/alarm-rules", rule_body(project, colour="red"),
                                         content_type=JSON), 422)
    assert extra["details"][0]["path"] == "colour"
    assert not AlarmRule.objects.exists()


def test_a_rule_name_is_unique_in_its_project(project, group):
    integrator = token_client(role="integrator")
    assert integrator.post("/api/v1/alarm-rules", rule_body(project), content_type=JSON).status_code == 201
    again = assert_error(integrator.post("/api/v1/alarm-rules", rule_body(project), content_type=JSON), 422)
    assert again["details"][0]["path"] == "name"


def test_rules_need_their_permissions(project, group):
    operator = token_client(role="operator")
    assert operator.get("/api/v1/alarm-rules").status_code == 200
    denied = assert_error(operator.post("/api/v1/alarm-rules", rule_body(project), content_type=JSON), 403)
    assert "alarms.add_alarmrule" in denied["message"]
    assert_error(Client().get("/api/v1/alarm-rules"), 401)
    assert_error(token_client(role=None).get("/api/v1/alarm-rules"), 403)
    assert_error(operator.get("/api/v1/alarm-rules/424242"), 404)


def test_a_rule_names_its_routes_and_an_unknown_route_is_refused_at_its_path(project, group):
    from alarms.models import NotificationRoute

    NotificationRoute.objects.create(project=project, name="ops-mail", kind="email", email_to="ops@example.com")
    integrator = token_client(role="integrator")
    made = integrator.post("/api/v1/alarm-rules", rule_body(project, routes=["ops-mail"]), content_type=JSON)
    assert made.status_code == 201, made.content
    assert made.json()["routes"] == ["ops-mail"]
    kept = integrator.patch(f"/api/v1/alarm-rules/{made.json()['id']}", {"severity": "low"}, content_type=JSON)
    assert kept.json()["routes"] == ["ops-mail"]
    bad = assert_error(integrator.post("/api/v1/alarm-rules", rule_body(project, name="b", routes=["ops-mail", "sms"]),
                                       content_type=JSON), 422)
    assert bad["details"] == [{"path": "routes[1]", "message": "no notification route 'sms' in project 'plant'"}]
