"""Hub services against the real reference hub (entity sync, connection test), switches, run now, and the commands."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

from groups.models import Group
from hubs.client import hub_clients_close_all
from hubs.hubsim.server import serve_in_thread
from hubs.hubsim.tree import demo_tree, walk
from hubs.models import Entity, Hub, Parameter, Project
from groups.services import groups_enabled_set, groups_run_now
from hubs.services import (
    hub_connection_test,
    hub_entities_sync,
    hubs_enabled_set,
    project_import,
)
from hubs.tests.test_project_document import KEY_A, sample_document

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sync-test-key"


@pytest.fixture
def live_hub():
    with serve_in_thread(key=KEY, name="hub-x") as running:
        yield running
    hub_clients_close_all()


@pytest.fixture
def hub(live_hub):
    project = Project.objects.create(name="p")
    return Hub.objects.create(project=project, name="hub-x", url=live_hub.url, api_key=KEY, timeout=2.0)


def demo_entity_count() -> tuple[int, int]:
    entities = list(walk(demo_tree("hub-x")))
    return len(entities), sum(len(e["params"]) for e, _ in entities)


def test_sync_creates_the_whole_tree_with_parameters(hub):
    changes = hub_entities_sync(hub=hub)
    entities, params = demo_entity_count()
    assert Entity.objects.filter(hub=hub).count() == entities
    assert Parameter.objects.filter(entity__hub=hub).count() == params
    assert len(changes.added) == entities + params and not changes.changed and not changes.gone
    pump = Entity.objects.get(hub=hub, path="plant/line1/pump1")
    assert pump.parent.path == "plant/line1" and pump.type == "pump"
    speed = Parameter.objects.get(entity=pump, key="speed_sp")
    assert (speed.type, speed.unit, speed.writable) == ("number", "rpm", True)


def test_sync_again_reports_nothing_and_then_what_changed_and_what_is_gone(hub):
    hub_entities_sync(hub=hub)
    assert not hub_entities_sync(hub=hub)
    pump = Entity.objects.get(hub=hub, path="plant/line1/pump1")
    pump.name = "renamed here"
    pump.save()
    Parameter.objects.filter(entity=pump, key="flow").update(unit="l/s")
    stale = Entity.objects.create(hub=hub, parent=pump, path="plant/line1/pump1/old", name="old")
    Parameter.objects.create(entity=stale, key="x")
    Parameter.objects.create(entity=pump, key="gone_param")
    Parameter.objects.filter(entity=pump, key="mode").delete()
    changes = hub_entities_sync(hub=hub)
    assert changes.added == ["plant/line1/pump1.mode"]
    assert changes.changed == ["plant/line1/pump1", "plant/line1/pump1.flow"]
    assert changes.gone == ["plant/line1/pump1.gone_param", "plant/line1/pump1/old"]
    assert Parameter.objects.get(entity=pump, key="flow").unit == "m3/h"
    assert not Entity.objects.filter(path="plant/line1/pump1/old").exists()


def test_sync_keeps_groups_and_their_keys(hub):
    group = Group.objects.create(hub=hub, name="g", period=5)
    group.keys.create(entity="plant/line1/pump1", key="flow")
    hub_entities_sync(hub=hub)
    assert Group.objects.get(pk=group.pk).keys.count() == 1


def test_sync_with_a_wrong_key_raises_and_changes_nothing(hub):
    hub_entities_sync(hub=hub)
    before = sorted(Entity.objects.values_list("path", "name"))
    hub.api_key = "wrong-key"
    hub.save()
    from hubs.client import HubError

    with pytest.raises(HubError) as caught:
        hub_entities_sync(hub=hub)
    assert caught.value.code == 401 and "wrong-key" not in str(caught.value)
    assert sorted(Entity.objects.values_list("path", "name")) == before


def test_connection_test_reports_get_info(hub):
    report = hub_connection_test(hub=hub)
    assert report.ok and report.info["hub"] == "hub-x" and report.info["protocol"] == 1
    assert report.summary().startswith("ok: hub 'hub-x', protocol 1")


def test_connection_test_falls_back_to_ping_without_get_info():
    methods = {"ping", "getEntities", "getParams"}
    with serve_in_thread(key=KEY, methods=methods) as running:
        hub = Hub.objects.create(project=Project.objects.create(name="q"), name="old", url=running.url, api_key=KEY)
        report = hub_connection_test(hub=hub)
    hub_clients_close_all()
    assert report.ok and "time" in report.info and "hub" not in report.info


def test_connection_test_reports_a_wrong_key_without_showing_it(hub):
    hub.api_key = "not-the-key"
    report = hub_connection_test(hub=hub)
    assert not report.ok and "401" in report.error and "not-the-key" not in report.summary()


def test_connection_test_reports_a_hub_that_is_not_there():
    hub = Hub.objects.create(project=Project.objects.create(name="r"), name="nowhere", url="ws://127.0.0.1:9/connect",
                             timeout=0.5)
    report = hub_connection_test(hub=hub)
    hub_clients_close_all()
    assert not report.ok and report.error


# --- switches and run now -----------------------------------------------------------------------------------


def test_disabling_a_hub_disables_its_groups_periodic_tasks():
    project_import(raw=json.dumps(sample_document()))
    hub = Hub.objects.get(name="hub-a")
    assert hubs_enabled_set(hub_ids=[hub.pk], enabled=False) == 1
    assert not Group.objects.get(name="pumps").periodic_task.enabled
    assert hubs_enabled_set(hub_ids=[hub.pk], enabled=False) == 0


def test_enabling_groups_follows_into_their_periodic_tasks():
    project_import(raw=json.dumps(sample_document()))
    nightly = Group.objects.get(name="nightly")
    assert groups_enabled_set(group_ids=[nightly.pk], enabled=True) == 1
    nightly.refresh_from_db()
    assert nightly.enabled and nightly.periodic_task.enabled


def test_run_now_queues_the_group_after_commit(settings, live_hub):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    from hubsched.celery import app

    app.conf.task_always_eager = True
    try:
        project_import(raw=json.dumps(sample_document()))
        Hub.objects.filter(name="hub-a").update(url=live_hub.url, api_key=KEY)
        pumps = Group.objects.get(name="pumps")
        with transaction.atomic():
            assert groups_run_now(group_ids=[pumps.pk]) == 1
            assert not pumps.runs.exists()  # not before the commit
        assert pumps.runs.count() == 1
    finally:
        app.conf.task_always_eager = False


# --- commands -----------------------------------------------------------------------------------------------


def test_export_and_import_commands_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_HUB_A_KEY", KEY_A)
    monkeypatch.setenv("SINK_ARCHIVE_URL", "postgresql://writer:pw@db/values")
    project_import(raw=json.dumps(sample_document()))
    first = tmp_path / "plant.json"
    call_command("export_project", "plant", "-o", str(first), stderr=StringIO())
    assert KEY_A not in first.read_text()
    Project.objects.all().delete()
    out = StringIO()
    call_command("import_project", str(first), stdout=out)
    assert "project 'plant' created" in out.getvalue()
    second = tmp_path / "again.json"
    call_command("export_project", "plant", "-o", str(second), stderr=StringIO())
    assert second.read_bytes() == first.read_bytes()


def test_import_command_refuses_an_existing_project_unless_replace(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(sample_document()))
    call_command("import_project", str(path), stdout=StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("import_project", str(path), stdout=StringIO())
    out = StringIO()
    call_command("import_project", str(path), "--replace", stdout=out)
    assert "replaced" in out.getvalue()


def test_import_command_lists_every_error(tmp_path):
    doc = sample_document()
    doc["hubs"][1]["groups"][0]["period"] = 0
    doc["extra"] = 1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CommandError) as caught:
        call_command("import_project", str(path))
    assert "nothing was changed" in str(caught.value)
    assert "extra: unknown field" in str(caught.value)
    assert "hubs[1].groups[0].period: must be greater than 0" in str(caught.value)
    assert not Project.objects.exists()


def test_export_command_names_an_unknown_project():
    with pytest.raises(CommandError, match="no project named 'nope'"):
        call_command("export_project", "nope")


def test_hub_sync_command_reports_what_it_did(hub):
    out = StringIO()
    call_command("hub_sync", "hub-x", stdout=out)
    entities, params = demo_entity_count()
    assert f"hub 'hub-x': {entities + params} added, 0 changed, 0 gone" in out.getvalue()
    assert "added    plant/line1/pump1.speed_sp" in out.getvalue()


def test_hub_sync_command_asks_which_project_when_the_name_is_ambiguous(hub):
    Hub.objects.create(project=Project.objects.create(name="other"), name="hub-x", url="ws://x/connect")
    with pytest.raises(CommandError, match="several hubs are named 'hub-x'"):
        call_command("hub_sync", "hub-x")
    out = StringIO()
    call_command("hub_sync", "hub-x", "--project", "p", stdout=out)
    assert "added" in out.getvalue()


def test_hub_sync_command_reports_an_unreachable_hub():
    Hub.objects.create(project=Project.objects.create(name="s"), name="down", url="ws://127.0.0.1:9/connect", timeout=0.5)
    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("hub_sync", "down")
    hub_clients_close_all()


@pytest.mark.django_db
def test_the_demo_takes_its_hub_keys_from_the_variables_compose_gives_the_hubs(monkeypatch):
    from hubs.demo import demo_load

    monkeypatch.setenv("HUB_A_KEY", "site-key-a")
    monkeypatch.delenv("HUB_B_KEY", raising=False)
    demo_load()
    keys = dict(Hub.objects.filter(project__name="demo").values_list("name", "api_key"))
    assert keys == {"hub-a": "site-key-a", "hub-b": "demo-key-b"}
