"""The console's entity browser against a real reference hub: the tree a level at a time and searched, an entity's
parameters and live values with time stamp and quality, writing a writable parameter (the hub's value changes),
bad values and read-only parameters refused with nothing written, and the permissions (writing: hubs.write_hub)."""

from __future__ import annotations

import pytest
from django.test import Client

from api.testing import logged_in
from hubs.hubsim.tree import demo_tree
from hubs.models import Entity, Hub, Project
from hubs.project_document.importer import entity_tree_write

from .conftest import HUB_KEY as KEY


@pytest.fixture
def hub(db, reference_hub):
    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url=reference_hub.url, api_key=KEY, timeout=2)
    entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
    return hub


@pytest.mark.django_db
def test_the_tree_is_loaded_a_level_at_a_time_and_searched(hub):
    viewer = logged_in("viewer")
    page = viewer.get(f"/hubs/{hub.pk}/entities/").content.decode()
    roots = Entity.objects.filter(hub=hub, parent__isnull=True)
    assert page.count('<li id="entity-') == roots.count() and "<code>plant/line1</code>" not in page
    plant = Entity.objects.get(hub=hub, path="plant")
    opened = viewer.get(f"/hubs/{hub.pk}/entities/{plant.pk}/").content.decode()
    assert "<code>plant/line1</code>" in opened and "<code>plant/line1/pump1</code>" not in opened  # one level
    found = viewer.get(f"/hubs/{hub.pk}/entities/?q=PUMP1").content.decode()
    assert "<code>plant/line1/pump1</code>" in found and "<code>plant/line2/pump1</code>" in found
    assert "<code>plant/line1</code>" not in found


@pytest.mark.django_db
def test_an_entity_shows_its_parameters_and_live_values_with_quality(hub, reference_hub):
    viewer = logged_in("viewer")
    pump = Entity.objects.get(hub=hub, path="plant/line1/pump1")
    opened = viewer.get(f"/hubs/{hub.pk}/entities/{pump.pk}/").content.decode()
    assert "<td>pressure</td>" in opened and "<td>bar</td>" in opened and "Write…" not in opened  # a viewer writes nothing
    values = viewer.get(f"/hubs/{hub.pk}/entities/{pump.pk}/values").content.decode()
    speed = reference_hub.state.read("plant/line1/pump1", "speed_sp")
    assert f'<td>speed_sp</td><td class="value">{speed}</td>' in values.replace("\n      ", "")
    assert "<td>good</td>" in values
    Hub.objects.filter(pk=hub.pk).update(api_key="wrong")
    refused = viewer.get(f"/hubs/{hub.pk}/entities/{pump.pk}/values").content.decode()
    assert "The hub could not be read" in refused and KEY not in refused


@pytest.mark.django_db
def test_a_writable_parameter_is_written_and_bad_values_write_nothing(hub, reference_hub):
    integrator = logged_in("integrator")
    pump = Entity.objects.get(hub=hub, path="plant/line1/pump1")
    assert "Write…" in integrator.get(f"/hubs/{hub.pk}/entities/{pump.pk}/").content.decode()
    url = f"/hubs/{hub.pk}/entities/{pump.pk}/write"
    before = reference_hub.state.read("plant/line1/pump1", "speed_sp")
    for data, says in [({"key": "speed_sp", "value": "fast"}, "expected a number"),
                       ({"key": "pressure", "value": "3"}, "not a writable parameter"),
                       ({"key": "no_such", "value": "3"}, "not a writable parameter"),
                       ({"key": "running", "value": "yes"}, "true or false")]:
        response = integrator.post(url, data)
        assert response.status_code == 422 and says in response.content.decode(), data
    assert reference_hub.state.read("plant/line1/pump1", "speed_sp") == before
    response = integrator.post(url, {"key": "speed_sp", "value": "1234.5"})
    assert response.status_code == 200 and "Written: speed_sp = 1234.5" in response.content.decode()
    assert reference_hub.state.read("plant/line1/pump1", "speed_sp") == 1234.5
    assert logged_in("operator").post(url, {"key": "speed_sp", "value": "1"}).status_code == 403
    assert reference_hub.state.read("plant/line1/pump1", "speed_sp") == 1234.5


@pytest.mark.django_db
def test_the_browser_needs_a_login_and_the_view_permissions(hub):
    pump = Entity.objects.get(hub=hub, path="plant/line1/pump1")
    for path in (f"/hubs/{hub.pk}/entities/", f"/hubs/{hub.pk}/entities/{pump.pk}/", f"/hubs/{hub.pk}/entities/{pump.pk}/values"):
        assert Client().get(path).status_code == 302
        assert logged_in(None).get(path).status_code == 403


def test_a_value_is_stale_when_its_hub_time_stamp_is_older_than_30_s():
    from datetime import datetime, timedelta, timezone

    from console.views.entities import _stale

    now = datetime.now(timezone.utc)
    assert _stale((now - timedelta(seconds=31)).isoformat()) and not _stale((now - timedelta(seconds=5)).isoformat())
    assert not _stale("not a time") and not _stale(None)
