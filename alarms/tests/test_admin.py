"""The alarms' admin: the list, the journal inline, the actions by permission, and a rule's condition checked."""

from __future__ import annotations

import pytest
from django.test import Client

from alarms.models import Alarm, AlarmRule
from alarms.services import alarm_raise
from api.testing import user_with

pytestmark = pytest.mark.django_db


def logged_in(role):
    client = Client()
    client.force_login(user_with(role=role))
    return client


def open_alarm(project):
    alarm, _ = alarm_raise(project_id=project.pk, source="system", kind="hub_unreachable", subject="hub:1",
                           severity="high", message="hub-a does not answer", values={"down_s": 61})
    return alarm


def test_the_list_and_the_page_show_the_alarm_and_its_journal(project):
    alarm = open_alarm(project)
    viewer = logged_in("viewer")
    listed = viewer.get("/admin/alarms/alarm/")
    assert listed.status_code == 200 and "hub-a does not answer" in listed.content.decode()
    page = viewer.get(f"/admin/alarms/alarm/{alarm.pk}/change/")
    assert page.status_code == 200 and "raised" in page.content.decode()


def test_an_operator_acknowledges_and_shelves_from_the_list(project):
    alarm = open_alarm(project)
    operator = logged_in("operator")
    done = operator.post("/admin/alarms/alarm/", {"action": "acknowledge", "_selected_action": [alarm.pk]})
    assert done.status_code == 302
    operator.post("/admin/alarms/alarm/", {"action": "shelve_1h", "_selected_action": [alarm.pk]})
    alarm.refresh_from_db()
    assert alarm.state == "acknowledged" and alarm.shelved_until is not None
    assert list(alarm.events.values_list("transition", flat=True)) == ["raised", "acknowledged", "shelved"]


def test_a_viewer_has_no_alarm_actions(project):
    alarm = open_alarm(project)
    viewer = logged_in("viewer")
    page = viewer.get("/admin/alarms/alarm/").content.decode()
    assert 'value="acknowledge"' not in page
    viewer.post("/admin/alarms/alarm/", {"action": "acknowledge", "_selected_action": [alarm.pk]})
    alarm.refresh_from_db()
    assert alarm.state == "active"


def test_a_rules_condition_is_checked_at_its_field(project, group):
    integrator = logged_in("integrator")
    form = {"project": project.pk, "name": "hot", "group": group.pk, "severity": "high", "message": "",
            "condition": '{"binding": "p1", "op": ">>", "value": 80}', "deadband": "", "for_s": ""}
    refused = integrator.post("/admin/alarms/alarmrule/add/", form)
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert any(e.startswith("condition.op: '>>' is not one of") for e in errors["condition"]), errors
    assert not AlarmRule.objects.exists()
    form["condition"] = '{"binding": "p1", "op": ">", "value": 80}'
    assert integrator.post("/admin/alarms/alarmrule/add/", form).status_code == 302
    assert AlarmRule.objects.get().condition == {"binding": "p1", "op": ">", "value": 80}


def test_alarms_are_not_added_by_hand(project):
    assert logged_in("admin").get("/admin/alarms/alarm/add/").status_code == 403
    assert Alarm.objects.count() == 0
