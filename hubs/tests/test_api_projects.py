"""The projects API: /api/v1/projects (list, get, create, change, delete), the document export and import, and
their old paths /api/projects/<id>/export and /api/projects/import (aliases), by permission (hubsched/roles.py)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group as AuthGroup
from django.test import Client

from api.testing import assert_error, token_client, user_with
from groups.models import Group
from hubs.models import Hub, Project
from hubs.services import project_import
from hubs.tests.test_project_document import KEY_A, sample_document

pytestmark = pytest.mark.django_db

V1 = "/api/v1/projects"
OLD = "/api/projects"


def role_client(role: str, *, username: str | None = None, **client_options) -> Client:
    user = get_user_model().objects.create_user(username or role, password="pw-staff-123", is_staff=True)
    user.groups.add(AuthGroup.objects.get(name=role))
    client = Client(**client_options)
    client.force_login(user)
    return client


@pytest.fixture
def staff_client():
    """An integrator: exports without secrets, imports and replaces."""
    return role_client("integrator")


@pytest.fixture
def project():
    return project_import(raw=json.dumps(sample_document())).project


def post_document(client, body, query="", base=OLD):
    return client.post(f"{base}/import{query}", data=body, content_type="application/json")


def paths(error: dict) -> list[tuple[str, str]]:
    return [(d["path"], d["message"]) for d in error["details"]]


# --- list, get, create, change, delete ---------------------------------------------------------------------


def test_projects_are_listed_by_name_with_counts_filtered_searched_and_paginated(project):
    Project.objects.create(name="alpha", time_zone="UTC")
    Project.objects.create(name="zeta works", time_zone="UTC")
    client = token_client(role="viewer")
    page = client.get(V1)
    assert page.status_code == 200, page.content
    body = page.json()
    assert body["count"] == 3 and body["offset"] == 0 and body["limit"] == 50
    assert [p["name"] for p in body["items"]] == ["alpha", "plant", "zeta works"]
    plant = body["items"][1]
    assert (plant["hub_count"], plant["group_count"], plant["time_zone"]) == (2, 4, "Europe/Berlin")
    assert [p["name"] for p in client.get(f"{V1}?search=WORK").json()["items"]] == ["zeta works"]
    assert [p["name"] for p in client.get(f"{V1}?time_zone=Europe/Berlin").json()["items"]] == ["plant"]
    second = client.get(f"{V1}?limit=1&offset=1").json()
    assert [p["name"] for p in second["items"]] == ["plant"] and second["count"] == 3
    assert_error(client.get(f"{V1}?limit=0"), 422, "invalid")


def test_a_project_is_got_by_id_and_an_unknown_one_is_404(project):
    client = token_client(role="viewer")
    got = client.get(f"{V1}/{project.pk}")
    assert got.status_code == 200 and got.json()["name"] == "plant" and got.json()["description"] == "Pumps and boiler"
    assert_error(client.get(f"{V1}/99999"), 404, "not_found")


def test_a_project_is_created_with_the_models_rules_and_a_taken_name_is_422_at_name():
    client = token_client(role="integrator")
    made = client.post(V1, {"name": "new", "time_zone": "Europe/Paris"}, content_type="application/json")
    assert made.status_code == 201, made.content
    assert made.json()["hub_count"] == 0 and Project.objects.get(pk=made.json()["id"]).time_zone == "Europe/Paris"
    taken = assert_error(client.post(V1, {"name": "new"}, content_type="application/json"), 422, "invalid")
    assert [p for p, _ in paths(taken)] == ["name"]


def test_an_unknown_time_zone_is_refused_with_the_same_words_as_import():
    client = token_client(role="integrator")
    error = assert_error(client.post(V1, {"name": "x", "time_zone": "Mars/Olympus"}, content_type="application/json"), 422)
    assert paths(error) == [("time_zone", 'unknown time zone "Mars/Olympus"')]
    doc = sample_document()
    doc["time_zone"] = "Mars/Olympus"
    imported = assert_error(post_document(client, json.dumps(doc), base=V1), 422)
    assert ("time_zone", 'unknown time zone "Mars/Olympus"') in paths(imported)
    assert not Project.objects.exists()


def test_unknown_fields_and_wrong_types_are_422_at_their_path():
    client = token_client(role="integrator")
    unknown = assert_error(client.post(V1, {"name": "x", "colour": "red"}, content_type="application/json"), 422)
    assert [p for p, _ in paths(unknown)] == ["colour"]
    missing = assert_error(client.post(V1, {}, content_type="application/json"), 422)
    assert [p for p, _ in paths(missing)] == ["name"]
    assert_error(client.post(V1, "{no", content_type="application/json"), 400, "bad_request")
    assert not Project.objects.exists()


def test_a_change_sets_only_the_fields_sent_and_a_bad_one_changes_nothing(project):
    client = token_client(role="integrator")
    changed = client.patch(f"{V1}/{project.pk}", {"description": "new words"}, content_type="application/json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["description"] == "new words" and changed.json()["time_zone"] == "Europe/Berlin"
    refused = assert_error(client.patch(f"{V1}/{project.pk}", {"description": "no", "time_zone": "Nowhere"},
                                        content_type="application/json"), 422)
    assert [p for p, _ in paths(refused)] == ["time_zone"]
    assert Project.objects.get().description == "new words"
    nulled = assert_error(client.patch(f"{V1}/{project.pk}", {"name": None}, content_type="application/json"), 422)
    assert [p for p, _ in paths(nulled)] == ["name"]
    assert_error(client.patch(f"{V1}/99999", {"description": "x"}, content_type="application/json"), 404)


def test_delete_answers_what_went_with_the_project(project):
    client = token_client(role="integrator")
    gone = client.delete(f"{V1}/{project.pk}")
    assert gone.status_code == 200, gone.content
    body = gone.json()
    assert (body["name"], body["hubs"], body["groups"]) == ("plant", 2, 4)
    assert body["deleted"]["hubs.project"] == 1 and body["deleted"]["scripts_engine.script"] == 1
    assert not Project.objects.exists() and not Hub.objects.exists() and not Group.objects.exists()
    assert_error(client.delete(f"{V1}/{project.pk}"), 404)


@pytest.mark.parametrize("method, url, body, perm", [
    ("get", V1, None, "hubs.view_project"),
    ("get", V1 + "/{id}", None, "hubs.view_project"),
    ("post", V1, {"name": "x"}, "hubs.add_project"),
    ("patch", V1 + "/{id}", {"description": "x"}, "hubs.change_project"),
    ("delete", V1 + "/{id}", None, "hubs.delete_project"),
])
def test_each_project_endpoint_is_401_anonymous_and_403_without_its_permission(project, method, url, body, perm):
    url = url.format(id=project.pk)
    kwargs = {"data": body, "content_type": "application/json"} if body is not None else {}
    assert_error(getattr(Client(), method)(url, **kwargs), 401, "not_authenticated")
    error = assert_error(getattr(token_client(role=None), method)(url, **kwargs), 403, "permission_denied")
    assert perm in error["message"]
    if method != "get":  # a viewer reads, never writes
        assert_error(getattr(token_client(role="viewer"), method)(url, **kwargs), 403)
    assert Project.objects.filter(pk=project.pk, description="Pumps and boiler").exists()


# --- export and import, at /api/v1 and at the old paths ----------------------------------------------------


@pytest.mark.parametrize("base", [V1, OLD])
def test_export_returns_the_document_without_secrets(staff_client, project, base):
    response = staff_client.get(f"{base}/{project.pk}/export")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert 'filename="plant.json"' in response["Content-Disposition"]
    doc = json.loads(response.content)
    assert doc["format"] == "hubsched.project/1" and doc["hubs"][0]["api_key"] == "${HUB_HUB_A_KEY}"
    assert KEY_A.encode() not in response.content


def test_the_old_paths_are_marked_deprecated_with_their_successor(staff_client, project):
    export = staff_client.get(f"{OLD}/{project.pk}/export")
    assert export["Deprecation"] == "true"
    assert export["Link"] == f'</api/v1/projects/{project.pk}/export>; rel="successor-version"'
    imported = post_document(staff_client, json.dumps(sample_document()), "?replace=1")
    assert imported.status_code == 201 and imported["Link"] == '</api/v1/projects/import>; rel="successor-version"'
    assert "Deprecation" not in staff_client.get(f"{V1}/{project.pk}/export")


def test_export_includes_secrets_when_an_admin_asks(project):
    response = role_client("admin").get(f"{OLD}/{project.pk}/export?include_secrets=1")
    assert json.loads(response.content)["hubs"][0]["api_key"] == KEY_A


@pytest.mark.parametrize("base", [V1, OLD])
def test_export_refuses_secrets_to_an_integrator_rather_than_leave_them_out(staff_client, project, base):
    error = assert_error(staff_client.get(f"{base}/{project.pk}/export?include_secrets=1"), 403, "permission_denied")
    assert error["message"] == "permission required: hubs.export_secrets"


@pytest.mark.parametrize("base", [V1, OLD])
def test_export_of_an_unknown_project_is_404(staff_client, base):
    assert_error(staff_client.get(f"{base}/999/export"), 404, "not_found")


@pytest.mark.parametrize("base", [V1, OLD])
def test_import_creates_the_project_and_answers_201(staff_client, base):
    response = post_document(staff_client, json.dumps(sample_document()), base=base)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] is True and Project.objects.get(pk=body["id"]).name == "plant"


def test_import_with_a_token_needs_no_csrf():
    client = token_client(role="integrator")
    assert post_document(client, json.dumps(sample_document()), base=V1).status_code == 201


@pytest.mark.parametrize("base", [V1, OLD])
def test_import_needs_the_csrf_token_with_the_session(base):
    client = role_client("integrator", username="bot", enforce_csrf_checks=True)
    assert_error(post_document(client, json.dumps(sample_document()), base=base), 403)
    assert not Project.objects.exists()
    client.get("/admin/")  # an admin page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(f"{base}/import", data=json.dumps(sample_document()), content_type="application/json",
                           HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201


@pytest.mark.parametrize("base", [V1, OLD])
def test_a_bad_document_is_422_with_every_error_at_its_path_and_changes_nothing(staff_client, project, base):
    doc = sample_document()
    doc["description"] = "should not land"
    doc["hubs"][1]["groups"][0]["period"] = 0
    doc["hubs"][0]["colour"] = "red"
    error = assert_error(post_document(staff_client, json.dumps(doc), "?replace=1", base=base), 422, "invalid")
    assert paths(error) == [("hubs[0].colour", "unknown field"), ("hubs[1].groups[0].period", "must be greater than 0")]
    assert Project.objects.get().description == "Pumps and boiler"


def test_import_of_an_existing_project_is_409_without_replace(staff_client, project):
    error = assert_error(post_document(staff_client, json.dumps(sample_document())), 409, "conflict")
    assert error["details"][0]["path"] == "name" and "already exists" in error["details"][0]["message"]
    doc = sample_document()
    doc["hubs"][0]["timeout"] = 9.0
    response = post_document(staff_client, json.dumps(doc), "?replace=1")
    assert response.status_code == 201 and response.json() == {"id": project.pk, "name": "plant", "created": False}
    assert Hub.objects.get(name="hub-a").timeout == 9.0


def test_import_of_not_json_is_400(staff_client):
    error = assert_error(post_document(staff_client, "not json"), 400, "bad_request")
    assert error["details"][0]["path"] == "" and error["details"][0]["message"].startswith("not JSON")


def test_a_document_past_the_size_limit_is_413(staff_client, settings):
    settings.HUBSCHED_PROJECT_DOCUMENT_MAX_BYTES = 1000
    doc = sample_document()
    doc["description"] = "x" * 5000
    error = assert_error(post_document(staff_client, json.dumps(doc), base=V1), 413, "too_large")
    assert paths(error) == [("", "1001 bytes is larger than the limit of 1000 bytes")]
    assert not Project.objects.exists()


def test_a_document_larger_than_djangos_upload_limit_is_still_read(staff_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    assert post_document(staff_client, json.dumps(sample_document())).status_code == 201


@pytest.mark.parametrize("method, url", [("get", "/projects/1/export"), ("post", "/projects/import")])
@pytest.mark.parametrize("prefix", ["/api/v1", "/api"])
def test_anonymous_callers_get_401_and_users_without_the_permission_403(client, project, method, url, prefix):
    url = prefix + url.replace("/1/", f"/{project.pk}/")
    assert_error(getattr(client, method)(url), 401, "not_authenticated")
    for username, staff in (("plain", False), ("staff", True)):
        client.force_login(get_user_model().objects.create_user(username, password="pw-plain-123", is_staff=staff))
        error = assert_error(getattr(client, method)(url), 403, "permission_denied")
        assert error["message"].startswith("permission required: hubs.")


def test_import_with_replace_needs_the_change_and_delete_permissions(project):
    adder = token_client(user_with(perms=("hubs.add_project",)))
    error = assert_error(post_document(adder, json.dumps(sample_document()), "?replace=1", base=V1), 403)
    assert "hubs.change_project" in error["message"] and "hubs.delete_hub" in error["message"]


@pytest.mark.parametrize("prefix", ["/api/v1", "/api"])
def test_export_answers_only_get_and_import_only_post(staff_client, project, prefix):
    assert_error(staff_client.post(f"{prefix}/projects/{project.pk}/export"), 405, "method_not_allowed")
    assert_error(staff_client.get(f"{prefix}/projects/import"), 405, "method_not_allowed")
