"""/api/v1/sinks and /api/v1/data-sources: list, get, create, change, delete; the URL's secret is write-only."""

from __future__ import annotations

import json
import logging

import pytest
from django.db import connection
from django.test import Client

from api.testing import assert_error, token_client, user_with
from groups.models import Group, GroupKey
from hubs.models import Hub, Project
from scripts_engine.models import DataSource, Sink

pytestmark = pytest.mark.django_db

PASSWORD = "s3cr3t-Pa55"
URL = f"postgresql+psycopg2://ann:{PASSWORD}@db.example:5432/values"
MASKED = "postgresql+psycopg2://ann:***@db.example:5432/values"


@pytest.fixture
def project():
    return Project.objects.create(name="plant")


@pytest.fixture
def sink(project):
    return Sink.objects.create(project=project, name="archive", url=URL, table="plant_values")


@pytest.fixture
def source(project):
    return DataSource.objects.create(project=project, name="erp", url=URL.replace("values", "erp"))


def post(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def patch(client, path, body):
    return client.patch(path, data=json.dumps(body), content_type="application/json")


def paths(error: dict) -> list[str]:
    return [d["path"] for d in error["details"]]


def stored_url(model, pk: int) -> str:
    """The URL column as the database holds it (encrypted)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT url FROM {model._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


# --- sinks ------------------------------------------------------------------------------------------


def test_a_sink_is_created_with_its_password_and_answered_without_it(project, caplog):
    caplog.set_level(logging.DEBUG)
    response = post(token_client(role="integrator"), "/api/v1/sinks",
                    {"project": project.pk, "name": "archive", "url": URL, "layout": "tall", "table": "plant_values"})
    assert response.status_code == 201, response.content
    created = Sink.objects.get()
    assert response.json() == {
        "id": created.pk, "project": project.pk, "project_name": "plant", "name": "archive", "url": MASKED,
        "has_password": True, "layout": "tall", "table": "plant_values", "local_infile": False, "enabled": True,
        "created_at": response.json()["created_at"],
    }
    assert created.url == URL and PASSWORD not in stored_url(Sink, created.pk)  # kept, encrypted at rest
    assert PASSWORD not in caplog.text


def test_list_and_get_never_answer_the_password(project, sink):
    Sink.objects.create(project=Project.objects.create(name="other"), name="local", url="sqlite:///v.sqlite3",
                        enabled=False)
    viewer = token_client(role="viewer")
    listed = viewer.get("/api/v1/sinks")
    assert [(s["name"], s["url"], s["has_password"]) for s in listed.json()["items"]] == [
        ("local", "sqlite:///v.sqlite3", False), ("archive", MASKED, True)]
    got = viewer.get(f"/api/v1/sinks/{sink.pk}")
    assert got.json()["url"] == MASKED
    assert PASSWORD.encode() not in listed.content + got.content
    assert [s["name"] for s in viewer.get(f"/api/v1/sinks?project={sink.project_id}").json()["items"]] == ["archive"]
    assert [s["name"] for s in viewer.get("/api/v1/sinks?enabled=false").json()["items"]] == ["local"]
    assert [s["name"] for s in viewer.get("/api/v1/sinks?search=PLANT_val").json()["items"]] == ["archive"]  # table
    assert viewer.get("/api/v1/sinks?search=ann").json()["count"] == 0  # never the URL
    assert viewer.get("/api/v1/sinks?limit=1").json()["count"] == 2
    assert_error(viewer.get("/api/v1/sinks/999999"), 404, "not_found")


def test_a_patch_with_the_masked_url_keeps_the_stored_password(sink):
    integrator = token_client(role="integrator")
    response = patch(integrator, f"/api/v1/sinks/{sink.pk}", {"url": MASKED.replace("/values", "/values2")})
    assert response.status_code == 200 and response.json()["url"] == MASKED.replace("/values", "/values2")
    sink.refresh_from_db()
    assert sink.url == URL.replace("/values", "/values2")
    # the stored password never goes to another server
    error = assert_error(patch(integrator, f"/api/v1/sinks/{sink.pk}", {"url": MASKED.replace("db.example", "evil.example")}),
                         422, "invalid")
    assert paths(error) == ["url"] and "type the secret again" in error["details"][0]["message"]
    sink.refresh_from_db()
    assert sink.url == URL.replace("/values", "/values2")
    new = "postgresql+psycopg2://bob:n3w-pw@db.example:5432/values"
    assert patch(integrator, f"/api/v1/sinks/{sink.pk}", {"url": new, "enabled": False}).status_code == 200
    sink.refresh_from_db()
    assert (sink.url, sink.enabled, sink.name) == (new, False, "archive")


def test_the_sink_rules_of_the_model_and_the_admin_are_422_per_field(project, sink, caplog):
    caplog.set_level(logging.DEBUG)
    integrator = token_client(role="integrator")
    base = {"project": project.pk, "name": "new", "url": URL}
    cases = [
        ({**base, "url": ""}, ["url"]),
        ({**base, "url": MASKED}, ["url"]),  # *** in a new sink: no stored secret to fill in
        ({**base, "layout": "diagonal"}, ["layout"]),
        ({**base, "name": "archive"}, [""]),  # taken in the project
        ({**base, "project": 999999}, ["project"]),
        ({**base, "pasword": "x"}, ["pasword"]),
        ({**base, "enabled": "maybe"}, ["enabled"]),
    ]
    for body, where in cases:
        assert paths(assert_error(post(integrator, "/api/v1/sinks", body), 422, "invalid")) == where, body
    assert list(Sink.objects.values_list("name", flat=True)) == ["archive"]
    assert PASSWORD not in caplog.text


def test_making_a_sink_wide_is_refused_when_a_group_would_lose_values(project, sink):
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:1/ws")
    group = Group.objects.create(hub=hub, name="pumps")
    GroupKey.objects.create(group=group, entity="plant/p1", key="flow", position=0)
    GroupKey.objects.create(group=group, entity="plant/p2", key="flow", position=1)  # one column for both
    error = assert_error(patch(token_client(role="integrator"), f"/api/v1/sinks/{sink.pk}", {"layout": "wide"}), 422)
    assert paths(error) == ["layout"] and 'group "pumps" of hub "hub-a"' in error["details"][0]["message"]
    sink.refresh_from_db()
    assert sink.layout == "tall"


def test_sinks_need_their_permissions(project, sink):
    body = {"project": project.pk, "name": "new", "url": "sqlite:///x.sqlite3"}
    nobody, operator = token_client(user_with()), token_client(role="operator")
    assert assert_error(nobody.get("/api/v1/sinks"), 403)["message"] == "permission required: scripts_engine.view_sink"
    assert_error(nobody.get(f"/api/v1/sinks/{sink.pk}"), 403, "permission_denied")
    assert assert_error(post(operator, "/api/v1/sinks", body), 403)["message"] == "permission required: scripts_engine.add_sink"
    assert_error(patch(operator, f"/api/v1/sinks/{sink.pk}", {"enabled": False}), 403, "permission_denied")
    assert_error(operator.delete(f"/api/v1/sinks/{sink.pk}"), 403, "permission_denied")
    for response in (Client().get("/api/v1/sinks"), Client().get(f"/api/v1/sinks/{sink.pk}"),
                     post(Client(), "/api/v1/sinks", body), patch(Client(), f"/api/v1/sinks/{sink.pk}", {}),
                     Client().delete(f"/api/v1/sinks/{sink.pk}")):
        assert_error(response, 401, "not_authenticated")
    sink.refresh_from_db()
    assert sink.enabled and Sink.objects.count() == 1


def test_delete_removes_a_sink(sink):
    integrator = token_client(role="integrator")
    assert integrator.delete(f"/api/v1/sinks/{sink.pk}").status_code == 204
    assert not Sink.objects.exists()
    assert_error(integrator.delete(f"/api/v1/sinks/{sink.pk}"), 404, "not_found")
    assert_error(patch(integrator, f"/api/v1/sinks/{sink.pk}", {"enabled": True}), 404, "not_found")


# --- data sources -----------------------------------------------------------------------------------


def test_a_data_source_is_created_and_answered_without_its_password(project, caplog):
    caplog.set_level(logging.DEBUG)
    url = "mysql+pymysql://reader:" + PASSWORD + "@erp.example/erp?ssl_key=k&api_token=t0ken"
    response = post(token_client(role="integrator"), "/api/v1/data-sources",
                    {"project": project.pk, "name": "erp", "url": url, "writable": True})
    assert response.status_code == 201, response.content
    created = DataSource.objects.get()
    assert response.json() == {"id": created.pk, "project": project.pk, "project_name": "plant", "name": "erp",
                               "url": "mysql+pymysql://reader:***@erp.example/erp?ssl_key=***&api_token=***",
                               "has_password": True, "writable": True, "allow_ddl": False}
    assert created.url == url and PASSWORD not in stored_url(DataSource, created.pk)
    assert PASSWORD not in caplog.text and "t0ken" not in caplog.text


def test_data_sources_list_get_and_patch_keep_the_secret(project, source):
    viewer, integrator = token_client(role="viewer"), token_client(role="integrator")
    listed = viewer.get(f"/api/v1/data-sources?project={project.pk}&search=ER")
    assert [(d["name"], d["url"]) for d in listed.json()["items"]] == [("erp", MASKED.replace("values", "erp"))]
    assert PASSWORD.encode() not in listed.content + viewer.get(f"/api/v1/data-sources/{source.pk}").content
    response = patch(integrator, f"/api/v1/data-sources/{source.pk}",
                     {"url": MASKED.replace("values", "erp"), "writable": True, "allow_ddl": True})
    assert response.status_code == 200 and (response.json()["writable"], response.json()["allow_ddl"]) == (True, True)
    source.refresh_from_db()
    assert source.url == URL.replace("values", "erp") and source.writable


def test_the_data_source_rules_are_422_per_field(project, source):
    integrator = token_client(role="integrator")
    for body, where in [({"project": project.pk, "name": "erp", "url": "sqlite:///x"}, [""]),
                        ({"project": project.pk, "name": "", "url": "sqlite:///x"}, ["name"]),
                        ({"project": project.pk, "name": "x", "url": "mysql://u:***@h/db"}, ["url"]),
                        ({"project": project.pk, "name": "x"}, ["url"])]:
        assert paths(assert_error(post(integrator, "/api/v1/data-sources", body), 422, "invalid")) == where, body
    assert paths(assert_error(patch(integrator, f"/api/v1/data-sources/{source.pk}", {"name": None}), 422)) == ["name"]
    assert DataSource.objects.count() == 1


def test_data_sources_need_their_permissions_and_delete_removes_one(project, source):
    operator = token_client(role="operator")
    error = assert_error(token_client(user_with()).get("/api/v1/data-sources"), 403)
    assert error["message"] == "permission required: scripts_engine.view_datasource"
    assert_error(post(operator, "/api/v1/data-sources", {"project": project.pk, "name": "x", "url": "sqlite:///x"}), 403)
    assert_error(patch(operator, f"/api/v1/data-sources/{source.pk}", {"writable": True}), 403)
    assert_error(operator.delete(f"/api/v1/data-sources/{source.pk}"), 403)
    assert_error(Client().get(f"/api/v1/data-sources/{source.pk}"), 401)
    assert_error(token_client(role="viewer").get("/api/v1/data-sources/999999"), 404)
    assert token_client(role="integrator").delete(f"/api/v1/data-sources/{source.pk}").status_code == 204
    assert not DataSource.objects.exists()
