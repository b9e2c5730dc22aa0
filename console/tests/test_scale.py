"""The console at a project's scale (issue 14: 1,000 groups and 10,000 entities): no page loads more than it shows,
and the queries a page makes do not grow with the project (counted with Django's CaptureQueriesContext)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from api.testing import logged_in
from groups.models import Group
from hubs.models import Entity, Hub, Parameter, Project

GROUPS, ENTITIES = 1000, 10_000


@pytest.fixture
def big(db):
    project = Project.objects.create(name="big")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    Group.objects.bulk_create([Group(hub=hub, name=f"g{n:04d}", period=1) for n in range(GROUPS)], batch_size=500)
    roots = Entity.objects.bulk_create([Entity(hub=hub, path=f"area{n:02d}", name=f"area {n}") for n in range(10)])
    children = Entity.objects.bulk_create(
        [Entity(hub=hub, parent=roots[n % 10], path=f"area{n % 10:02d}/e{n:05d}", name=f"e{n}") for n in range(ENTITIES - 10)],
        batch_size=2000)
    Parameter.objects.bulk_create([Parameter(entity=e, key="p1", type="number") for e in children], batch_size=2000)
    return project, hub, roots


def _shown(client, path: str) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200, path
    return response.content.decode(), len(queries)


@pytest.mark.django_db
def test_a_project_of_a_thousand_groups_and_ten_thousand_entities_loads_only_what_it_shows(big):
    project, hub, roots = big
    viewer = logged_in("viewer")
    page, queries = _shown(viewer, f"/projects/{project.pk}/")
    assert page.count('<li id="group-') == 0 and page.count('<li id="hub-') == 1 and queries < 20
    page, queries = _shown(viewer, f"/hubs/{hub.pk}/groups")
    assert page.count('<li id="group-') == 100 and "100 of 1000 shown" in page and queries < 20
    page, queries = _shown(viewer, f"/hubs/{hub.pk}/groups?page=10")
    assert page.count('<li id="group-') == 100 and "More groups" not in page and queries < 20
    page, queries = _shown(viewer, f"/hubs/{hub.pk}/")
    assert page.count('<li id="group-') == 100 and queries < 20
    page, queries = _shown(viewer, f"/hubs/{hub.pk}/entities/")
    assert page.count('<li id="entity-') == 10 and queries < 20  # the roots only
    page, queries = _shown(viewer, f"/hubs/{hub.pk}/entities/{roots[0].pk}/")
    assert page.count('<li id="entity-') == 100 and "100 of 999 shown" in page and queries < 20
    page, queries = _shown(viewer, f"/hubs/{hub.pk}/entities/?q=e0")
    assert page.count('<li id="entity-') == 100 and queries < 20  # a search is paged too
    page, queries = _shown(viewer, f"/hubs/{hub.pk}/parameters?q=p1")
    assert page.count("<li>") == 50 and "More match" in page and queries < 20
    page, queries = _shown(viewer, "/projects/")
    assert page.count("<tr><td><a") == 1 and queries < 20
