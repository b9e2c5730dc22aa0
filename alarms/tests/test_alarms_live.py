"""Alarms on a real reference hub: a value rule raised, acknowledged and cleared by a group's executions, and the
system alarm of a hub that is stopped (and started again)."""

from __future__ import annotations

import socket
import time

import pytest

from alarms.models import Alarm
from alarms.services import alarm_acknowledge, alarm_rule_save
from alarms.system import SystemChecks, alarms_apply
from groups.models import Group, GroupKey
from groups.services import group_run
from hubs.client import hub_client
from hubs.hubsim.server import serve_in_thread
from hubs.hubsim.tree import demo_tree
from hubs.models import Hub
from hubs.project_document.importer import entity_tree_write
from scripts_engine.models import Sink
from scripts_engine.sinks import sinks_dispose

KEY = "test-key"
PUMP = "plant/line1/pump1"


@pytest.fixture
def sink(project, tmp_path):
    Sink.objects.create(project=project, name="main", url=f"sqlite:///{tmp_path / 'values.sqlite3'}")
    yield
    sinks_dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rule_raises_is_acknowledged_and_clears_on_a_reference_hubs_values(project, sink, django_user_model):
    with serve_in_thread(key=KEY, name="hub-a") as reference:
        hub = Hub.objects.create(project=project, name="hub-a", url=reference.url, api_key=KEY, timeout=2.0)
        entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
        group = Group.objects.create(hub=hub, name="pump1", period=1.0)
        GroupKey.objects.create(group=group, entity=PUMP, key="speed_sp", alias="sp")
        alarm_rule_save(project=project, doc={
            "name": "overspeed", "hub": "hub-a", "group": "pump1", "condition": {"binding": "sp", "op": ">", "value": 1800},
            "deadband": 50, "severity": "high", "message": "pump 1 setpoint {sp} above 1800"})
        client = hub_client(reference.url, KEY, timeout=2.0)

        assert group_run(group_id=group.pk).status == "ok"  # 1450: normal
        assert not Alarm.objects.exists()
        client.set_entity_params(PUMP, {"speed_sp": 1900.0})
        assert group_run(group_id=group.pk).status == "ok"
        alarm = Alarm.objects.get()
        assert alarm.state == "active" and alarm.severity == "high" and alarm.message == "pump 1 setpoint 1900.0 above 1800"
        assert alarm.values == {"sp": {"value": 1900.0, "quality": "good"}}  # what caused it

        alice = django_user_model.objects.create_user("alice")
        alarm_acknowledge(alarm=alarm, by=alice, note="crew on the way")
        client.set_entity_params(PUMP, {"speed_sp": 1780.0})  # below 1800, within the deadband: still active
        assert group_run(group_id=group.pk).status == "ok"
        alarm.refresh_from_db()
        assert alarm.state == "acknowledged" and alarm.acknowledged_note == "crew on the way"
        client.set_entity_params(PUMP, {"speed_sp": 1700.0})
        assert group_run(group_id=group.pk).status == "ok"
        alarm.refresh_from_db()
        assert alarm.state == "cleared"
        assert list(alarm.events.order_by("pk").values_list("transition", flat=True)) == ["raised", "acknowledged", "cleared"]


def test_a_stopped_hub_raises_the_unreachable_system_alarm_and_it_clears_when_the_hub_is_back(project, settings):
    settings.HUBSCHED_ALARM_HUB_UNREACHABLE_S = 0.0
    port = free_port()
    checks = SystemChecks()
    with serve_in_thread(key=KEY, name="hub-a", port=port) as reference:
        hub = Hub.objects.create(project=project, name="hub-a", url=reference.url, api_key=KEY, timeout=1.0)
        Group.objects.create(hub=hub, name="pump1", period=1.0)
        assert checks.hub_unreachable() == []
    findings = checks.hub_unreachable()  # the hub is stopped now
    assert [f.subject for f in findings] == [f"hub:{hub.pk}"]
    alarms_apply(kind="hub_unreachable", findings=findings)
    alarm = Alarm.objects.get(kind="hub_unreachable")
    assert alarm.state == "active" and alarm.project_id == project.pk and "hub-a" in alarm.message
    with serve_in_thread(key=KEY, name="hub-a", port=port):
        deadline = time.monotonic() + 15  # the client's reconnect backoff may hold it a few seconds
        while checks.hub_unreachable() and time.monotonic() < deadline:
            time.sleep(0.5)
        alarms_apply(kind="hub_unreachable", findings=checks.hub_unreachable())
    alarm.refresh_from_db()
    assert alarm.state == "cleared"
