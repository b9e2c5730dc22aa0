"""The console's sinks of a project: added with the admin's rules (a URL holding *** refused beside it), shown with
the password masked, deleted by a POST, and the permissions."""

from __future__ import annotations

import re

import pytest

from api.testing import logged_in
from hubs.models import Project
from scripts_engine.models import Sink


@pytest.mark.django_db
def test_a_sink_is_added_shown_masked_and_deleted(tmp_path):
    project = Project.objects.create(name="plant")
    integrator = logged_in("integrator")
    url = f"/projects/{project.pk}/sinks/"
    refused = integrator.post(url, {"name": "main", "url": "postgresql://ann:***@db/x", "layout": "tall",
                                    "table": "values", "enabled": "on"})
    assert refused.status_code == 422 and re.search(r'id="id_url-error"[^>]*>[^<]*\*\*\*', refused.content.decode())
    assert not Sink.objects.exists()
    added = integrator.post(url, {"name": "main", "url": "postgresql://ann:s3cret-pw@127.0.0.1/test", "layout": "tall",
                                  "table": "values", "enabled": "on"})
    assert added.status_code == 302 and Sink.objects.get(name="main").url == "postgresql://ann:s3cret-pw@127.0.0.1/test"
    page = integrator.get(url).content.decode()
    assert "postgresql://ann:***@127.0.0.1/test" in page and "s3cret-pw" not in page
    viewer = logged_in("viewer")
    assert viewer.get(url).status_code == 200
    sink = Sink.objects.get(name="main")
    assert viewer.post(f"/sinks/{sink.pk}/delete").status_code == 403
    assert viewer.post(url, {"name": "x", "url": f"sqlite:///{tmp_path}/x.db", "layout": "tall", "table": "t"}).status_code == 403
    assert integrator.post(f"/sinks/{sink.pk}/delete").status_code == 302 and not Sink.objects.exists()
    assert logged_in(None).get(url).status_code == 403
