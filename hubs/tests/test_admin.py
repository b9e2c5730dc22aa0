"""The admin, used as a person would: every model listed, import/export, sync, connection test, run now, beat entries."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from groups.models import Group, GroupKey, GroupRun, GroupStats
from hubs.client import hub_clients_close_all
from hubs.hubsim.server import serve_in_thread
from hubs.models import Entity, Hub, Parameter, Project
from hubs.services import project_import
from hubs.tests.test_project_document import KEY_A, SINK_PASSWORD, sample_document
from scripts_engine.models import DataSource, Script, Sink

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = (Project, Hub, Entity, Parameter, Group, GroupKey, GroupRun, GroupStats, Script, Sink, DataSource, PeriodicTask)
HUB_KEY = "admin-test-key"


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    client.force_login(user)
    return client


@pytest.fixture
def project():
    project = project_import(raw=json.dumps(sample_document())).project
    GroupRun.objects.create(group=Group.objects.get(name="pumps"), scheduled_for="2026-01-01T00:00:00Z", status="ok")
    GroupStats.objects.create(group=Group.objects.get(name="pumps"), done=1, last_status="ok")
    return project


@pytest.fixture
def live_hub():
    with serve_in_thread(key=HUB_KEY, name="hub-live") as running:
        yield running
    hub_clients_close_all()


def url(model, view="changelist", *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def action(client, model, name, objects, follow=True):
    return client.post(
        url(model), {"action": name, "_selected_action": [o.pk for o in objects]}, follow=follow
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_model_is_registered_with_list_columns_filters_and_search(model, staff, project):
    model_admin = admin.site._registry[model]
    assert len(model_admin.list_display) >= 3
    assert model_admin.search_fields
    response = staff.get(url(model), {"q": "a"})
    assert response.status_code == 200
    assert staff.get(url(model)).status_code == 200


@pytest.mark.parametrize("model", [Project, Hub, Entity, Group, Script, Sink, DataSource, GroupRun], ids=lambda m: m.__name__)
def test_every_change_page_opens(model, staff, project):
    assert staff.get(url(model, "change", model.objects.first().pk)).status_code == 200


def test_secrets_never_appear_on_list_pages(staff, project):
    for model in (Hub, Sink, DataSource, Project):
        body = staff.get(url(model)).content.decode()
        assert KEY_A not in body and SINK_PASSWORD not in body
    assert "writer:***@db" in staff.get(url(Sink)).content.decode()


def test_the_hub_change_page_never_renders_the_key_and_blank_keeps_it(staff, project):
    hub = Hub.objects.get(name="hub-a")
    page = staff.get(url(Hub, "change", hub.pk)).content.decode()
    assert KEY_A not in page
    data = {
        "project": project.pk, "name": "hub-a", "url": hub.url, "api_key": "", "timeout": 3, "max_in_flight": 8, "enabled": "on",
        "groups-TOTAL_FORMS": 0, "groups-INITIAL_FORMS": 0,
    }
    response = staff.post(url(Hub, "change", hub.pk), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    hub.refresh_from_db()
    assert hub.api_key == KEY_A and hub.timeout == 3


def test_the_entity_tree_is_shown_as_a_tree_on_the_hub_page(staff, project):
    page = staff.get(url(Hub, "change", Hub.objects.get(name="hub-a").pk)).content.decode()
    # plant > line1 > pump1, each level a list inside its parent's item, with parameters
    nested = re.search(r"<strong>plant</strong>.*?<ul class=\"hubsched-tree\">.*?<strong>line1</strong>.*?"
                       r"<ul class=\"hubsched-tree\">.*?<strong>pump1</strong>.*?<code>speed_sp</code>", page, re.S)
    assert nested
    # the admin's form CSS would push every nested list 160 px right; the tree's own stylesheet undoes it
    assert "hubs/admin/entity_tree.css" in page


def test_the_entity_list_is_ordered_by_path_and_indented(staff, project):
    page = staff.get(url(Entity)).content.decode()
    order = [m.group(1) for m in re.finditer(r"<strong>(plant|line1|pump1|pump2)</strong>", page)]
    assert order == ["plant", "line1", "pump1", "pump2"]
    assert 'padding-left:3.0em">└ <strong>pump1' in page


def test_project_export_action_downloads_the_document(staff, project):
    response = action(staff, Project, "export_documents", [project], follow=False)
    assert response["Content-Type"] == "application/json"
    doc = json.loads(response.content)
    assert doc["name"] == "plant" and doc["hubs"][0]["api_key"] == "${HUB_HUB_A_KEY}"
    other = Project.objects.create(name="other")
    response = action(staff, Project, "export_documents", [project, other], follow=False)
    assert response["Content-Type"] == "application/zip"


def test_project_import_page_imports_a_document(staff):
    assert "Import a project document" in staff.get(url(Project)).content.decode()
    upload = SimpleUploadedFile("plant.json", json.dumps(sample_document()).encode(), "application/json")
    response = staff.post(reverse("admin:hubs_project_import"), {"document": upload}, follow=True)
    assert "Project &#x27;plant&#x27; imported." in response.content.decode()
    assert Project.objects.filter(name="plant").exists()


def test_project_import_page_lists_every_error_and_changes_nothing(staff, project):
    doc = sample_document()
    doc["hubs"][1]["groups"][0]["period"] = 0
    doc["colour"] = "red"
    upload = SimpleUploadedFile("bad.json", json.dumps(doc).encode())
    response = staff.post(reverse("admin:hubs_project_import"), {"document": upload, "replace": "on"})
    page = response.content.decode()
    assert "nothing was changed" in page
    assert "hubs[1].groups[0].period: must be greater than 0" in page and "colour: unknown field" in page
    assert Group.objects.get(name="once").period == 10.0


def test_test_connection_action_shows_what_the_hub_said(staff, live_hub):
    hub = Hub.objects.create(project=Project.objects.create(name="p"), name="live", url=live_hub.url, api_key=HUB_KEY)
    response = action(staff, Hub, "test_connection", [hub])
    assert any(m.startswith("live: ok: hub 'hub-live', protocol 1") for m in messages_of(response))
    hub.api_key = "wrong"
    hub.save()
    response = action(staff, Hub, "test_connection", [hub])
    assert any(m.startswith("live: failed:") and "401" in m for m in messages_of(response))


def test_sync_entities_action_fills_the_tree(staff, live_hub):
    hub = Hub.objects.create(project=Project.objects.create(name="p"), name="live", url=live_hub.url, api_key=HUB_KEY)
    response = action(staff, Hub, "sync_entities", [hub])
    assert any(re.match(r"live: \d+ added, 0 changed, 0 gone", m) for m in messages_of(response))
    assert Parameter.objects.filter(entity__hub=hub, entity__path="plant/line1/pump1", key="speed_sp").exists()
    assert "<code>speed_sp</code>" in staff.get(url(Hub, "change", hub.pk)).content.decode()


def test_hub_and_group_enable_disable_actions_follow_into_beat(staff, project):
    hub = Hub.objects.get(name="hub-a")
    action(staff, Hub, "disable", [hub])
    assert not PeriodicTask.objects.get(hubsched_group__name="pumps").enabled
    action(staff, Hub, "enable", [hub])
    pumps = Group.objects.get(name="pumps")
    action(staff, Group, "disable", [pumps])
    assert not PeriodicTask.objects.get(hubsched_group=pumps).enabled
    action(staff, Group, "enable", [pumps])
    assert PeriodicTask.objects.get(hubsched_group=pumps).enabled


def test_a_group_edited_in_the_admin_shows_in_the_beat_admin_at_once(staff, project):
    pumps = Group.objects.get(name="pumps")
    data = {
        "hub": pumps.hub_id, "name": "pumps", "enabled": "on", "script": "", "trigger": "interval", "period": "7", "offset": "0",
        "expires": "", "cron": "", "run_at_0": "", "run_at_1": "", "deadband": "",
        "keys-TOTAL_FORMS": 1, "keys-INITIAL_FORMS": 0, "keys-0-position": 0, "keys-0-entity": "plant/line1/pump1",
        "keys-0-key": "flow", "keys-0-alias": "",
    }
    GroupKey.objects.filter(group=pumps).delete()
    response = staff.post(url(Group, "change", pumps.pk), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    task = PeriodicTask.objects.get(hubsched_group=pumps)
    assert (task.interval.every, task.interval.period) == (7, IntervalSchedule.SECONDS)
    beat_list = staff.get(url(PeriodicTask)).content.decode()
    assert "hubsched group" in beat_list and reverse("admin:groups_group_change", args=[pumps.pk]) in beat_list


def test_a_group_form_refuses_a_trigger_without_its_fields(staff, project):
    pumps = Group.objects.get(name="pumps")
    data = {
        "hub": pumps.hub_id, "name": "pumps", "trigger": "cron", "period": "1", "offset": "0", "cron": "* * * * *",
        "run_at_0": "", "run_at_1": "", "keys-TOTAL_FORMS": 0, "keys-INITIAL_FORMS": 0,
    }
    response = staff.post(url(Group, "change", pumps.pk), data)
    assert response.status_code == 200 and "not a six-field cron expression" in response.content.decode()
    assert Group.objects.get(pk=pumps.pk).trigger == "interval"


def test_a_groups_beat_entry_is_read_only_with_a_pointer_to_the_group(staff, project):
    pumps = Group.objects.get(name="pumps")
    task = pumps.periodic_task
    page = staff.get(url(PeriodicTask, "change", task.pk), follow=True)
    assert any("kept in step with it: edit the group instead" in m for m in messages_of(page))
    assert reverse("admin:groups_group_change", args=[pumps.pk]) in page.content.decode()
    response = staff.post(url(PeriodicTask, "change", task.pk), {"name": "hijacked", "task": task.task, "enabled": ""})
    assert response.status_code == 403
    assert PeriodicTask.objects.get(pk=task.pk).name == task.name
    response = action(staff, PeriodicTask, "disable_tasks", [task])
    assert any("Left unchanged 1 entry(ies) owned by hubsched groups" in m for m in messages_of(response))
    assert PeriodicTask.objects.get(pk=task.pk).enabled
    assert staff.post(url(PeriodicTask, "delete", task.pk), {"post": "yes"}).status_code == 403


def test_a_beat_entry_of_our_own_stays_editable(staff):
    every = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name="housekeeping", task="celery.backend_cleanup", interval=every)
    action(staff, PeriodicTask, "disable_tasks", [task])
    assert not PeriodicTask.objects.get(pk=task.pk).enabled


def test_a_person_builds_a_project_by_hand_runs_a_group_and_sees_its_run(staff, live_hub, settings):
    from hubsched.celery import app

    # project, hub (with its key), entities from the hub, a group with one key
    staff.post(url(Project, "add"), {"name": "by-hand", "description": "", "time_zone": "UTC",
                                     "hubs-TOTAL_FORMS": 0, "hubs-INITIAL_FORMS": 0,
                                     "scripts-TOTAL_FORMS": 0, "scripts-INITIAL_FORMS": 0})
    project = Project.objects.get(name="by-hand")
    response = staff.post(url(Hub, "add"), {"project": project.pk, "name": "h1", "url": live_hub.url, "api_key": HUB_KEY,
                                            "timeout": 2, "max_in_flight": 8, "enabled": "on",
                                            "groups-TOTAL_FORMS": 0, "groups-INITIAL_FORMS": 0})
    assert response.status_code == 302, response.content.decode()[:3000]
    hub = Hub.objects.get(name="h1")
    assert hub.api_key == HUB_KEY
    action(staff, Hub, "sync_entities", [hub])
    response = staff.post(url(Group, "add"), {
        "hub": hub.pk, "name": "pump1", "enabled": "on", "script": "", "trigger": "interval", "period": "5", "offset": "0",
        "expires": "", "cron": "", "run_at_0": "", "run_at_1": "", "deadband": "",
        "keys-TOTAL_FORMS": 1, "keys-INITIAL_FORMS": 0, "keys-0-position": 0, "keys-0-entity": "plant/line1/pump1",
        "keys-0-key": "flow", "keys-0-alias": "",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    group = Group.objects.get(name="pump1")
    assert group.periodic_task.enabled
    app.conf.task_always_eager = True
    try:
        response = action(staff, Group, "run_now", [group])
    finally:
        app.conf.task_always_eager = False
    assert any("1 group(s) queued" in m for m in messages_of(response))
    run = GroupRun.objects.get(group=group)
    page = staff.get(url(Group, "change", group.pk)).content.decode()
    assert reverse("admin:groups_grouprun_change", args=[run.pk]) in page
    assert staff.get(url(GroupRun), {"group__id__exact": group.pk}).status_code == 200
