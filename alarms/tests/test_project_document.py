"""Alarm rules in the project document (``alarm_rules``): imported with the project, exported back the same, and a
bad rule refused at its JSON path with nothing written."""

from __future__ import annotations

import json

import pytest

from alarms.models import AlarmRule, NotificationRoute
from hubs.models import Project
from hubs.project_document import ProjectDocumentError
from hubs.project_document.export import document_build
from hubs.project_document.importer import document_import

pytestmark = pytest.mark.django_db

RULE = {"name": "overspeed", "hub": "hub-a", "group": "pumps",
        "condition": {"all": [{"binding": "speed_sp", "op": ">", "value": 1800}, {"not": {"binding": "speed_sp", "op": "quality_bad"}}]},
        "deadband": 50.0, "for": 10.0, "severity": "high", "message": "setpoint {speed_sp}", "routes": [], "enabled": True}


def document(*rules) -> dict:
    return {"format": "hubsched.project/1", "name": "plant", "time_zone": "UTC",
            "hubs": [{"name": "hub-a", "url": "ws://127.0.0.1:9/connect",
                      "groups": [{"name": "pumps", "trigger": "interval", "period": 1.0,
                                  "keys": [{"entity": "plant/line1/pump1", "key": "speed_sp"}]}]}],
            "alarm_rules": list(rules)}


def test_rules_import_and_export_back_the_same():
    result = document_import(raw=json.dumps(document(RULE)))
    rule = AlarmRule.objects.get()
    assert rule.group.name == "pumps" and rule.for_s == 10.0 and rule.severity == "high"
    assert document_build(project=result.project)["alarm_rules"] == [RULE]


def test_a_replace_changes_a_rule_in_place_and_deletes_one_the_document_dropped():
    document_import(raw=json.dumps(document(RULE, {**RULE, "name": "second"})))
    kept = AlarmRule.objects.get(name="overspeed")
    document_import(raw=json.dumps(document({**RULE, "severity": "low"})), replace=True)
    assert list(AlarmRule.objects.values_list("pk", "name", "severity")) == [(kept.pk, "overspeed", "low")]


def test_routes_named_are_the_projects_and_an_unknown_one_refuses_the_document():
    project = Project.objects.create(name="plant")
    NotificationRoute.objects.create(project=project, name="ops", kind="webhook", webhook_url="http://127.0.0.1:9/x")
    document_import(raw=json.dumps(document({**RULE, "routes": ["ops"]})), replace=True)
    assert list(AlarmRule.objects.get().routes.values_list("name", flat=True)) == ["ops"]
    with pytest.raises(ProjectDocumentError) as refused:
        document_import(raw=json.dumps(document({**RULE, "routes": ["pager"]})), replace=True)
    assert refused.value.errors == ["alarm_rules[0].routes[0]: no notification route 'pager' in project 'plant'"]
    assert list(AlarmRule.objects.get().routes.values_list("name", flat=True)) == ["ops"]  # nothing changed


@pytest.mark.parametrize("rule, error", [
    ({**RULE, "condition": {"binding": "speed_sp", "op": ">>", "value": 1}}, "alarm_rules[0].condition"),
    ({**RULE, "group": "boiler"}, "alarm_rules[0].group: no group 'boiler' on hub 'hub-a' in the document"),
    ({**RULE, "hub": "hub-z"}, "alarm_rules[0].hub: no hub 'hub-z' in the document"),
    ({**RULE, "severity": "urgent"}, "alarm_rules[0].severity"),
])
def test_a_bad_rule_is_refused_at_its_path_and_nothing_is_written(rule, error):
    with pytest.raises(ProjectDocumentError) as refused:
        document_import(raw=json.dumps(document(rule)))
    assert any(e.startswith(error) for e in refused.value.errors), refused.value.errors
    assert not Project.objects.exists() and not AlarmRule.objects.exists()


def test_two_rules_of_one_name_are_refused():
    with pytest.raises(ProjectDocumentError) as refused:
        document_import(raw=json.dumps(document(RULE, RULE)))
    assert any("alarm_rules[1].name" in e for e in refused.value.errors), refused.value.errors
