"""The console's project tree and hub form through Django's test client, against a real reference hub: login and a
permission on every view, creating and changing projects and hubs with bad input answered beside its field (nothing
saved), the write-only key, the connection test, discovery as a dry run then applied, deletes confirmed with what
goes, the tree's lazy and paged groups, CSRF."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from api.testing import logged_in
from groups.models import Group
from hubs.models import Entity, Hub, Project
from hubs.project_document.importer import entity_tree_write
from hubs.hubsim.tree import demo_tree

from .conftest import HUB_KEY as KEY


@pytest.fixture
def project(db):
    return Project.objects.create(name="plant", time_zone="Europe/Berlin")


@pytest.fixture
def hub(project, reference_hub):
    return Hub.objects.create(project=project, name="hub-a", url=reference_hub.url, api_key=KEY, timeout=2.0)


def beside(page: str, field: str, form: str = "id") -> str:
    """The error text shown beside ``field`` (its <form ids>_<field>-error span: id_ for a project, hub_ for a hub), or ""."""
    found = re.search(rf'id="{form}_{field}-error"[^>]*>([^<]*)<', page)
    return found.group(1) if found else ""


@pytest.mark.django_db
def test_every_project_page_needs_a_login_and_a_permission(project, hub):
    pages = ["/projects/", f"/projects/{project.pk}/", f"/hubs/{hub.pk}/", f"/hubs/{hub.pk}/groups",
             f"/projects/{project.pk}/delete", f"/hubs/{hub.pk}/delete"]
    for path in pages:
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
        assert logged_in(None).get(path).status_code == 403, path  # staff alone is no permission
    viewer = logged_in("viewer")
    for path in pages[:4]:
        assert viewer.get(path).status_code == 200, path
    for path in pages[4:]:  # a delete's confirmation needs the delete permission
        assert viewer.get(path).status_code == 403, path
    writes = [("/projects/", {"name": "x", "time_zone": "UTC"}), (f"/projects/{project.pk}/", {"name": "y", "time_zone": "UTC"}),
              (f"/projects/{project.pk}/hubs", {"name": "h", "url": "ws://127.0.0.1:1/connect", "timeout": 1, "max_in_flight": 1}),
              (f"/hubs/{hub.pk}/", {"name": "z", "url": hub.url, "timeout": 1, "max_in_flight": 1}),
              (f"/hubs/{hub.pk}/discover", {"apply": "1"}), (f"/hubs/{hub.pk}/switch", {"enabled": "0"}),
              (f"/hubs/{hub.pk}/delete", {}), (f"/projects/{project.pk}/delete", {})]
    for path, data in writes:
        assert viewer.post(path, data).status_code == 403, path
    assert list(Project.objects.values_list("name", flat=True)) == ["plant"]
    assert Hub.objects.get(pk=hub.pk).name == "hub-a" and Hub.objects.get(pk=hub.pk).enabled
    assert not Entity.objects.filter(hub=hub).exists()


@pytest.mark.django_db
def test_a_project_is_created_and_bad_input_is_answered_beside_its_field_with_nothing_saved(project):
    integrator = logged_in("integrator")
    response = integrator.post("/projects/", {"name": "line 2", "time_zone": "Mars/Olympus", "description": ""})
    assert response.status_code == 422
    assert beside(response.content.decode(), "time_zone")
    response = integrator.post("/projects/", {"name": "plant", "time_zone": "UTC"})
    assert response.status_code == 422 and "already exists" in beside(response.content.decode(), "name")
    assert Project.objects.count() == 1
    response = integrator.post("/projects/", {"name": "line 2", "time_zone": "Asia/Tokyo", "description": "new line"})
    created = Project.objects.get(name="line 2")
    assert response.status_code == 302 and response["Location"] == f"/projects/{created.pk}/"
    assert created.time_zone == "Asia/Tokyo"
    listing = integrator.get("/projects/?q=LINE").content.decode()
    assert "line 2" in listing and ">plant<" not in listing
    response = integrator.post(f"/projects/{created.pk}/", {"name": "line two", "time_zone": "Nowhere", "description": ""})
    assert response.status_code == 422 and beside(response.content.decode(), "time_zone")
    assert Project.objects.get(pk=created.pk).name == "line 2"  # a refused change changes nothing
    assert integrator.post(f"/projects/{created.pk}/", {"name": "line two", "time_zone": "UTC"}).status_code == 302
    assert Project.objects.get(pk=created.pk).name == "line two"


@pytest.mark.django_db
def test_a_hub_is_added_with_a_write_only_key_and_bad_input_saves_nothing(project, reference_hub):
    integrator = logged_in("integrator")
    bad = integrator.post(f"/projects/{project.pk}/hubs", {"name": "hub-b", "url": "http://10.0.0.1/connect",
                                                          "api_key": KEY, "timeout": "0", "max_in_flight": "128"})
    page = bad.content.decode()
    assert bad.status_code == 422 and beside(page, "url", "hub") and beside(page, "timeout", "hub")
    assert KEY not in page  # the key typed is not sent back either
    assert not Hub.objects.exists()
    good = integrator.post(f"/projects/{project.pk}/hubs", {"name": "hub-b", "url": reference_hub.url, "api_key": KEY,
                                                           "timeout": "2", "max_in_flight": "64", "enabled": "on"})
    hub = Hub.objects.get(name="hub-b")
    assert good.status_code == 302 and good["Location"] == f"/hubs/{hub.pk}/"
    assert hub.api_key == KEY and hub.max_in_flight == 64
    page = integrator.get(f"/hubs/{hub.pk}/").content.decode()
    assert KEY not in page and "set (never shown)" in page
    # a change with the key left blank keeps it; the same name twice in a project is refused beside the name
    assert integrator.post(f"/hubs/{hub.pk}/", {"name": "hub-b2", "url": reference_hub.url, "api_key": "", "timeout": "3",
                                                "max_in_flight": "64", "enabled": "on"}).status_code == 302
    hub.refresh_from_db()
    assert (hub.name, hub.timeout, hub.api_key) == ("hub-b2", 3.0, KEY)
    Hub.objects.create(project=project, name="hub-c", url=reference_hub.url)
    taken = integrator.post(f"/hubs/{hub.pk}/", {"name": "hub-c", "url": reference_hub.url, "timeout": "3", "max_in_flight": "64"})
    assert taken.status_code == 422 and Hub.objects.get(pk=hub.pk).name == "hub-b2"
    assert re.search(r'role="alert"><p>Hub with this Project and Name already exists', taken.content.decode()) or \
        "already exists" in beside(taken.content.decode(), "name", "hub")  # above the form or beside the name


@pytest.mark.django_db
def test_the_connection_test_says_what_the_hub_said_or_the_error_in_words(hub, project):
    viewer = logged_in("viewer")
    page = viewer.post(f"/hubs/{hub.pk}/test").content.decode()
    assert "Connected" in page and "hub-a" in page and "protocol version 1" in page and "getEntityParams" in page
    assert "clock is" in page
    Hub.objects.filter(pk=hub.pk).update(api_key="wrong")
    page = viewer.post(f"/hubs/{hub.pk}/test").content.decode()
    assert "Could not connect" in page and "wrong" not in page and KEY not in page
    closed = Hub.objects.create(project=project, name="nothing-there", url="ws://127.0.0.1:9/connect", timeout=1)
    page = viewer.post(f"/hubs/{closed.pk}/test").content.decode()
    assert "Could not connect" in page


@pytest.mark.django_db
def test_discovery_shows_what_would_change_then_applies_it(hub):
    integrator = logged_in("integrator")
    preview = integrator.post(f"/hubs/{hub.pk}/discover")
    page = preview.content.decode()
    assert preview.status_code == 200 and "Would apply" in page and "plant/line1/pump1" in page
    assert "Apply these changes" in page
    assert not Entity.objects.filter(hub=hub).exists()  # a dry run writes nothing
    applied = integrator.post(f"/hubs/{hub.pk}/discover", {"apply": "1"}).content.decode()
    assert "Applied" in applied and Entity.objects.filter(hub=hub, path="plant/line1/pump1").exists()
    again = integrator.post(f"/hubs/{hub.pk}/discover").content.decode()
    assert "nothing to change" in again
    viewer_preview = logged_in("viewer").post(f"/hubs/{hub.pk}/discover").content.decode()
    assert "Apply these changes" not in viewer_preview  # a viewer sees the dry run, not the button


@pytest.mark.django_db
def test_a_hub_that_cannot_be_read_changes_nothing_and_says_why(project):
    gone = Hub.objects.create(project=project, name="gone", url="ws://127.0.0.1:9/connect", timeout=1)
    response = logged_in("integrator").post(f"/hubs/{gone.pk}/discover", {"apply": "1"})
    assert response.status_code == 422 and "could not be read, nothing changed" in response.content.decode()


@pytest.mark.django_db
def test_deletes_are_confirmed_with_what_goes_and_done_only_by_the_post(project, hub):
    entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
    Group.objects.create(hub=hub, name="g1", period=1)
    integrator = logged_in("integrator")
    confirm = integrator.get(f"/hubs/{hub.pk}/delete").content.decode()
    entities = Entity.objects.filter(hub=hub).count()
    assert "1 hubs" in confirm and f"{entities} entities" in confirm and "1 groups" in confirm
    assert Hub.objects.filter(pk=hub.pk).exists() and Group.objects.filter(hub=hub).count() == 1  # a dry run
    confirm = integrator.get(f"/projects/{project.pk}/delete").content.decode()
    assert "1 project" in confirm and "1 hubs" in confirm and Project.objects.filter(pk=project.pk).exists()
    response = integrator.post(f"/hubs/{hub.pk}/delete")
    assert response.status_code == 302 and response["Location"] == f"/projects/{project.pk}/"
    assert not Hub.objects.exists() and not Group.objects.exists() and not Entity.objects.exists()
    assert integrator.post(f"/projects/{project.pk}/delete").status_code == 302
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_the_tree_loads_a_hub_s_groups_a_hundred_at_a_time_and_switches_them(project, hub):
    Group.objects.bulk_create([Group(hub=hub, name=f"g{n:04d}", period=1) for n in range(250)])
    operator = logged_in("operator")
    tree = operator.get(f"/projects/{project.pk}/").content.decode()
    assert f'hx-get="/hubs/{hub.pk}/groups"' in tree and "g0000" not in tree  # groups load when the hub opens
    first = operator.get(f"/hubs/{hub.pk}/groups").content.decode()
    assert first.count('<li id="group-') == 100 and "g0000" in first and "g0100" not in first
    assert "100 of 250 shown" in first
    third = operator.get(f"/hubs/{hub.pk}/groups?page=3").content.decode()
    assert third.count('<li id="group-') == 50 and "g0249" in third and "More groups" not in third
    group = Group.objects.get(name="g0007")
    row = operator.post(f"/groups/{group.pk}/switch", {"enabled": "0"}).content.decode()
    assert "disabled" in row and not Group.objects.get(pk=group.pk).enabled
    row = operator.post(f"/hubs/{hub.pk}/switch", {"enabled": "0"}).content.decode()
    assert "Enable" in row and not Hub.objects.get(pk=hub.pk).enabled
    assert logged_in("viewer").post(f"/groups/{group.pk}/switch", {"enabled": "1"}).status_code == 403


@pytest.mark.django_db
def test_a_write_without_the_csrf_token_is_refused(project):
    client = logged_in("integrator", enforce_csrf_checks=True)
    assert client.post("/projects/", {"name": "sneaky", "time_zone": "UTC"}).status_code == 403
    assert not Project.objects.filter(name="sneaky").exists()


def _group_with_a_key(hub) -> Group:
    from groups.models import GroupKey

    entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
    group = Group.objects.create(hub=hub, name="g1", period=1)
    GroupKey.objects.create(group=group, entity="plant/line1/pump1", key="pressure", position=0)
    return group


def _document(project) -> dict:
    import json

    from hubs.services import project_export

    document = json.loads(project_export(project=project))
    document["hubs"][0]["api_key"] = "a-key-in-clear"  # exported as ${HUB_HUB_A_KEY}: the environment's
    return document


@pytest.mark.django_db
def test_a_project_is_exported_without_its_secrets_unless_allowed(project, hub):
    _group_with_a_key(hub)
    integrator = logged_in("integrator")
    response = integrator.get(f"/projects/{project.pk}/export")
    body = response.content.decode()
    assert response.status_code == 200 and response["Content-Disposition"] == 'attachment; filename="plant.json"'
    assert '"hubsched.project/1"' in body and KEY not in body and "${" in body
    assert integrator.get(f"/projects/{project.pk}/export?secrets=1").status_code == 403
    assert KEY in logged_in("admin").get(f"/projects/{project.pk}/export?secrets=1").content.decode()


@pytest.mark.django_db
def test_an_import_lists_every_error_at_its_json_path_and_changes_nothing(project, hub):
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    _group_with_a_key(hub)
    document = _document(project)
    document["name"] = "plant copy"
    document["hubs"][0]["groups"][0]["period"] = -1
    document["hubs"][0]["url"] = "http://nowhere"
    before = (Project.objects.count(), Hub.objects.count(), Group.objects.count())
    integrator = logged_in("integrator")
    assert logged_in("viewer").get("/projects/import").status_code == 403

    def upload(doc, **extra):
        raw = json.dumps(doc).encode()
        return integrator.post("/projects/import", {"document": SimpleUploadedFile("p.json", raw), **extra})

    refused = upload(document)
    page = refused.content.decode()
    assert refused.status_code == 422 and "nothing changed" in page
    assert "hubs[0].groups[0].period" in page and "hubs[0].url" in page
    assert (Project.objects.count(), Hub.objects.count(), Group.objects.count()) == before
    exists = upload(_document(project))  # the same name, not asked to replace
    assert exists.status_code == 422 and "already exists" in exists.content.decode()
    assert (Project.objects.count(), Hub.objects.count(), Group.objects.count()) == before
    document = _document(project)
    document["name"] = "plant copy"
    imported = upload(document)
    copy = Project.objects.get(name="plant copy")
    assert imported.status_code == 302 and imported["Location"] == f"/projects/{copy.pk}/"
    assert Group.objects.filter(hub__project=copy, name="g1").exists()
    bad_json = integrator.post("/projects/import", {"document": SimpleUploadedFile("p.json", b"{not json")})
    assert bad_json.status_code == 422 and "document" in bad_json.content.decode()


@pytest.mark.django_db
def test_the_hub_s_methods_are_tried_and_answered_as_json_or_the_error(hub, reference_hub):
    import json

    viewer = logged_in("viewer")

    def try_(client, method, params=""):
        return client.post(f"/hubs/{hub.pk}/try", {"method": method, "params": params})

    page = try_(viewer, "getInfo").content.decode()
    assert "getInfo</strong> answered" in page and "&quot;protocol&quot;: 1" in page
    page = try_(viewer, "getEntityParams", json.dumps({"entity": "plant/line1/pump1", "keys": ["pressure"]})).content.decode()
    assert "&quot;key&quot;: &quot;pressure&quot;" in page
    page = try_(viewer, "subscribe", json.dumps({"entity": "plant/line1/pump1", "keys": ["pressure"], "period": 0.2,
                                                 "onChange": False})).content.decode()
    assert "first dataChange" in page and "&quot;values&quot;" in page  # then unsubscribed
    page = try_(viewer, "getParams", json.dumps({"entity": "no/such"})).content.decode()
    assert "getParams</strong> failed" in page and KEY not in page
    assert try_(viewer, "getInfo", "[1]").status_code == 422 and try_(viewer, "drop", "").status_code == 422
    before = reference_hub.state.read("plant/line1/pump1", "speed_sp")
    write = json.dumps({"entity": "plant/line1/pump1", "values": {"speed_sp": 77.0}})
    assert try_(viewer, "setEntityParams", write).status_code == 403
    assert reference_hub.state.read("plant/line1/pump1", "speed_sp") == before
    assert "answered" in try_(logged_in("integrator"), "setEntityParams", write).content.decode()
    assert reference_hub.state.read("plant/line1/pump1", "speed_sp") == 77.0
